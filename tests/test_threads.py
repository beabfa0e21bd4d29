"""CPU threads: the cores a process may use, from its cgroup quota and affinity mask."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infer_distill.runtime import threads


def _tree(tmp_path: Path, files: dict[str, str], proc: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(exist_ok=True)
    (tmp_path / "proc_cgroup").write_text(proc)
    return root, tmp_path / "proc_cgroup"


@pytest.mark.parametrize("files, proc, expected", [
    ({"kubepods/pod1/cpu.max": "250000 100000\n"}, "0::/kubepods/pod1\n", 2.5),
    ({"cpu.max": "max 100000\n"}, "0::/\n", None),
    # the tightest quota on the way up counts: a pod's limit, with no limit on the container itself
    ({"kubepods/cpu.max": "100000 100000\n", "kubepods/c1/cpu.max": "max 100000\n"}, "0::/kubepods/c1\n", 1.0),
    ({"cpu/docker/x/cpu.cfs_quota_us": "150000\n", "cpu/docker/x/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/docker/x\n0::/\n", 1.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "1:cpu:/\n", None),
])
def test_cgroup_cpu_limit(tmp_path: Path, files: dict[str, str], proc: str, expected: float | None) -> None:
    root, proc_cgroup = _tree(tmp_path, files, proc)
    assert threads.cgroup_cpu_limit(root, proc_cgroup) == expected


def test_usable_cpus_is_the_affinity_capped_by_the_quota() -> None:
    assert threads.usable_cpus(limit=2.5, affinity=64) == 3
    assert threads.usable_cpus(limit=None, affinity=4) == 4
    assert threads.usable_cpus(limit=8.0, affinity=2) == 2
    assert threads.usable_cpus(limit=0.1, affinity=2) == 1


def test_configure_sets_torch_threads_unless_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(threads, "usable_cpus", lambda: 1)
        assert threads.configure_cpu_threads()[0] == 1 and torch.get_num_threads() == 1
        # OMP_NUM_THREADS set: torch took it at start-up, and configure leaves torch's count as it is
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert threads.configure_cpu_threads() == (2, "OMP_NUM_THREADS") and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.processes
def test_omp_num_threads_is_what_a_fresh_process_uses() -> None:
    code = "from infer_distill.runtime.threads import configure_cpu_threads; print(configure_cpu_threads()[0])"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # fewer than the cores (torch caps a larger value at them)
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip() == "1"
