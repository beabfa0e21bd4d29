"""Experiment tracking (`tracking.backend`): a tiny digits run logs to the real MLflow and TensorBoard, read back
with their own readers; without a backend neither library is imported; a missing extra is refused before any work."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY

from infer_distill import dag
from infer_distill.cli import main
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.dag.steps import PLAN
from infer_distill.storage import open_artifact

REPO = Path(__file__).resolve().parents[1]
SETS = [part for s in TINY for part in ("--set", s)]


def _run(out: Path, backend: str) -> None:
    assert main(["run", "--out", str(out), "--no-progress", *SETS, "--set", f"tracking.backend={backend}"]) == 0


def _metrics(uri: str) -> dict:
    return open_artifact(uri).read_manifest()["metrics"]


def test_tracking_is_in_no_artifacts_settings():
    """Turning tracking on reuses every finished artifact: no stage's settings (so fingerprint) change."""
    item = {"arch": "convnet_d2_w32", "seed": 0, "label_mode": "static", "subset_ids": [0, 1], "baseline": "random_soft",
            "method": "rded", "score": "soft", "protocol": "epochs"}
    for step in PLAN:
        keys = {k: item[k] for k in (step.over.keys if step.over else ())}
        settings = [dag.settings(load_config(None, TINY + [f"tracking.backend={b}"]), step.name, **keys)
                    for b in ("none", "mlflow", "tensorboard")]
        assert settings[0] == settings[1] == settings[2], step.name


@pytest.mark.slow
def test_mlflow_local_store_holds_config_curves_and_report(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    _run(out, "mlflow")
    client = MlflowClient(f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("infer-distill").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == str(out)
    cfg = load_config(None, TINY + ["tracking.backend=mlflow"])
    assert run.data.params["students.epochs"] == "2" and run.data.params["teachers.archs"] == json.dumps(cfg.teachers.archs)
    config_file = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(config_file).read_text()) == cfg.model_dump(mode="json")

    layout = Layout(str(out))
    for arch in cfg.teachers.archs:
        teacher = _metrics(layout.teacher(arch))
        assert [m.value for m in client.get_metric_history(run.info.run_id, f"teacher/{arch}/train_loss")] == \
            pytest.approx(teacher["train_losses"])
        assert client.get_metric_history(run.info.run_id, f"teacher/{arch}/test_acc")[0].value == pytest.approx(teacher["test_acc"])
    student = _metrics(layout.student("convnet_d3_w32", 0, "static"))
    history = client.get_metric_history(run.info.run_id, "student/convnet_d3_w32/static/seed0/test_acc")
    assert sorted((m.step, m.value) for m in history) == [(e, pytest.approx(a)) for e, a in student["curve"]]
    assert run.data.metrics["student/convnet_d3_w32/static/seed0/final_acc"] == pytest.approx(student["final_acc"])
    assert run.data.metrics["student/convnet_d3_w32/static/seed0/best_acc"] == pytest.approx(student["best_acc"])
    baseline = _metrics(layout.baseline("convnet_d3_w32", 0, "random_soft"))
    assert len(client.get_metric_history(run.info.run_id, "baseline/random_soft/convnet_d3_w32/seed0/train_loss")) == \
        len(baseline["train_losses"]) == baseline["epochs"]
    (shard,) = [k for k in run.data.metrics if k.startswith("synthesis/")]
    losses = client.get_metric_history(run.info.run_id, shard)
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [0, cfg.synthesis.iterations]

    logged = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    report = open_artifact(layout.report)
    expected = {f"report/{n}" for n in report.read_manifest()["files"] if n.endswith((".md", ".html", ".png"))}
    assert {"report/report.md", "report/report.html"} <= expected and any(n.endswith(".png") for n in expected)
    assert logged == expected
    md = client.download_artifacts(run.info.run_id, "report/report.md", str(tmp_path))
    assert Path(md).read_bytes() == report.read_bytes("report.md")

    # one stage on its own logs a run of its own, beside the first
    assert main(["stage", "train-teacher", "--root", str(out), "--arch", "resnet_tiny", *SETS, "--set", "tracking.backend=mlflow"]) == 0
    runs = client.search_runs([run.info.experiment_id])
    (single,) = [r for r in runs if r.info.run_id != run.info.run_id]
    assert single.info.run_name == "train-teacher resnet_tiny"
    assert single.data.metrics["teacher/resnet_tiny/test_acc"] == pytest.approx(_metrics(layout.teacher("resnet_tiny"))["test_acc"])


@pytest.mark.slow
def test_tensorboard_event_files_hold_config_curves_and_report(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    _run(out, "tensorboard")
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    cfg, layout = load_config(None, TINY + ["tracking.backend=tensorboard"]), Layout(str(out))
    for arch in cfg.teachers.archs:
        teacher = _metrics(layout.teacher(arch))
        assert [e.value for e in events.Scalars(f"teacher/{arch}/train_loss")] == pytest.approx(teacher["train_losses"])
    student = _metrics(layout.student("convnet_d3_w32", 0, "static"))
    assert [(e.step, e.value) for e in events.Scalars("student/convnet_d3_w32/static/seed0/test_acc")] == \
        [(s, pytest.approx(a)) for s, a in student["curve"]]
    assert [e.value for e in events.Scalars("student/convnet_d3_w32/static/seed0/train_loss")] == pytest.approx(student["train_losses"])
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert yaml.safe_load("\n".join(line[4:] for line in config_text.splitlines())) == cfg.model_dump(mode="json")
    pngs = {n for n in open_artifact(layout.report).read_manifest()["files"] if n.endswith(".png")}
    assert pngs and set(events.Tags()["images"]) == {f"report/{n}" for n in pngs}
    assert "report/report.md/text_summary" in events.Tags()["tensors"]


@pytest.mark.processes
def test_an_mlflow_server_that_does_not_answer_is_worth_retrying_and_nothing_runs(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert main(["run", "--out", str(tmp_path / "run"), "--no-progress", *SETS, "--set", "tracking.backend=mlflow"]) == 75
    assert f"the MLflow tracking server http://127.0.0.1:{port} (MLFLOW_TRACKING_URI) did not answer" in capsys.readouterr().err
    assert not (tmp_path / "run" / "data").exists()


def _python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "PYTHONPATH": str(REPO / "src")},
                          capture_output=True, text=True, timeout=600)


@pytest.mark.processes
@pytest.mark.slow
def test_no_backend_never_imports_the_libraries(tmp_path):
    done = _python(f"""
import sys
from infer_distill.cli import main
assert main(["config"]) == 0
assert main(["run", "--out", {str(tmp_path / "run")!r}, "--no-progress", *{SETS!r}]) == 0
print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "tensorboard") or m == "torch.utils.tensorboard"))
""")
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stdout
    assert not (tmp_path / "run" / "mlflow").exists() and not (tmp_path / "run" / "tensorboard").exists()


@pytest.mark.processes
@pytest.mark.parametrize("backend", ["mlflow", "tensorboard"])
def test_a_missing_extra_is_refused_before_any_work(tmp_path, backend):
    done = _python(f"""
import sys
sys.modules[{backend!r}] = None  # as if the extra were not installed
from infer_distill.cli import main
sys.exit(main(["run", "--out", {str(tmp_path / "run")!r}, "--no-progress", *{SETS!r}, "--set", "tracking.backend={backend}"]))
""")
    assert done.returncode == 2, done.stderr
    assert f"pip install 'infer-distill[{backend}]'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "data").exists()
