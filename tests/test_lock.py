"""One writer per run root: a second run is refused with exit 75 naming the holder; a dead holder's lock
is taken over; --force-unlock removes a stuck one; the lock goes when the run ends, also on failure."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from conftest import REPO, TINY

from infer_distill.cli import main
from infer_distill.errors import ArtifactError
from infer_distill.storage.lock import LOCK, LockHeld, run_lock

SETS = sum((["--set", s] for s in TINY), [])


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    return f"s3://{request.getfixturevalue('s3_bucket')}/runs/r1"


def _client():
    return boto3.session.Session().client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")


def _read_lock(root: str) -> dict | None:
    if root.startswith("s3://"):
        bucket, _, prefix = root[5:].partition("/")
        client = _client()
        try:
            return json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/{LOCK}")["Body"].read())
        except client.exceptions.NoSuchKey:
            return None
    path = Path(root) / LOCK
    return json.loads(path.read_text()) if path.is_file() else None


def _plant_lock(root: str, host: str, age_s: float) -> None:
    """A lock another host's run holds, with its last heartbeat `age_s` ago."""
    beat = (datetime.now(timezone.utc) - timedelta(seconds=age_s)).isoformat()
    body = json.dumps({"owner": "someone", "host": host, "pid": 4242, "started": beat, "heartbeat": beat, "token": "t"})
    if root.startswith("s3://"):
        bucket, _, prefix = root[5:].partition("/")
        _client().put_object(Bucket=bucket, Key=f"{prefix}/{LOCK}", Body=body.encode())
    else:
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / LOCK).write_text(body)


def _start_run(root: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "infer_distill", "run", "--out", root, "--no-progress", *SETS],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_lock(root: str, proc: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = _read_lock(root)
        if found is not None and found["pid"] == proc.pid:
            return found
        assert proc.poll() is None, f"the first run ended (exit {proc.returncode}) before it was seen holding the lock"
        time.sleep(0.05)
    raise AssertionError("the first run never took the lock")


def test_a_second_lock_on_one_root_is_refused_and_released_after(root: str) -> None:
    with run_lock(root):
        holder = _read_lock(root)
        assert {"owner", "host", "pid", "started", "heartbeat"} <= set(holder)
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(LockHeld, match=rf"locked by another run: .*@{socket.gethostname()} pid {os.getpid()}, since"):
            with run_lock(root):
                pass
    assert _read_lock(root) is None
    if not root.startswith("s3://"):
        assert not Path(root).exists()  # the lock made the root, and leaves no empty folder behind
    with run_lock(root):  # free again
        pass


def test_heartbeats_keep_a_live_lock_from_expiring(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFER_LOCK_EXPIRY_S", "0.6")  # a beat every 0.15 s
    with run_lock(root):
        first = _read_lock(root)["heartbeat"]
        time.sleep(1.2)  # twice the expiry: only the heartbeats keep it
        assert _read_lock(root)["heartbeat"] > first
        with pytest.raises(LockHeld):
            with run_lock(root):
                pass


def test_another_hosts_lock_expires_without_heartbeats(root: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("INFER_LOCK_EXPIRY_S", "5")
    _plant_lock(root, "elsewhere", age_s=1)
    with pytest.raises(LockHeld, match="someone@elsewhere pid 4242"):
        with run_lock(root):
            pass
    _plant_lock(root, "elsewhere", age_s=6)
    with run_lock(root):
        assert _read_lock(root)["pid"] == os.getpid()
    assert "took over the stale lock" in capsys.readouterr().err


def test_a_lock_taken_over_meanwhile_is_left_to_its_new_holder(root: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A run whose lock another run took (it looked dead: a long pause, a partition) stops renewing it and, at its end,
    removes nothing: the lock is the new holder's."""
    monkeypatch.setenv("INFER_LOCK_EXPIRY_S", "1")  # a heartbeat every 0.25 s
    with run_lock(root):
        _plant_lock(root, "elsewhere", age_s=0)
        deadline = time.monotonic() + 10
        while "taken over by another run" not in capsys.readouterr().err:
            assert time.monotonic() < deadline, "the heartbeat never noticed that its lock was taken"
            time.sleep(0.05)
        time.sleep(0.6)  # more beats: none renews the other run's lock
        assert _read_lock(root)["host"] == "elsewhere"
    assert _read_lock(root)["host"] == "elsewhere"


def test_force_unlock_removes_a_stuck_lock_and_a_failed_run_releases_it(root: str, tmp_path: Path, capsys) -> None:
    _plant_lock(root, "elsewhere", age_s=0)
    assert main(["run", "--out", root, "--no-progress", *SETS, "--set", "budget.ipc=1"]) == 2  # refused config: no lock needed
    assert main(["run", "--out", root, "--no-progress", *SETS]) == 75
    assert "locked by another run: someone@elsewhere pid 4242" in capsys.readouterr().err
    if root.startswith("s3://"):  # a location holding what the run did not write: refused after taking the lock
        bucket, _, prefix = root[5:].partition("/")
        _client().put_object(Bucket=bucket, Key=f"{prefix}/report/mine.txt", Body=b"mine")
    else:
        (Path(root) / "report").mkdir()
        (Path(root) / "report" / "mine.txt").write_text("mine")
    assert main(["run", "--out", root, "--no-progress", "--force-unlock", *SETS]) == 2
    err = capsys.readouterr().err
    assert "--force-unlock: removed the lock" in err and "someone@elsewhere" in err and "mine.txt" in err
    assert _read_lock(root) is None  # released on the way out of the failed run


@pytest.mark.processes
@pytest.mark.slow
def test_two_concurrent_runs_one_is_refused_naming_the_holder(root: str, capsys) -> None:
    first = _start_run(root)
    try:
        _wait_for_lock(root, first)
        assert main(["run", "--out", root, "--no-progress", *SETS]) == 75
        err = capsys.readouterr().err
        assert f"@{socket.gethostname()} pid {first.pid}, since" in err and "--force-unlock" in err
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        first.kill()
    assert _read_lock(root) is None


@pytest.mark.processes
@pytest.mark.slow
def test_a_killed_runs_lock_is_taken_over(root: str, capsys) -> None:
    first = _start_run(root)
    try:
        _wait_for_lock(root, first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert _read_lock(root)["pid"] == first.pid  # left behind by the kill
    assert main(["run", "--out", root, "--no-progress", *SETS]) == 0  # its process is gone: the lock is stale
    assert "took over the stale lock" in capsys.readouterr().err
    assert _read_lock(root) is None


def test_a_fifo_where_the_lock_should_be_is_refused_not_blocked_on(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    os.mkfifo(root / LOCK)
    outcome: list[BaseException] = []

    def take() -> None:
        try:
            with run_lock(str(root)):
                pass
        except BaseException as e:  # noqa: BLE001 - what the lock raised, for the assertion below
            outcome.append(e)

    worker = threading.Thread(target=take, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "reading the lock blocked on a FIFO"
    assert isinstance(outcome[0], ArtifactError) and "is a FIFO (named pipe), not a regular file: remove it" in str(outcome[0])
