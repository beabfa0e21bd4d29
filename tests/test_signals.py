"""SIGTERM and SIGINT stop `infer-distill run` (one job or --jobs 2) and `infer-distill stage` cleanly: exit 128 +
the signal without a traceback, the step running abandoned without an artifact, finished artifacts kept and skipped
on resume, the run root's lock released, the workers stopped, one line saying what was kept and how to resume.
Real processes and real signals, sent while the teachers train."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY

from infer_distill.cli import main
from infer_distill.storage import open_artifact
from infer_distill.storage.lock import LOCK

pytestmark = [pytest.mark.processes, pytest.mark.slow]

# Teachers that train for minutes: a signal sent a few seconds into train-teacher finds it running
LONG = [*TINY, "teachers.epochs=500"]
ARCHS = ("convnet_d2_w32", "resnet_tiny")


def _sets(sets: list[str]) -> list[str]:
    return sum((["--set", s] for s in sets), [])


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "infer_distill", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while not path.exists():
        assert proc.poll() is None, f"ended (exit {proc.returncode}) before {path} was written: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _workers(pid: int) -> set[int]:
    """The worker processes of the executor's pool (multiprocessing's spawned children; not its resource tracker)."""
    children = {int(p) for task in Path(f"/proc/{pid}/task").iterdir() for p in (task / "children").read_text().split()}
    return {c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()}


def _alive(pid: int) -> bool:
    """Running (an ended process whose parent has gone may stay a zombie where nothing reaps orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{sig!r} did not stop the process within 120 s") from None
    return proc.returncode, err


def _stopped_cleanly(code: int, err: str, sig: int, root: Path) -> None:
    assert code == 128 + sig, err
    assert "Traceback" not in err, err
    line = [ln for ln in err.splitlines() if ln.startswith("stopped by")]
    assert len(line) == 1 and line[0].startswith(f"stopped by {signal.Signals(sig).name}: ")
    assert "resume with the same command" in line[0] and f"--out {root}" in line[0]
    assert not (root / LOCK).exists()
    # nothing of an abandoned step: no teacher artifact, no staging folder
    teachers = root / "teachers"
    assert not teachers.exists() or list(teachers.iterdir()) == []
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_run_stopped_while_a_teacher_trains_keeps_its_data_and_resumes(tmp_path, sig, capsys):
    root = tmp_path / "run"
    proc = _start("run", "--out", str(root), "--no-progress", *_sets(LONG))
    _wait_for(root / "data" / "manifest.json", proc)
    time.sleep(3)   # into train-teacher
    code, err = _stop(proc, sig)
    _stopped_cleanly(code, err, sig, root)
    assert "1 artifacts are finished" in err and f"(the last: {root / 'data'})" in err
    data = open_artifact(str(root / "data"))
    manifest = data.read_manifest()   # read back verified: intact
    # the same data settings: the finished artifact is skipped, not remade
    assert main(["stage", "prepare-data", "--root", str(root), *_sets(TINY)]) == 0
    assert "prepare-data: up to date, skipped" in capsys.readouterr().err
    assert open_artifact(str(root / "data")).read_manifest() == manifest


def test_a_stage_stopped_while_it_trains_writes_nothing(tmp_path):
    root = tmp_path / "run"
    assert main(["stage", "prepare-data", "--root", str(root), *_sets(TINY)]) == 0
    proc = _start("stage", "train-teacher", "--root", str(root), "--arch", ARCHS[0], *_sets(LONG))
    time.sleep(8)   # past torch's import, into training
    assert proc.poll() is None
    code, err = _stop(proc, signal.SIGTERM)
    assert code == 143 and "Traceback" not in err, err
    assert f"stopped by SIGTERM: stage train-teacher {ARCHS[0]} was abandoned and wrote nothing" in err
    assert not (root / "teachers").exists() or list((root / "teachers").iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_jobs_2_run_stops_its_workers(tmp_path, sig, capsys):
    """Both teachers train side by side in two worker processes when the signal comes to the parent alone."""
    root = tmp_path / "run"
    proc = _start("run", "--out", str(root), "--no-progress", "--jobs", "2", *_sets(LONG))
    _wait_for(root / "data" / "manifest.json", proc)
    time.sleep(3)
    workers = _workers(proc.pid)
    assert len(workers) == 2, workers
    code, err = _stop(proc, sig)
    _stopped_cleanly(code, err, sig, root)
    assert [pid for pid in workers if _alive(pid)] == []   # the run waited for its workers to end
    # resume: the data is skipped, the rest runs
    assert main(["run", "--out", str(root), "--no-progress", *_sets(TINY + ["students.epochs=1", "students.baselines=[]"])]) == 0
    out = capsys.readouterr().err
    assert "prepare-data: up to date, skipped" in out and f"train-teacher {ARCHS[0]}: " in out
    assert not (root / LOCK).exists()


def test_a_kfp_local_run_stops_its_task_processes(tmp_path):
    """KFP's local runner waits for each task's process and goes on starting the tasks it queued: the signal is
    passed on to every process below the run, each task abandons its item, and the run ends 143."""
    from infer_distill.runtime.signals import descendants

    root = tmp_path / "run"
    proc = _start("run", "--engine", "kfp-local", "--out", str(root), *_sets(LONG))

    def tasks() -> list[int]:
        return [p for p in descendants(proc.pid) if b"executor_main" in Path(f"/proc/{p}/cmdline").read_bytes()]

    deadline = time.monotonic() + 300
    while not ([p for p in root.rglob("manifest.json") if p.parent.name == "data"] and tasks()):  # teachers training
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "train-teacher never started"
        time.sleep(0.5)
    time.sleep(8)   # past the task's imports, into training
    running = tasks()
    code, err = _stop(proc, signal.SIGTERM)
    assert code == 143, err
    line = [ln for ln in err.splitlines() if ln.startswith("stopped by SIGTERM: the task running was stopped")]
    assert len(line) == 1 and "start again with the same command" in line[0], err
    assert [pid for pid in running if _alive(pid)] == []
    assert not [p for p in root.rglob("manifest.json") if "teacher" in str(p)]   # no teacher artifact was written
