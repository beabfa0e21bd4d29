"""The `stage` command: one step of the plan, its item from flags, each input from its flag
or derived from --root.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from infer_distill import dag
from infer_distill.config.budget import BASELINES
from infer_distill.config.schema import Config
from infer_distill.dag.layout import Layout
from infer_distill.dag.metrics import METRICS
from infer_distill.errors import StageError

if TYPE_CHECKING:
    from infer_distill.engines.runner import StepResult
    from infer_distill.engines.tracking import Tracker


# The flags of a fan-out item's keys (dag.FanOut.keys): how each is parsed, and its value when not given
# (None: required). Any other key is a required plain string.
ITEM_FLAGS = {
    "arch": {"help": "train-teacher, evaluate-student, evaluate-baseline: the architecture"},
    "seed": {"type": int, "help": "the student's seed (default: the first of students.seeds)"},
    "label_mode": {"default": "static", "choices": ["static", "dynamic"]},
    "subset_ids": {"help": "synthesize-ufc: comma-separated subset ids, e.g. 0,1,2"},
    "baseline": {"choices": list(BASELINES), "help": "evaluate-baseline: which baseline"},
}


def item_from_flags(args: argparse.Namespace, cfg: Config, step: dag.Step) -> dict:
    """The fan-out item of `step` from its flags, as the stage function takes it."""
    item = {}
    for key in step.over.keys if step.over else ():
        flag, value = f"--{key.replace('_', '-')}", getattr(args, key)
        if key == "seed":
            value = cfg.students.seeds[0] if value is None else value
            if not 0 <= value < 2**63:
                raise StageError(f"--seed {value}: a seed must be at least 0 and below 2^63")
        value = _need(value, flag, step.name)
        if key == "subset_ids":
            try:
                value = [int(i) for i in value.split(",") if i.strip()]
            except ValueError:
                value = []
            if not value:
                raise StageError(f"--subset-ids {getattr(args, key)!r}: expected comma-separated subset numbers, e.g. --subset-ids 0,1,2")
        item[key] = value
    return item


def run_stage(args: argparse.Namespace, cfg: Config, tracker: Tracker | None = None) -> StepResult:
    """One step of the plan through the one step runner (skipped when its artifact is current): its item from
    the flags, each input from --<input> or derived from --root; `tracker` logs its manifest. A step that
    decides a later fan-out's items writes them to --<fan-out>-output (for engines that fan out at run time:
    Argo's withParam over select-subsets' shards)."""
    from infer_distill.engines.runner import num_classes_of, run_item, step_items  # they import the stages (torch)

    step = dag.STEPS[args.name]
    layout = Layout(args.root) if args.root else None
    item = item_from_flags(args, cfg, step)

    def located(flag: str, derive) -> str | list[str]:
        """The location given with --flag, else derived from --root."""
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            return value
        if layout is None:
            raise StageError(f"stage {step.name} needs {flag} (or --root to derive every location)")
        return derive(layout)

    def produced(name: str):
        """Where a run under `layout` keeps input `name`: the producer's artifact, or every item's."""
        producer = dag.PRODUCER[name]

        def derive(layout):
            if producer.over is None:
                return dag.location(layout, producer, {})
            items = step_items(producer, cfg, layout, lambda: num_classes_of(inputs.get("data") or layout.data))
            return [dag.location(layout, producer, i) for i in items]
        return located(f"--{name}", derive)

    inputs: dict = {}
    for name in step.inputs:
        producer = dag.PRODUCER[name]
        inputs[name] = produced(name) if producer.runs(cfg) else dag.absent(producer)
    out = located("--out", lambda l: dag.location(l, step, item))
    result = run_item(cfg, step, item, inputs, out)
    manifest = result.manifest
    if tracker is not None:
        tracker.step(step.name, out, manifest)
    for fanout in dag.fed_fanouts(step):
        target = getattr(args, output_flag(fanout)[2:].replace("-", "_"))
        if target:
            items = dag.fanout_items(cfg, METRICS[step.name].from_manifest(manifest, out).num_classes)[fanout.name]
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_text(json.dumps(items))
    return result


def output_flag(fanout: dag.FanOut) -> str:
    """The flag of the file a step writes a later fan-out's items to: --shards-output."""
    return f"--{fanout.name}-output"


def _need(value, flag: str, stage: str):
    if value is None:
        raise StageError(f"stage {stage} needs {flag}")
    return value
