"""Adding a step is `dag.add_step` (plus its stage function, its settings and its metrics class): the CLI's `stage`
command, the walks, the KFP components (generated) and the Argo and compose renderings pick a new step up from
the plan alone. Nothing else is patched here: the toy step's stage function lives in this module (`Step.module`),
its metrics class enters itself, and its artifact gets the folder named after its location."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
from conftest import TINY

from infer_distill import dag
from infer_distill.cli import commands
from infer_distill.config.loading import load_config
from infer_distill.dag import artifact_settings, metrics
from infer_distill.data.splits import open_split
from infer_distill.engines import argo, compose
from infer_distill.engines.executor import Walk, run_walks
from infer_distill.stages import artifacts


@dataclass(frozen=True, kw_only=True)
class CountsMetrics(metrics.StageMetrics):
    kind: ClassVar[str] = "count-images"
    counts: dict[str, int]        # training images, by class


def count_images(cfg, data: str, out: str) -> dict:
    """The toy stage: how many training images each class has."""
    output = artifacts._begin(out, {"data": data})
    art, _ = artifacts.load_input(data, cfg, "prepare-data")
    y = open_split(art, "train").labels
    counts = {str(c): int((y == c).sum()) for c in y.unique()}
    return artifacts._write(output, cfg, {"counts.json": json.dumps(counts).encode()}, CountsMetrics(counts=counts))


@pytest.fixture
def toy_plan():
    # its settings: those of the data it reads (a step declares its settings function beside its inputs)
    toy = dag.Step("count-images", "counts", "counts", ("data",), module=__name__, settings=artifact_settings.data_settings)
    dag.add_step(toy, after="prepare-data")
    yield toy
    dag.remove_step(toy.name)


def test_add_step_refuses_a_step_that_does_not_fit_the_plan() -> None:
    step = dag.Step("count-ufcs", "ufc_counts", "ufc_counts", ("ufc",), module=__name__, settings=artifact_settings.data_settings)
    with pytest.raises(ValueError, match="must come after the steps producing its inputs"):
        dag.add_step(step, after="prepare-data")
    with pytest.raises(ValueError, match="already has a step"):
        dag.add_step(dag.STEPS["report"], after="soft-label")
    assert [s.name for s in dag.PLAN] == list(dag.STEPS) == list(dag.STAGES)


@pytest.mark.slow
def test_the_cli_and_the_executor_run_a_new_step(toy_plan, tmp_path):
    root = str(tmp_path)
    sets = [part for s in TINY for part in ("--set", s)]
    assert commands.main(["stage", "prepare-data", "--root", root, *sets]) == 0
    assert commands.main(["stage", "count-images", "--root", root, *sets]) == 0
    counts = json.loads((tmp_path / "counts" / "counts.json").read_text())
    assert sum(counts.values()) > 0 and len(counts) == 10
    assert commands.main(["stage", "count-images", "--data", f"{root}/data", "--out", f"{root}/counts2", *sets]) == 0
    cfg = load_config(None, TINY)
    seen = []
    run_walks([Walk("toy", cfg, root, steps=("prepare-data", "count-images"))], on_step=lambda w, r: seen.append((r.stage, r.skipped)),
              progress=False)
    assert seen == [("prepare-data", True), ("count-images", True)]  # both current: the plan's rule applies to the new step


def test_the_renderings_pick_up_a_new_step(toy_plan):
    from infer_distill.engines.kfp import generate

    source = generate.module_source()
    assert ("def count_images(config: Input[Artifact], data: Input[Dataset], counts: Output[Artifact], metrics: Output[Metrics]):"
            in source) and "count_images," in source
    namespace: dict = {}
    exec(compile(source, "steps.py", "exec"), namespace)  # a module KFP can take its components from
    assert [f.__name__ for f in namespace["STEP_FUNCTIONS"]][:2] == ["prepare_data", "count_images"]

    text = json.dumps(argo.workflow_template(), default=str)
    assert '"count-images"' in text
    rendering = compose.Rendering("compose.yaml", b"{}", "config.yaml", "config", "infer-distill render compose")
    services = compose.compose(load_config(None), rendering)["services"]
    service = next(s for name, s in services.items() if name.startswith("count-images"))
    assert service["command"][:2] == ["stage", "count-images"]
    assert any(d.startswith("prepare-data") for d in service["depends_on"])
