"""The benchmark: several runs of the pipeline side by side, each with its fair baselines.

    python -m benchmarks.run                                   # = make bench: profile cifar10-cpu
    python -m benchmarks.run --profile cifar10-ablations --variants m1,m1-f32 --jobs 4 --device cuda

A profile (benchmarks/profiles/<name>.yaml) is one library config plus named variants, each a
few `--set`-style overrides of it (M = 1, 2, 3; a teacher recipe; an ablation). Every variant is
an ordinary run of the pipeline (infer_distill.dag) under its own root, so it trains INFER's
students and, beside them, the baselines the config names (random real images with the same
ensemble soft labels, for the same epochs and for the same optimiser steps), and its report holds
the accuracies, curves, stored bytes and the lift over each baseline, paired by seed. Nothing
here re-implements a stage.

What the benchmark adds:
- one data and teacher pool (benchmarks/common.py): variants with the same teacher recipe share
  their teachers, and `--reuse-teachers` keeps them between invocations;
- `--jobs N` (`--devices cuda:0,...`): the steps of all variants run in N worker processes as soon
  as their inputs are there, by the library's executor (`infer-distill run --jobs N`);
- benchmarks/results/<profile>.json: every report, the machine (GPU, driver, CUDA and torch; null
  where no GPU ran it), the commit, the wall time of each step and of the whole invocation, per
  stage its work, wall span and mean GPU utilisation (`stages`; null without nvidia-smi), per
  variant the final- and best-epoch top-1 over seeds of INFER, INFER+Dyn and each baseline beside
  the paper's figure (`accuracy`), and, for variants sized for a GPU time (`target_s`), the
  estimate made before the run (`estimate`, benchmarks/estimate.py); `python -m benchmarks.report`
  turns it into BENCHMARKS.md's tables. `--estimate` runs nothing: it prints the command's GPU
  time from measured per-step costs and writes <profile>-estimate.json.

Resuming: a step whose artifact is current is skipped (the library's rule), so a killed benchmark
picks up where it stopped; `--fresh` starts from nothing.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmarks import estimate as gpu_estimate
from benchmarks.common import GpuSampler, invocation, link_pool, machine_info, source_info, torch_threads
from infer_distill import dag
from infer_distill.config.loading import apply_overrides, validate_config
from infer_distill.config.schema import Config
from infer_distill.dag.artifact_settings import fingerprint
from infer_distill.engines import runner
from infer_distill.engines.executor import Walk, parse_devices, run_walks, worker_threads
from infer_distill.errors import ConfigError
from infer_distill.stages import preflight

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "benchmarks" / "profiles"
CONFIGS = REPO / "configs"
RESULTS = REPO / "benchmarks" / "results"
RUNS = REPO / "benchmarks" / "runs"
SCHEMA = "infer-distill-benchmark/2"
ESTIMATE_SCHEMA = "infer-distill-estimate/1"


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ----------------------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    overrides: tuple[str, ...]
    question: str = ""          # what this row answers, printed beside it
    baselines_from: str = ""    # a variant with the same teachers, subsets and labels whose baselines this one is compared with
    paper: dict = field(default_factory=dict)  # the paper's best-over-epochs top-1 (%) by label mode, where it reports this setting
    target_s: float | None = None  # the GPU wall time the variant's command is sized for (benchmarks.estimate)


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    notes: tuple[str, ...]
    config: dict                # the library config every variant starts from
    variants: dict[str, Variant]

    def variant_config(self, variant: str, datasets: str | None = None, extra: list[str] | None = None) -> Config:
        raw = copy.deepcopy(self.config)
        if datasets is not None and raw.get("dataset", {}).get("name") == "imagefolder":
            raw["dataset"]["root"] = str(Path(datasets) / "cifar10")
        raw = apply_overrides(raw, [*self.variants[variant].overrides, *(extra or [])])
        return validate_config(raw, source=f"benchmark profile {self.name!r}, variant {variant!r}")


def _merged(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def load_profile(name: str) -> Profile:
    """A profile by name (benchmarks/profiles/<name>.yaml) or by the path of its YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILES / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no benchmark profile {name!r}; profiles: {', '.join(profile_names())}")
    raw = yaml.safe_load(path.read_text())
    variants = {v: Variant(v, spec["title"], tuple(spec.get("set", [])), spec.get("question", ""), spec.get("baselines_from", ""),
                           spec.get("paper", {}), spec.get("target_s"))
                for v, spec in raw["variants"].items()}
    config = raw.get("config", {})
    if "base" in raw:  # a repository config (configs/<base>.yaml) with the profile's keys on top: one definition of the protocol
        config = _merged(yaml.safe_load((CONFIGS / f"{raw['base']}.yaml").read_text()), config)
    profile = Profile(path.stem, raw["title"], tuple(raw.get("notes", [])), config, variants)
    for v in variants:  # every variant must be a valid config before anything runs
        profile.variant_config(v)
    return profile


def default_datasets() -> str:
    """The folder holding cifar10/ (ImageFolder zips or directories): $INFER_DATASETS, else ../shared/datasets."""
    return os.environ.get("INFER_DATASETS") or str(REPO.parent / "shared" / "datasets")


# ----------------------------------------------------------------------------------------
# The walk of every variant's plan, spread over worker processes
# ----------------------------------------------------------------------------------------


def pool_dir(pools: Path, cfg: Config) -> Path:
    """Variants whose data and teacher recipe agree share one pool, whatever their teacher lists."""
    settings = dag.settings(cfg, "train-teacher", arch=cfg.teachers.archs[0])  # data, teacher recipe, seed
    recipe = {**settings, "teacher": {k: v for k, v in settings["teacher"].items() if k not in ("arch", "pretrained")},
              "pretrained": cfg.teachers.pretrained}
    return pools / f"pool-{fingerprint(recipe)[:12]}"


# ----------------------------------------------------------------------------------------
# One invocation: profile -> runs -> results JSON
# ----------------------------------------------------------------------------------------


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def accuracy_summary(report: dict, paper: dict) -> dict:
    """Final- and best-epoch top-1 (fractions), mean and std over seeds, of INFER (static labels), INFER+Dyn and each
    baseline, with the paper's best-epoch figure (percent, as the profile quotes it) beside INFER's; one entry per
    student architecture."""
    from infer_distill.outputs.report import mean_std

    groups: dict[str, list[dict]] = {}
    for s in report.get("students", []):
        groups.setdefault(f"{'infer' if s['label_mode'] == 'static' else 'infer_' + s['label_mode']} {s['arch']}", []).append(s)
    for b in report.get("baselines", []):
        groups.setdefault(f"{b['baseline']} {b['arch']}", []).append(b)
    out = {}
    for key, runs in groups.items():
        name, arch = key.split(" ")
        mode = "static" if name == "infer" else name.removeprefix("infer_") if name.startswith("infer_") else None
        final, best = mean_std([r["final_acc"] for r in runs]), mean_std([r["best_acc"] for r in runs])
        out[key] = {"run": name, "arch": arch, "seeds": sorted(r["seed"] for r in runs),
                    "final_mean": final[0], "final_std": final[1], "best_mean": best[0], "best_std": best[1],
                    "paper_best_percent": paper.get(mode) if mode else None}
    return out


def stage_summary(steps: list[dict], busy: dict[str, float] | None) -> dict:
    """Per stage: items run, seconds of work summed over workers, the wall span from its first start to its last
    end, and the mean GPU utilisation (%) sampled while it ran (None where nothing was sampled: no GPU)."""
    out: dict[str, dict] = {}
    for s in steps:
        if s["skipped"]:
            continue
        e = out.setdefault(s["stage"], {"steps_run": 0, "work_s": 0.0, "start_s": s["finished_at"] - s["seconds"], "end_s": 0.0})
        e["steps_run"] += 1
        e["work_s"] += s["seconds"]
        e["start_s"] = min(e["start_s"], s["finished_at"] - s["seconds"])
        e["end_s"] = max(e["end_s"], s["finished_at"])
    return {stage: {"steps_run": e["steps_run"], "work_s": round(e["work_s"], 2), "span_s": round(e["end_s"] - e["start_s"], 2),
                    "gpu_busy_percent": (busy or {}).get(stage)} for stage, e in out.items()}


def target_s(profile: Profile, variants: list[str]) -> float | None:
    """The GPU wall time a command running `variants` is sized for: the tightest any of them names; None if none does."""
    return min((t for v in variants if (t := profile.variants[v].target_s)), default=None)


def command_estimate(profile: Profile, variants: list[str], jobs: int, extra: list[str] | None, command: str) -> dict | None:
    """The GPU time of this command from measured per-step costs (benchmarks.estimate), for a command whose variants
    name the time they are sized for; None for others. A config the measurements do not cover gives the reason."""
    target = target_s(profile, variants)
    if target is None:
        return None
    cfgs = [profile.variant_config(v, extra=extra) for v in variants]
    try:
        return gpu_estimate.estimate(cfgs, jobs, target, command)
    except ConfigError as e:
        return {"command": command, "error": str(e)}


def run_benchmark(profile: Profile, variants: list[str], root: Path, results: Path, jobs: int = 1,
                  datasets: str | None = None, extra: list[str] | None = None, deadline_s: float | None = None,
                  command: str = "", devices: tuple[str, ...] = ()) -> dict:
    started, wall0 = time.time(), time.perf_counter()
    cfgs = {v: profile.variant_config(v, datasets, extra) for v in variants}
    for v, cfg in cfgs.items():
        preflight.preflight(cfg, [str(root / v)])
    walks = [Walk(v, cfg, str(root / v), pool=str(pool_dir(root, cfg))) for v, cfg in cfgs.items()]
    for w in walks:
        link_pool(w.cfg, w.pool, w.root)
    device = walks[0].cfg.resolve_device()
    threads = worker_threads(jobs) if device == "cpu" else torch_threads()
    steps: list[dict] = []

    def on_step(walk: Walk, r: runner.StepResult) -> None:
        steps.append({"variant": walk.name, "stage": r.stage, "label": r.label, "uri": r.uri, "seconds": round(r.seconds, 2),
                      "skipped": r.skipped, "finished_at": round(time.time() - started, 2),
                      **({"elapsed_s": r.manifest.get("elapsed_s")} if r.manifest else {})})
        if not r.skipped:
            log(f"{walk.name}: {r.stage} {r.label} {r.seconds:.0f} s".replace("  ", " "))

    path = results / f"{profile.name}.json"
    kept = {}  # variants of an earlier invocation that this one does not run (or does not finish), with their steps
    kept_steps: list[dict] = []
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("schema") == SCHEMA:
            # (each keeps the code it came from: results written before variants recorded theirs came from the file's)
            kept = {v: {"source": old.get("source"), **e} for v, e in old.get("variants", {}).items()
                    if v in profile.variants and e.get("report")}
            kept_steps = [s for s in old.get("steps", []) if s.get("variant") not in cfgs]  # (and the pool's earlier steps)
    result = {
        "schema": SCHEMA, "profile": profile.name, "title": profile.title, "notes": list(profile.notes),
        "command": command, "variants_run": variants, "jobs": jobs, "devices": list(devices), "threads_per_job": threads, "machine": machine_info(device),
        "source": source_info(), "config": profile.config,
        "estimate": command_estimate(profile, variants, jobs, extra, command),
    }

    def save(unfinished: list[str] | None = None) -> None:
        entries = dict(kept)
        for w in walks:
            if w.report is not None or w.name not in entries:
                variant = profile.variants[w.name]
                entries[w.name] = {"title": variant.title, "question": variant.question, "baselines_from": variant.baselines_from,
                                   "paper": variant.paper,
                                   "accuracy": accuracy_summary(w.report, variant.paper) if w.report else None,
                                   "overrides": list(variant.overrides), "report": w.report, "source": result["source"],
                                   "config": json.loads(w.cfg.model_dump_json())}
        result.update({
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": round(time.perf_counter() - wall0, 1),
            "variants": {v: entries[v] for v in profile.variants if v in entries},
            "unfinished": unfinished if unfinished is not None else [w.name for w in walks if w.report is None],
            "steps": kept_steps + steps,
        })
        atomic_write(path, json.dumps(result, indent=1))

    if jobs == 1:
        torch_threads(threads)
    with GpuSampler() as gpu:
        unfinished = run_walks(walks, jobs, devices, progress=False, on_step=on_step, on_report=lambda walk: save(),
                               deadline=started + deadline_s if deadline_s is not None else None)
    result["gpu_utilisation_by_stage"] = gpu.busy_by_stage(steps) if gpu.samples else None
    result["stages"] = stage_summary(steps, result["gpu_utilisation_by_stage"])
    save(unfinished)
    log(f"wrote {path} ({result['wall_s']:.0f} s{', unfinished: ' + ', '.join(unfinished) if unfinished else ''})")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="cifar10-cpu", help=f"benchmarks/profiles/<name>.yaml; one of {', '.join(profile_names())}")
    p.add_argument("--variants", default="", help="comma-separated variants of the profile (default: all)")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: CPU cores on a CPU, up to 2; 4 on CUDA)")
    p.add_argument("--datasets", default=None, help="the folder holding cifar10/ (default: $INFER_DATASETS, else ../shared/datasets)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="override the profile's device")
    p.add_argument("--devices", default="", metavar="cuda:0,cuda:1", help="GPUs to spread the workers over (infer-distill run --devices)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for every variant")
    p.add_argument("--root", type=Path, default=None, help="where the runs live (default: benchmarks/runs/<profile>)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where <profile>.json is written")
    p.add_argument("--deadline-s", type=float, default=None, help="start no step after this many seconds; unfinished variants are listed")
    p.add_argument("--estimate", action="store_true",
                   help="run nothing: print the command's GPU time from measured per-step costs (benchmarks/estimate.py) "
                        "and write it to <results>/<profile>-estimate.json")
    fresh = p.add_mutually_exclusive_group()
    fresh.add_argument("--fresh", action="store_true", help="delete the profile's runs and pool first: a benchmark from nothing")
    fresh.add_argument("--reuse-teachers", action="store_true", help="delete everything but the data and teacher pool first")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        profile = load_profile(args.profile)
        variants = [v for v in args.variants.split(",") if v] or list(profile.variants)
        unknown = [v for v in variants if v not in profile.variants]
        if unknown:
            raise ConfigError(f"--variants: {unknown} not in profile {profile.name!r}: {', '.join(profile.variants)}")
        extra = list(args.set) + ([f"device={args.device}"] if args.device else [])
        cfg0 = profile.variant_config(variants[0], args.datasets or default_datasets(), extra)
        devices = tuple(parse_devices(args.devices))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = cfg0.resolve_device() if not args.estimate else "cuda"
    jobs = args.jobs or (min(2, os.cpu_count() or 1) if device == "cpu" else 4)
    command = invocation("benchmarks.run", argv)
    if args.estimate:
        command = re.sub(r"\s--estimate\b", "", command).strip()
        try:
            est = gpu_estimate.estimate([profile.variant_config(v, extra=extra) for v in variants], jobs,
                                        target_s(profile, variants), command)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(gpu_estimate.format_estimate(est))
        atomic_write(args.results / f"{profile.name}-estimate.json", json.dumps(
            {"schema": ESTIMATE_SCHEMA, "profile": profile.name, "title": profile.title, "variants": variants,
             "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source": source_info(), **est}, indent=1))
        return 0
    root = args.root or RUNS / profile.name
    if args.fresh and root.exists():
        shutil.rmtree(root)
    if args.reuse_teachers and root.exists():
        for child in root.iterdir():
            if not child.name.startswith("pool-"):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    log(f"profile {profile.name}: {len(variants)} variants, {jobs} jobs on {device}, runs under {root}")
    result = run_benchmark(profile, variants, root, args.results, jobs, args.datasets or default_datasets(), extra,
                           args.deadline_s, command.strip(), devices)
    return 0 if not result["unfinished"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
