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
from collections.abc import Iterator
from types import FrameType

from infer_distill.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal while the first unwinds (stopping workers, releasing the lock) must not cut that short
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block (in the main thread), SIGTERM and SIGINT raise Interrupted; the handlers before it come back after."""
    previous = {s: signal.signal(s, _interrupt) for s in SIGNALS}
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
