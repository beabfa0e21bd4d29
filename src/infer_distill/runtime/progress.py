"""Progress of long loops: a tqdm bar in a terminal, plain lines in a log; the console the CLI prints with.

A redirected tqdm bar is a stream of carriage-return frames, unreadable in `kubectl logs`, the
Kubeflow and Argo UIs or a redirected `make run`. When stderr is not a terminal, the loop prints
one line every INFER_PROGRESS_INTERVAL seconds (default 30) instead, and one when it ends:

    teacher resnet18: step 12/200 (6%), loss=1.234, 0.41 step/s, ETA 7m39s
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console
from tqdm import tqdm

DEFAULT_INTERVAL_S = 30.0
LOG_WIDTH = 10_000  # a redirected console's width: no table cell or line is cut or folded


def console(stderr: bool = False) -> Console:
    """A rich console for what the CLI prints: in a terminal, as wide as the terminal; written to a file or a pipe
    (a log, `> out.txt`), as wide as its lines, so tables keep full names, and without colour codes."""
    shown = Console(stderr=stderr)
    return shown if shown.is_terminal else Console(stderr=stderr, width=LOG_WIDTH, no_color=True, color_system=None)


def progress_bar(iterable: Iterable, desc: str, disable: bool = False) -> Iterable:
    """Iterate `iterable` showing progress; `.set_postfix(loss=...)` adds values to the display."""
    if disable:
        return _Silent(iterable)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, leave=False)
    return LogLines(iterable, desc, float(os.environ.get("INFER_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))


class _Silent:
    def __init__(self, iterable: Iterable):
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def set_postfix(self, **_: Any) -> None:
        pass


class LogLines:
    """One line per `interval_s` seconds (and at the end): step, postfix values, rate, ETA."""

    def __init__(self, iterable: Iterable, desc: str, interval_s: float):
        self.iterable, self.desc, self.interval_s = iterable, desc, interval_s
        self.total = len(iterable) if hasattr(iterable, "__len__") else None
        self.postfix: dict[str, Any] = {}

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def __iter__(self) -> Iterator:
        started = last = time.monotonic()
        step = 0
        for step, value in enumerate(self.iterable, 1):
            yield value
            now = time.monotonic()
            if now - last >= self.interval_s or step == self.total:
                self._line(step, now - started)
                last = now
        if step != self.total:  # a shorter or unsized iterable: still report where it ended
            self._line(step, time.monotonic() - started)

    def _line(self, step: int, elapsed: float) -> None:
        rate = step / elapsed if elapsed > 0 else 0.0
        parts = [f"step {step}/{self.total} ({100 * step // self.total}%)" if self.total else f"step {step}"]
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        parts.append(f"{rate:.2f} step/s" if rate < 10 else f"{rate:.0f} step/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - step) / rate)}")
        print(f"{self.desc}: " + ", ".join(parts), file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
