"""Synthesis speed: the library's grouped synthesis against the official one-UFC-at-a-time loop.

Both run in this process, on this device, with the run's own trained teachers and its own
natural subsets, the same synthesis settings and the same number of iterations:

- grouped: one `synthesize_ufcs` call optimises all K x M UFCs (every subset's images go through
  each teacher as one batch, with BatchNorm statistics taken per subset), as the pipeline does;
- one at a time: one call per UFC (one subset, one teacher), as the official code loops. A sample
  of the K x M UFCs is timed, spread over the teachers (their costs differ), and the total is
  extrapolated linearly: per teacher, the mean of its sampled UFCs times K, summed over the
  teachers.

Each way is warmed up first (a short call of each shape, which also lets cuDNN pick its
algorithms), and the clock is read between device synchronisations. The speed-up is the
one-at-a-time total over the grouped time.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from infer_distill.config import Config
from infer_distill.stages import Layout, compute_setup, load_input, load_teachers
from infer_distill.store import open_artifact
from infer_distill.synthesis import synthesize_ufcs

from .budget import SPEED_WARMUP_ITERATIONS
from .calibrate import sync

TARGET_SPEEDUP = 10.0   # the target at CIFAR-10 ipc 50 (K = 35, M = 4: 140 UFCs)


def sample_pairs(K: int, M: int, n: int) -> list[tuple[int, int]]:
    """n (subset, teacher) pairs: teachers in turn, subsets spread over 0..K-1."""
    n = max(1, min(n, K * M))
    return [(round(j * K / n) % K, j % M) for j in range(n)]


def measure_speed(cfg: Config, root: str, iterations: int, full_iterations: int, sample: int,
                  log: Callable[[str], None], why: str = "") -> dict:
    """Time grouped against one-at-a-time synthesis over `iterations` (the protocol's count is `full_iterations`)."""
    layout = Layout(root)
    device, _ = compute_setup(cfg, trains=False)
    art, dm = load_input(layout.data, cfg, "prepare-data")
    train_x = art.read_tensors("train.safetensors")["x"]
    sub_art, _ = load_input(layout.subsets, cfg, "select-subsets")
    indices = sub_art.read_tensors("subsets.safetensors")["indices"]
    natural = train_x[indices]                                    # [K, C, ch, H, W] uint8
    teachers = load_teachers(cfg, layout.teachers(cfg), dm, device)
    K, C, M = natural.shape[0], natural.shape[1], len(teachers)
    std = dm["metrics"]["std"]
    archs = list(cfg.teachers.archs)

    def run(models: list[torch.nn.Module], ids: list[int], iters: int) -> tuple[float, float]:
        syn = cfg.synthesis.model_copy(update={"iterations": iters})
        sync(device)
        t0 = time.perf_counter()
        r = synthesize_ufcs(models, natural[ids], ids, syn, cfg.seed, device, False, std)
        sync(device)
        return time.perf_counter() - t0, r.seconds

    # warm-up: each shape once (the grouped batch; one subset through each teacher)
    run(teachers, list(range(K)), SPEED_WARMUP_ITERATIONS)
    for m in range(M):
        run([teachers[m]], [0], SPEED_WARMUP_ITERATIONS)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    grouped_s, grouped_loop_s = run(teachers, list(range(K)), iterations)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    log(f"  speed: grouped, {K} x {M} UFCs in one call: {grouped_s:.2f}s for {iterations} iterations")

    pairs = sample_pairs(K, M, sample)
    timed = []
    for k, m in pairs:
        s, loop = run([teachers[m]], [k], iterations)
        timed.append({"subset": k, "teacher": archs[m], "seconds": round(s, 4), "loop_seconds": round(loop, 4)})
    mean_all = sum(t["seconds"] for t in timed) / len(timed)
    per_teacher = {}
    for a in archs:
        own = [t["seconds"] for t in timed if t["teacher"] == a]
        per_teacher[a] = {"sampled": len(own), "mean_s": sum(own) / len(own) if own else mean_all,
                          "estimated_from": "its own samples" if own else "the mean of all samples"}
    one_at_a_time_s = sum(K * v["mean_s"] for v in per_teacher.values())
    speedup = one_at_a_time_s / grouped_s
    log(f"  speed: one UFC at a time: {len(timed)} of {K * M} UFCs timed, {one_at_a_time_s:.2f}s extrapolated to all; "
        f"speed-up {speedup:.1f}x")
    scale = full_iterations / iterations
    ufc_iters = K * M * iterations
    return {
        "device": device, "K": K, "M": M, "classes": C, "ufcs": K * M, "teachers": archs,
        "iterations_timed": iterations, "iterations_full": full_iterations,
        "extrapolated_to_full": iterations < full_iterations,
        "how": (f"the protocol's {full_iterations} iterations" if iterations >= full_iterations else
                f"{iterations} of the protocol's {full_iterations} iterations, the times at the full count extrapolated linearly"
                + (f" ({why})" if why else "")),
        "warmup_iterations": SPEED_WARMUP_ITERATIONS,
        "grouped": {"seconds": round(grouped_s, 4), "loop_seconds": round(grouped_loop_s, 4), "calls": 1,
                    "ufc_iterations_per_s": ufc_iters / grouped_s, "seconds_at_full_iterations": round(grouped_s * scale, 3),
                    "peak_gpu_memory_gib": None if peak is None else round(peak, 2)},
        "one_at_a_time": {"seconds": round(one_at_a_time_s, 4), "extrapolated": True, "sample_size": len(timed),
                          "of_ufcs": K * M, "sample": timed, "per_teacher": per_teacher,
                          "ufc_iterations_per_s": ufc_iters / one_at_a_time_s,
                          "seconds_at_full_iterations": round(one_at_a_time_s * scale, 3),
                          "extrapolation": "per teacher: mean seconds of its sampled UFCs x K; summed over the teachers"},
        "speedup": speedup, "target_speedup": TARGET_SPEEDUP, "meets_target": speedup >= TARGET_SPEEDUP,
        "pipeline_synthesis": pipeline_synthesis(layout, cfg),
    }


def pipeline_synthesis(layout: Layout, cfg: Config) -> list[dict]:
    """The run's own synthesis steps (grouped, no separate warm-up), for reference."""
    out = []
    for art in open_artifact(layout.ufc_shards).children():
        try:
            m = art.read_manifest()
        except Exception:  # noqa: BLE001 - a shard that cannot be read is not reported
            continue
        metrics = m.get("metrics", {})
        out.append({"subset_ids": metrics.get("subset_ids"), "ufc_shape": metrics.get("ufc_shape"),
                    "iterations": m.get("settings", {}).get("synthesis", {}).get("iterations"),
                    "synthesis_s": metrics.get("synthesis_s"), "step_s": m.get("elapsed_s")})
    return out
