"""CPU threads: the cores a process may use, from its cgroup quota and affinity mask."""
from __future__ import annotations

import os
import subprocess
import sys
import time
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


# ----------------------------------------------------------------------------------------
# Workers and threads of `infer-distill run --jobs auto`
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cores, width, busy, gpus, omp, expected", [
    (2, 4, 0.0, 0, None, (1, 2)),     # idle: one worker, every core as a thread (the faster on an idle 2-core machine)
    (2, 4, None, 0, None, (1, 2)),    # load unknown: as idle
    (2, 4, 1.0, 0, None, (2, 1)),     # busy: single-threaded workers, as many as the cores
    (2, 1, 1.0, 0, None, (1, 1)),     # ... no more than the plan can run at once
    (16, 6, 0.0, 0, None, (6, 2)),    # idle and wide: two threads per worker, at most the plan's width
    (16, 20, 0.0, 0, None, (8, 2)),
    (16, 20, 0.5, 0, None, (16, 1)),
    (16, 6, 0.0, 2, None, (2, 8)),    # GPUs: one worker each
    (4, 6, 0.0, 0, 1, (4, 1)),        # OMP_NUM_THREADS fixes the threads; workers fill the cores
    (4, 6, 0.0, 0, 8, (1, 8)),
])
def test_choose_workers(cores, width, busy, gpus, omp, expected) -> None:
    chosen = threads.choose_workers(cores, width, busy, gpus, omp)
    assert (chosen.jobs, chosen.threads) == expected and chosen.why


def test_busy_fraction_reads_the_per_cpu_times_of_the_cores_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    #                   user nice system idle iowait irq softirq steal
    stat.write_text("cpu  10 0 10 100 0 0 0 0\ncpu0 0 0 0 100 0 0 0 0\ncpu1 0 0 0 100 0 0 0 0\n")
    later = "cpu  90 0 10 220 0 0 0 0\ncpu0 75 0 5 120 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0\n"
    monkeypatch.setattr("time.sleep", lambda _s: stat.write_text(later))
    assert threads.busy_fraction(cpus={0}, stat=stat) == pytest.approx(0.8)        # 80 of 100 ticks busy
    stat.write_text("cpu0 0 0 0 100 0 0 0 0\ncpu1 0 0 0 100 0 0 0 0\n")
    assert threads.busy_fraction(cpus={0, 1}, stat=stat) == pytest.approx(80 / 200)
    assert threads.busy_fraction(stat=tmp_path / "missing") is None


@pytest.mark.processes
def test_busy_fraction_sees_a_process_spinning_on_a_core() -> None:
    if not hasattr(os, "sched_setaffinity") or not Path("/proc/stat").exists():
        pytest.skip("needs Linux's /proc/stat and affinity")
    core = min(os.sched_getaffinity(0))
    spin = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
    try:
        time.sleep(0.5)  # started and spinning
        assert threads.busy_fraction(0.5, cpus={core}) > 0.5
    finally:
        spin.kill()
        spin.wait()


def test_run_says_what_it_chose(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from infer_distill.cli.show import print_workers
    from infer_distill.config.loading import load_config

    cfg = load_config(None, ["device=cpu"])  # the quickstart: up to 4 items at once (two teachers, select-subsets, ...)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads, "busy_fraction", lambda: 1.0)
    before = torch.get_num_threads()
    try:
        chosen = print_workers(cfg, str(tmp_path), "auto", ())
        assert (chosen.jobs, chosen.threads) == (2, 1)
        assert "Workers: 2 processes x 1 CPU thread (2 usable cores, 100% busy with other processes" in capsys.readouterr().err.replace("\n", " ")
        monkeypatch.setattr(threads, "busy_fraction", lambda: 0.0)
        assert print_workers(cfg, str(tmp_path), "auto", ()) == threads.Workers(1, 2, chosen.why.replace(
            "100% busy with other processes: single-threaded workers do not wait on paused threads", "0% busy with other processes"))
        assert torch.get_num_threads() == 2  # one worker: this process computes, with the threads chosen
        assert (print_workers(cfg, str(tmp_path), 3, ()).jobs, torch.get_num_threads()) == (3, 2)  # as asked
    finally:
        torch.set_num_threads(before)


def test_jobs_is_a_number_or_auto(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from infer_distill.cli.commands import build_parser

    assert build_parser().parse_args(["run", "--jobs", "auto"]).jobs == "auto"
    monkeypatch.setenv("INFER_JOBS", "3")
    assert build_parser().parse_args(["run"]).jobs == 3
    monkeypatch.setenv("INFER_JOBS", "many")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run"])
    assert "'many' is neither a number of worker processes nor auto (check --jobs and $INFER_JOBS)" in capsys.readouterr().err
    monkeypatch.delenv("INFER_JOBS")
    assert build_parser().parse_args(["run"]).jobs == "auto"
