"""What every step's KFP component runs (kfp/steps.py, generated): the stage, and its numbers for the Kubeflow UI."""
from __future__ import annotations

import shutil

from .. import plan
from ..config import load_config
from ..metrics import METRICS


def run_step(name: str, config: str, item: dict, inputs: dict, gathered: dict, out: str, metrics, ui: dict | None = None):
    """Run step `name` with its item and inputs (artifact paths; `gathered`: a fan-out's outputs gathered into
    one artifact laid out as a run root's); log its accuracies; return what a later loop runs over, if anything."""
    from ..plan import Layout

    cfg = load_config(config)
    step = plan.STEPS[name]
    if "subset_ids" in item:
        item = {**item, "subset_ids": [int(i) for i in item["subset_ids"].split(",")]}
    for input_name, root in gathered.items():  # None: an optional fan-out the DAG was compiled without
        producer = plan.PRODUCER[input_name]
        inputs[input_name] = [] if root is None else [plan.location(Layout(root), producer, i) for i in producer.over.items(cfg, None)]
    manifest = step.function(cfg, **item, **inputs, out=out)
    found = METRICS[name].from_manifest(manifest, out)
    label = "_".join(str(v) for v in item.values())
    for key, value in found.accuracies().items():
        metrics.log_metric("_".join(filter(None, (step.location, label, key))), value)
    if name == "report":
        shutil.copyfile(f"{out}/report.md", ui["summary"])
        shutil.copyfile(f"{out}/report.html", ui["page"])
        for row in found.report["student_summary"]:
            metrics.log_metric(f"{row['arch']}_{row['label_mode']}_final_acc_mean", row["final_acc_mean"])
        for row in found.report["teachers"]:
            metrics.log_metric(f"teacher_{row['arch']}_test_acc", row["test_acc"])
    sources = [f for f in plan.FANOUTS.values() if f.source == name]
    if sources:
        return plan.fanout_items(cfg, found.num_classes)[sources[0].name]
    return None
