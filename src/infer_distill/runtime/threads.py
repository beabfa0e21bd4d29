"""How many CPU threads torch computes with: the cores this process may actually use.

torch sizes its intra-op thread pool by the cores the machine has, not by the ones a container's
CPU quota (cgroup `cpu.max`, or `cpu.cfs_quota_us` under cgroup v1) or the process's affinity
mask (`taskset`, Kubernetes' static CPU manager) leave it. A pod limited to 2 CPUs on a 64-core
node then runs 64 threads that take turns on 2 cores, and every step waits on the slowest of
them: many times slower than 2 threads. So the CLI sets the pool to the usable cores before any
stage runs, unless OMP_NUM_THREADS says otherwise, and prints the count.

The count also matters for reproducibility: CPU kernels split their reductions by thread, so the
same config and seed give byte-identical artifacts at the same thread count, and artifacts that
may differ in the last bits at another count.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


def _cgroup_v2_limit(root: Path, path: str) -> float | None:
    """The tightest `cpu.max` quota (in CPUs) on the way from the process's cgroup up to the root."""
    limits = []
    here = root / path.lstrip("/")
    while True:
        try:
            quota, period = (here / "cpu.max").read_text().split()[:2]
            if quota != "max":
                limits.append(int(quota) / int(period))
        except (OSError, ValueError):
            pass
        if here == root or root not in here.parents:
            break
        here = here.parent
    return min(limits) if limits else None


def _cgroup_v1_limit(root: Path, path: str) -> float | None:
    for base in (root / "cpu" / path.lstrip("/"), root / "cpu,cpuacct" / path.lstrip("/"), root / "cpu"):
        try:
            quota = int((base / "cpu.cfs_quota_us").read_text())
            period = int((base / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 2.5), or None where there is none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # the cgroup v2 (unified) hierarchy
            limits.append(_cgroup_v2_limit(root / "unified" if (root / "unified").is_dir() else root, path))
        elif "cpu" in controllers.split(","):
            limits.append(_cgroup_v1_limit(root, path))
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def usable_cpus(limit: float | None = None, affinity: int | None = None) -> int:
    """The cores this process may use: its affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if limit is None:
        limit = cgroup_cpu_limit()
    cores = affinity if limit is None else min(affinity, math.ceil(limit))
    return max(1, cores)


def configure_cpu_threads() -> tuple[int, str]:
    """Set torch's intra-op threads to the usable cores, unless OMP_NUM_THREADS is set; (count, why)."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    threads = usable_cpus()
    torch.set_num_threads(threads)
    return threads, "the cores this process may use (CPU quota and affinity)"


# ----------------------------------------------------------------------------------------
# Workers and threads of `infer-distill run`
# ----------------------------------------------------------------------------------------
#
# How a walk of the plan is best spread over the cores depends on what else runs there. On an idle machine,
# one worker whose torch threads span the cores finishes the quickstart first (fewer processes to start, and
# the steps that run alone use every core). When other processes keep the cores busy, the kernel shares each
# core between them and our threads: every parallel torch operation then waits at its end for whichever of its
# threads was paused: on a 2-core machine whose cores two other processes kept busy, the quickstart took 156.7 s
# with one two-threaded worker and 61.9 s with two single-threaded ones (README, "Threads and workers"). So: idle cores, threads; busy
# cores, single-threaded workers, as many as the plan has items to run side by side.

LOADED = 0.2  # busy fraction of our cores, from other processes, above which each worker gets one thread


def busy_fraction(interval: float = 0.25, cpus: set[int] | None = None, stat: Path = Path("/proc/stat")) -> float | None:
    """The fraction of `cpus` (default: this process's affinity) that other processes kept busy over `interval`
    seconds, from the kernel's per-CPU times (this process sleeps meanwhile); None where they cannot be read."""
    import time

    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    def sample() -> dict[int, tuple[int, int]] | None:
        try:
            lines = stat.read_text().splitlines()
        except OSError:
            return None
        times = {}
        for line in lines:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and (cpus is None or int(name[3:]) in cpus):
                ticks = [int(v) for v in values[:8]]
                idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
                times[int(name[3:])] = (sum(ticks), idle)
        return times or None

    before = sample()
    if before is None:
        return None
    time.sleep(interval)
    after = sample() or {}
    total = sum(after[c][0] - before[c][0] for c in before if c in after)
    idle = sum(after[c][1] - before[c][1] for c in before if c in after)
    return None if total <= 0 else min(1.0, max(0.0, (total - idle) / total))


@dataclass(frozen=True)
class Workers:
    """How `infer-distill run` spreads the plan: `jobs` processes of `threads` torch threads each."""

    jobs: int
    threads: int
    why: str


def choose_workers(cores: int, width: int, busy: float | None, gpus: int = 0, omp_threads: int | None = None) -> Workers:
    """Workers and threads for `cores` usable cores, a plan that runs up to `width` items at once, the fraction
    of the cores other processes keep `busy` (None: unknown, taken as idle), `gpus` devices to spread over, and
    the thread count OMP_NUM_THREADS fixes (if set)."""
    width = max(1, width)
    load = f"{busy:.0%} busy with other processes" if busy is not None else "their load unknown"
    if gpus:
        jobs = max(1, min(width, gpus))
        return Workers(jobs, max(1, cores // jobs), f"one worker per GPU ({gpus}), the {cores} usable cores shared among them")
    if omp_threads:
        jobs = max(1, min(width, cores // omp_threads))
        return Workers(jobs, omp_threads, f"OMP_NUM_THREADS={omp_threads} threads each, on {cores} usable cores")
    if busy is not None and busy > LOADED:
        jobs = max(1, min(width, cores))
        return Workers(jobs, 1, f"{cores} usable cores, {load}: single-threaded workers do not wait on paused threads; "
                                f"the plan runs up to {width} items at once")
    jobs = max(1, min(width, cores // 2))
    return Workers(jobs, max(1, cores // jobs), f"{cores} usable cores, {load}; the plan runs up to {width} items at once")
