"""The benchmark: several runs of the pipeline side by side, each with its fair baselines.

    python -m benchmarks.run                                   # = make bench: profile cifar10-cpu
    python -m benchmarks.run --profile cifar10-ablations --variants m1,m1-f32 --jobs 4 --device cuda

A profile (benchmarks/profiles/<name>.yaml) is one library config plus named variants, each a
few `--set`-style overrides of it (M = 1, 2, 3; a teacher recipe; an ablation). Every variant is
an ordinary run of the pipeline (infer_distill.plan) under its own root, so it trains INFER's
students and, beside them, the baselines the config names (random real images with the same
ensemble soft labels, for the same epochs and for the same optimiser steps), and its report holds
the accuracies, curves, stored bytes and the lift over each baseline, paired by seed. Nothing
here re-implements a stage.

What the benchmark adds:
- one data and teacher pool (benchmarks/common.py): variants with the same teacher recipe share
  their teachers, and `--reuse-teachers` keeps them between invocations;
- `--jobs N`: the steps of all variants run in N worker processes as soon as their inputs are
  there (one thread each on a CPU of N cores), the walk of the plan spread over processes;
- benchmarks/results/<profile>.json: every report, the machine, the wall time of each step and of
  the whole invocation; `python -m benchmarks.report` turns it into BENCHMARKS.md's tables.

Resuming: a step whose artifact is current is skipped (the library's rule), so a killed benchmark
picks up where it stopped; `--fresh` starts from nothing.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import json
import multiprocessing
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.common import machine_info, pooled_inputs
from infer_distill import plan, stages
from infer_distill.config import Config, ConfigError, apply_overrides, fingerprint, stage_config, validate_config
from infer_distill.stages import Layout
from infer_distill.store import open_artifact

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "benchmarks" / "profiles"
RESULTS = REPO / "benchmarks" / "results"
RUNS = REPO / "benchmarks" / "runs"
SCHEMA = "infer-distill-benchmark/2"


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


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def load_profile(name: str) -> Profile:
    """A profile by name (benchmarks/profiles/<name>.yaml) or by the path of its YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILES / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no benchmark profile {name!r}; profiles: {', '.join(profile_names())}")
    raw = yaml.safe_load(path.read_text())
    variants = {v: Variant(v, spec["title"], tuple(spec.get("set", [])), spec.get("question", ""), spec.get("baselines_from", ""))
                for v, spec in raw["variants"].items()}
    profile = Profile(path.stem, raw["title"], tuple(raw.get("notes", [])), raw["config"], variants)
    for v in variants:  # every variant must be a valid config before anything runs
        profile.variant_config(v)
    return profile


def default_datasets() -> str:
    """The folder holding cifar10/ (ImageFolder zips or directories): $INFER_DATASETS, else ../shared/datasets."""
    return os.environ.get("INFER_DATASETS") or str(REPO.parent / "shared" / "datasets")


# ----------------------------------------------------------------------------------------
# The walk of every variant's plan, spread over worker processes
# ----------------------------------------------------------------------------------------


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_item(cfg: Config, step_name: str, item: dict, inputs: dict, uri: str) -> plan.StepResult:
    return plan.run_item(cfg, plan.STEPS[step_name], item, inputs, uri)


@dataclass
class Run:
    """One variant's walk of the plan: which step is next, what its finished steps produced."""

    variant: str
    cfg: Config
    root: str
    pool: str
    produced: dict
    next_step: int = 0        # index into plan.PLAN
    pending: int = 0          # items of the current step not finished yet
    report: dict | None = None


def pool_dir(pools: Path, cfg: Config) -> Path:
    """Variants whose data and teacher recipe agree share one pool, whatever their teacher lists."""
    settings = stage_config(cfg, "train-teacher", arch=cfg.teachers.archs[0])  # data, teacher recipe, seed
    recipe = {**settings, "teacher": {k: v for k, v in settings["teacher"].items() if k not in ("arch", "pretrained")},
              "pretrained": cfg.teachers.pretrained}
    return pools / f"pool-{fingerprint(recipe)[:12]}"


def walk(runs: list[Run], jobs: int, threads: int, deadline: float | None, on_step, on_report) -> list[str]:
    """Run every variant's steps in `jobs` processes (here for jobs = 1) as soon as their inputs are there.

    First the pools: every pool's data, then every teacher of every pool (each once, however many
    variants use it). Then each variant walks PLAN; a step starts when the steps before it are
    done (PLAN's order respects every edge) and its items run side by side, beside the steps of
    the other variants. `on_report(run)` is called as each variant finishes. At `deadline` no
    step starts any more (those queued are cancelled, those running finish). Returns the variants
    that did not finish.
    """
    ctx = multiprocessing.get_context("spawn")
    executor = cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) if jobs > 1 else None
    futures: dict[cf.Future, tuple] = {}

    inline: list[tuple] = []  # jobs = 1: steps run here, in submission order, by drain()

    def submit(owner: Run | None, cfg: Config, step: plan.Step, item: dict, inputs: dict, uri: str) -> None:
        if owner is not None:
            owner.pending += 1
        if executor is None:
            inline.append((owner, cfg, step, item, inputs, uri))
        else:
            futures[executor.submit(_run_item, cfg, step.name, item, inputs, uri)] = (owner, step, item)

    def finish(owner: Run | None, result: plan.StepResult) -> None:
        on_step(owner.variant if owner else "pool", result)
        if owner is not None:
            owner.pending -= 1
            if owner.pending == 0:
                advance(owner)

    def stopped(owner: Run | None, step: plan.Step, item: dict) -> None:
        label = step.over.label(item) if step.over else ""
        log(f"{owner.variant if owner else 'pool'}: the deadline passed; {step.name} {label} not started")
        if owner is not None:
            owner.next_step = len(plan.PLAN) + 1  # never finishes

    def drain() -> None:
        while inline:
            owner, cfg, step, item, inputs, uri = inline.pop(0)
            if deadline is not None and time.time() > deadline:
                stopped(owner, step, item)
                continue
            finish(owner, _run_item(cfg, step.name, item, inputs, uri))
        while futures:
            done, _ = cf.wait(list(futures), timeout=10, return_when=cf.FIRST_COMPLETED)
            if deadline is not None and time.time() > deadline:
                for future in [f for f in futures if f.cancel()]:
                    stopped(*futures.pop(future))
            for future in done:
                if future in futures:
                    owner, _, _ = futures.pop(future)
                    finish(owner, future.result())  # a failed step ends the benchmark with its error

    def advance(run: Run) -> None:
        """Start the next step of `run` that has items; at the end, keep its report."""
        if run.next_step > len(plan.PLAN):  # stopped at the deadline
            return
        layout = Layout(run.root)

        def num_classes() -> int:
            return open_artifact(layout.data).read_manifest()["metrics"]["num_classes"]

        while run.next_step < len(plan.PLAN):
            step = plan.PLAN[run.next_step]
            run.next_step += 1
            items = plan.step_items(step, run.cfg, layout, num_classes)
            uris = [plan.location(layout, step, item) for item in items]
            inputs = {name: run.produced[name] for name in step.inputs}
            run.produced[step.output] = uris if step.over else uris[0]
            if deadline is not None and time.time() > deadline:
                log(f"{run.variant}: the deadline passed before {step.name}; it and later steps not started")
                run.next_step = len(plan.PLAN) + 1
                return
            for item, uri in zip(items, uris):  # each is skipped where it runs if its artifact is current
                submit(run, run.cfg, step, item, inputs, uri)
            if items:
                return
        run.report = open_artifact(layout.report).read_manifest()["metrics"]["report"]
        on_report(run)

    try:
        # the pools: data, then teachers (each pooled artifact once)
        pools = {run.pool: run.cfg for run in runs}
        for pool, cfg in pools.items():
            submit(None, cfg, plan.STEPS["prepare-data"], {}, {}, Layout(pool).data)
        drain()
        seen: set[str] = set()
        for run in runs:
            layout = Layout(run.pool)
            for arch in run.cfg.teachers.archs:
                if layout.teacher(arch) not in seen:
                    seen.add(layout.teacher(arch))
                    submit(None, run.cfg, plan.STEPS["train-teacher"], {"arch": arch}, {"data": layout.data}, layout.teacher(arch))
        drain()
        # every variant's walk, its data and teachers linked from its pool (current there: skipped)
        for run in runs:
            if all(Path(u).is_dir() for u in [Layout(run.pool).data, *Layout(run.pool).teachers(run.cfg)]):
                pooled_inputs(run.cfg, run.pool, run.root)
                advance(run)
        drain()
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return [r.variant for r in runs if r.report is None]


# ----------------------------------------------------------------------------------------
# One invocation: profile -> runs -> results JSON
# ----------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_benchmark(profile: Profile, variants: list[str], root: Path, results: Path, jobs: int = 1,
                  datasets: str | None = None, extra: list[str] | None = None, deadline_s: float | None = None,
                  command: str = "") -> dict:
    started, wall0 = time.time(), time.perf_counter()
    cfgs = {v: profile.variant_config(v, datasets, extra) for v in variants}
    for v, cfg in cfgs.items():
        stages.preflight(cfg, [str(root / v)])
    runs = [Run(v, cfg, str(root / v), str(pool_dir(root, cfg)), {}) for v, cfg in cfgs.items()]
    device = runs[0].cfg.resolve_device()
    threads = max(1, (os.cpu_count() or 1) // jobs) if device == "cpu" else 2
    steps: list[dict] = []

    def on_step(variant: str, r: plan.StepResult) -> None:
        steps.append({"variant": variant, "stage": r.stage, "label": r.label, "seconds": round(r.seconds, 2), "skipped": r.skipped,
                      **({"elapsed_s": r.manifest.get("elapsed_s")} if r.manifest else {})})
        if not r.skipped:
            log(f"{variant}: {r.stage} {r.label} {r.seconds:.0f} s".replace("  ", " "))

    path = results / f"{profile.name}.json"
    kept = {}  # variants of an earlier invocation that this one does not run (or does not finish)
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("schema") == SCHEMA:
            kept = {v: e for v, e in old.get("variants", {}).items() if v in profile.variants and e.get("report")}
    result = {
        "schema": SCHEMA, "profile": profile.name, "title": profile.title, "notes": list(profile.notes),
        "command": command, "jobs": jobs, "threads_per_job": threads, "machine": machine_info(device), "config": profile.config,
    }

    def save(unfinished: list[str] | None = None) -> None:
        entries = dict(kept)
        for r in runs:
            if r.report is not None or r.variant not in entries:
                entries[r.variant] = {"title": profile.variants[r.variant].title, "question": profile.variants[r.variant].question,
                                      "baselines_from": profile.variants[r.variant].baselines_from,
                                      "overrides": list(profile.variants[r.variant].overrides), "report": r.report,
                                      "config": json.loads(r.cfg.model_dump_json())}
        result.update({
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": round(time.perf_counter() - wall0, 1),
            "variants": {v: entries[v] for v in profile.variants if v in entries},
            "unfinished": unfinished if unfinished is not None else [r.variant for r in runs if r.report is None],
            "steps": steps,
        })
        _atomic_write(path, json.dumps(result, indent=1))

    if jobs == 1:
        _worker_init(threads)
    unfinished = walk(runs, jobs, threads, started + deadline_s if deadline_s is not None else None, on_step, lambda run: save())
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
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for every variant")
    p.add_argument("--root", type=Path, default=None, help="where the runs live (default: benchmarks/runs/<profile>)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where <profile>.json is written")
    p.add_argument("--deadline-s", type=float, default=None, help="start no step after this many seconds; unfinished variants are listed")
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
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = args.root or RUNS / profile.name
    if args.fresh and root.exists():
        shutil.rmtree(root)
    if args.reuse_teachers and root.exists():
        for child in root.iterdir():
            if not child.name.startswith("pool-"):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    device = cfg0.resolve_device()
    jobs = args.jobs or (min(2, os.cpu_count() or 1) if device == "cpu" else 4)
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    log(f"profile {profile.name}: {len(variants)} variants, {jobs} jobs on {device}, runs under {root}")
    result = run_benchmark(profile, variants, root, args.results, jobs, args.datasets or default_datasets(), extra,
                           args.deadline_s, command.strip())
    return 0 if not result["unfinished"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
