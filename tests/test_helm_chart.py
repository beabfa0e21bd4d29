"""The Helm chart (helm/infer-distill): rendered in-process with Helm's own Go library (helm-python-sdk),
then every object checked against the real schemas and against the project's own CLI and config.

- Kubernetes objects: kubernetes-validate, strict mode (unknown fields are errors). The Workflow's
  pod templates are also assembled into Pods and validated the same way.
- The Workflow: hera's Argo models, with a round trip that must give back every rendered key.
- Every step's command is parsed by `infer_distill.cli.build_parser()`, once per fan-out item.
- The ConfigMap's config.yaml is validated by `infer_distill.config.validate_config`.

Regenerate the config part of values.schema.json after changing infer_distill.config:
    .venv/bin/python tests/test_helm_chart.py --write-schema
"""
from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (the [dev] extra) renders the chart")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
hera_models = pytest.importorskip("hera.workflows.models")

from infer_distill.cli import build_parser, main as cli_main  # noqa: E402
from infer_distill.config import STAGES, Config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "infer-distill"
QUICKSTART = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
K8S_VERSION = kubernetes_validate.latest_version()  # the newest Kubernetes schema the package ships
RELEASE, NAMESPACE = "infer", "ml"

GPU_STAGES = {"train-teacher", "synthesize-ufc", "evaluate-student"}
VALUES_KEY = {"prepare-data": "prepareData", "train-teacher": "trainTeacher", "select-subsets": "selectSubsets",
              "synthesize-ufc": "synthesizeUfc", "soft-label": "softLabel", "evaluate-student": "evaluateStudent",
              "report": "report"}

# Default values, plus the one required value.
DEFAULT = {"s3": {"bucket": "infer-runs"}}

# Everything non-default at once.
CUSTOM_CONFIG = {
    "dataset": {"name": "cifar10", "root": "/data/cifar10"},
    "budget": {"ipc": 10},
    "teachers": {"archs": ["resnet18", "mobilenetv2", "efficientnet_b0"], "epochs": 200},
    "synthesis": {"iterations": 1000, "jitter": 4, "subsets_per_shard": 2},
    "labels": {"modes": ["static", "dynamic"]},
    "students": {"archs": ["resnet18"], "seeds": [0, 1234567], "epochs": 400, "epochs_dynamic": 80},
    "device": "cuda",
}
CUSTOM = {
    "image": {"repository": "registry.example.com/ml/infer-distill", "tag": "0.1.0-cuda", "pullPolicy": "Always"},
    "imagePullSecrets": ["registry-pull"],
    "s3": {"endpoint": "http://minio.minio.svc:9000", "bucket": "ml-artifacts", "prefix": "experiments/cifar10-ipc10/",
           "region": "us-east-1",
           "credentialsSecret": {"name": "minio-creds", "accessKeyIdKey": "accesskey", "secretAccessKeyKey": "secretkey"}},
    "config": CUSTOM_CONFIG,
    "stages": {"trainTeacher": {"gpu": 2}, "synthesizeUfc": {"gpu": 2, "parallelism": 3},
               "evaluateStudent": {"gpu": 2, "parallelism": 4}, "softLabel": {"gpu": 1}},
    "gpu": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "retry": {"limit": 5, "backoff": {"duration": "1m", "factor": 3, "maxDuration": "2h"}},
    "extraVolumes": [{"name": "datasets", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}}],
    "extraVolumeMounts": [{"name": "datasets", "mountPath": "/data", "readOnly": True}],
    "extraEnv": [{"name": "INFER_S3_MULTIPART_THRESHOLD", "value": "134217728"}],
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/infer"}},
    "workflow": {"activeDeadlineSeconds": 86400, "podGC": {"strategy": "OnPodSuccess"},
                 "ttlStrategy": {"secondsAfterCompletion": 604800}},
}
CUSTOM_NUM_CLASSES = 10  # cifar10


def _merge(base: dict, over: dict) -> dict:
    """Helm's coalescing for what these tests need: maps merge, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _drop_none(d):
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return [_drop_none(v) for v in d] if isinstance(d, list) else d


class Case:
    """One rendering and what it must contain (expectations spelled out here, not read from the chart)."""

    def __init__(self, name: str, values: dict, *, config: dict, root: str, gpus: dict[str, int],
                 gpu_node_selector: dict, gpu_tolerations: list, node_selector: dict, retry: dict,
                 parallelism: dict[str, int | None], secret: dict | None, endpoint: str | None, image: str,
                 num_classes: int):
        self.name, self.values, self.config, self.root = name, values, config, root
        self.gpus, self.gpu_node_selector, self.gpu_tolerations = gpus, gpu_node_selector, gpu_tolerations
        self.node_selector, self.retry, self.parallelism = node_selector, retry, parallelism
        self.secret, self.endpoint, self.image, self.num_classes = secret, endpoint, image, num_classes
        with helm.Chart.load(CHART) as chart:
            self.manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
        self.objects = [o for path, text in sorted(self.manifests.items()) if path.endswith(".yaml")
                        for o in yaml.safe_load_all(text) if o]
        self.notes = self.manifests.get("infer-distill/templates/NOTES.txt", "")

    def one(self, kind: str) -> dict:
        found = [o for o in self.objects if o["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def workflow(self) -> dict:
        return self.one("Workflow")

    def template(self, name: str) -> dict:
        found = [t for t in self.workflow["spec"]["templates"] if t["name"] == name]
        assert len(found) == 1, f"template {name}: {len(found)} found"
        return found[0]

    @property
    def stage_templates(self) -> list[dict]:
        return [t for t in self.workflow["spec"]["templates"] if "container" in t]


DEFAULT_RETRY = {"limit": 3, "retryPolicy": "Always", "expression": "asInt(lastRetry.exitCode) != 2",
                 "backoff": {"duration": "30s", "factor": 2, "maxDuration": "30m"}}
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _default_case() -> Case:
    return Case("default", DEFAULT, config=QUICKSTART, root=f"s3://infer-runs/{RELEASE}",
                gpus={"train-teacher": 1, "synthesize-ufc": 1, "evaluate-student": 1},
                gpu_node_selector={}, gpu_tolerations=[GPU_TAINT], node_selector={}, retry=DEFAULT_RETRY,
                parallelism={"train-teachers": None, "synthesize-ufcs": None, "evaluate-students": None},
                secret=None, endpoint=None, image="infer-distill:0.1.0", num_classes=10)


def _custom_case() -> Case:
    return Case("custom", CUSTOM, config=_merge(QUICKSTART, CUSTOM_CONFIG),
                root="s3://ml-artifacts/experiments/cifar10-ipc10",
                gpus={"train-teacher": 2, "synthesize-ufc": 2, "evaluate-student": 2, "soft-label": 1},
                gpu_node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "kubernetes.io/os": "linux"},
                gpu_tolerations=CUSTOM["gpu"]["tolerations"], node_selector={"kubernetes.io/os": "linux"},
                retry={**DEFAULT_RETRY, "limit": 5, "backoff": {"duration": "1m", "factor": 3, "maxDuration": "2h"}},
                parallelism={"train-teachers": None, "synthesize-ufcs": 3, "evaluate-students": 4},
                secret={"name": "minio-creds", "id": "accesskey", "key": "secretkey"},
                endpoint="http://minio.minio.svc:9000", image="registry.example.com/ml/infer-distill:0.1.0-cuda",
                num_classes=CUSTOM_NUM_CLASSES)


_CASES = {"default": _default_case, "custom": _custom_case}


@pytest.fixture(scope="module", params=list(_CASES))
def case(request) -> Case:
    return _CASES[request.param]()


# ----------------------------------------------------------------------------------------
# Chart-level checks
# ----------------------------------------------------------------------------------------


def test_lint_is_clean(case):
    report = helm.lint(CHART, case.values, strict=True, namespace=NAMESPACE, kube_version=f"v{K8S_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_renders_exactly_these_objects_and_no_secret(case):
    kinds = sorted(o["kind"] for o in case.objects)
    assert kinds == ["ConfigMap", "Role", "RoleBinding", "ServiceAccount", "Workflow"]
    assert all(o["metadata"]["name"].startswith(RELEASE) for o in case.objects)


def test_kubernetes_objects_validate_strictly(case):
    for obj in case.objects:
        if obj["kind"] != "Workflow":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does reject an unknown field
        kubernetes_validate.validate({**case.one("ConfigMap"), "spec": {}}, K8S_VERSION, strict=True)


def _pods(case: Case) -> list[dict]:
    """The pod each stage template becomes (Argo adds its executor containers on top)."""
    spec = case.workflow["spec"]
    pods = []
    for t in case.stage_templates:
        pod_spec = {"serviceAccountName": spec["serviceAccountName"], "securityContext": spec["securityContext"],
                    "volumes": spec["volumes"], "restartPolicy": "Never", "containers": [{"name": "main", **t["container"]}],
                    **{k: t[k] for k in ("nodeSelector", "tolerations", "affinity") if k in t}}
        if "imagePullSecrets" in spec:
            pod_spec["imagePullSecrets"] = spec["imagePullSecrets"]
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"{case.workflow['metadata']['name']}-{t['name']}", **t.get("metadata", {})},
                     "spec": pod_spec})
    return pods


def test_stage_pods_validate_strictly(case):
    pods = _pods(case)
    assert len(pods) == len(STAGES)
    for pod in pods:
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_workflow_validates_with_hera_and_no_key_is_dropped(case):
    wf = case.workflow
    assert (wf["apiVersion"], wf["kind"]) == ("argoproj.io/v1alpha1", "Workflow")
    model = hera_models.Workflow.model_validate(wf)
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == wf
    # The round trip does notice a key the models do not know (they drop it silently).
    bad = copy.deepcopy(wf)
    bad["spec"]["templates"][0]["paralelism"] = 3
    assert hera_models.Workflow.model_validate(bad).model_dump(by_alias=True, exclude_none=True, mode="json") != bad


# ----------------------------------------------------------------------------------------
# The DAG and its fan-outs
# ----------------------------------------------------------------------------------------

MAIN_CHAIN = ["prepare-data", "train-teachers", "select-subsets", "synthesize-ufcs", "soft-label", "evaluate-students", "report"]


def test_dag_is_the_pipeline(case):
    spec = case.workflow["spec"]
    assert spec["entrypoint"] == "infer"
    tasks = case.template("infer")["dag"]["tasks"]
    assert [t["name"] for t in tasks] == MAIN_CHAIN
    # A chain, except that select-subsets needs only the data and so runs beside the teachers (as in KFP).
    assert [t.get("depends") for t in tasks] == [
        None, "prepare-data", "prepare-data", "train-teachers && select-subsets", "synthesize-ufcs", "soft-label",
        "evaluate-students"]
    names = [t["name"] for t in spec["templates"]]
    assert len(names) == len(set(names))
    for tmpl in spec["templates"]:
        for task in tmpl.get("dag", {}).get("tasks", []):
            assert task["template"] in names, task
    # Every stage of the project runs exactly once as a pod template, under its own name.
    assert sorted(t["name"] for t in case.stage_templates) == sorted(STAGES)


def _fanout(case: Case, name: str, leaf: str) -> tuple[dict, dict]:
    tmpl = case.template(name)
    (task,) = tmpl["dag"]["tasks"]
    assert task["template"] == leaf
    assert tmpl.get("parallelism") == case.parallelism[name]
    return tmpl, task


def test_teachers_fan_out_over_exactly_the_configs_teachers(case):
    _, task = _fanout(case, "train-teachers", "train-teacher")
    assert task["withItems"] == case.config["teachers"]["archs"]
    assert task["arguments"]["parameters"] == [{"name": "arch", "value": "{{item}}"}]
    configmap_cfg = yaml.safe_load(case.one("ConfigMap")["data"]["config.yaml"])
    assert configmap_cfg["teachers"]["archs"] == task["withItems"]


def test_students_fan_out_over_archs_seeds_and_label_modes(case):
    _, task = _fanout(case, "evaluate-students", "evaluate-student")
    s = case.config["students"]
    expected = [{"arch": a, "seed": str(seed), "mode": m}
                for m, a, seed in itertools.product(case.config["labels"]["modes"], s["archs"], s["seeds"])]
    assert task["withItems"] == expected
    from infer_distill.stages import Layout  # the fan-out makes exactly the students the report stage reads
    assert {Layout("r").student(i["arch"], int(i["seed"]), i["mode"]) for i in task["withItems"]} == \
        set(Layout("r").students(validate_config(case.config)))


def test_synthesis_fans_out_over_select_subsets_output_parameter(case):
    main_task = next(t for t in case.template("infer")["dag"]["tasks"] if t["name"] == "synthesize-ufcs")
    assert main_task["arguments"]["parameters"] == [
        {"name": "shards", "value": "{{tasks.select-subsets.outputs.parameters.shards}}"}]
    tmpl, task = _fanout(case, "synthesize-ufcs", "synthesize-ufc")
    assert tmpl["inputs"]["parameters"] == [{"name": "shards"}]
    assert task["withParam"] == "{{inputs.parameters.shards}}" and "withItems" not in task
    assert task["arguments"]["parameters"] == [{"name": "subset-ids", "value": "{{item}}"}]
    # select-subsets writes the plan where its output parameter reads it from.
    select = case.template("select-subsets")
    (out,) = select["outputs"]["parameters"]
    assert out["name"] == "shards"
    args = build_parser().parse_args(select["container"]["args"])
    assert args.shards_output == out["valueFrom"]["path"]
    mounts = {m["mountPath"] for m in select["container"]["volumeMounts"]}
    assert str(Path(out["valueFrom"]["path"]).parent) in mounts  # a writable volume, not the read-only root fs


def test_select_subsets_writes_a_plan_argo_can_iterate(tmp_path, capsys):
    """Run the real prepare-data and select-subsets stages with the rendered config (digits, the default
    dataset) and the rendered select-subsets args: the plan is the JSON list of id strings withParam needs."""
    case = _default_case()
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(case.one("ConfigMap")["data"]["config.yaml"])
    root, plan = str(tmp_path / "run"), tmp_path / "shards.json"
    args = case.template("select-subsets")["container"]["args"]
    args = [str(cfg_file) if a == "/config/config.yaml" else root if a == case.root else str(plan) if a == "/tmp/shards.json" else a
            for a in args]
    sets = ["--set", "synthesis.subsets_per_shard=3"]
    assert cli_main(["stage", "prepare-data", "--config", str(cfg_file), "--root", root, *sets]) == 0
    assert cli_main([*args, *sets]) == 0, capsys.readouterr().err
    shards = json.loads(plan.read_text())
    assert shards == ["0,1,2", "3,4,5", "6"]  # K = 7 on digits with 3 teachers
    for item in shards:
        parsed = build_parser().parse_args(_substitute(case.template("synthesize-ufc")["container"]["args"],
                                                       {"subset-ids": item}))
        assert parsed.subset_ids == item


# ----------------------------------------------------------------------------------------
# Every step calls the project's own entry point
# ----------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")


def _substitute(args: list[str], params: dict[str, str]) -> list[str]:
    def one(m: re.Match) -> str:
        ref = m.group(1)
        assert ref.startswith("inputs.parameters."), ref
        return params[ref.removeprefix("inputs.parameters.")]
    out = [_PLACEHOLDER.sub(one, a) for a in args]
    assert not any("{{" in a for a in out), out
    return out


def _items(case: Case, task: dict) -> list:
    if "withItems" in task:
        return task["withItems"]
    # withParam: the plan select-subsets writes for this config (the CLI's own format, checked above)
    cfg = validate_config(case.config)
    return [",".join(map(str, ids)) for ids in cfg.shard_plan(case.num_classes)]


def _invocations(case: Case, leaf: str) -> list[dict[str, str]]:
    """The input parameters of every pod of a stage template: one dict per fan-out item."""
    for tmpl in case.workflow["spec"]["templates"]:
        for task in tmpl.get("dag", {}).get("tasks", []):
            if task["template"] != leaf:
                continue
            params = task.get("arguments", {}).get("parameters", [])
            if "withItems" not in task and "withParam" not in task:
                return [{p["name"]: p["value"] for p in params}]
            out = []
            for item in _items(case, task):
                def sub(m: re.Match, item=item) -> str:
                    ref = m.group(1)
                    return str(item) if ref == "item" else str(item[ref.removeprefix("item.")])
                out.append({p["name"]: _PLACEHOLDER.sub(sub, p["value"]) for p in params})
            return out
    raise AssertionError(f"no task runs {leaf}")


def test_every_step_is_infer_distill_stage_and_parses_with_the_cli(case):
    parser = build_parser()
    seen: dict[str, list] = {}
    for tmpl in case.stage_templates:
        name, c = tmpl["name"], tmpl["container"]
        assert c["image"] == case.image
        assert c["command"] == ["infer-distill"]
        assert c["args"][:2] == ["stage", name] and name in STAGES
        declared = {p["name"] for p in tmpl.get("inputs", {}).get("parameters", [])}
        used = {m.removeprefix("inputs.parameters.") for a in c["args"] for m in _PLACEHOLDER.findall(a)}
        assert used == declared, name
        for params in _invocations(case, name):
            assert set(params) == declared, name
            ns = parser.parse_args(_substitute(c["args"], params))
            assert (ns.command, ns.name, ns.config, ns.root) == ("stage", name, "/config/config.yaml", case.root)
            assert ns.set == [] and ns.out is None  # every location comes from --root
            seen.setdefault(name, []).append(ns)
    cfg = case.config
    assert sorted(ns.arch for ns in seen["train-teacher"]) == sorted(cfg["teachers"]["archs"])
    assert sorted((ns.arch, ns.seed, ns.label_mode) for ns in seen["evaluate-student"]) == sorted(
        itertools.product(cfg["students"]["archs"], cfg["students"]["seeds"], cfg["labels"]["modes"]))
    ids = [int(i) for ns in seen["synthesize-ufc"] for i in ns.subset_ids.split(",")]
    assert sorted(ids) == list(range(validate_config(cfg).num_subsets(case.num_classes)))
    for name in ("prepare-data", "select-subsets", "soft-label", "report"):
        assert len(seen[name]) == 1 and seen[name][0].arch is None


# ----------------------------------------------------------------------------------------
# Config, resources, scheduling, retries
# ----------------------------------------------------------------------------------------


def test_configmap_holds_a_valid_config_mounted_at_config_yaml(case):
    cm = case.one("ConfigMap")
    rendered = yaml.safe_load(cm["data"]["config.yaml"])
    assert isinstance(validate_config(rendered, source="ConfigMap config.yaml"), Config)
    # The same config as intended (Helm drops null values; they are the config's defaults anyway).
    assert rendered == _drop_none(case.config)
    assert validate_config(rendered) == validate_config(case.config)
    spec = case.workflow["spec"]
    (vol,) = [v for v in spec["volumes"] if v.get("configMap")]
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    for tmpl in case.stage_templates:
        mount = next(m for m in tmpl["container"]["volumeMounts"] if m["name"] == vol["name"])
        assert mount["mountPath"] == "/config" and mount["readOnly"] is True


def test_gpu_steps_request_gpus_are_scheduled_on_gpu_nodes_and_retry(case):
    for tmpl in case.stage_templates:
        name, res = tmpl["name"], tmpl["container"]["resources"]
        gpus = case.gpus.get(name, 0)
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), name
        key = VALUES_KEY[name]
        with helm.Chart.load(CHART) as chart:
            stage_values = chart.merge_values(case.values)["stages"][key]
        assert {k: res["requests"][k] for k in ("cpu", "memory")} == stage_values["resources"]["requests"]
        assert {k: res["limits"][k] for k in ("cpu", "memory")} == stage_values["resources"]["limits"]
        if gpus:
            assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == str(gpus), name
            assert tmpl.get("nodeSelector", {}) == case.gpu_node_selector, name
            assert tmpl["tolerations"] == case.gpu_tolerations, name
            assert tmpl["retryStrategy"] == case.retry, name
        else:
            assert "nvidia.com/gpu" not in res["requests"] and "nvidia.com/gpu" not in res["limits"], name
            assert tmpl.get("nodeSelector", {}) == case.node_selector, name
            assert "tolerations" not in tmpl and "retryStrategy" not in tmpl, name
    assert GPU_STAGES <= set(case.gpus)


def test_workflow_level_settings(case):
    spec, meta = case.workflow["spec"], case.workflow["metadata"]
    assert meta["annotations"]["infer-distill/root"] == case.root
    if case.name == "custom":
        assert spec["activeDeadlineSeconds"] == 86400
        assert spec["podGC"] == {"strategy": "OnPodSuccess"}
        assert spec["ttlStrategy"] == {"secondsAfterCompletion": 604800}
        assert spec["imagePullSecrets"] == [{"name": "registry-pull"}]
        assert {"name": "datasets", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}} in spec["volumes"]
        for tmpl in case.stage_templates:
            assert {"name": "datasets", "mountPath": "/data", "readOnly": True} in tmpl["container"]["volumeMounts"]
            assert {"name": "INFER_S3_MULTIPART_THRESHOLD", "value": "134217728"} in tmpl["container"]["env"]
    else:
        assert not {"activeDeadlineSeconds", "podGC", "ttlStrategy", "imagePullSecrets"} & set(spec)


# ----------------------------------------------------------------------------------------
# S3, credentials, security
# ----------------------------------------------------------------------------------------

_SECRETISH = re.compile(r"(?i)(secret|password|passwd|token|access_?key|credential)")
_CREDENTIAL_LITERALS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),                                             # AWS access key id
    re.compile(r"(?i)(aws_secret_access_key|secret_?key|password)\s*[:=]\s*\S+"),  # key = value in text
    re.compile(r"(?i)minioadmin"),                                               # MinIO's default credentials
]


def _credential_leaks(obj, path="") -> list[str]:
    """Literal credentials anywhere in an object: in text, or as the literal value of a secret-looking env var."""
    leaks = []
    if isinstance(obj, dict):
        if "name" in obj and "value" in obj and _SECRETISH.search(str(obj["name"])):
            leaks.append(f"{path}: env {obj['name']} has a literal value")
        for k, v in obj.items():
            leaks += _credential_leaks(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            leaks += _credential_leaks(v, f"{path}[{i}]")
    elif isinstance(obj, str):
        leaks += [f"{path}: {p.pattern}" for p in _CREDENTIAL_LITERALS if p.search(obj)]
    return leaks


def test_no_credentials_anywhere_only_secret_references(case):
    assert all(o["kind"] != "Secret" for o in case.objects)
    assert _credential_leaks(case.objects) == []
    assert _credential_leaks(case.notes) == []
    # The scanner does catch a planted credential.
    planted = [{"name": "AWS_SECRET_ACCESS_KEY", "value": "wJalrXUtnFEMI"}, "aws_secret_access_key = abc", "AKIAABCDEFGHIJKLMNOP"]
    assert len(_credential_leaks(planted)) == 3


def test_s3_location_and_credentials_from_the_secret(case):
    for tmpl in case.stage_templates:
        env = {e["name"]: e for e in tmpl["container"]["env"]}
        if case.endpoint:
            assert env["AWS_ENDPOINT_URL"] == {"name": "AWS_ENDPOINT_URL", "value": case.endpoint}
        else:
            assert "AWS_ENDPOINT_URL" not in env
        if case.secret:
            for var, key in (("AWS_ACCESS_KEY_ID", case.secret["id"]), ("AWS_SECRET_ACCESS_KEY", case.secret["key"])):
                assert env[var] == {"name": var, "valueFrom": {"secretKeyRef": {"name": case.secret["name"], "key": key}}}
        else:  # no Secret named: the pod's own identity (IRSA, node role)
            assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)
        for e in env.values():
            if _SECRETISH.search(e["name"]):
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], e


def test_pods_run_as_non_root_with_a_read_only_root_filesystem(case):
    spec = case.workflow["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
    tmp_volume = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp_volume
    for tmpl in case.stage_templates:
        c = tmpl["container"]
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000, tmpl["name"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        for var in ("HOME", "TMPDIR", "MPLCONFIGDIR", "TORCH_HOME", "XDG_CACHE_HOME"):
            assert env[var].startswith("/tmp"), var


def test_service_account_and_executor_rbac(case):
    sa, role, binding = case.one("ServiceAccount"), case.one("Role"), case.one("RoleBinding")
    assert case.workflow["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {"create", "patch"} <= rules[("argoproj.io", "workflowtaskresults")]
    assert {"get", "watch", "patch"} <= rules[("", "pods")]
    assert not any("*" in verbs or "delete" in verbs for verbs in rules.values())
    if case.name == "custom":
        assert sa["metadata"]["annotations"] == CUSTOM["serviceAccount"]["annotations"]


def test_notes_say_how_to_follow_the_run_and_where_the_report_is(case):
    wf = case.workflow["metadata"]["name"]
    for needle in (f"argo -n {NAMESPACE} watch {wf}", f"argo -n {NAMESPACE} logs {wf}",
                   f"workflows.argoproj.io/workflow={wf}", f"{case.root}/report/report.md",
                   f"infer-distill show {case.root}/report"):
        assert needle in case.notes, needle


# ----------------------------------------------------------------------------------------
# Values: schema, defaults, bad values
# ----------------------------------------------------------------------------------------


def _config_schema_defs() -> dict:
    schema = Config.model_json_schema()
    defs = schema.pop("$defs")
    return {**defs, "InferConfig": schema}


def test_values_schema_config_part_is_generated_from_the_config_model():
    schema = json.loads((CHART / "values.schema.json").read_text())
    current = {k: schema["$defs"].get(k) for k in _config_schema_defs()}
    assert current == _config_schema_defs(), (
        "values.schema.json is stale: run `.venv/bin/python tests/test_helm_chart.py --write-schema`")


def test_default_config_is_the_quickstart():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["config"] == QUICKSTART


@pytest.mark.parametrize("values, needle", [
    ({}, "/s3/bucket"),                                                              # the bucket is required
    ({"s3": {"bucket": "Not_A_Bucket"}}, "/s3/bucket"),
    ({"s3": {"bucket": "b12", "accessKey": "x"}}, "'accessKey' not allowed"),         # no credentials in values
    ({"s3": {"bucket": "b12"}, "extraEnv": [{"name": "WANDB_API_KEY", "value": "x"}]}, "/extraEnv/0"),
    ({"s3": {"bucket": "b12"}, "config": {"labels": {"modes": ["dymanic"]}}}, "/config/labels/modes/0"),
    ({"s3": {"bucket": "b12"}, "config": {"teachers": {"archz": ["resnet18"]}}}, "'archz' not allowed"),
    ({"s3": {"bucket": "b12"}, "config": {"students": {"seeds": ["zero"]}}}, "/config/students/seeds/0"),
    ({"s3": {"bucket": "b12"}, "stages": {"synthesizeUfc": {"gpu": -1}}}, "/stages/synthesizeUfc/gpu"),
    ({"s3": {"bucket": "b12"}, "stages": {"report": {"parallelism": 2}}}, "'parallelism' not allowed"),
    ({"s3": {"bucket": "b12"}, "podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    ({"s3": {"bucket": "b12"}, "retry": {"retryPolicy": "Sometimes"}}, "/retry/retryPolicy"),
])
def test_bad_values_fail_at_render_time_naming_the_field(values, needle):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as err:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    assert needle in str(err.value)


def test_missing_bucket_fails_in_the_templates_too_without_the_schema(tmp_path):
    """`helm install --skip-schema-validation`: the templates' own `required` still names the value."""
    shutil.copytree(CHART, tmp_path / "chart", ignore=shutil.ignore_patterns("values.schema.json"))
    with helm.Chart.load(tmp_path / "chart") as chart, pytest.raises(helm.HelmRenderError) as err:
        assert chart.schema is None
        chart.render(values={}, name=RELEASE, namespace=NAMESPACE)
    assert "s3.bucket is required: --set s3.bucket=<bucket>" in str(err.value)


# ----------------------------------------------------------------------------------------


def _write_schema() -> None:
    path = CHART / "values.schema.json"
    schema = json.loads(path.read_text())
    schema["$defs"].update(_config_schema_defs())
    path.write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-schema"]:
        _write_schema()
    else:
        sys.exit(f"usage: {sys.argv[0]} --write-schema")
