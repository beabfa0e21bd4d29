"""Adding a step is one edit in the plan (plus its stage function, its settings and its metrics class): the CLI's `stage`
command, the executor, the KFP components (generated) and the Argo and compose renderings pick a new
step up from `plan.PLAN` alone."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest

from conftest import TINY
from infer_distill import cli, config, metrics, plan, stages
from infer_distill.executor import Walk, run_walks
from infer_distill.plan import Layout
from pipelines import render


@dataclass(frozen=True, kw_only=True)
class CountsMetrics(metrics.StageMetrics):
    kind: ClassVar[str] = "count-images"
    counts: dict[str, int]        # training images, by class


def count_images(cfg, data: str, out: str) -> dict:
    """The toy stage: how many training images each class has."""
    output = stages._begin(out, {"data": data})
    y = stages._data(cfg, data, "train")[1]
    counts = {str(c): int((y == c).sum()) for c in y.unique()}
    return stages._write(output, cfg, {"counts.json": json.dumps(counts).encode()}, CountsMetrics(counts=counts))


@pytest.fixture
def toy_plan(monkeypatch):
    # its settings: those of the data it reads (a step declares its settings function beside its inputs)
    toy = plan.Step("count-images", "counts", "counts", ("data",), settings=config.data_settings)
    steps = (*plan.PLAN[:1], toy, *plan.PLAN[1:])
    monkeypatch.setattr(plan, "PLAN", steps)
    monkeypatch.setattr(plan, "STEPS", {s.name: s for s in steps})
    monkeypatch.setattr(plan, "PRODUCER", {s.output: s for s in steps})
    monkeypatch.setattr(plan, "STAGES", tuple(s.name for s in steps))
    monkeypatch.setattr(stages, "count_images", count_images, raising=False)
    monkeypatch.setitem(metrics.METRICS, toy.name, CountsMetrics)
    monkeypatch.setattr(Layout, "counts", property(lambda layout: layout._join("counts")), raising=False)
    return toy


@pytest.mark.slow
def test_the_cli_and_the_executor_run_a_new_step(toy_plan, tmp_path):
    root = str(tmp_path)
    sets = [part for s in TINY for part in ("--set", s)]
    assert cli.main(["stage", "prepare-data", "--root", root, *sets]) == 0
    assert cli.main(["stage", "count-images", "--root", root, *sets]) == 0
    counts = json.loads((tmp_path / "counts" / "counts.json").read_text())
    assert sum(counts.values()) > 0 and len(counts) == 10
    assert cli.main(["stage", "count-images", "--data", f"{root}/data", "--out", f"{root}/counts2", *sets]) == 0
    cfg = config.load_config(None, TINY)
    seen = []
    run_walks([Walk("toy", cfg, root, steps=("prepare-data", "count-images"))], on_step=lambda w, r: seen.append((r.stage, r.skipped)),
              progress=False)
    assert seen == [("prepare-data", True), ("count-images", True)]  # both current: the plan's rule applies to the new step


def test_the_renderings_pick_up_a_new_step(toy_plan):
    from infer_distill.kfp import generate

    source = generate.module_source()
    assert ("def count_images(config: Input[Artifact], data: Input[Dataset], counts: Output[Artifact], metrics: Output[Metrics]):"
            in source) and "count_images," in source
    namespace: dict = {}
    exec(compile(source, "steps.py", "exec"), namespace)  # a module KFP can take its components from
    assert [f.__name__ for f in namespace["STEP_FUNCTIONS"]][:2] == ["prepare_data", "count_images"]

    argo = render.workflow_template()
    text = json.dumps(argo, default=str)
    assert '"count-images"' in text
    services = render.compose("quickstart.yaml", "moto", [])["services"]
    service = next(s for name, s in services.items() if name.startswith("count-images"))
    assert service["command"][:2] == ["stage", "count-images"]
    assert any(d.startswith("prepare-data") for d in service["depends_on"])
