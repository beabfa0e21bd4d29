"""What the generated KFP components run (steps.py): every step's stage, logging its numbers for the
Kubeflow UI (`run_step`), and every fan-in of a fan-out's artifacts into one (`gather`)."""
from __future__ import annotations

import shutil
import sys
from typing import Any

from infer_distill import dag
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.dag.metrics import METRICS
from infer_distill.engines.runner import run_item
from infer_distill.errors import ArtifactError, Interrupted
from infer_distill.runtime.signals import interruptible
from infer_distill.storage import open_artifact


def run_step(name: str, config: str, item: dict, inputs: dict, gathered: dict, out: str, metrics, ui: dict | None = None):
    """Run step `name` with its item and inputs (artifact paths; `gathered`: a fan-out's outputs gathered into
    one artifact laid out as a run root's) through the one step runner; log its accuracies; copy the pages the
    UI shows (`Step.ui_pages`) to `ui`; return what a later loop runs over, if anything."""
    cfg = load_config(config)
    step = dag.STEPS[name]
    if "subset_ids" in item:
        item = {**item, "subset_ids": [int(i) for i in item["subset_ids"].split(",")]}
    for input_name, root in gathered.items():  # None: an optional fan-out the DAG was compiled without
        producer = dag.PRODUCER[input_name]
        inputs[input_name] = [] if root is None else [dag.location(Layout(root), producer, i) for i in producer.over.items(cfg, None)]
    try:
        with interruptible():  # a pod's SIGTERM (eviction, deadline) abandons the item as `infer-distill stage` does
            manifest = run_item(cfg, step, item, inputs, out, progress=False).manifest
    except Interrupted as e:
        print(f"stopped by {e.name}: {name} was abandoned and wrote nothing; finished artifacts are kept", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    found = METRICS[name].from_manifest(manifest, out)
    label = "_".join(str(v) for v in item.values())
    for key, value in found.accuracies().items():  # a fan-out's by its location and item: teacher_resnet18_test_acc
        metrics.log_metric("_".join(filter(None, (step.location if step.over else "", label, key))), value)
    for page, (_, file) in step.ui_pages.items():
        shutil.copyfile(f"{out}/{file}", ui[page])
    fed = dag.fed_fanouts(step)
    return dag.fanout_items(cfg, found.num_classes)[fed[0].name] if fed else None


def made_for(step: dag.Step, manifest: dict) -> dict[str, Any]:
    """The item of `step`'s fan-out that the artifact of `manifest` was made for: each item key as its stage
    records it, among its settings (distill-method's method) or else its metrics (train-teacher's arch)."""
    if manifest.get("stage") != step.name:
        raise ArtifactError(f"a {manifest.get('stage')!r} artifact is among the collected {step.name} artifacts")
    settings, metrics = manifest.get("settings", {}), manifest.get("metrics", {})
    missing = [k for k in step.over.keys if k not in settings and k not in metrics]
    if missing:
        raise ArtifactError(f"a {step.name} artifact records no {', '.join(missing)} in its settings or metrics: "
                            f"it cannot be told which {step.over.name} item it is; rerun {step.name}")
    return {k: settings[k] if k in settings else metrics[k] for k in step.over.keys}


def gather(output: str, config: str, collected: list[str], out: str) -> None:
    """Fan-in: the collected artifacts of the fan-out producing `output`, copied into `out` where a run root holds
    them (`dag.location`), so that a later loop reads them all as one artifact (KFP cannot pass a collected list
    into a ParallelFor). Refuses a run where an item of the fan-out has no artifact."""
    cfg = load_config(config)
    producer = dag.PRODUCER[output]

    def key(item: dict) -> tuple[str, ...]:  # item values as the command line gives them (subset ids "0,1,2")
        return tuple(dag.cli_value(item[k]) for k in producer.over.keys)

    by_item = {key(made_for(producer, open_artifact(uri).read_manifest())): uri for uri in collected}
    items = producer.over.items(cfg, None)
    missing = [producer.over.label(i) for i in items if key(i) not in by_item]
    if missing:
        raise ArtifactError(f"{producer.name}: no artifact of {', '.join(missing)} among the {len(collected)} collected "
                            f"(they are of {', '.join(' '.join(k) for k in by_item) or 'nothing'}); rerun the pipeline")
    for item in items:
        shutil.copytree(by_item[key(item)], dag.location(Layout(out), producer, item))
