"""Each step's metrics are one dataclass (metrics.METRICS): every step of the plan has one, it reads back exactly what
its stage wrote (the manifests of a real tiny run of every step), and a manifest whose metrics are not its step's is
refused, naming the artifact kind and the key."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import TINY

from infer_distill import dag
from infer_distill.config.loading import load_config
from infer_distill.dag import layout
from infer_distill.dag.metrics import METRICS, DataMetrics, MethodSetMetrics, StudentMetrics, TeacherMetrics, read
from infer_distill.engines.walk import run_in_process
from infer_distill.errors import ArtifactError
from infer_distill.outputs import instances
from infer_distill.stages import artifacts

# TINY with every optional step: a peer method and its score, the full-data reference (and the default baseline)
EVERY_STEP = TINY + ["methods=[infer, random]", "students.full_data_reference=true"]


def test_every_step_of_the_plan_has_its_metrics_class():
    assert {step.name for step in dag.PLAN} <= set(METRICS)  # (and any step a test adds: tests/test_new_step.py)
    assert all(cls.kind == name for name, cls in METRICS.items())


@pytest.fixture(scope="module")
def every_manifest(tmp_path_factory) -> tuple[object, Path, list[tuple[str, dict]]]:
    cfg = load_config(None, EVERY_STEP)
    root = tmp_path_factory.mktemp("metrics") / "run"
    run_in_process(cfg, str(root), progress=False)
    manifests = [(str(p.parent), json.loads(p.read_text())) for p in sorted(root.rglob("manifest.json"))]
    return cfg, root, manifests


@pytest.mark.slow
def test_metrics_read_back_what_every_stage_wrote(every_manifest):
    _, _, manifests = every_manifest
    assert {m["stage"] for _, m in manifests} == {s.name for s in dag.PLAN}  # the run made an artifact of every kind
    for uri, manifest in manifests:
        typed = read(manifest, uri)
        assert type(typed) is METRICS[manifest["stage"]]
        assert typed.to_dict() == manifest["metrics"], uri
        assert json.dumps(typed.to_dict(), sort_keys=True) == json.dumps(manifest["metrics"], sort_keys=True)


@pytest.mark.slow
def test_a_manifest_whose_metrics_are_not_its_steps_is_refused_and_remade(every_manifest):
    cfg, root, manifests = every_manifest
    teacher = next(m for _, m in manifests if m["stage"] == "train-teacher")
    lacking = {**teacher, "metrics": {k: v for k, v in teacher["metrics"].items() if k != "test_acc"}}
    with pytest.raises(ArtifactError, match=r"train-teacher artifact t1: its metrics lack test_acc .*rerun stage train-teacher"):
        TeacherMetrics.from_manifest(lacking, "t1")
    extra = {**teacher, "metrics": {**teacher["metrics"], "top5_acc": 0.9}}
    with pytest.raises(ArtifactError, match="train-teacher artifact: its metrics have unknown top5_acc"):
        read(extra)
    with pytest.raises(ArtifactError, match="is a 'train-teacher' artifact, but a 'evaluate-student' artifact is needed"):
        StudentMetrics.from_manifest(teacher)
    with pytest.raises(ArtifactError, match="'count-pixels' artifact, which no step of the plan makes"):
        read({**teacher, "stage": "count-pixels"})

    # a resumed run remakes an artifact whose metrics its readers could not read
    data = layout.Layout(str(root)).data
    assert artifacts.is_current(data, cfg, "prepare-data")
    path = Path(data) / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["metrics"]["num_train"]
    path.write_text(json.dumps(manifest))
    assert not artifacts.is_current(data, cfg, "prepare-data")


@pytest.mark.slow
def test_accuracies_are_the_fractions_the_kubeflow_ui_logs(every_manifest):
    _, _, manifests = every_manifest
    accuracies = {m["stage"]: set(read(m).accuracies()) for _, m in manifests}
    assert accuracies["train-teacher"] == {"test_acc"}
    assert accuracies["evaluate-student"] == accuracies["evaluate-method"] == {"final_acc", "best_acc"}
    assert accuracies["prepare-data"] == set()
    cfg = load_config(None, EVERY_STEP)  # the report: each student's mean over seeds and each teacher's
    assert accuracies["report"] == ({f"{r['arch']}_{r['label_mode']}_final_acc_mean" for r in cfg.student_runs()}
                                    | {f"teacher_{arch}_test_acc" for arch in cfg.teachers.archs})


def test_a_peers_own_numbers_are_stored_only_when_it_records_them():
    common = {"budget": {"method": "herding"}, "classes": ["a", "b"], "mean": [0.5], "std": [0.25], "crop_padding": 1,
              "hflip": False, "feature_similarity": {}, "instance_order": "row r", "compute": {}}
    herding = MethodSetMetrics(**common, features="penultimate, teacher convnet")
    assert herding.to_dict() == {**common, "features": "penultimate, teacher convnet"}
    assert MethodSetMetrics(**common).to_dict() == common  # random records none of them
    manifest = {"stage": "distill-method", "metrics": herding.to_dict()}
    assert MethodSetMetrics.from_manifest(manifest) == herding


def test_the_distilled_sets_description_is_the_data_artifacts():
    assert instances.DISTILLED_DESCRIPTION == ("classes", "mean", "std", "crop_padding", "hflip")
    data = DataMetrics(classes=["a"], mean=[0.5], std=[0.2], crop_padding=1, hflip=True, num_classes=1, in_chans=1,
                       image_size=8, num_train=4, num_test=2, min_train_per_class=4,
                       splits={"train": {"rows": 4, "shape": [1, 8, 8], "dtype": "uint8", "block_rows": 1024}})
    assert data.description() == {k: data.to_dict()[k] for k in instances.DISTILLED_DESCRIPTION}


@pytest.mark.slow
def test_tracking_logs_every_trained_model_of_every_step(every_manifest):
    """What experiment tracking logs of each manifest (`scalars`): every teacher, shard and student of every kind has
    its curves under its own prefix, and the keys of one run never collide."""
    cfg, _, manifests = every_manifest
    logged = {m["stage"]: read(m).scalars(m["settings"]) for _, m in manifests}
    assert {stage for stage, s in logged.items() if s} == {"train-teacher", "synthesize-ufc", "evaluate-student",
                                                           "evaluate-baseline", "evaluate-method", "evaluate-full-data"}
    prefixes = {stage: {key.split("/")[0] for key, _, _ in s} for stage, s in logged.items() if s}
    assert prefixes == {"train-teacher": {"teacher"}, "synthesize-ufc": {"synthesis"}, "evaluate-student": {"student"},
                        "evaluate-baseline": {"baseline"}, "evaluate-method": {"method"}, "evaluate-full-data": {"full_data"}}
    for _, m in manifests:
        if m["stage"] in ("evaluate-student", "evaluate-method", "evaluate-full-data"):  # its test curve, epoch by epoch
            curve = [(step, value) for key, value, step in read(m).scalars(m["settings"]) if key.endswith("/test_acc")]
            assert curve == [tuple(point) for point in m["metrics"]["curve"]]
    keys = [(key, step) for _, m in manifests for key, _, step in read(m).scalars(m["settings"])]
    assert len(keys) == len(set(keys))


@pytest.mark.slow
def test_metrics_of_the_wrong_type_are_refused_naming_the_key(every_manifest):
    """Every kind: a field holding a value of another type (a manifest altered by hand) is an ArtifactError naming
    it, not a traceback where a stage first uses it."""
    _, _, manifests = every_manifest
    for uri, manifest in {m["stage"]: (u, m) for u, m in manifests}.values():
        key, value = next((k, v) for k, v in manifest["metrics"].items() if not isinstance(v, (str, bool)))
        bad = "not this" if isinstance(value, dict) else {"not": "this"}
        wrong = {**manifest, "metrics": {**manifest["metrics"], key: bad}}
        with pytest.raises(ArtifactError, match=rf"metrics\.{key}={re.escape(repr(bad))}: .*rerun stage {manifest['stage']}"):
            read(wrong, uri)
