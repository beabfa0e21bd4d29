"""Walks of the plan on one machine, in this process or in N worker processes: `infer-distill run --jobs N`.

This is the workstation path: a machine with several GPUs (or one GPU, or many cores) and no
cluster. The cluster path is Kubeflow or Argo, which run the same plan as pods.

A step starts once every step it reads from has finished, so the plan's independent steps
overlap: the teachers with select-subsets, the baselines with the synthesis, every item of a
fan-out (teachers, UFC shards, students, baselines) with the others. Each item is run by
`engines.runner.run_item`, the rule every engine follows: skipped when its artifact is current, else run.
So a killed walk resumes where it stopped, with any number of jobs.

Signals: SIGTERM or SIGINT abandons the items running, in this process and in the workers
(`runtime.signals`), and raises `errors.Interrupted` once the workers have stopped; finished
artifacts stay, so the walk resumes where it stopped.

Failures: after a failed item nothing more starts, so nothing reads its output; items already
running finish and keep their artifacts, so no finished work is lost; then the first error is
raised (exit 2 or 75 as from the serial walk). With one job, steps run one at a time in the
plan's order, in this process (with progress bars): the serial walk of `engines.walk.run_in_process`.

Devices: with `devices` (e.g. cuda:0,cuda:1) each worker process is given one of them in turn
(as CUDA_VISIBLE_DEVICES, so "cuda" in the stages means that GPU); more jobs than devices share
the GPUs (small student runs leave one GPU mostly idle). On the CPU each worker gets an equal
share of the usable cores as torch threads, or the count `infer-distill run` chose (runtime.threads.choose_workers).

Several walks (the benchmark's variants) can share one executor: an artifact location that two
walks both write is run once, and both wait for it.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from infer_distill import dag
from infer_distill.config.schema import Config
from infer_distill.dag.layout import Layout
from infer_distill.dag.metrics import ReportMetrics
from infer_distill.dag.steps import Step, location
from infer_distill.engines.runner import StepResult, num_classes_of, run_item, step_items
from infer_distill.errors import ConfigError, Interrupted
from infer_distill.runtime.signals import stop_workers, worker_item, worker_signals


@dataclass
class Walk:
    """One walk of the plan: a config and the run root its artifacts live under."""

    name: str
    cfg: Config
    root: str
    steps: tuple[str, ...] | None = None   # only these steps; None: all
    # where its data and teachers live, when several walks share them (the benchmark's variants); None: root
    pool: str | None = None
    # filled in by the executor
    produced: dict[str, Any] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    started: set[str] = field(default_factory=set)
    pending: dict[str, int] = field(default_factory=dict)
    report: dict | None = None

    def wanted(self) -> list[Step]:
        return [s for s in dag.PLAN if self.steps is None or s.name in self.steps]

    def ready(self) -> list[Step]:
        """Steps not started whose inputs have all been produced (in the plan's order)."""
        return [s for s in self.wanted() if s.name not in self.started and all(dag.PRODUCER[i].name in self.done for i in s.inputs)]

    def finished(self) -> bool:
        return all(s.name in self.done for s in self.wanted())


# ----------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------


def _worker_init(slots: Any, threads: int) -> None:
    worker_signals()
    device = slots.get()
    if device.startswith("cuda:"):  # before CUDA is initialised in this process: "cuda" is now that GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = device.removeprefix("cuda:")
    import torch

    torch.set_num_threads(threads)


def _run(cfg: Config, step_name: str, item: dict, inputs: dict, uri: str, progress: bool) -> StepResult:
    return run_item(cfg, dag.STEPS[step_name], item, inputs, uri, progress)


def _run_in_worker(*args: Any) -> StepResult:
    with worker_item():  # the parent's SIGTERM abandons this item (runtime.signals)
        return _run(*args)


class _InProcess:
    """The executor interface for one job: items run here, one at a time, in submission order."""

    def __init__(self) -> None:
        self.queue: list[tuple[cf.Future, Callable[..., Any], tuple]] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        self.queue.append((future, fn, args))
        return future

    def run_next(self) -> cf.Future:
        future, fn, args = next(entry for entry in self.queue if not entry[0].done())
        self.queue.remove((future, fn, args))
        try:
            future.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001 - handed to the walk like a worker's failure
            future.set_exception(e)
        return future

    def shutdown(self, cancel_futures: bool = False) -> None:
        self.queue.clear()


MAX_JOBS = 1024          # worker processes of one executor
MAX_DEVICE_INDEX = 1023  # a CUDA device index beyond any machine's


def parse_devices(text: str | None) -> list[str]:
    """`--devices cuda:0,cuda:1` (or `0,1`) as ["cuda:0", "cuda:1"]."""
    devices = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        index = part.removeprefix("cuda:")
        if not index.isdigit() or int(index) > MAX_DEVICE_INDEX:
            raise ConfigError(f"--devices: {part!r} is not a CUDA device; use e.g. --devices cuda:0,cuda:1")
        devices.append(f"cuda:{int(index)}")
    return devices


def device_slots(jobs: int, devices: Sequence[str]) -> list[str]:
    """The device of each of `jobs` workers: the devices in turn ("" for none: the stages' own choice)."""
    return [devices[i % len(devices)] if devices else "" for i in range(jobs)]


def worker_threads(jobs: int) -> int:
    from infer_distill.runtime.threads import usable_cpus

    return max(1, usable_cpus() // jobs)


# ----------------------------------------------------------------------------------------
# The walk
# ----------------------------------------------------------------------------------------


def run_walks(walks: Sequence[Walk], jobs: int = 1, devices: Sequence[str] = (), progress: bool = True,
              on_step: Callable[[Walk, StepResult], None] | None = None,
              on_report: Callable[[Walk], None] | None = None, deadline: float | None = None,
              threads: int | None = None) -> list[str]:
    """Run every walk's steps in `jobs` processes; returns the names of the walks that did not finish.

    `on_step(walk, result)` after every item, run or skipped; `on_report(walk)` once a walk's report
    is written (walk.report holds its metrics). At `deadline` (time.time()) no item starts any more;
    those running finish. `threads`: torch threads per worker process (default: an equal share of the usable cores).
    """
    if not 1 <= jobs <= MAX_JOBS:
        raise ConfigError(f"--jobs {jobs}: use 1 to {MAX_JOBS} worker processes (each loads torch and a copy of its inputs)")
    if jobs == 1:
        pool: Any = _InProcess()
        if devices:
            os.environ["CUDA_VISIBLE_DEVICES"] = devices[0].removeprefix("cuda:")
    else:
        ctx = multiprocessing.get_context("spawn")
        slots = ctx.Queue()
        for device in device_slots(jobs, devices):
            slots.put(device)
        pool = cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                      initargs=(slots, threads or worker_threads(jobs)))
    running: dict[str, cf.Future] = {}                       # artifact URI -> its item's future
    waiting: dict[cf.Future, list[tuple[Walk, Step]]] = {}   # who waits for each future
    writers: dict[str, dict] = {}                            # artifact URI -> the settings it is written with
    errors: list[BaseException] = []

    def start(walk: Walk, step: Step) -> None:
        layout = Layout(walk.pool if walk.pool and step.pooled else walk.root)
        walk.started.add(step.name)

        items = step_items(step, walk.cfg, layout, lambda: num_classes_of(layout.data))
        uris = [location(layout, step, item) for item in items]
        inputs = dag.step_inputs(step, walk.cfg, walk.produced)
        walk.produced[step.output] = uris if step.over else (uris[0] if uris else None)
        walk.pending[step.name] = len(items)
        if not items:
            walk.done.add(step.name)
        for item, uri in zip(items, uris):
            settings = dag.settings(walk.cfg, step.name, **item)
            if writers.setdefault(uri, settings) != settings:
                raise ConfigError(f"two runs write {uri} with different settings: give them separate roots")
            future = running.get(uri)
            if future is None:
                future = running[uri] = pool.submit(_run if jobs == 1 else _run_in_worker, walk.cfg, step.name, item, inputs,
                                                    uri, progress and jobs == 1)
            waiting.setdefault(future, []).append((walk, step))

    def finish(future: cf.Future) -> None:
        for walk, step in waiting.pop(future):
            if future.cancelled():
                continue
            error = future.exception()
            if error is not None:
                if not errors:
                    errors.append(error)
                    stop()
                continue
            result = future.result()
            if on_step:
                on_step(walk, result)
            walk.pending[step.name] -= 1
            if walk.pending[step.name] == 0:
                walk.done.add(step.name)
                if step.final:
                    walk.report = ReportMetrics.from_manifest(result.manifest, result.uri).report
                    if on_report:
                        on_report(walk)

    def past_deadline() -> bool:
        return deadline is not None and time.time() > deadline

    def stop() -> None:
        """Start nothing more: items queued are cancelled, those running finish."""
        for future in waiting:
            future.cancel()

    def schedule() -> None:
        """Start what is ready; with one job, one step at a time (the next once its items have run)."""
        while not errors and not past_deadline() and not (jobs == 1 and waiting):
            step_walk = next(((w, s) for w in walks for s in w.ready()), None)
            if step_walk is None:
                return
            start(*step_walk)  # a step with no items is done at once, and may make others ready

    try:
        while True:
            schedule()
            if past_deadline():
                stop()
            if not waiting:
                break
            if jobs == 1:  # what is done (cancelled, or a location another walk ran), else the next item
                done = {f for f in waiting if f.done()} or {pool.run_next()}
            else:
                done, _ = cf.wait(list(waiting), return_when=cf.FIRST_COMPLETED)
            for future in [f for f in waiting if f in done]:  # in submission order: a serial walk reports in plan order
                finish(future)
    except Interrupted:
        if jobs > 1:  # their items are abandoned too; the shutdown below waits for them to unwind
            stop_workers()
        raise
    finally:
        pool.shutdown(cancel_futures=True)
    if errors:
        raise errors[0]
    return [w.name for w in walks if not w.finished()]
