"""The Kubeflow DAG: compiled structure, component YAMLs, a kfp.local run equal to the in-process run."""
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY
from infer_distill.cli import main as cli_main
from infer_distill.cli import run_pipeline
from infer_distill.config import load_config
from infer_distill.stages import Layout
from infer_distill.store import open_artifact

sys.path.insert(0, str(REPO / "pipelines"))
import infer_dag  # noqa: E402

GPU_STAGES = ("train-teacher", "synthesize-ufc", "evaluate-student")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("dag") / "infer.yaml"
    code = infer_dag.main(["compile", "--output", str(out), "--node-selector", "cloud.google.com/gke-accelerator=nvidia-h100",
                           "--toleration", "nvidia.com/gpu:NoSchedule", "--toleration", "team=ml:NoExecute",
                           "--parallelism", "3", "--retries", "4", "--gpus", "2"])
    assert code == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _loops(spec):
    return {name: t for name, t in spec["root"]["dag"]["tasks"].items() if "parameterIterator" in t}


def _loop_over(spec, items_param):
    (loop,) = [t for t in _loops(spec).values() if t["parameterIterator"]["items"]["inputParameter"] == items_param]
    return loop, spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]


def test_fan_out_over_subset_groups_with_parallelism_and_fan_in(compiled):
    spec, _ = compiled
    loop, body = _loop_over(spec, "pipelinechannel--select-subsets-Output")
    assert loop["iteratorPolicy"]["parallelismLimit"] == 3
    assert set(body) == {"synthesize-ufc"}
    for consumer in ("soft-label", "report"):
        ufc = spec["root"]["dag"]["tasks"][consumer]["inputs"]["artifacts"]["ufc"]["taskOutputArtifact"]
        assert ufc["producerTask"] == loop["taskInfo"]["name"]  # dsl.Collected over the shards
    assert spec["components"]["comp-soft-label"]["inputDefinitions"]["artifacts"]["ufc"]["isArtifactList"]


def test_teachers_and_students_fan_out(compiled):
    spec, _ = compiled
    _, body = _loop_over(spec, "pipelinechannel--teacher_archs")
    assert set(body) == {"train-teacher"}
    _, body = _loop_over(spec, "pipelinechannel--resolve-config-Output")
    assert set(body) == {"evaluate-student"}
    students = spec["root"]["dag"]["tasks"]["report"]["inputs"]["artifacts"]["students"]["taskOutputArtifact"]
    assert students["outputArtifactKey"] == "pipelinechannel--evaluate-student-student"


def test_gpu_resources_node_selector_tolerations_and_retries(compiled):
    spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    for stage in GPU_STAGES:
        resources = executors[f"exec-{stage}"]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu" and resources["accelerator"]["resourceCount"] == "2"
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"]
        k8s = platform[f"exec-{stage}"]
        assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-h100"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
        assert {"key": "team", "operator": "Equal", "value": "ml", "effect": "NoExecute"} in k8s["tolerations"]
    for stage in ("prepare-data", "soft-label", "report"):
        assert "accelerator" not in executors[f"exec-{stage}"]["container"].get("resources", {})
        assert f"exec-{stage}" not in platform
    retries = {name: t.get("retryPolicy", {}).get("maxRetryCount")
               for comp in spec["components"].values() for name, t in comp.get("dag", {}).get("tasks", {}).items()}
    assert all(retries[s] == 4 for s in GPU_STAGES)


def test_parameters_mirror_the_config(compiled):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    cfg = load_config(None)
    assert params["teacher_archs"]["defaultValue"] == cfg.teachers.archs
    assert params["ipc"]["defaultValue"] == cfg.budget.ipc
    assert params["seeds"]["defaultValue"] == cfg.students.seeds
    assert cfg == load_config(REPO / "configs" / "quickstart.yaml")  # compiled without --config: the quickstart
    assert yaml.safe_load(params["config_yaml"]["defaultValue"]) == cfg.model_dump(mode="json")


def test_every_step_runs_the_project_image(compiled):
    spec, _ = compiled
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"infer-distill:0.1.0"}


def test_component_yamls_are_current(tmp_path, monkeypatch):
    monkeypatch.delenv("INFER_DISTILL_IMAGE", raising=False)
    fresh = infer_dag.compile_components(tmp_path)
    assert len(fresh) == 9
    for path in fresh:
        committed = REPO / "components" / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} missing: run python pipelines/infer_dag.py compile-components"
        # compared as data: importing hera (the chart tests) changes how PyYAML lays out strings
        assert list(yaml.safe_load_all(committed.read_text())) == list(yaml.safe_load_all(path.read_text())), \
            f"{committed} is stale: run python pipelines/infer_dag.py compile-components"


def test_config_the_dag_cannot_express(tmp_path, capsys):
    code = infer_dag.main(["compile", "--output", str(tmp_path / "x.yaml"), "--set", "teachers.pretrained={resnet_tiny: /w.safetensors}"])
    assert code == 2 and "teachers.pretrained.resnet_tiny" in capsys.readouterr().err
    code = infer_dag.main(["compile", "--output", str(tmp_path / "x.yaml"), "--gpus", "0", "--set", "device=cuda"])
    assert code == 2 and "device='cuda'" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_local_run_refuses_an_s3_root(capsys):
    assert infer_dag.main(["run-local", "--out", "s3://bucket/run"]) == 2
    assert "kfp.local writes only to a local pipeline root" in capsys.readouterr().err
    assert cli_main(["run", "--engine", "kfp-local", "--out", "s3://bucket/run"]) == 2


def test_submit_needs_an_object_store_root_and_a_reachable_host(capsys):
    assert infer_dag.main(["submit", "--host", "http://127.0.0.1:1", "--pipeline-root", "/tmp/x"]) == 2
    assert "--pipeline-root /tmp/x" in capsys.readouterr().err


@pytest.mark.slow
def test_kfp_local_run_equals_the_in_process_run(tmp_path):
    overrides = TINY + ["synthesis.subsets_per_shard=5"]
    cfg = load_config(None, overrides)
    report_uri = infer_dag.run_local(cfg, str(tmp_path / "kfp"))
    report = open_artifact(report_uri).read_manifest()
    run_root = Path(report_uri).parents[1]

    reference = str(tmp_path / "inproc")
    run_pipeline(cfg, reference, progress=False)

    def sha(uri, name):
        return open_artifact(uri).read_manifest()["files"][name]["sha256"]

    shards = sorted(run_root.glob("for-loop-*-iteration-*/synthesize-ufc/ufc"))
    assert len(shards) == len(cfg.shard_plan(10)) == 2
    for shard in shards:
        ids = open_artifact(shard).read_manifest()["metrics"]["subset_ids"]
        assert sha(shard, "ufc.safetensors") == sha(Layout(reference).ufc(ids), "ufc.safetensors")
    assert sha(run_root / "soft-label" / "distilled", "distilled.safetensors") == \
        sha(Layout(reference).distilled, "distilled.safetensors")
    assert report["metrics"]["report"]["budget"]["num_subsets"] == 8
    assert (run_root / "report" / "page").read_text().startswith("<!doctype html>")
