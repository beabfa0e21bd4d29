"""Synthesis speed: the library's grouped synthesis against the official one-UFC-at-a-time loop.

    python -m benchmarks.speed --profile cifar10-paper --variant ipc50 --sample 80

After `python -m benchmarks.run` has run the variant (its teachers and subsets are read from the
run's root), both ways run here, in this process, on this device, with the same teachers,
natural subsets, synthesis settings and number of iterations:

- grouped: one `synthesize_ufcs` call optimises all K x M UFCs (every subset's images go through
  each teacher as one batch, BatchNorm statistics taken per subset), as the pipeline does;
- one at a time: one call per UFC (one subset, one teacher), as the official code loops. All
  K x M UFCs, or a sample of `--sample` spread over the teachers (their costs differ), the total
  then extrapolated per teacher (the mean of its sampled UFCs times K), summed over the teachers.

Each way is warmed up first (a short call of each shape, which also lets cuDNN pick its
algorithms), and the clock is read between device synchronisations. The speed-up is the
one-at-a-time total over the grouped time. Results: benchmarks/results/<profile>-<variant>-speed.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import machine_info, source_info
from benchmarks.run import RESULTS, RUNS, atomic_write, default_datasets, load_profile, log
from infer_distill.config.schema import Config
from infer_distill.dag.layout import Layout
from infer_distill.dag.metrics import DataMetrics
from infer_distill.data.splits import open_split
from infer_distill.errors import ConfigError
from infer_distill.method.synthesis import synthesize_ufcs
from infer_distill.stages.artifacts import is_current, load_input
from infer_distill.stages.inputs import compute_setup, load_teachers

WARMUP_ITERATIONS = 3


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def sample_pairs(K: int, M: int, n: int) -> list[tuple[int, int]]:
    """n (subset, teacher) pairs: teachers in turn, subsets spread over 0..K-1; all K x M when n >= K x M."""
    if n >= K * M:
        return [(k, m) for m in range(M) for k in range(K)]
    n = max(1, n)
    return [(round(j * K / n) % K, j % M) for j in range(n)]


def measure_speed(cfg: Config, root: str, iterations: int, sample: int) -> dict:
    """Time grouped against one-at-a-time synthesis over `iterations` of the run under `root`."""
    layout = Layout(root)
    missing = [u for u, stage, keys in [(layout.data, "prepare-data", {}), (layout.subsets, "select-subsets", {}),
                                        *[(layout.teacher(a), "train-teacher", {"arch": a}) for a in cfg.teachers.archs]]
               if not is_current(u, cfg, stage, **keys)]
    if missing:
        raise ConfigError(f"{', '.join(missing)}: not there or not current for this variant; run the benchmark first "
                          "(python -m benchmarks.run --profile PROFILE --variants VARIANT)")
    device, _ = compute_setup(cfg, trains=False)
    art, dm = load_input(layout.data, cfg, "prepare-data")
    sub_art, _ = load_input(layout.subsets, cfg, "select-subsets")
    indices, train = sub_art.read_tensors("subsets.safetensors")["indices"], open_split(art, "train")
    natural = train.read(indices.reshape(-1)).reshape(*indices.shape, *train.shape)   # [K, C, ch, H, W] uint8
    teachers = load_teachers(cfg, layout.teachers(cfg), dm, device)
    K, M, archs, std = natural.shape[0], len(teachers), list(cfg.teachers.archs), DataMetrics.from_manifest(dm).std

    def run(models: list[torch.nn.Module], ids: list[int], iters: int) -> float:
        syn = cfg.synthesis.model_copy(update={"iterations": iters})
        sync(device)
        t0 = time.perf_counter()
        synthesize_ufcs(models, natural[ids], ids, syn, cfg.seed, device, False, std)
        sync(device)
        return time.perf_counter() - t0

    run(teachers, list(range(K)), WARMUP_ITERATIONS)
    for m in range(M):
        run([teachers[m]], [0], WARMUP_ITERATIONS)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    grouped_s = run(teachers, list(range(K)), iterations)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    log(f"grouped: {K} x {M} UFCs in one call, {grouped_s:.2f} s for {iterations} iterations")

    timed = []
    for k, m in sample_pairs(K, M, sample):
        timed.append({"subset": k, "teacher": archs[m], "seconds": round(run([teachers[m]], [k], iterations), 4)})
    per_teacher = {}
    mean_all = sum(t["seconds"] for t in timed) / len(timed)
    for a in archs:  # a teacher left out of a small sample is estimated by the mean of all the timed UFCs
        own = [t["seconds"] for t in timed if t["teacher"] == a]
        per_teacher[a] = {"timed": len(own), "mean_s": sum(own) / len(own) if own else mean_all}
    one_at_a_time_s = sum(K * v["mean_s"] for v in per_teacher.values())
    log(f"one UFC at a time: {len(timed)} of {K * M} UFCs timed, {one_at_a_time_s:.2f} s for all; "
        f"speed-up {one_at_a_time_s / grouped_s:.1f}x")
    return {
        "device": device, "K": K, "M": M, "ufcs": K * M, "teachers": archs, "iterations": iterations,
        "warmup_iterations": WARMUP_ITERATIONS,
        "grouped": {"seconds": round(grouped_s, 4), "calls": 1, "peak_gpu_memory_gib": None if peak is None else round(peak, 2)},
        "one_at_a_time": {"seconds": round(one_at_a_time_s, 4), "timed": len(timed), "of": K * M,
                          "extrapolated": len(timed) < K * M, "per_teacher": per_teacher, "timings": timed},
        "speedup": round(one_at_a_time_s / grouped_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cifar10-paper")
    p.add_argument("--variant", default="ipc50")
    p.add_argument("--iterations", type=int, default=100, help="synthesis iterations timed each way (the protocol runs 1000)")
    p.add_argument("--sample", type=int, default=0, help="UFCs timed one at a time (0: all K x M)")
    p.add_argument("--datasets", default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for benchmarks.run")
    p.add_argument("--root", type=Path, default=None, help="where the benchmark's runs live (default: benchmarks/runs/<profile>)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        profile = load_profile(args.profile)
        if args.variant not in profile.variants:
            raise ConfigError(f"--variant {args.variant!r} not in profile {profile.name!r}: {', '.join(profile.variants)}")
        extra = list(args.set) + ([f"device={args.device}"] if args.device else [])
        cfg = profile.variant_config(args.variant, args.datasets or default_datasets(), extra)
        root = (args.root or RUNS / profile.name) / args.variant
        speed = measure_speed(cfg, str(root), args.iterations, args.sample or 10**9)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"schema": "infer-distill-speed/1", "profile": profile.name, "variant": args.variant,
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine_info(speed["device"]), "source": source_info(), **speed}
    path = args.results / f"{profile.name}-{args.variant}-speed.json"
    atomic_write(path, json.dumps(result, indent=1))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
