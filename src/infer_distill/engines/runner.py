"""The one step runner every engine calls (`run_item`), and what it needs: the items a walk
runs a step for, the UFC shards a resumed walk reuses.
"""
from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infer_distill.config.schema import Config
from infer_distill.dag.layout import Layout
from infer_distill.dag.metrics import DataMetrics
from infer_distill.dag.steps import SHARDS, STEPS, Step
from infer_distill.errors import ArtifactError
from infer_distill.stages.artifacts import is_current
from infer_distill.storage import open_artifact

# ----------------------------------------------------------------------------------------
# One item of one step: the rules every engine follows
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    stage: str
    label: str          # the fan-out item, e.g. "resnet18" or "subsets 0..2"; "" for single steps
    uri: str
    seconds: float      # 0.0 when skipped
    skipped: bool       # its artifact was current: not run again
    manifest: dict


def stage_function(step: Step) -> Callable[..., dict]:
    """The stage function of `step`: `<step.module>.<name_with_underscores>`, imported now (stages import torch)."""
    return getattr(importlib.import_module(step.module), step.function_name)


def run_item(cfg: Config, step: Step, item: dict[str, Any], inputs: dict[str, Any], uri: str,
             progress: bool = True) -> StepResult:
    """One item of one step, as every engine runs it (the walks, the `stage` command, Kubeflow's components).

    Skipped when its artifact at `uri` is current (same settings, intact files, made from the inputs now
    there: a remade input makes it stale), unless the step always runs; else the stage runs and writes
    its artifact atomically (a failure leaves the previous artifact, or none, never half of one) and its
    manifest is read back verified. Exceptions propagate: each engine maps them to its exit codes.
    """
    label = step.over.label(item) if step.over else ""
    if not step.always and is_current(uri, cfg, step.name, inputs, **item):
        return StepResult(step.name, label, uri, 0.0, True, open_artifact(uri).read_manifest())
    function = stage_function(step)
    show = {"progress": progress} if "progress" in inspect.signature(function).parameters else {}  # long loops only
    started = time.perf_counter()
    function(cfg, **item, **inputs, **show, out=uri)
    seconds = time.perf_counter() - started
    return StepResult(step.name, label, uri, seconds, False, open_artifact(uri).read_manifest())


# ----------------------------------------------------------------------------------------
# The items a walk under a run root runs
# ----------------------------------------------------------------------------------------


def num_classes_of(data: str) -> int:
    """The number of classes a prepare-data artifact at `data` records."""
    return DataMetrics.from_manifest(open_artifact(data).read_manifest(), data).num_classes


def step_items(step: Step, cfg: Config, layout: Layout, num_classes: Callable[[], int]) -> list[dict[str, Any]]:
    """The items a walk under `layout` runs `step` for ([{}] for a single step); `num_classes` is asked only when needed."""
    if not step.runs(cfg):
        return []
    if step.over is None:
        return [{}]
    if step.over.reuses_finished:
        return [{"subset_ids": ids} for ids, _ in plan_ufc_shards(cfg, layout, num_classes())]
    return step.over.items(cfg, num_classes() if step.over.source != "config" else None)


def plan_ufc_shards(cfg: Config, layout: Layout, num_classes: int) -> list[tuple[list[int], str]]:
    """The UFC shards a run under `layout` reads, as (subset ids, artifact URI), ordered by subset.

    Shard size is placement, not a setting (dag.artifact_settings.PLACEMENT): finished shards are reused
    whatever their grouping, and only subsets no current shard covers are synthesised, grouped
    as `cfg.shard_plan` groups them. Every walker asks this function, so changing
    `synthesis.subsets_per_shard` after a finished synthesis recomputes nothing.

    Current shards under `layout.ufc_shards` are taken greedily while they cover only subsets
    not yet covered: first those at the current plan's locations, then larger before smaller.
    A shard returned may not exist yet (or be stale): `is_current` says which to run.
    """
    planned = {layout.ufc(ids) for ids in cfg.shard_plan(num_classes)}
    inputs = {"data": layout.data, "subsets": layout.subsets, "teachers": layout.teachers(cfg)}
    finished = []
    for art in open_artifact(layout.ufc_shards).children():
        try:
            ids = art.read_manifest()["settings"]["subset_ids"]
        except (ArtifactError, KeyError, TypeError):
            continue  # not a readable shard: the location is rewritten if the plan needs it
        if is_current(art.uri, cfg, _SHARD_STEP.name, inputs, subset_ids=ids):
            finished.append((ids, art.uri))
    finished.sort(key=lambda shard: (shard[1] not in planned, -len(shard[0]), shard[0]))
    chosen: list[tuple[list[int], str]] = []
    covered: set[int] = set()
    for ids, uri in finished:
        if covered.isdisjoint(ids):
            chosen.append((ids, uri))
            covered.update(ids)
    for ids in cfg.shard_plan(num_classes):
        missing = [k for k in ids if k not in covered]
        if missing:
            chosen.append((missing, layout.ufc(missing)))
    return sorted(chosen)


_SHARD_STEP = next(s for s in STEPS.values() if s.over is SHARDS)
