"""The Helm chart (helm/infer-distill): rendered in-process with Helm's own Go library (helm-python-sdk),
then every object checked against the real schemas and against the project's own CLI and config.

- Kubernetes objects (and the `helm test` pod): kubernetes-validate, strict mode (unknown fields are
  errors). The WorkflowTemplate's pod templates are also assembled into Pods and validated the same way.
- The WorkflowTemplate: hera's Argo models, with a round trip that must give back every rendered key.
- Every step's command is parsed by `infer_distill.cli.commands.build_parser()`, once per fan-out item, and the
  real resolve-config and select-subsets commands write the items the fan-outs iterate.
- The default config parameter is validated by `infer_distill.config.loading.validate_config`.

(That the WorkflowTemplate's DAG is the plan, and that files/workflow-template.yaml is current, is
checked in test_plan.py.) Regenerate the config part of values.schema.json after changing
infer_distill.config:
    .venv/bin/python tests/test_helm_chart.py --write-schema
"""
from __future__ import annotations

import copy
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

from infer_distill import dag  # noqa: E402
from infer_distill.cli.commands import build_parser  # noqa: E402
from infer_distill.cli.commands import main as cli_main
from infer_distill.config.loading import validate_config  # noqa: E402
from infer_distill.config.schema import Config
from infer_distill.runtime.accelerator import REQUIRE_CUDA  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "infer-distill"
QUICKSTART = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
K8S_VERSION = kubernetes_validate.latest_version()  # the newest Kubernetes schema the package ships
RELEASE, NAMESPACE = "infer", "ml"
WORKFLOW = "infer-infer-distill-x7k2p"  # the name Argo gives a run of the template (generateName)

# Default values, plus the two required ones.
DEFAULT = {"s3": {"bucket": "infer-runs"}, "image": {"repository": "ghcr.io/acme/infer-distill"}}

# Argo's executor containers hardened for a namespace enforcing the restricted Pod Security Standard
# (the example in values.yaml).
_RESTRICTED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
               "seccompProfile": {"type": "RuntimeDefault"}}
EXECUTOR_PATCH = yaml.safe_dump({"initContainers": [{"name": "init", "securityContext": _RESTRICTED}],
                                 "containers": [{"name": "wait", "securityContext": _RESTRICTED}]})

# Everything non-default at once.
CUSTOM_CONFIG = {
    "dataset": {"name": "tiny-imagenet", "root": "/datasets/tiny-imagenet-200"},
    "budget": {"ipc": 10},
    "teachers": {"archs": ["resnet18", "mobilenetv2", "efficientnet_b0"], "epochs": 200},
    "synthesis": {"iterations": 1000, "jitter": 4, "subsets_per_shard": 2},
    "labels": {"modes": ["static", "dynamic"]},
    "students": {"archs": ["resnet18"], "seeds": [0, 1234567], "epochs": 400, "epochs_dynamic": 80,
                 "baselines": ["random_soft", "random_soft_steps"]},
    "device": "cuda",
}
CUSTOM = {
    "image": {"repository": "registry.example.com:5000/ml/infer-distill", "tag": "0.1.0-cuda", "pullPolicy": "Always"},
    "imagePullSecrets": ["registry-pull", {"name": "registry-mirror"}],  # both usual forms
    "s3": {"endpoint": "http://minio.minio.svc:9000", "bucket": "ml-artifacts", "prefix": "experiments/infer/",
           "region": "us-east-1",
           "credentialsSecret": {"name": "minio-creds", "accessKeyIdKey": "accesskey", "secretAccessKeyKey": "secretkey"}},
    "config": CUSTOM_CONFIG,
    "stages": {"trainTeacher": {"gpu": 2}, "synthesizeUfc": {"gpu": 2, "parallelism": 3},
               "evaluateStudent": {"gpu": 2, "parallelism": 4}, "evaluateBaseline": {"gpu": 2, "parallelism": 2},
               "softLabel": {"gpu": 1}},
    "gpu": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "retry": {"limit": 5, "backoff": {"duration": "2m", "maxDuration": "120h"}},
    "data": {"claimName": "datasets", "mountPath": "/datasets"},
    "extraVolumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}}],
    "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    "extraEnv": [{"name": "INFER_S3_MULTIPART_THRESHOLD", "value": "134217728"}],
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/infer"}},
    "workflow": {"activeDeadlineSeconds": 86400, "podGC": {"strategy": "OnPodSuccess"},
                 "ttlStrategy": {"secondsAfterCompletion": 604800}, "podSpecPatch": EXECUTOR_PATCH},
}


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


PLAN_RETRY = {"limit": dag.RETRY.limit, "retryPolicy": "Always", "expression": "asInt(lastRetry.exitCode) != 2",
              "backoff": {"duration": f"{dag.RETRY.backoff_s}s", "factor": str(dag.RETRY.factor),
                          "maxDuration": f"{dag.RETRY.max_duration_s // 3600}h"}}
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class Case:
    """One rendering and what it must contain (expectations spelled out here, not read from the chart)."""

    def __init__(self, name: str, values: dict, *, config: dict, root: str, gpus: dict[str, int], gpu_node_selector: dict,
                 gpu_tolerations: list, node_selector: dict, retry: dict, parallelism: dict[str, int | None],
                 secret: dict | None, endpoint: str | None, image: str, num_classes: int, data_mount: str | None):
        self.name, self.values, self.config, self.root = name, values, config, root
        self.gpus, self.gpu_node_selector, self.gpu_tolerations = gpus, gpu_node_selector, gpu_tolerations
        self.node_selector, self.retry, self.parallelism = node_selector, retry, parallelism
        self.secret, self.endpoint, self.image, self.num_classes = secret, endpoint, image, num_classes
        self.data_mount = data_mount
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
    def template(self) -> dict:
        return self.one("WorkflowTemplate")

    def named(self, name: str) -> dict:
        found = [t for t in self.template["spec"]["templates"] if t["name"] == name]
        assert len(found) == 1, f"template {name}: {len(found)} found"
        return found[0]

    @property
    def pod_templates(self) -> list[dict]:
        return [t for t in self.template["spec"]["templates"] if "container" in t]

    @property
    def run_config(self) -> Config:
        """The config a run gets without -p config=...: the template's default."""
        (param,) = [p for p in self.template["spec"]["arguments"]["parameters"] if p["name"] == "config"]
        return validate_config(yaml.safe_load(param["value"]), source="the config parameter's default")


def _default_case() -> Case:
    return Case("default", DEFAULT, config=QUICKSTART, root=f"s3://infer-runs/{RELEASE}",
                gpus={"train-teacher": 1, "synthesize-ufc": 1, "evaluate-student": 1, "evaluate-baseline": 1,
                      "distill-method": 1, "evaluate-method": 1, "evaluate-full-data": 1},
                gpu_node_selector={}, gpu_tolerations=[GPU_TAINT], node_selector={}, retry=PLAN_RETRY,
                parallelism={"train-teachers": None, "synthesize-ufcs": None, "evaluate-students": None,
                             "evaluate-baselines": None},
                secret=None, endpoint=None, image="ghcr.io/acme/infer-distill:0.1.0-cuda", num_classes=10, data_mount=None)


def _custom_case() -> Case:
    retry = {**PLAN_RETRY, "limit": 5, "backoff": {**PLAN_RETRY["backoff"], "duration": "2m", "maxDuration": "120h"}}
    return Case("custom", CUSTOM, config=_merge(QUICKSTART, CUSTOM_CONFIG), root="s3://ml-artifacts/experiments/infer",
                gpus={"train-teacher": 2, "synthesize-ufc": 2, "evaluate-student": 2, "evaluate-baseline": 2, "soft-label": 1,
                      "distill-method": 1, "evaluate-method": 1, "evaluate-full-data": 1},
                gpu_node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "kubernetes.io/os": "linux"},
                gpu_tolerations=CUSTOM["gpu"]["tolerations"], node_selector={"kubernetes.io/os": "linux"}, retry=retry,
                parallelism={"train-teachers": None, "synthesize-ufcs": 3, "evaluate-students": 4, "evaluate-baselines": 2},
                secret={"name": "minio-creds", "id": "accesskey", "key": "secretkey"},
                endpoint="http://minio.minio.svc:9000", image="registry.example.com:5000/ml/infer-distill:0.1.0-cuda",
                num_classes=200, data_mount="/datasets")


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
    assert kinds == ["Pod", "Role", "RoleBinding", "ServiceAccount", "WorkflowTemplate"]
    assert all(o["metadata"]["name"].startswith(RELEASE) for o in case.objects)


def test_kubernetes_objects_and_the_test_pod_validate_strictly(case):
    for obj in case.objects:
        if obj["kind"] != "WorkflowTemplate":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does reject an unknown field
        kubernetes_validate.validate({**case.one("ServiceAccount"), "spec": {}}, K8S_VERSION, strict=True)


def _pods(case: Case) -> list[dict]:
    """The pod each step template becomes (Argo adds its executor containers and the config artifact on top)."""
    spec = case.template["spec"]
    pods = []
    for t in case.pod_templates:
        pod_spec = {"serviceAccountName": spec["serviceAccountName"], "securityContext": spec["securityContext"],
                    "volumes": spec["volumes"], "restartPolicy": "Never", "containers": [{"name": "main", **t["container"]}],
                    **{k: t[k] for k in ("nodeSelector", "tolerations", "affinity") if k in t}}
        if "imagePullSecrets" in spec:
            pod_spec["imagePullSecrets"] = spec["imagePullSecrets"]
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{WORKFLOW}-{t['name']}", **t.get("metadata", {})},
                     "spec": pod_spec})
    return pods


def _restricted_violations(pod: dict) -> list[str]:
    """What the restricted Pod Security Standard refuses in `pod`, per container (the checks of
    Kubernetes' pod-security admission for privilege escalation, capabilities, non-root and seccomp)."""
    spec, found = pod["spec"], []
    pod_sc = spec.get("securityContext", {})
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{c['name']}: allowPrivilegeEscalation")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            found.append(f"{c['name']}: capabilities.drop")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            found.append(f"{c['name']}: runAsNonRoot")
        if sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{c['name']}: seccompProfile")
    return found


def _with_executor(pod: dict, pod_spec_patch: str | None) -> dict:
    """`pod` as Argo creates it: its executor containers added (securityContext from the controller's
    `executor` setting, empty by default), then the workflow's podSpecPatch merged in by container name."""
    pod = copy.deepcopy(pod)
    argoexec = {"image": "quay.io/argoproj/argoexec:v3.6.5", "command": ["argoexec"]}
    pod["spec"]["initContainers"] = [{"name": "init", **argoexec, "args": ["init"]}]
    pod["spec"]["containers"].append({"name": "wait", **argoexec, "args": ["wait"]})
    for key, patches in (yaml.safe_load(pod_spec_patch) if pod_spec_patch else {}).items():
        containers = {c["name"]: c for c in pod["spec"][key]}
        for patch in patches:
            containers[patch["name"]].update(_merge(containers[patch["name"]], patch))
    return pod


def test_the_pod_spec_patch_lets_argos_executor_containers_pass_restricted_pod_security(case):
    patch = case.template["spec"].get("podSpecPatch")
    for pod in _pods(case):
        assert _restricted_violations(pod) == [], pod["metadata"]["name"]  # the chart's own container
        bare = _restricted_violations(_with_executor(pod, None))            # the controller's default: refused
        assert bare and all(v.startswith(("init:", "wait:")) for v in bare)
        if case.name == "custom":
            patched = _with_executor(pod, patch)
            kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
            assert _restricted_violations(patched) == [], pod["metadata"]["name"]


def test_step_pods_validate_strictly(case):
    pods = _pods(case)
    assert len(pods) == len(dag.PLAN) + 1  # every step and resolve-config
    for pod in pods:
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_workflow_template_validates_with_hera_and_no_key_is_dropped(case):
    wt = case.template
    assert (wt["apiVersion"], wt["kind"]) == ("argoproj.io/v1alpha1", "WorkflowTemplate")
    assert "generateName" not in wt["metadata"]  # a template: runs get generated names from it, and never collide
    model = hera_models.WorkflowTemplate.model_validate(wt)
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == wt
    # The round trip does notice a key the models do not know (they drop it silently).
    bad = copy.deepcopy(wt)
    bad["spec"]["templates"][0]["paralelism"] = 3
    assert hera_models.WorkflowTemplate.model_validate(bad).model_dump(by_alias=True, exclude_none=True, mode="json") != bad


# ----------------------------------------------------------------------------------------
# Runs: parameters, fan-outs, every step's command
# ----------------------------------------------------------------------------------------


def test_a_run_takes_a_config_and_writes_under_its_own_name(case):
    params = {p["name"]: p["value"] for p in case.template["spec"]["arguments"]["parameters"]}
    assert set(params) == {"config", "root"} and params["root"] == case.root
    assert yaml.safe_load(params["config"]) == _drop_none(case.config)  # Helm drops nulls: the config's defaults anyway
    assert case.run_config == validate_config(case.config)
    assert case.template["metadata"]["annotations"]["infer-distill/root"] == case.root
    for t in case.pod_templates:  # the run's config reaches every pod as a file; no ConfigMap to keep in step
        (artifact,) = t["inputs"]["artifacts"]
        assert artifact == {"name": "config", "path": "/config/config.yaml", "raw": {"data": "{{workflow.parameters.config}}"}}


def test_the_dag_is_the_generated_one_and_every_pod_keeps_its_generated_parts(case):
    generated = yaml.safe_load((CHART / "files" / "workflow-template.yaml").read_text())["spec"]["templates"]
    assert [t["name"] for t in case.template["spec"]["templates"]] == [t["name"] for t in generated]
    for want in generated:
        got = case.named(want["name"])
        if "dag" in want:
            assert {k: v for k, v in got.items() if k != "parallelism"} == want
        else:
            assert {k: got[k] for k in ("inputs", "outputs") if k in got} == {k: want[k] for k in ("inputs", "outputs") if k in want}
            assert {k: got["container"][k] for k in ("command", "args")} == {k: want["container"][k] for k in ("command", "args")}
            assert want["metadata"]["labels"].items() <= got["metadata"]["labels"].items()


def test_fan_outs_follow_the_values_parallelism(case):
    for name, limit in case.parallelism.items():
        assert case.named(name).get("parallelism") == limit, name


def test_select_subsets_and_resolve_config_write_what_the_fan_outs_iterate(tmp_path, capsys):
    """The real commands of the resolve-config and select-subsets pods, with the default config: their
    output files are the items withParam iterates, and each item fills the step's input parameters."""
    case = _default_case()
    cfg_file = tmp_path / "config.yaml"
    (param,) = [p for p in case.template["spec"]["arguments"]["parameters"] if p["name"] == "config"]
    cfg_file.write_text(param["value"])
    run_root = str(tmp_path / "run")

    def local(args):  # the pod's paths, here
        return [str(cfg_file) if a == "/config/config.yaml" else str(tmp_path) + a[len("/tmp"):] if a.startswith("/tmp/")
                else a.replace("{{workflow.parameters.root}}/{{workflow.name}}", run_root) for a in args]

    for name in ("resolve-config", "prepare-data", "select-subsets"):
        assert cli_main(local(case.named(name)["container"]["args"])) == 0, capsys.readouterr().err
    produced = {}
    for name in ("resolve-config", "select-subsets"):
        for out in case.named(name)["outputs"]["parameters"]:
            produced[out["name"]] = json.loads(Path(local([out["valueFrom"]["path"]])[0]).read_text())
    runs = {dag.runs_file(s): True for s in dag.PLAN if s.when}  # the default config runs every conditional step
    assert produced == {**dag.fanout_items(case.run_config, case.num_classes), **runs}
    assert produced["shards"] == [{"subset_ids": "0,1,2,3,4,5,6"}]  # K = 7 on digits with 3 teachers, one shard
    for step in [s for s in dag.PLAN if s.over]:
        declared = {p["name"] for p in case.named(step.name)["inputs"]["parameters"]}
        assert all(set(item) == declared for item in produced[step.over.name]), step.name


_PLACEHOLDER = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")


def _substitute(args: list[str], params: dict) -> list[str]:
    def one(m: re.Match) -> str:
        ref = m.group(1)
        if ref == "workflow.parameters.root":
            return "<root>"
        if ref == "workflow.name":
            return WORKFLOW
        assert ref.startswith("inputs.parameters."), ref
        return str(params[ref.removeprefix("inputs.parameters.")])
    out = [_PLACEHOLDER.sub(one, a) for a in args]
    assert not any("{{" in a for a in out), out
    return out


def test_every_step_is_infer_distill_and_parses_with_the_cli_once_per_item(case):
    parser = build_parser()
    items = dag.fanout_items(case.run_config, case.num_classes)
    for step in dag.PLAN:
        c = case.named(step.name)["container"]
        assert c["image"] == case.image and c["command"] == ["infer-distill"]
        for item in items[step.over.name] if step.over else [{}]:
            ns = parser.parse_args(_substitute(c["args"], item))
            assert (ns.command, ns.name, ns.config) == ("stage", step.name, "/config/config.yaml")
            assert ns.root == f"<root>/{WORKFLOW}" and ns.set == [] and ns.out is None  # every location from --root
            for key, value in item.items():
                assert str(getattr(ns, key)) == str(value), (step.name, key)
    resolve = parser.parse_args(case.named("resolve-config")["container"]["args"])
    assert (resolve.command, resolve.config) == ("plan", "/config/config.yaml")


# ----------------------------------------------------------------------------------------
# Resources, scheduling, retries, data
# ----------------------------------------------------------------------------------------

def _stage_values(case: Case, name: str) -> dict:
    key = re.sub(r"-(\w)", lambda m: m.group(1).upper(), name)
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(case.values)["stages"][key]


def test_gpu_steps_request_gpus_and_are_scheduled_on_gpu_nodes(case):
    for tmpl in case.pod_templates:
        name, res = tmpl["name"], tmpl["container"]["resources"]
        gpus = case.gpus.get(name, 0)
        stage_values = _stage_values(case, name)
        assert {k: res["requests"][k] for k in ("cpu", "memory")} == stage_values["resources"]["requests"]
        assert {k: res["limits"][k] for k in ("cpu", "memory")} == stage_values["resources"]["limits"]
        env = {e["name"]: e.get("value") for e in tmpl["container"]["env"]}
        # a pod that holds a GPU refuses to fall back to its CPU (infer_distill.runtime.accelerator); no other pod does
        assert env.get(REQUIRE_CUDA) == ("1" if gpus else None), name
        if gpus:
            assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == str(gpus), name
            assert tmpl.get("nodeSelector", {}) == case.gpu_node_selector, name
            assert tmpl["tolerations"] == case.gpu_tolerations, name
        else:
            assert "nvidia.com/gpu" not in res["requests"] and "nvidia.com/gpu" not in res["limits"], name
            assert tmpl.get("nodeSelector", {}) == case.node_selector, name
            assert "tolerations" not in tmpl, name
    assert {s.name for s in dag.PLAN if s.gpu} <= set(case.gpus)


def test_every_step_retries_evictions_and_crashes_but_not_refused_input(case):
    for tmpl in case.pod_templates:
        assert tmpl["retryStrategy"] == case.retry, tmpl["name"]


def test_the_data_volume_is_mounted_into_the_data_step_only(case):
    spec = case.template["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for tmpl in case.pod_templates:
        mounts = {m["name"]: m for m in tmpl["container"]["volumeMounts"]}
        reads = dag.STEPS[tmpl["name"]].reads_dataset if tmpl["name"] in dag.STEPS else False
        if case.data_mount and reads:
            assert mounts["data"] == {"name": "data", "mountPath": case.data_mount, "readOnly": True}
        else:
            assert "data" not in mounts, tmpl["name"]
    if case.data_mount:
        assert volumes["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}}
        assert case.run_config.dataset.root.startswith(case.data_mount + "/")
    else:
        assert "data" not in volumes


def test_workflow_level_settings(case):
    spec = case.template["spec"]
    if case.name == "custom":
        assert spec["activeDeadlineSeconds"] == 86400
        assert spec["podGC"] == {"strategy": "OnPodSuccess"}
        assert spec["ttlStrategy"] == {"secondsAfterCompletion": 604800}
        assert spec["imagePullSecrets"] == [{"name": "registry-pull"}, {"name": "registry-mirror"}]
        assert yaml.safe_load(spec["podSpecPatch"]) == yaml.safe_load(EXECUTOR_PATCH)
        assert {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}} in spec["volumes"]
        for tmpl in case.pod_templates:
            assert {"name": "scratch", "mountPath": "/scratch"} in tmpl["container"]["volumeMounts"]
            assert {"name": "INFER_S3_MULTIPART_THRESHOLD", "value": "134217728"} in tmpl["container"]["env"]
    else:
        assert not {"activeDeadlineSeconds", "podGC", "ttlStrategy", "imagePullSecrets", "podSpecPatch"} & set(spec)


# ----------------------------------------------------------------------------------------
# The `helm test` pod
# ----------------------------------------------------------------------------------------


def test_helm_test_pod_checks_the_run_root_with_the_steps_image_and_identity(case):
    pod = case.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    assert c["image"] == case.image and c["command"] == ["infer-distill"]
    ns = build_parser().parse_args(c["args"])
    assert (ns.command, ns.uri) == ("check-store", case.root)
    step = case.named("prepare-data")["container"]
    assert c["env"] == step["env"] and c["securityContext"] == step["securityContext"]
    assert pod["spec"]["serviceAccountName"] == case.template["spec"]["serviceAccountName"]


def test_the_test_pods_command_checks_endpoint_bucket_and_credentials(s3_bucket, capsys, monkeypatch):
    """check-store against a real S3 server: ok for the bucket, and each failure named."""
    assert cli_main(["check-store", f"s3://{s3_bucket}/infer"]) == 0
    assert "ok: s3://" in capsys.readouterr().out
    assert cli_main(["check-store", "s3://no-such-bucket-abc/infer"]) == 2
    assert "does not exist" in capsys.readouterr().err
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # moto takes any key, so check a missing one
        monkeypatch.delenv(name)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, "/nonexistent")
    assert cli_main(["check-store", f"s3://{s3_bucket}/infer"]) == 2
    assert "no valid S3 credentials" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert cli_main(["check-store", f"s3://{s3_bucket}/infer"]) == 75
    assert "is unreachable" in capsys.readouterr().err


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
    for tmpl in case.pod_templates:
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
    spec = case.template["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
    tmp_volume = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp_volume
    for c in [t["container"] for t in case.pod_templates] + case.one("Pod")["spec"]["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        for var in ("HOME", "TMPDIR", "MPLCONFIGDIR", "TORCH_HOME", "XDG_CACHE_HOME"):
            assert env[var].startswith("/tmp"), var


def test_service_account_and_executor_rbac(case):
    sa, role, binding = case.one("ServiceAccount"), case.one("Role"), case.one("RoleBinding")
    assert case.template["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {"create", "patch"} <= rules[("argoproj.io", "workflowtaskresults")]
    assert {"get", "watch", "patch"} <= rules[("", "pods")]
    assert not any("*" in verbs or "delete" in verbs for verbs in rules.values())
    if case.name == "custom":
        assert sa["metadata"]["annotations"] == CUSTOM["serviceAccount"]["annotations"]


def test_the_pod_spec_patch_may_also_be_given_as_a_map():
    values = _merge(DEFAULT, {"workflow": {"podSpecPatch": yaml.safe_load(EXECUTOR_PATCH)}})
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    (wt,) = [o for path, text in rendered.items() if path.endswith(".yaml")
             for o in yaml.safe_load_all(text) if o and o["kind"] == "WorkflowTemplate"]
    assert json.loads(wt["spec"]["podSpecPatch"]) == yaml.safe_load(EXECUTOR_PATCH)  # Argo takes it as text: JSON


@pytest.mark.processes  # runs bash
def test_the_notes_kubectl_heredoc_works_as_pasted(case, tmp_path):
    import subprocess

    lines = case.notes.splitlines()
    start = next(i for i, line in enumerate(lines) if "kubectl" in line and "<<YAML" in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "YAML")
    pasted = "\n".join(lines[start:end + 1]) + "\necho pasted-after\n"
    # kubectl as a shell function that keeps what `create -f -` reads
    script = f'kubectl() {{ cat > "{tmp_path}/created.yaml"; }}\n{pasted}'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "pasted-after\n" and "warning" not in done.stderr, done.stderr
    created = yaml.safe_load((tmp_path / "created.yaml").read_text())
    wt = case.template["metadata"]["name"]
    assert created == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"generateName": f"{wt}-"},
                       "spec": {"workflowTemplateRef": {"name": wt}}}


def test_notes_say_how_to_test_submit_and_follow_a_run(case):
    wt = case.template["metadata"]["name"]
    for needle in (f"helm test {RELEASE} -n {NAMESPACE}", f"argo submit -n {NAMESPACE} --from workflowtemplate/{wt}",
                   '-p config="$(cat configs/cifar10-ipc10.yaml)"', f"generateName: {wt}-",
                   f"workflows.argoproj.io/workflow-template={wt}", f"infer-distill show {case.root}/<workflow name>/report"):
        assert needle in case.notes, needle


def test_notes_show_the_config_the_values_set(case):
    config = case.config
    summary = (f"dataset {config['dataset']['name']}" + (f" at {config['dataset']['root']}" if config["dataset"].get("root") else "")
               + f", budget.ipc {config['budget']['ipc']},\nteachers {', '.join(config['teachers']['archs'])}, "
               f"students {', '.join(config['students']['archs'])};")
    assert summary in case.notes


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


def test_default_values_are_the_quickstart_and_the_plans_gpu_steps():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["config"] == QUICKSTART
    for step in dag.PLAN:
        stage = values["stages"][re.sub(r"-(\w)", lambda m: m.group(1).upper(), step.name)]
        assert (stage["gpu"] > 0) == step.gpu and ("parallelism" in stage) == bool(step.over), step.name


@pytest.mark.parametrize("values, needle", [
    ({"image": {"repository": "ghcr.io/a/b"}}, "/s3/bucket"),                      # the bucket is required
    ({"image": {"repository": "ghcr.io/a/b"}, "s3": {"bucket": "Not_A_Bucket"}}, "/s3/bucket"),
    ({"image": {"repository": "ghcr.io/a/b"}, "s3": {"bucket": "b12", "accessKey": "x"}}, "'accessKey' not allowed"),
    ({"image": {"repository": "ghcr.io/a/b"}, "s3": {"bucket": "b12"}, "extraEnv": [{"name": "WANDB_API_KEY", "value": "x"}]},
     "/extraEnv/0"),
    ({"image": {"repository": "ghcr.io/a/b"}, "s3": {"bucket": "b12"}, "config": {"labels": {"modes": ["dymanic"]}}},
     "/config/labels/modes/0"),
    ({"image": {"repository": "ghcr.io/a/b"}, "s3": {"bucket": "b12"}, "config": {"teachers": {"archz": ["resnet18"]}}},
     "'archz' not allowed"),
    ({"image": {"repository": "ghcr.io/a/b"}, "s3": {"bucket": "b12"}, "stages": {"synthesizeUfc": {"gpu": -1}}},
     "/stages/synthesizeUfc/gpu"),
    ({"image": {"repository": "ghcr.io/a/b"}, "s3": {"bucket": "b12"}, "stages": {"report": {"parallelism": 2}}},
     "'parallelism' not allowed"),
    ({"image": {"repository": "ghcr.io/a/b"}, "s3": {"bucket": "b12"}, "podSecurityContext": {"runAsNonRoot": False}},
     "/podSecurityContext/runAsNonRoot"),
    ({"image": {"repository": "ghcr.io/a/b"}, "s3": {"bucket": "b12"}, "retry": {"retryPolicy": "OnFailure"}},
     "'retryPolicy' not allowed"),
    ({"image": {"repository": "ghcr.io/a/b"}, "s3": {"bucket": "b12"}, "data": {"claimName": "d", "mountPath": "data"}},
     "/data/mountPath"),
    ({"image": {"repository": "ghcr.io/a/b"}, "s3": {"bucket": "b12"}, "imagePullSecrets": [{"nam": "regcred"}]},
     "/imagePullSecrets/0"),
    ({"image": {"repository": "ghcr.io/a/b"}, "s3": {"bucket": "b12"}, "workflow": {"podSpecPatch": 3}},
     "/workflow/podSpecPatch"),
])
def test_bad_values_fail_at_render_time_naming_the_field(values, needle):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as err:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    assert needle in str(err.value)


@pytest.mark.parametrize("image, needle", [
    ({}, "image.repository is required: the registry-qualified project image"),
    ({"repository": "infer-distill"}, "image.repository=infer-distill names no registry"),
    ({"repository": "acme/infer-distill"}, "image.repository=acme/infer-distill names no registry"),
])
def test_the_chart_refuses_an_image_without_a_registry(image, needle):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError) as err:
        chart.render(values={"s3": {"bucket": "b12"}, "image": image}, name=RELEASE, namespace=NAMESPACE)
    assert needle in str(err.value)


def test_missing_bucket_fails_in_the_templates_too_without_the_schema(tmp_path):
    """`helm install --skip-schema-validation`: the templates' own `required` still names the value."""
    shutil.copytree(CHART, tmp_path / "chart", ignore=shutil.ignore_patterns("values.schema.json"))
    with helm.Chart.load(tmp_path / "chart") as chart, pytest.raises(helm.HelmRenderError) as err:
        assert chart.schema is None
        chart.render(values={"image": {"repository": "ghcr.io/a/b"}}, name=RELEASE, namespace=NAMESPACE)
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
