"""Run a benchmark profile: INFER and its baselines through the library's stages, with seeds and timings.

    python -m benchmarks.run                      # the CPU benchmark (make bench)
    python -m benchmarks.run --quick              # the quick variant (make bench ARGS=--quick)
    python -m benchmarks.run --methods random_soft --seeds 0 1 2   # one row again (teachers are reused)

Artifacts go to benchmarks/runs/<profile name>/ (resumable: an artifact made with the same settings is
reused, as `infer-distill run` does); the results to benchmarks/results/<profile name>.json, after every
method, and BENCHMARKS.md is regenerated from all results files at the end.

Layout under the run folder:
    data/, teachers/<arch>/                        shared by every method and budget
    ipc<N>/m<M>/{subsets,ufc/...,distilled,students/...,report}   INFER with M teachers (stages.Layout)
    ipc<N>/baselines/<method>-<arch>-seed<s>/      students on real images (no-UFC, random soft / hard)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from infer_distill import __version__, stages
from infer_distill.config import Config, fingerprint, stage_config
from infer_distill.stages import Layout
from infer_distill.store import ArtifactError, open_artifact
from infer_distill.synthesis import synthesize_ufcs
from infer_distill.training import Ensemble, StudentResult, train_student_hard, train_student_model

from .profiles import METHODS, PROFILES, Profile

SCHEMA = "infer-distill-benchmark/1"
REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
RUNS_DIR = REPO / "benchmarks" / "runs"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Wall time and peak memory of every step
# ----------------------------------------------------------------------------------------


def _vm_hwm_mb() -> float | None:
    try:
        match = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _reset_vm_hwm() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets the peak resident set size (VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Recorder:
    """Wall time and peak memory of each step: the process's peak resident memory during the step
    (VmHWM, reset at its start; where that cannot be reset, the peak since the process started), and
    on CUDA the peak memory allocated by torch."""

    def __init__(self, device: str):
        self.device = device
        self.steps: list[dict] = []
        self.started = time.perf_counter()

    @contextmanager
    def measure(self, stage: str, label: str = ""):
        reset = _reset_vm_hwm()
        cuda = self.device == "cuda" and torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        record: dict[str, Any] = {"stage": stage, "label": label, "reused": False}
        t0 = time.perf_counter()
        yield record
        if cuda:
            torch.cuda.synchronize()
        record["seconds"] = round(time.perf_counter() - t0, 3)
        hwm = _vm_hwm_mb()
        record["peak_rss_mb"] = round(hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        record["peak_rss_scope"] = "step" if reset and hwm is not None else "process"
        if cuda:
            record["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        self.steps.append(record)
        log(f"[{time.perf_counter() - self.started:7.1f}s] {stage} {label}: {record['seconds']:.1f}s, "
            f"peak RSS {record['peak_rss_mb']:.0f} MB" + (f", CUDA {record['peak_cuda_mb']:.0f} MB" if cuda else ""))

    def reused(self, stage: str, label: str, manifest: dict) -> None:
        self.steps.append({"stage": stage, "label": label, "reused": True, "seconds": 0.0,
                           "original_seconds": manifest.get("elapsed_s")})
        log(f"[{time.perf_counter() - self.started:7.1f}s] {stage} {label}: reused ({manifest.get('elapsed_s', 0):.1f}s when made)")


def stage_step(rec: Recorder, stage: str, label: str, uri: str, cfg: Config, fn: Callable[[], dict], **keys) -> dict:
    """Run one library stage unless its artifact is current (same settings), as `infer-distill run` does."""
    if stages.is_current(uri, cfg, stage, **keys):
        manifest = open_artifact(uri).read_manifest()
        rec.reused(stage, label, manifest)
        return manifest
    with rec.measure(stage, label):
        return fn()


# ----------------------------------------------------------------------------------------
# Students on real images (the baselines): the library's training loops, cached as artifacts
# ----------------------------------------------------------------------------------------


def random_real_indices(train_y: torch.Tensor, per_class: int, num_classes: int, seed: int) -> torch.Tensor:
    """[per_class, C] training indices drawn as select-subsets draws its natural images.

    Same generator, seed and per-class order, so the first K rows ARE INFER's K natural subsets
    (of the same seed): the random-real set holds INFER's natural images plus ipc - K more per class.
    """
    gen = torch.Generator().manual_seed(seed)
    columns = []
    for c in range(num_classes):
        pool = (train_y == c).nonzero().flatten()
        if len(pool) < per_class:
            raise stages.StageError(f"class {c} has {len(pool)} training images, fewer than {per_class} per class")
        columns.append(pool[torch.randperm(len(pool), generator=gen)[:per_class]])
    return torch.stack(columns, 1)


def _result_metrics(result: StudentResult, epochs: int, n: int, batch_size: int) -> dict:
    best_epoch, best_acc = result.best
    return {"final_acc": result.final_acc, "best_acc": best_acc, "best_epoch": best_epoch, "epochs": epochs,
            "steps": epochs * -(-n // batch_size), "num_instances": n, "curve": result.curve, "train_losses": result.losses}


def baseline_student(rec: Recorder, cfg: Config, method: str, uri: str, seed: int, images: torch.Tensor,
                     labels: torch.Tensor, soft: bool, selection: torch.Tensor, test: tuple, dm: dict, device: str,
                     progress: bool) -> dict:
    """Train the benchmark's student on given real images: static ensemble logits (MixUp + KL) or hard labels (CE)."""
    arch = cfg.students.archs[0]
    student_cfg = cfg.students.model_dump(mode="json", exclude={"archs", "seeds", "epochs_dynamic"})
    settings = {
        "method": method, "labels": "ensemble-static" if soft else "hard",
        "data": stage_config(cfg, "prepare-data"),
        "teachers": [stage_config(cfg, "train-teacher", arch=a)["teacher"] for a in cfg.teachers.archs] if soft else [],
        "selection_sha256": hashlib.sha256(selection.numpy().tobytes()).hexdigest(),
        "student": {"arch": arch, "seed": seed, **student_cfg},
        "temperature": cfg.labels.temperature if soft else None,
    }
    art = open_artifact(uri)
    try:
        manifest = art.read_manifest()
        if manifest.get("settings") == settings:
            rec.reused("benchmark-student", f"{method} seed {seed}", manifest)
            return _student_row(manifest)
    except ArtifactError:
        pass
    augment = (dm["metrics"]["crop_padding"], dm["metrics"]["hflip"])
    with rec.measure("benchmark-student", f"{method} seed {seed}") as record:
        torch.manual_seed(seed)
        model = stages.build_model(arch, dm).to(device)
        desc = f"student {arch} {method} seed {seed}"
        if soft:
            result = train_student_model(model, images, labels, None, *test, cfg.students, cfg.students.epochs,
                                         cfg.labels.temperature, augment, device, seed, desc=desc, progress=progress)
        else:
            result = train_student_hard(model, images, labels, *test, cfg.students, cfg.students.epochs, augment, device,
                                        seed, desc=desc, progress=progress)
        metrics = {"arch": arch, "seed": seed, "method": method,
                   **_result_metrics(result, cfg.students.epochs, len(images), cfg.students.batch_size)}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return _student_row(art.write({"weights.safetensors": state}, {
        "stage": "benchmark-student", "fingerprint": fingerprint(settings), "settings": settings, "seed": seed,
        "metrics": metrics, "elapsed_s": record["seconds"], "infer_distill_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }))


# ----------------------------------------------------------------------------------------
# Analysis: cosine similarity of instances, and the synthesis speed check
# ----------------------------------------------------------------------------------------


@contextmanager
def _penultimate(model: torch.nn.Module):
    """Record the input of the model's last Linear layer (its classifier): the penultimate features."""
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    feats: list[torch.Tensor] = []
    handle = linear.register_forward_pre_hook(lambda _m, args: feats.append(args[0].detach().flatten(1)))
    try:
        yield feats
    finally:
        handle.remove()


def cosine_stats(vectors: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean cosine similarity over pairs of distinct instances of the same class and of different classes."""
    v = torch.nn.functional.normalize(vectors.double().flatten(1), dim=1)
    sim = v @ v.T
    same = labels[:, None] == labels[None, :]
    off_diag = ~torch.eye(len(labels), dtype=torch.bool)
    within, across = sim[same & off_diag], sim[~same]
    return {"within_class": within.mean().item(), "across_classes": across.mean().item(),
            "gap": within.mean().item() - across.mean().item(), "num_instances": len(labels)}


@torch.no_grad()
def similarity_analysis(sets: dict[str, tuple[torch.Tensor, torch.Tensor]], teachers: list[torch.nn.Module],
                        archs: list[str], mean: list[float], device: str) -> dict:
    """Per instance set: cosine similarity in pixel space (centred by the dataset mean) and in every
    teacher's penultimate feature space (and their average)."""
    centre = torch.tensor(mean).view(1, -1, 1, 1)
    out: dict[str, dict] = {}
    for name, (images, labels) in sets.items():
        entry = {"pixels": cosine_stats(images - centre, labels), "features": {}}
        for arch, teacher in zip(archs, teachers):
            with _penultimate(teacher) as feats:
                for i in range(0, len(images), 500):
                    teacher(images[i : i + 500].to(device))
            entry["features"][arch] = cosine_stats(torch.cat(feats).cpu(), labels)
        per = list(entry["features"].values())
        entry["features_mean"] = {k: statistics.fmean(p[k] for p in per) for k in ("within_class", "across_classes", "gap")}
        out[name] = entry
    return out


def synthesis_speed(cfg: Config, teachers: list[torch.nn.Module], natural: torch.Tensor, iterations: int, device: str) -> dict:
    """UFC throughput of grouped synthesis (all subsets and teachers at once) against the same code
    run one subset and one teacher at a time, same process, same teachers and subsets."""
    S, C = natural.shape[:2]
    scfg = cfg.synthesis.model_copy(update={"iterations": iterations})
    B = cfg.class_batches(C)
    synthesize_ufcs(teachers, natural[:1], [0], scfg.model_copy(update={"iterations": 1}), cfg.seed, device, False)  # warm-up

    def timed(fn) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    ids = list(range(S))
    grouped = timed(lambda: synthesize_ufcs(teachers, natural, ids, scfg, cfg.seed, device, False))
    one_at_a_time = timed(lambda: [synthesize_ufcs([t], natural[s : s + 1], [s], scfg, cfg.seed, device, False)
                                   for s in ids for t in teachers])
    ufc_iters = S * len(teachers) * B * iterations

    def rates(seconds: float) -> dict:
        return {"seconds": round(seconds, 3), "ufc_iterations_per_s": ufc_iters / seconds,
                "images_per_s": ufc_iters / seconds * C / B}

    return {"subsets": S, "teachers": len(teachers), "class_batches": B, "classes": C, "iterations": iterations,
            "ufc_iterations": ufc_iters, "grouped": rates(grouped), "one_at_a_time": rates(one_at_a_time),
            "speedup": one_at_a_time / grouped}


# ----------------------------------------------------------------------------------------
# Machine and versions
# ----------------------------------------------------------------------------------------


def machine_info(device: str) -> dict:
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        info["cpu_model"] = model.group(1).strip() if model else None
        mem = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        info["memory_gb"] = round(int(mem.group(1)) / 2**20, 1) if mem else None
    except OSError:
        pass
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                       "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                       "cudnn_benchmark": torch.backends.cudnn.benchmark}
    return info


def versions() -> dict:
    import numpy
    import pydantic
    import timm
    import torchvision

    out = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "timm": timm.__version__, "numpy": numpy.__version__, "pydantic": pydantic.__version__,
           "infer_distill": __version__, "cuda": torch.version.cuda}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            out["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# ----------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------


def _summary(runs: list[dict]) -> dict:
    def ms(key: str) -> tuple[float, float]:
        vals = [r[key] for r in runs]
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    (fm, fs), (bm, bs) = ms("final_acc"), ms("best_acc")
    return {"final_mean": fm, "final_std": fs, "best_mean": bm, "best_std": bs, "seeds": [r["seed"] for r in runs]}


def _student_row(manifest: dict) -> dict:
    m = manifest["metrics"]
    keep = ("arch", "seed", "final_acc", "best_acc", "best_epoch", "epochs", "curve", "train_losses")
    return {**{k: m[k] for k in keep if k in m}, "seconds": manifest.get("elapsed_s")}


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class Benchmark:
    def __init__(self, profile: Profile, root: Path, results_dir: Path, progress: bool = True, speed: bool = True,
                 deadline: float | None = None, estimate: Callable[[str, int], float] | None = None):
        self.p = profile
        self.root = root
        self.results_dir = results_dir
        self.progress = progress
        self.speed = speed
        self.deadline = deadline       # time.perf_counter() value after which no further method starts
        self.estimate = estimate       # (method, ipc) -> predicted seconds, for the deadline check
        self.results_path = results_dir / f"{profile.name}.json"
        base = profile.config(profile.ipcs[0])
        self.device = base.resolve_device()
        self.rec = Recorder(self.device)
        self.data_uri = str(root / "data")
        self.results = self._initial_results()

    # ---- results file ------------------------------------------------------------------

    def set_profile(self, profile: Profile) -> None:
        """Change the profile after `prepare` (the GPU script sizes its profile once the data is loaded);
        the dataset settings must stay the same."""
        if profile.dataset != self.p.dataset or profile.name != self.p.name:
            raise ValueError("set_profile keeps the dataset and the name; build a new Benchmark for others")
        plan = self.results.get("plan")
        self.p = profile
        self.results = self._initial_results() | {k: self.results[k] for k in ("machine", "versions") if k in self.results}
        if plan is not None:
            self.results["plan"] = plan

    def _initial_results(self) -> dict:
        fp = fingerprint(self.p.as_dict() | {"methods": None, "seeds": None, "ipcs": None})
        results = {"schema": SCHEMA, "name": self.p.name, "title": self.p.title, "command": self.p.command,
                   "profile": self.p.as_dict(), "profile_fingerprint": fp, "methods": {}, "analysis": {}, "teachers": [],
                   "ceilings": {}, "speed": {}, "configs": {}, "skipped": []}
        if self.results_path.is_file():  # a run of some methods only adds to (or replaces) its rows
            try:
                old = json.loads(self.results_path.read_text())
            except ValueError:
                old = {}
            if old.get("schema") == SCHEMA and old.get("profile_fingerprint") == fp:
                for key in ("methods", "analysis", "ceilings", "speed", "configs"):
                    results[key] = old.get(key, {})
                results["teachers"] = old.get("teachers", [])
        return results

    def save(self) -> None:
        r = self.results
        r["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        r["wall_s"] = round(time.perf_counter() - self.rec.started, 1)
        r["steps"] = self.rec.steps
        r["stage_totals_s"] = self._stage_totals()
        r["missing"] = [f"ipc{i}/{m}" for i in self.p.ipcs for m in METHODS if f"ipc{i}/{m}" not in r["methods"]]
        r["complete"] = not r["missing"]
        _atomic_write(self.results_path, json.dumps(r, indent=1) + "\n")

    def _stage_totals(self) -> dict:
        totals: dict[str, dict] = {}
        for s in self.rec.steps:
            t = totals.setdefault(s["stage"], {"seconds": 0.0, "peak_rss_mb": 0.0, "runs": 0, "reused": 0})
            t["seconds"] = round(t["seconds"] + s["seconds"], 3)
            t["runs" if not s["reused"] else "reused"] += 1
            t["peak_rss_mb"] = max(t["peak_rss_mb"], s.get("peak_rss_mb", 0.0))
            if "peak_cuda_mb" in s:
                t["peak_cuda_mb"] = max(t.get("peak_cuda_mb", 0.0), s["peak_cuda_mb"])
        return totals

    def _fits(self, method: str, ipc: int) -> bool:
        if self.deadline is None:
            return True
        need = self.estimate(method, ipc) if self.estimate else 0.0
        left = self.deadline - time.perf_counter()
        if need > left:
            self.results["skipped"].append({"method": method, "ipc": ipc, "reason": f"time: needs ~{need:.0f}s, {left:.0f}s left"})
            log(f"skipping {method} at ipc {ipc}: needs ~{need:.0f}s, {left:.0f}s left before the deadline")
            return False
        return True

    def _command(self, method: str, ipc: int) -> str:
        return self.p.row_command.format(method=method, ipc=ipc)

    # ---- shared stages --------------------------------------------------------------------

    def prepare(self) -> None:
        cfg = self.p.config(self.p.ipcs[0])
        stages.preflight(cfg, [str(self.root)])
        self.results["machine"] = machine_info(self.device)
        self.results["versions"] = versions()
        stage_step(self.rec, "prepare-data", "", self.data_uri, cfg, lambda: stages.prepare_data(cfg, self.data_uri))
        art, self.dm = stages.load_input(self.data_uri, cfg, "prepare-data")
        t = art.read_tensors("train.safetensors")
        self.train_x, self.train_y = t["x"], t["y"]
        t = art.read_tensors("test.safetensors")
        self.test = (t["x"], t["y"])
        self.C = self.dm["metrics"]["num_classes"]

    def teacher_uri(self, arch: str) -> str:
        return str(self.root / "teachers" / arch)

    def train_teachers(self, archs: list[str]) -> None:
        for arch in archs:
            cfg = self.p.config(self.p.ipcs[0], [arch])  # a teacher's settings do not depend on the others
            uri = self.teacher_uri(arch)
            stage_step(self.rec, "train-teacher", arch, uri, cfg,
                       lambda a=arch, u=uri, c=cfg: stages.train_teacher(c, a, self.data_uri, u, self.progress), arch=arch)
            self.save()

    def infer_distill(self, ipc: int, archs: list[str]) -> dict:
        """INFER's distilled set with these teachers, through the stages: subsets, UFCs, static labels."""
        cfg = self.p.config(ipc, archs)
        key = f"ipc{ipc}/m{len(archs)}"
        self.results["configs"][key] = cfg.model_dump(mode="json")
        lay = Layout(str(self.root / f"ipc{ipc}" / f"m{len(archs)}"))
        teachers = [self.teacher_uri(a) for a in archs]
        stage_step(self.rec, "select-subsets", key, lay.subsets, cfg, lambda: stages.select_subsets(cfg, self.data_uri, lay.subsets))
        ufc = []
        for ids in cfg.shard_plan(self.C):
            uri = lay.ufc(ids)
            stage_step(self.rec, "synthesize-ufc", f"{key} subsets {ids[0]}..{ids[-1]}", uri, cfg,
                       lambda i=ids, u=uri: stages.synthesize_ufc(cfg, i, self.data_uri, lay.subsets, teachers, u, self.progress),
                       subset_ids=ids)
            ufc.append(uri)
        dist = stage_step(self.rec, "soft-label", key, lay.distilled, cfg,
                          lambda: stages.soft_label(cfg, self.data_uri, lay.subsets, teachers, ufc, lay.distilled))
        shards = [open_artifact(u).read_manifest()["metrics"] for u in ufc]
        seconds = sum(m["synthesis_s"] for m in shards)
        ufc_iterations = sum(m["ufc_iterations_per_s"] * m["synthesis_s"] for m in shards)
        synthesis = {"seconds": round(seconds, 3), "iterations": cfg.synthesis.iterations,
                     "ufc_iterations_per_s": ufc_iterations / max(seconds, 1e-9),
                     "images_per_s": sum(m["images_per_s"] * m["synthesis_s"] for m in shards) / max(seconds, 1e-9)}
        return {"key": key, "cfg": cfg, "layout": lay, "teachers": teachers, "ufc": ufc, "distilled": dist,
                "synthesis": synthesis, "student_uris": []}

    def infer_students(self, run: dict, mode: str) -> list[dict]:
        cfg, lay, rows = run["cfg"], run["layout"], []
        for seed in self.p.seeds:
            uri = lay.student(self.p.student, seed, mode)
            m = stage_step(self.rec, "evaluate-student", f"{run['key']} {mode} seed {seed}", uri, cfg,
                           lambda s=seed, u=uri: stages.evaluate_student(
                               cfg, self.p.student, s, mode, self.data_uri, lay.distilled, run["teachers"], u, self.progress),
                           arch=self.p.student, seed=seed, label_mode=mode)
            rows.append(_student_row(m))
            run["student_uris"].append(uri)
        return rows

    def infer_report(self, run: dict) -> None:
        """The library's own report of this run (report.md, plots) beside its artifacts."""
        if run["student_uris"]:
            with self.rec.measure("report", run["key"]):
                stages.report(run["cfg"], self.data_uri, run["teachers"], run["ufc"], run["layout"].distilled,
                              run["student_uris"], run["layout"].report)

    # ---- methods ------------------------------------------------------------------------

    def _storage_infer(self, dist_manifest: dict) -> dict:
        b = dist_manifest["metrics"]["budget"]
        return {"images_per_class": b["images_per_class_equivalent"], "stored_bytes": b["stored_bytes"],
                "compression_ratio": b["compression_ratio"], "num_instances": b["num_instances"],
                "natural_per_class": b["num_subsets"], "num_ufcs": b["num_ufcs"], "teachers": b["num_teachers"]}

    def _storage_real(self, per_class: int, soft: bool) -> dict:
        m = self.dm["metrics"]
        n = per_class * self.C
        image_bytes = n * m["in_chans"] * m["image_size"] ** 2
        label_bytes = n * self.C * 4 if soft else n * 8   # float32 logits, or int64 class indices
        train_bytes = m["num_train"] * m["in_chans"] * m["image_size"] ** 2
        return {"images_per_class": per_class, "stored_bytes": image_bytes + label_bytes,
                "compression_ratio": (image_bytes + label_bytes) / train_bytes, "num_instances": n,
                "natural_per_class": per_class, "num_ufcs": 0}

    def _method(self, ipc: int, method: str, runs: list[dict], storage: dict, **extra) -> None:
        self.results["methods"][f"ipc{ipc}/{method}"] = {
            "method": method, "label": METHODS[method], "ipc": ipc, "storage": storage, "runs": runs,
            "summary": _summary(runs), "command": self._command(method, ipc), **extra}
        self.save()

    def _infer_training(self, mode: str, storage: dict, labels: str) -> dict:
        epochs = self.p.student_epochs_dynamic if mode == "dynamic" else self.p.student_epochs
        return {"epochs": epochs, "steps": epochs * -(-storage["num_instances"] // self.p.student_batch_size),
                "labels": labels, "loss": "MixUp + KL, T=30"}

    def run_ipc(self, ipc: int, first: bool) -> None:
        want = set(self.p.methods)
        archs = list(self.p.teachers)
        cfg = self.p.config(ipc, archs)
        K = cfg.num_subsets(self.C)
        main = None
        if want & {"infer", "infer_dyn", "no_ufc"} and self._fits("synthesis", ipc):
            main = self.infer_distill(ipc, archs)
            storage = self._storage_infer(main["distilled"])
            for mode, name in (("static", "infer"), ("dynamic", "infer_dyn")):
                if name in want and self._fits(name, ipc):
                    rows = self.infer_students(main, mode)
                    self._method(ipc, name, rows, storage, synthesis=main["synthesis"],
                                 training=self._infer_training(mode, storage, f"{mode} ensemble logits of {len(archs)} teachers"))
            self.infer_report(main)

        real = random_real_indices(self.train_y, ipc, self.C, cfg.seed)   # [ipc, C]; its first K rows = INFER's subsets
        if main is not None:
            subsets = open_artifact(main["layout"].subsets).read_tensors("subsets.safetensors")["indices"]
            if not torch.equal(real[:K], subsets):
                raise RuntimeError("random-real draw does not start with INFER's natural subsets: select-subsets changed its draw")
        base = self.root / f"ipc{ipc}" / "baselines"
        ensemble = None
        for method, rows, soft in (("random_soft", ipc, True), ("random_hard", ipc, False), ("no_ufc", K, True)):
            if method not in want or (method == "no_ufc" and main is None) or not self._fits(method, ipc):
                continue
            if soft and ensemble is None:
                ensemble = Ensemble(stages.load_teachers(cfg, [self.teacher_uri(a) for a in archs], self.dm, self.device))
            idx = real[:rows].flatten()                                      # subset-major, class-minor, as INFER's order
            images = self.train_x[idx].float() / 255.0
            if soft:
                labels = stages.ensemble_logits(ensemble, images, self.device)
            else:
                labels = self.train_y[idx]
            runs = [baseline_student(self.rec, cfg, method, str(base / f"{method}-{self.p.student}-seed{seed}"), seed, images,
                                     labels, soft, idx, self.test, self.dm, self.device, self.progress)
                    for seed in self.p.seeds]
            storage = self._storage_real(rows, soft)
            if method == "no_ufc":
                storage["note"] = f"below budget: {K} of {ipc} images per class (INFER's natural images, no compensators)"
            training = {"epochs": self.p.student_epochs, "steps": self.p.student_epochs * -(-len(idx) // self.p.student_batch_size),
                        "labels": f"static ensemble logits of {len(archs)} teachers" if soft else "hard (class index)",
                        "loss": "MixUp + KL, T=30" if soft else "cross-entropy, no MixUp"}
            self._method(ipc, method, runs, storage, training=training)

        if "infer_m1" in want and self._fits("infer_m1", ipc):
            m1 = self.infer_distill(ipc, [self.p.m1])
            rows = self.infer_students(m1, "static")
            self.infer_report(m1)
            storage = self._storage_infer(m1["distilled"])
            self._method(ipc, "infer_m1", rows, storage, synthesis=m1["synthesis"], teacher=self.p.m1,
                         training=self._infer_training("static", storage, f"static logits of {self.p.m1}"))
        if main is not None:
            self.analyse(ipc, main, K)
            if first and self.speed and self._fits("speed", ipc):
                self.speed_check(main, K)

    def analyse(self, ipc: int, main: dict, K: int) -> None:
        from infer_distill import report as rep

        cfg, lay = main["cfg"], main["layout"]
        with self.rec.measure("analysis", f"ipc{ipc}"):
            t = open_artifact(lay.distilled).read_tensors("distilled.safetensors")
            infer_x = stages.distilled_instances(t["natural"], t["ufc"], cfg.synthesis.classes_per_ufc)
            infer_y = torch.arange(self.C).repeat(len(infer_x) // self.C)
            nat_x = t["natural"].flatten(0, 1).float() / 255.0
            nat_y = torch.arange(self.C).repeat(K)
            teachers = stages.load_teachers(cfg, main["teachers"], self.dm, self.device)
            sims = similarity_analysis({"infer": (infer_x, infer_y), "no_ufc": (nat_x, nat_y)}, teachers, list(cfg.teachers.archs),
                                       self.dm["metrics"]["mean"], self.device)
            png = f"{self.p.name}-ufc-ipc{ipc}.png"
            self.results_dir.mkdir(parents=True, exist_ok=True)
            (self.results_dir / png).write_bytes(rep.ufc_examples_png(t["natural"], t["ufc"], self.dm["metrics"]["classes"],
                                                                      list(cfg.teachers.archs), cfg.synthesis.classes_per_ufc))
        self.results["analysis"][f"ipc{ipc}"] = {"cosine_similarity": sims, "ufc_examples_png": png}
        self.save()

    def speed_check(self, main: dict, K: int) -> None:
        cfg = main["cfg"]
        subsets = open_artifact(main["layout"].subsets).read_tensors("subsets.safetensors")["indices"]
        S = min(K, self.p.speed_subsets or K)
        natural = self.train_x[subsets[:S]]
        teachers = stages.load_teachers(cfg, main["teachers"], self.dm, self.device)
        with self.rec.measure("speed-check", f"{S} subsets x {len(teachers)} teachers x {self.p.speed_iterations} it"):
            result = synthesis_speed(cfg, teachers, natural, self.p.speed_iterations, self.device)
        self.results["speed"]["synthesis"] = result
        log(f"synthesis: grouped {result['grouped']['ufc_iterations_per_s']:.2f} UFC-it/s vs one at a time "
            f"{result['one_at_a_time']['ufc_iterations_per_s']:.2f} UFC-it/s (x{result['speedup']:.2f})")
        self.save()

    def ceilings(self) -> None:
        teachers = []
        for arch in self.p.teachers:
            m = open_artifact(self.teacher_uri(arch)).read_manifest()
            teachers.append({"arch": arch, "test_acc": m["metrics"]["test_acc"], "num_params": m["metrics"]["num_params"],
                             "epochs": self.p.teacher_epochs, "train_images": self.dm["metrics"]["num_train"],
                             "seconds": m["elapsed_s"]})
        self.results["teachers"] = teachers
        student = self.p.student
        if student not in self.p.teachers:  # the student architecture on the full training set, teacher recipe
            cfg = self.p.config(self.p.ipcs[0], [student])
            stage_step(self.rec, "train-teacher", f"{student} (full-train ceiling)", self.teacher_uri(student), cfg,
                       lambda: stages.train_teacher(cfg, student, self.data_uri, self.teacher_uri(student), self.progress), arch=student)
        m = open_artifact(self.teacher_uri(student)).read_manifest()
        self.results["ceilings"]["full_train"] = {
            "arch": student, "test_acc": m["metrics"]["test_acc"], "train_images": self.dm["metrics"]["num_train"],
            "epochs": self.p.teacher_epochs, "seed": self.p.seed,
            "recipe": "the train-teacher stage (SGD + Nesterov, one-cycle, label smoothing, crop/flip) on the whole training set"
                      + ("; the same artifact as the teacher of this architecture" if student in self.p.teachers else ""),
        }
        self.save()

    def run(self) -> dict:
        self.prepare()
        return self.run_after_data()

    def run_after_data(self) -> dict:
        self.train_teachers(list(self.p.teachers))
        self.ceilings()
        for i, ipc in enumerate(self.p.ipcs):
            self.run_ipc(ipc, first=i == 0)
        self.save()
        log(f"results: {self.results_path} ({self.results['wall_s']:.0f}s)")
        return self.results


def run_benchmark(profile: Profile, root: str | Path | None = None, results_dir: str | Path | None = None, **kw) -> dict:
    root = Path(root) if root else RUNS_DIR / profile.name
    return Benchmark(profile, root, Path(results_dir) if results_dir else RESULTS_DIR, **kw).run()


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--quick", action="store_true", help="the quick profile (same as --profile quick)")
    p.add_argument("--datasets", help="CIFAR-10 folder (zips or <split>/<class>/ folders); default $INFER_DATASETS/cifar10 or ../shared/datasets/cifar10")
    p.add_argument("--out", help="run folder (default benchmarks/runs/<profile name>)")
    p.add_argument("--results", help="results folder (default benchmarks/results)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), help="run only these methods (rows merge into the results file)")
    p.add_argument("--seeds", nargs="+", type=int)
    p.add_argument("--ipc", nargs="+", type=int, help="budgets to run (default: the profile's)")
    p.add_argument("--name", help="results name (default: the profile's)")
    fresh = p.add_mutually_exclusive_group()
    fresh.add_argument("--fresh", action="store_true", help="delete the run folder first: measure the run from nothing")
    fresh.add_argument("--reuse-teachers", action="store_true",
                       help="keep only data/ and teachers/ of the run folder: measure the run with teachers reused")
    p.add_argument("--no-speed", action="store_true", help="skip the grouped vs one-at-a-time synthesis timing")
    p.add_argument("--report", help="BENCHMARKS.md to regenerate from every results file (default: the repository's)")
    p.add_argument("--no-report", action="store_true", help="do not regenerate BENCHMARKS.md")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    profile = PROFILES["quick" if args.quick else args.profile]
    changes: dict[str, Any] = {}
    if args.datasets:
        changes["dataset"] = {**profile.dataset, "root": args.datasets}
    if args.methods:
        changes["methods"] = tuple(m for m in METHODS if m in args.methods)
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    if args.ipc:
        changes["ipcs"] = tuple(args.ipc)
    if args.name:
        changes["name"] = args.name
    profile = profile.replace(**changes)
    root = Path(args.out) if args.out else RUNS_DIR / profile.name
    if args.fresh and root.exists():
        shutil.rmtree(root)
    if args.reuse_teachers and root.exists():
        for child in root.iterdir():
            if child.name not in ("data", "teachers"):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    results_dir = Path(args.results) if args.results else RESULTS_DIR
    started = time.perf_counter()
    run_benchmark(profile, root, results_dir, progress=not args.no_progress, speed=not args.no_speed)
    log(f"benchmark {profile.name}: {time.perf_counter() - started:.0f}s wall")
    if not args.no_report:
        from . import report

        report.main(["--results", str(results_dir), "--out", args.report or str(REPO / "BENCHMARKS.md")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
