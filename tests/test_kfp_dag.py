"""The Kubeflow DAG: compiled structure and placement, the image and backend checks, a kfp.local run
equal to the in-process run. (That the compiled DAG is the plan is checked in test_plan.py.)"""
import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY

from infer_distill import dag
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.engines.kfp import dag as infer_dag
from infer_distill.engines.walk import run_in_process
from infer_distill.runtime.accelerator import REQUIRE_CUDA
from infer_distill.storage import open_artifact

IMAGE = "registry.example.com:5000/ml/infer-distill:0.1.0-cuda"
# the steps a pipeline compiled for the default config has (the methods' fan-outs are empty there)
KFP_STEPS = [s for s in dag.PLAN if s.name not in dag.omitted(load_config(None))]
GPU_STAGES = [s.name for s in KFP_STEPS if s.gpu]


def compile_dag(tmp_path, *options):
    out = tmp_path / "infer.yaml"
    assert infer_dag.main(["compile", "--output", str(out), "--image", IMAGE, *options]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_dag(tmp_path_factory.mktemp("dag"), "--node-selector", "cloud.google.com/gke-accelerator=nvidia-h100",
                       "--toleration", "team=ml:NoExecute", "--parallelism", "3", "--retries", "4", "--gpus", "2",
                       "--retry-max-hours", "48", "--set", "students.baselines=[random_soft]")


def _all_tasks(spec):
    return {name: t for comp in [spec["root"], *spec["components"].values()] for name, t in comp.get("dag", {}).get("tasks", {}).items()}


def test_gpu_pods_get_accelerators_the_gpu_toleration_and_the_node_selector(compiled):
    spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    for stage in GPU_STAGES:
        resources = executors[f"exec-{stage}"]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu" and resources["accelerator"]["resourceCount"] == "2"
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"]
        k8s = platform[f"exec-{stage}"]
        assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-h100"}
        # the accelerator's taint is tolerated by default, beside the ones given
        assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                      {"key": "team", "operator": "Equal", "value": "ml", "effect": "NoExecute"}]
    for stage in [s.name for s in KFP_STEPS if not s.gpu]:
        assert "accelerator" not in executors[f"exec-{stage}"]["container"].get("resources", {})
        assert f"exec-{stage}" not in platform


def _requires_cuda(executor: dict) -> bool:
    env = {e["name"]: e["value"] for e in executor["container"].get("env", [])}
    return env.get(REQUIRE_CUDA) == "1"


def test_exactly_the_gpu_pods_refuse_to_run_without_cuda(compiled, tmp_path):
    spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert {name for name, e in executors.items() if _requires_cuda(e)} == {f"exec-{s}" for s in GPU_STAGES}
    out = tmp_path / "cpu-only.yaml"  # no GPU requested: device auto may use the CPU
    assert infer_dag.main(["compile", "--output", str(out), "--image", IMAGE, "--gpus", "0"]) == 0
    cpu_only = next(yaml.safe_load_all(out.read_text()))
    assert not any(_requires_cuda(e) for e in cpu_only["deploymentSpec"]["executors"].values())


def test_every_task_retries_with_the_shared_policy(compiled):
    spec, _ = compiled
    containers = {n: t for n, t in _all_tasks(spec).items() if "componentRef" in t and not n.startswith("for-loop")}
    assert {n for n in containers} >= {s.name for s in KFP_STEPS} | {"resolve-config", "fanout-items", "gather-teachers"}
    for name, task in containers.items():
        assert task["retryPolicy"] == {"maxRetryCount": 4, "backoffDuration": f"{dag.RETRY.backoff_s}s",
                                       "backoffFactor": dag.RETRY.factor, "backoffMaxDuration": f"{48 * 3600}s"}, name


def test_gpu_fan_outs_are_limited_by_parallelism(compiled):
    spec, _ = compiled
    tasks = _all_tasks(spec)
    for name, task in tasks.items():
        if "parameterIterator" in task:
            inner = set(spec["components"][task["componentRef"]["name"]]["dag"]["tasks"])
            gpu = any(dag.STEPS[s].gpu for s in inner)
            assert task.get("iteratorPolicy", {}).get("parallelismLimit", 0) == (3 if gpu else 0), name


def test_parameters_are_the_config_sections_with_its_values(compiled):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    cfg = load_config(None, ["students.baselines=[random_soft]"])
    assert set(params) == set(type(cfg).model_fields)
    for name, value in cfg.model_dump(mode="json", exclude_none=True).items():
        assert params[name]["defaultValue"] == value, name  # a JSON object per section, not one long string
    assert params["teachers"]["parameterType"] == "STRUCT" and params["seed"]["parameterType"] == "NUMBER_INTEGER"
    assert load_config(None) == load_config(REPO / "configs" / "quickstart.yaml")  # compiled without --config: the quickstart


def test_every_step_runs_the_given_image(compiled):
    spec, _ = compiled
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {IMAGE}


@pytest.mark.parametrize("image", ["ghcr.io/acme/infer-distill:0.1.0", "registry.example.com:5000/a/b/infer-distill",
                                   "localhost/infer-distill:dev", "123456789012.dkr.ecr.us-east-1.amazonaws.com/infer-distill:1",
                                   f"docker.io/acme/infer-distill@sha256:{'a' * 64}"])
def test_registry_qualified_images_are_accepted(image, tmp_path):
    infer_dag.check_image(image)
    from infer_distill.engines.kfp.components import components

    infer_dag.compiler.Compiler().compile(components(image)["prepare-data"], str(tmp_path / "c.yaml"))
    (spec,) = yaml.safe_load_all((tmp_path / "c.yaml").read_text())
    assert [e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()] == [image]


@pytest.mark.parametrize("image, needle", [(None, "--image is required"), ("infer-distill:0.1.0", "name the registry"),
                                           ("acme/infer-distill:0.1.0", "name the registry")])
def test_compile_and_submit_refuse_an_image_without_a_registry(tmp_path, capsys, monkeypatch, image, needle):
    monkeypatch.delenv("INFER_DISTILL_IMAGE", raising=False)
    flags = ["--image", image] if image else []
    assert infer_dag.main(["compile", "--output", str(tmp_path / "x.yaml"), *flags]) == 2
    assert needle in capsys.readouterr().err and not (tmp_path / "x.yaml").exists()
    assert infer_dag.main(["submit", "--host", "http://127.0.0.1:1", "--pipeline-root", "s3://b/p", *flags]) == 2
    assert needle in capsys.readouterr().err
    assert infer_dag.main(["compile-components", "--output-dir", str(tmp_path / "c"), *flags]) == 2


def test_data_volume_is_mounted_into_the_data_step_only(tmp_path, capsys):
    spec, platform = compile_dag(tmp_path, "--data-pvc", "datasets", "--data-mount", "/data",
                                 "--set", "dataset.name=tiny-imagenet", "--set", "dataset.root=/data/tiny-imagenet-200")
    mounted = {name for name, e in platform.items() if "pvcMount" in e}
    assert mounted == {f"exec-{s.name}" for s in dag.PLAN if s.reads_dataset} == {"exec-prepare-data"}
    assert platform["exec-prepare-data"]["pvcMount"] == [{"constant": "datasets", "mountPath": "/data", "pvcNameParameter": {
        "runtimeValue": {"constant": "datasets"}}}]
    code = infer_dag.main(["compile", "--output", str(tmp_path / "y.yaml"), "--image", IMAGE, "--data-pvc", "datasets",
                           "--set", "dataset.name=tiny-imagenet", "--set", "dataset.root=/mnt/tiny-imagenet-200"])
    assert code == 2 and "dataset.root=/mnt/tiny-imagenet-200 is outside --data-mount /data" in capsys.readouterr().err


def test_component_yamls_compile_for_the_given_image(tmp_path):
    paths = infer_dag.compile_components(IMAGE, tmp_path)
    from infer_distill.engines.kfp.components import FUNCTIONS

    assert sorted(p.parent.name for p in paths) == sorted(FUNCTIONS)
    for path in paths:
        (spec,) = yaml.safe_load_all(path.read_text())
        assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {IMAGE}


def test_config_the_dag_cannot_express(tmp_path, capsys):
    def compile_with(*options):
        return infer_dag.main(["compile", "--output", str(tmp_path / "x.yaml"), "--image", IMAGE, *options])

    assert compile_with("--set", "teachers.pretrained={resnet_tiny: /w.safetensors}") == 2
    assert "teachers.pretrained.resnet_tiny" in capsys.readouterr().err
    assert compile_with("--gpus", "0", "--set", "device=cuda") == 2
    assert "device='cuda'" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize("tag, ok", [("2.14.0", True), ("2.15.1", True), ("v2.16.0-rc.1", True), ("unknown", True), ("", True),
                                     ("2.13.9", False), ("2.5.0", False), ("1.8.5", False)])
def test_backend_version_check(tag, ok):
    problem = infer_dag.backend_version_problem(tag)
    assert (problem is None) == ok
    if not ok:
        assert f"backend is {tag}" in problem and "2.14.0" in problem


def test_local_run_refuses_an_s3_root(capsys):
    from infer_distill.cli import main as cli_main

    assert infer_dag.main(["run-local", "--out", "s3://bucket/run"]) == 2
    assert "kfp.local writes only to a local pipeline root" in capsys.readouterr().err
    assert cli_main(["run", "--engine", "kfp-local", "--out", "s3://bucket/run"]) == 2


@pytest.mark.processes  # connects to a port nothing listens on
def test_submit_checks_its_input_before_connecting_and_names_an_unreachable_api(capsys):
    args = ["--host", "http://127.0.0.1:1", "--image", IMAGE]
    assert infer_dag.main(["submit", *args, "--pipeline-root", "/tmp/x"]) == 2
    assert "--pipeline-root /tmp/x" in capsys.readouterr().err
    assert infer_dag.main(["submit", *args, "--pipeline-root", "s3://b/p", "--namespace", "team"]) == 2
    assert "cannot reach the Kubeflow Pipelines API at http://127.0.0.1:1" in capsys.readouterr().err
    assert infer_dag.main(["upload", *args]) == 2
    assert "cannot reach the Kubeflow Pipelines API" in capsys.readouterr().err


@pytest.mark.processes
def test_the_dag_script_compiles_from_any_directory(tmp_path):
    """pipelines/infer_dag.py, the file users run, is a script over the installed package."""
    import subprocess
    import sys

    import infer_distill

    env = {**os.environ, "PYTHONPATH": str(Path(infer_distill.__file__).parents[1])}
    done = subprocess.run([sys.executable, str(REPO / "pipelines" / "infer_dag.py"), "compile", "--image", IMAGE,
                           "--config", "cifar10-ipc10", "--output", "infer.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    spec = next(yaml.safe_load_all((tmp_path / "infer.yaml").read_text()))
    assert spec["root"]["inputDefinitions"]["parameters"]["budget"]["defaultValue"]["ipc"] == 10


def test_gather_lays_each_artifact_out_by_the_item_its_manifest_records_and_names_a_missing_one(tmp_path):
    """The fan-in before a loop that reads a fan-out's artifacts: teachers by the arch in their metrics, the peers'
    sets by the method in their settings, each where a run root holds it."""
    from infer_distill.dag.steps import settings
    from infer_distill.engines.kfp.run import gather
    from infer_distill.errors import ArtifactError

    cfg = load_config(None, ["methods=[infer, random, herding]"])
    config = tmp_path / "config.json"
    config.write_text(cfg.model_dump_json())

    def made(stage, metrics, **keys):  # an artifact as the stage writes it, collected by KFP into a folder of its own
        uri = str(tmp_path / "collected" / stage / "-".join(keys.values()))
        open_artifact(uri).write({"x.bin": uri.encode()}, {"stage": stage, "settings": settings(cfg, stage, **keys),
                                                            "metrics": metrics})
        return uri

    teachers = [made("train-teacher", {"arch": a, "test_acc": 0.5}, arch=a) for a in reversed(cfg.teachers.archs)]
    gather("teachers", str(config), teachers, str(tmp_path / "teacher_set"))
    for arch in cfg.teachers.archs:
        copied = open_artifact(Layout(str(tmp_path / "teacher_set")).teacher(arch))
        assert copied.read_bytes("x.bin").decode().endswith(f"/{arch}")
    sets = {m: made("distill-method", {}, method=m) for m in cfg.peer_methods()}
    gather("methods", str(config), list(sets.values()), str(tmp_path / "method_sets"))
    assert open_artifact(Layout(str(tmp_path / "method_sets")).method_set("herding")).read_bytes("x.bin") == sets["herding"].encode()
    with pytest.raises(ArtifactError, match=r"distill-method: no artifact of herding among the 1 collected \(they are of random\)"):
        gather("methods", str(config), [sets["random"]], str(tmp_path / "partial"))
    with pytest.raises(ArtifactError, match="a 'train-teacher' artifact is among the collected distill-method artifacts"):
        gather("methods", str(config), [sets["random"], teachers[0]], str(tmp_path / "mixed"))


# every fan-out, the methods' steps too: the peers' sets are gathered for evaluate-method and the report
METHODS = ["methods=[infer, random, herding, rded]", "rded.candidates=20", "students.scores=[soft, hard]",
           "students.full_data_reference=true"]


@pytest.mark.slow
def test_kfp_local_run_equals_the_in_process_run(tmp_path):
    overrides = TINY + ["synthesis.subsets_per_shard=5", "students.baselines=[random_soft]", *METHODS]
    cfg = load_config(None, overrides)
    report_uri = infer_dag.run_local(cfg, str(tmp_path / "kfp"))
    assert report_uri == Layout(str(tmp_path / "kfp")).report  # where `infer-distill run --out` puts it
    report = open_artifact(report_uri).read_manifest()
    (kfp_report,) = (tmp_path / "kfp").glob("*/report/report")  # KFP's own: the task's output
    assert open_artifact(kfp_report).read_manifest()["files"] == report["files"]
    run_root = kfp_report.parents[1]

    reference = str(tmp_path / "inproc")
    run_in_process(cfg, reference, progress=False)

    def sha(uri, name):
        return open_artifact(uri).read_manifest()["files"][name]["sha256"]

    shards = sorted(run_root.glob("for-loop-*-iteration-*/synthesize-ufc/ufc"))
    assert len(shards) == len(cfg.shard_plan(10)) == 2
    for shard in shards:
        ids = open_artifact(shard).read_manifest()["metrics"]["subset_ids"]
        assert sha(shard, "ufc.safetensors") == sha(Layout(reference).ufc(ids), "ufc.safetensors")
    assert sha(run_root / "soft-label" / "distilled", "distilled.safetensors") == \
        sha(Layout(reference).distilled, "distilled.safetensors")
    (baseline,) = run_root.glob("for-loop-*-iteration-0/evaluate-baseline/baseline_model")
    assert open_artifact(baseline).read_manifest()["metrics"]["baseline"] == "random_soft"
    assert sha(baseline, "labels.safetensors") == sha(Layout(reference).baseline("convnet_d3_w32", 0, "random_soft"), "labels.safetensors")
    assert [r["baseline"] for r in report["metrics"]["report"]["baselines"]] == ["random_soft"]
    assert report["metrics"]["report"]["budget"]["num_subsets"] == 8
    assert (run_root / "report" / "page").read_text().startswith("<!doctype html>")
    # the peers' sets, gathered into one artifact as a run root holds them, are those of the in-process run
    (gathered,) = run_root.glob("gather-methods/method_sets")
    for method in cfg.peer_methods():
        assert sha(Layout(str(gathered)).method_set(method), "distilled.safetensors") == \
            sha(Layout(reference).method_set(method), "distilled.safetensors")
    # and the report's method rows (every score, IOR and HLR) are the in-process run's numbers
    in_process = open_artifact(Layout(reference).report).read_manifest()["metrics"]["report"]
    rows = report["metrics"]["report"]["methods"]
    assert [r["method"] for r in rows] == cfg.methods
    assert all(r["soft"] and r["hard"] and r["hlr"] for r in rows)
    assert rows == in_process["methods"]
    assert report["metrics"]["report"]["feature_similarity"] == in_process["feature_similarity"]


# ----------------------------------------------------------------------------------------
# Upload, through kfp.Client's own code paths, to a local server speaking the KFP v2beta1 API
# ----------------------------------------------------------------------------------------


class _KfpApi:
    """The few endpoints `upload` reaches, with the API's multi-user rules: a pipeline lives in a
    namespace ("" for the shared ones), a list without a namespace sees only the shared ones, and
    (namespace, name) is unique."""

    def __init__(self):
        import itertools

        self.pipelines: dict[str, dict] = {"shared-1": {"pipeline_id": "shared-1", "display_name": "infer-distill", "namespace": ""}}
        self.versions: list[dict] = []
        self.requests: list[tuple[str, str, dict]] = []
        self._ids = itertools.count(1)

    def handle(self, method: str, path: str, query: dict) -> tuple[int, dict]:
        self.requests.append((method, path, query))
        one = {k: v[0] for k, v in query.items()}
        if (method, path) == ("GET", "/apis/v2beta1/healthz"):
            return 200, {"tag_name": "2.15.0", "multi_user": True}
        if (method, path) == ("GET", "/apis/v2beta1/pipelines"):
            found = [p for p in self.pipelines.values() if p["namespace"] == one.get("namespace", "")]
            for pred in json.loads(one.get("filter") or '{"predicates": []}')["predicates"]:
                assert pred["key"] == "display_name" and pred["operation"] in ("EQUALS", 1), pred
                found = [p for p in found if p["display_name"] == pred.get("stringValue", pred.get("string_value"))]
            return 200, {"pipelines": found[:int(one.get("page_size", 10))], "total_size": len(found)} if found else {}
        if (method, path) == ("POST", "/apis/v2beta1/pipelines/upload"):
            namespace, name = one.get("namespace", ""), one["name"]
            if any((p["namespace"], p["display_name"]) == (namespace, name) for p in self.pipelines.values()):
                return 409, {"code": 6, "message": f"Already exists: pipeline {name} in namespace {namespace!r}"}
            pid = f"pipeline-{next(self._ids)}"
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": name, "namespace": namespace}
            return 200, self.pipelines[pid]
        if (method, path) == ("POST", "/apis/v2beta1/pipelines/upload_version"):
            if one.get("pipelineid") not in self.pipelines:
                return 404, {"code": 5, "message": "pipeline not found"}
            version = {"pipeline_id": one["pipelineid"], "pipeline_version_id": f"version-{next(self._ids)}",
                       "display_name": one["name"]}
            self.versions.append(version)
            return 200, version
        return 404, {"code": 5, "message": f"no such endpoint {method} {path}"}


@pytest.fixture
def kfp_api():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    api = _KfpApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))  # the uploaded package
            url = urlsplit(self.path)
            status, body = api.handle(self.command, url.path, parse_qs(url.query))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield api
    server.shutdown()
    server.server_close()


@pytest.mark.processes  # a local HTTP server
def test_upload_finds_the_pipeline_in_its_namespace_and_adds_a_version(kfp_api, capsys):
    def upload(*options):
        return infer_dag.main(["upload", "--host", kfp_api.url, "--image", IMAGE, *options])

    assert upload("--namespace", "team", "--version", "v1") == 0, capsys.readouterr().err
    (team,) = [p for p in kfp_api.pipelines.values() if p["namespace"] == "team"]
    assert upload("--namespace", "team", "--version", "v2") == 0, capsys.readouterr().err  # found again: no second create
    assert [p for p in kfp_api.pipelines.values() if p["namespace"] == "team"] == [team]
    assert [(v["pipeline_id"], v["display_name"]) for v in kfp_api.versions] == [(team["pipeline_id"], "v1"),
                                                                                 (team["pipeline_id"], "v2")]
    lists = [q for m, path, q in kfp_api.requests if (m, path) == ("GET", "/apis/v2beta1/pipelines")]
    assert [q.get("namespace") for q in lists] == [["team"], ["team"]]
    # without a namespace: the shared pipeline of that name
    assert upload("--version", "v3") == 0, capsys.readouterr().err
    assert kfp_api.versions[-1]["pipeline_id"] == "shared-1" and len(kfp_api.pipelines) == 2
    assert "uploaded pipeline infer-distill (shared-1), version v3" in capsys.readouterr().out


@pytest.mark.processes  # a local HTTP server
def test_upload_refuses_an_ambiguous_name(kfp_api, capsys):
    kfp_api.pipelines["team-2"] = {"pipeline_id": "team-2", "display_name": "infer-distill", "namespace": "team"}
    kfp_api.pipelines["team-3"] = {"pipeline_id": "team-3", "display_name": "infer-distill", "namespace": "team"}
    assert infer_dag.main(["upload", "--host", kfp_api.url, "--image", IMAGE, "--namespace", "team"]) == 2
    assert "2 pipelines are named 'infer-distill' in namespace team" in capsys.readouterr().err
    assert kfp_api.versions == []


def test_the_step_components_are_generated_from_the_plan():
    """src/infer_distill/engines/kfp/steps.py is what the plan gives: python -m infer_distill.engines.kfp.generate rewrites it."""
    from infer_distill.engines.kfp import generate

    assert generate.main(["--check"]) == 0
    from infer_distill.engines.kfp.steps import STEP_FUNCTIONS

    assert [f.__name__.replace("_", "-") for f in STEP_FUNCTIONS] == [s.name for s in dag.PLAN]
    # a fan-out's outputs that a later fan-out reads are gathered, and exactly those name their gathered artifact
    assert [s.output for s in dag.PLAN if s.gathered_as] == generate.gathered_outputs() == ["teachers", "methods"]


def test_pretrained_files_on_s3_reach_the_pods_and_local_ones_are_refused_at_compile_time():
    opts = infer_dag.ClusterOptions(image="registry.example.com/infer-distill:1")
    on_s3 = load_config(None, TINY + ["teachers.pretrained={resnet_tiny: 's3://weights/resnet_tiny.pth'}"])
    infer_dag.check_expressible(on_s3, opts)
    local = load_config(None, TINY + ["teachers.pretrained={resnet_tiny: /data/resnet_tiny.pth}"])
    with pytest.raises(infer_dag.DagError, match="a local weight file cannot reach pipeline pods; put it on S3"):
        infer_dag.check_expressible(local, opts)
