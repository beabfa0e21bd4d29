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
