"""SIGTERM and SIGINT stop `infer-distill run` and `stage` cleanly.

The signal becomes an `errors.Interrupted` raised where the main thread is: the step running is
abandoned as a failure is (its artifact is staged and renamed into place whole, so none is left
half-written; the staging is removed on the way out), the run root's lock is released by its
`finally`, finished artifacts stay, and the CLI says what was finished and exits 128 + the signal.

Worker processes of `--jobs N` never act on SIGINT themselves (a terminal's Ctrl-C reaches the
whole process group): the parent decides, and stops them with SIGTERM (`stop_workers`), which
abandons the item a worker is running the same way; an idle worker waits for the pool's shutdown.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

from infer_distill.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal while the first unwinds (stopping workers, releasing the lock) must not cut that short
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


def _interrupt_with_children(signum: int, frame: FrameType | None) -> None:
    def stop_descendants() -> None:
        # Until this process ends: a task runner's threads may still start the tasks they had queued
        while True:
            for pid in descendants():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            time.sleep(0.2)

    threading.Thread(target=stop_descendants, name="stop-descendants", daemon=True).start()
    _interrupt(signum, frame)


def descendants(pid: int | str = "self") -> list[int]:
    """The processes below `pid`, children before their own (Linux: /proc/<pid>/task/*/children); [] where they
    cannot be listed. All of them: a KFP task is a shell that starts the Python that runs the stage."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    return [p for child in found for p in (child, *descendants(child))]


@contextlib.contextmanager
def interruptible(forward: bool = False) -> Iterator[None]:
    """Within the block (in the main thread), SIGTERM and SIGINT raise Interrupted; the handlers before it come back after.

    `forward`: first pass the signal on to the processes below this one as SIGTERM. For KFP's local runner,
    which waits for each task's process until it ends and whose threads go on starting the tasks they had
    queued: each task abandons its item as a stage does, until this process ends."""
    previous = {s: signal.signal(s, _interrupt_with_children if forward else _interrupt) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


_in_item = False  # a worker process is running an item (what SIGTERM abandons)


def _worker_signal(signum: int, frame: FrameType | None) -> None:
    if _in_item:
        _interrupt(signum, frame)


def worker_signals() -> None:
    """In a worker process: SIGINT is the parent's to act on; SIGTERM abandons the item running (`worker_item`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_signal)


@contextlib.contextmanager
def worker_item() -> Iterator[None]:
    """Mark a worker process busy with an item: a SIGTERM now raises Interrupted in it."""
    global _in_item
    _in_item = True
    try:
        yield
    finally:
        _in_item = False
        signal.signal(signal.SIGTERM, _worker_signal)  # _interrupt ignores signals after the first: the next item is stoppable


def stop_workers() -> None:
    """SIGTERM to this process's worker processes (the executor's pool is the only multiprocessing child of a run)."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)
