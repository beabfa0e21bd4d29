"""A walk of the whole plan under one run root: preflight, the root's lock, the executor.
"""
from __future__ import annotations

from collections.abc import Callable

from infer_distill.config.budget import KNOWN_NUM_CLASSES
from infer_distill.config.schema import Config
from infer_distill.dag.layout import Layout
from infer_distill.dag.steps import PLAN, final_step, location
from infer_distill.engines.executor import Walk, run_walks
from infer_distill.engines.runner import StepResult, num_classes_of
from infer_distill.errors import ArtifactError
from infer_distill.stages.preflight import preflight
from infer_distill.storage import open_artifact
from infer_distill.storage.lock import run_lock


def run_in_process(cfg: Config, root: str, progress: bool = True,
                   on_step: Callable[[StepResult], None] | None = None, jobs: int = 1,
                   threads: int | None = None, devices: tuple[str, ...] = (), force_unlock: bool = False) -> dict:
    """Run (or resume) every step of PLAN under `root`; returns the report's manifest.

    A step whose artifact is current (`stages.artifacts.is_current`: same settings) is skipped, so a killed
    run picks up where it stopped. `on_step` is called after every step, run or skipped. With one
    job the steps run in this process in PLAN's order; with more, independent steps run side by
    side in worker processes (engines.executor). The walk holds the root's lock
    (`storage.lock.run_lock`: one run per root; `force_unlock` removes a stuck one), and refuses, before
    any work, a root where a location it would write holds something it did not write there.
    """
    preflight(cfg, [root])
    layout = Layout(root)
    with run_lock(root, force_unlock):
        _check_replaceable(cfg, layout)
        run_walks([Walk("run", cfg, root)], jobs, devices, progress, threads=threads,
                  on_step=(lambda _walk, result: on_step(result)) if on_step else None)
        return open_artifact(location(layout, final_step(), {})).read_manifest()


def _check_replaceable(cfg: Config, layout: Layout) -> None:
    """Refuse a walk that would replace what it did not write, before its first step: every location whose
    items the config decides, and the shards too when the number of classes is known (a built-in
    dataset, or a readable data artifact); the write itself refuses any other (`Artifact.write`)."""
    known = KNOWN_NUM_CLASSES.get(cfg.dataset.name)
    if known is None:
        try:
            known = num_classes_of(layout.data)
        except ArtifactError:
            known = None
    for step in PLAN:
        if not step.runs(cfg) or (step.over is not None and step.over.source != "config" and known is None):
            continue
        for item in (step.over.items(cfg, known) if step.over else [{}]):
            open_artifact(location(layout, step, item)).check_replaceable(step.name)
