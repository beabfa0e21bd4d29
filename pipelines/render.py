"""Render `infer_distill.dag.PLAN` into the files the Helm chart and docker compose read.

    python pipelines/render.py            # write every generated file
    python pipelines/render.py --check    # exit 1 naming every stale one (tests/test_plan.py runs it)

- helm/infer-distill/files/workflow-template.yaml: the Argo WorkflowTemplate, built with hera: the
  DAG, its fan-outs, every step's command, inputs, outputs and retry strategy. The chart's
  templates/workflowtemplate.yaml completes it from the values (image, resources, GPUs,
  scheduling, S3, volumes, security).
- docker/compose.yaml: the quickstart as services (one per step and fan-out item) on a bridge
  network, with MinIO published on 127.0.0.1 so the host can read the bucket.
- docker/compose.cuda.yaml: compose.yaml on an NVIDIA GPU: the CUDA image, a GPU reserved for
  every GPU step, which refuses to run on the CPU (INFER_REQUIRE_CUDA=1).
- docker/compose.moto.yaml: the same on the host's network with a locally built moto S3 server,
  for machines that cannot pull images; docker/compose.test.yaml: that, at test size.

The services (one per teacher, shard and student run) follow the config at render time, while
the containers read it live from the bind mount: every stage service first checks that the
config's sha256 is the one it was rendered from, and refuses with exit 2 (re-render) otherwise.

Edit the plan (or this file), never the generated files: the test fails when one is stale.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import yaml

from infer_distill import dag
from infer_distill.config.budget import KNOWN_NUM_CLASSES
from infer_distill.config.loading import load_config
from infer_distill.config.schema import Config
from infer_distill.dag.layout import Layout
from infer_distill.runtime.accelerator import REQUIRE_CUDA

REPO = Path(__file__).resolve().parents[1]
GENERATED_BY = "Generated from infer_distill.dag by pipelines/render.py; do not edit (python pipelines/render.py)."

# ----------------------------------------------------------------------------------------
# Argo: the WorkflowTemplate
# ----------------------------------------------------------------------------------------

CONFIG_PATH = "/config/config.yaml"                 # the config parameter, as a raw input artifact
RUN_ROOT = "{{workflow.parameters.root}}/{{workflow.name}}"  # every run of the template under its own name
ITEMS_DIR = "/tmp/items"                            # resolve-config writes the fan-outs' items here
SHARDS_FILE = "/tmp/shards.json"                    # select-subsets writes the shard items here


def runs_parameter(step: dag.Step) -> str:
    """resolve-config's output saying whether the config runs `step` ("true"/"false")."""
    return dag.runs_file(step)


def fanout_template(step: dag.Step) -> str:
    """The DAG template that runs a fan-out step once per item (its parallelism limits that fan-out alone)."""
    return f"{step.name}s"


def workflow_template() -> dict:
    from hera.workflows import DAG, Container, Parameter, RawArtifact, RetryStrategy, Task, WorkflowTemplate
    from hera.workflows import models as m

    def retry(policy: dag.RetryPolicy) -> RetryStrategy:
        # retryPolicy Always: an evicted or preempted pod (an Argo "Error", exit code -1) is retried too.
        return RetryStrategy(limit=policy.limit, retry_policy="Always", expression=policy.argo_expression(),
                             backoff=m.Backoff(duration=f"{policy.backoff_s}s", factor=str(policy.factor),
                                               max_duration=f"{policy.max_duration_s // 3600}h"))

    def pod(name: str, args: list[str], params=(), outputs=(), retry_policy=dag.RETRY, labels=None) -> None:
        Container(name=name, image="infer-distill", command=["infer-distill"], args=args,  # (the chart sets the image)
                  labels={"infer-distill/stage": name, **(labels or {})},
                  inputs=[RawArtifact(name="config", path=CONFIG_PATH, data="{{workflow.parameters.config}}"),
                          *(Parameter(name=p) for p in params)],
                  outputs=list(outputs) or None, retry_strategy=retry(retry_policy))

    config_fanouts = [f for f in dag.FANOUTS.values() if f.source == "config"]
    arguments = [Parameter(name="config", description="the infer-distill config (YAML), e.g. \"$(cat configs/cifar10-ipc10.yaml)\""),
                 Parameter(name="root", description="runs are written under <root>/<workflow name>, e.g. s3://bucket/infer")]
    with WorkflowTemplate(name="infer-distill", entrypoint="infer", arguments=arguments) as wt:
        pod("resolve-config", ["plan", "--config", CONFIG_PATH, "--items-dir", ITEMS_DIR],
            outputs=[*(Parameter(name=f.name, value_from=m.ValueFrom(path=f"{ITEMS_DIR}/{f.name}.json")) for f in config_fanouts),
                     *(Parameter(name=runs_parameter(s), value_from=m.ValueFrom(path=f"{ITEMS_DIR}/{runs_parameter(s)}"))
                       for s in dag.PLAN if s.when)])
        for step in dag.PLAN:
            args = ["stage", step.name, "--config", CONFIG_PATH, "--root", RUN_ROOT]
            keys = step.over.keys if step.over else ()
            args += [part for key in keys for part in (f"--{key.replace('_', '-')}", f"{{{{inputs.parameters.{key}}}}}")]
            outputs = []
            if any(f.source == step.name for f in dag.FANOUTS.values()):
                args += ["--shards-output", SHARDS_FILE]
                outputs = [Parameter(name=dag.SHARDS.name, value_from=m.ValueFrom(path=SHARDS_FILE))]
            pod(step.name, args, keys, outputs, step.retry, {"infer-distill/reads-dataset": "true"} if step.reads_dataset else None)
        for step in dag.PLAN:
            if step.over:
                with DAG(name=fanout_template(step), inputs=[Parameter(name="items")]):
                    Task(name=step.name, template=step.name, with_param="{{inputs.parameters.items}}",
                         arguments=[Parameter(name=k, value=f"{{{{item.{k}}}}}") for k in step.over.keys])

        def task_name(name: str) -> str:
            step = dag.STEPS[name]
            return fanout_template(step) if step.over else step.name

        with DAG(name="infer"):
            Task(name="resolve-config", template="resolve-config")
            for step in dag.PLAN:
                after = [task_name(d) for d in dag.depends(step)] or ["resolve-config"]
                # A step the config does not run is skipped; Argo counts a skipped dependency as done.
                when = {"when": f"{{{{tasks.resolve-config.outputs.parameters.{runs_parameter(step)}}}}} == true"} if step.when else {}
                if step.over is None:
                    Task(name=step.name, template=step.name, depends=" && ".join(after), **when)
                    continue
                source = "resolve-config" if step.over.source == "config" else step.over.source
                items = f"{{{{tasks.{source}.outputs.parameters.{step.over.name}}}}}"
                Task(name=fanout_template(step), template=fanout_template(step), depends=" && ".join(after),
                     arguments=[Parameter(name="items", value=items)], **when)
    return wt.to_dict()


def render_workflow_template() -> str:
    return f"# {GENERATED_BY}\n" + yaml.safe_dump(workflow_template(), sort_keys=False, width=120)


# ----------------------------------------------------------------------------------------
# docker compose
# ----------------------------------------------------------------------------------------

COMPOSE_CONFIG = "quickstart.yaml"       # configs/, mounted read-only at /config
COMPOSE_SETS = ["synthesis.subsets_per_shard=3"]                       # three synthesis services
TEST_SETS = ["teachers.epochs=1", "synthesis.iterations=3", "students.epochs=2", "device=cpu"]
MINIO_IMAGE = "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"
MOTO_IMAGE = "infer-distill-moto:5.2.5"  # docker/build.sh moto
INFER_IMAGE = "infer-distill:cpu"        # docker/build.sh
CUDA_IMAGE = "infer-distill:cuda"        # docker/build.sh cuda
GPU_RESERVATION = {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}}
ROOT = "s3://${INFER_BUCKET:-infer}/${INFER_RUN:-quickstart}"
S3_PORT = "${S3_PORT:-9000}"


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:  # every service spelled out, no &anchors
        return True


def service_name(step: dag.Step, layout: Layout, item: dict) -> str:
    """e.g. train-teacher-resnet-tiny, synthesize-ufc-subsets-0000-0002, evaluate-student-convnet-d3-w32-static-seed0."""
    if not step.over:
        return step.name
    return f"{step.name}-{dag.location(layout, step, item).rsplit('/', 1)[-1]}".replace("_", "-").lower()


def config_check(file: str) -> list[str]:
    """The entrypoint of a stage service: run `infer-distill <command>` only if the --config it is given is
    byte for byte the one `file`'s services were rendered from (compose reads `$$` as `$`)."""
    digest = hashlib.sha256((REPO / "configs" / COMPOSE_CONFIG).read_bytes()).hexdigest()
    script = ("set -eu\n"
              "config=; previous=\n"
              "for arg in \"$$@\"; do [ \"$$previous\" != --config ] || config=$$arg; previous=$$arg; done\n"
              f"if [ \"$$(sha256sum \"$$config\" | cut -d' ' -f1)\" != {digest} ]; then\n"
              f"  echo \"error: $$config is not the config docker/{file} was rendered from (its services follow its teachers, "
              f"shards and student runs): render them again: python pipelines/render.py\" >&2\n"
              "  exit 2\n"
              "fi\n"
              "exec \"$$0\" \"$$@\"\n")
    return ["sh", "-c", script, "infer-distill"]


def compose(file: str, s3: str, sets: list[str], cuda: bool = False) -> dict:
    """The quickstart's DAG as compose services; s3 is 'minio' (bridge network) or 'moto' (host network);
    cuda: the CUDA image, with a GPU reserved for (and required by) every GPU step."""
    cfg: Config = load_config(REPO / "configs" / COMPOSE_CONFIG, sets)
    num_classes = KNOWN_NUM_CLASSES[cfg.dataset.name]
    layout = Layout(ROOT)
    host_network = s3 == "moto"
    network = {"network_mode": "host"} if host_network else {}
    endpoint = f"http://127.0.0.1:{S3_PORT}" if host_network else "http://s3:9000"
    services: dict[str, dict] = {}
    if s3 == "minio":
        services["s3"] = {
            "image": f"${{S3_IMAGE:-{MINIO_IMAGE}}}",
            "command": ["server", "/data", "--console-address", ":9001"],
            "environment": {"MINIO_ROOT_USER": "${MINIO_ROOT_USER:?set MINIO_ROOT_USER (see docker/.env.example)}",
                            "MINIO_ROOT_PASSWORD": "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD (see docker/.env.example)}"},
            # Published on loopback only: the host reads the bucket (infer-distill show s3://...), no one else does.
            "ports": [f"127.0.0.1:{S3_PORT}:9000", "127.0.0.1:${S3_CONSOLE_PORT:-9001}:9001"],
            "volumes": ["s3-data:/data"],
            "healthcheck": {"test": ["CMD", "mc", "ready", "local"], "interval": "2s", "timeout": "5s", "retries": 30},
        }
        services["create-bucket"] = {
            "image": f"${{S3_IMAGE:-{MINIO_IMAGE}}}",
            "depends_on": {"s3": {"condition": "service_healthy"}},
            "environment": {"MINIO_ROOT_USER": "${MINIO_ROOT_USER:?set MINIO_ROOT_USER (see docker/.env.example)}",
                            "MINIO_ROOT_PASSWORD": "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD (see docker/.env.example)}",
                            "INFER_BUCKET": "${INFER_BUCKET:-infer}", "INFER_CREATE_BUCKET": "${INFER_CREATE_BUCKET:-1}"},
            "entrypoint": ["sh", "-c"],
            "command": ["set -eu\n"
                        "if [ \"$$INFER_CREATE_BUCKET\" = 0 ]; then echo \"INFER_CREATE_BUCKET=0: not creating s3://$$INFER_BUCKET\"; exit 0; fi\n"
                        "mc alias set local http://s3:9000 \"$$MINIO_ROOT_USER\" \"$$MINIO_ROOT_PASSWORD\" >/dev/null\n"
                        "mc mb --ignore-existing \"local/$$INFER_BUCKET\"\n"],
        }
    else:
        services["s3"] = {
            "image": f"${{S3_TEST_IMAGE:-{MOTO_IMAGE}}}", **network,
            "command": ["-H", "127.0.0.1", "-p", S3_PORT],
            "healthcheck": {"test": ["CMD", "python", "-c", f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{S3_PORT}/', timeout=2)"],
                            "interval": "1s", "timeout": "5s", "retries": 60},
        }
        services["create-bucket"] = {  # with the S3 server's admin account, as for MinIO (moto takes any)
            "image": f"${{INFER_IMAGE:-{INFER_IMAGE}}}", **network,
            "depends_on": {"s3": {"condition": "service_healthy"}},
            "environment": {"AWS_ENDPOINT_URL": f"${{INFER_S3_ENDPOINT:-{endpoint}}}",
                            "AWS_ACCESS_KEY_ID": "${MINIO_ROOT_USER:?set MINIO_ROOT_USER (see docker/.env.example)}",
                            "AWS_SECRET_ACCESS_KEY": "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD (see docker/.env.example)}",
                            "AWS_DEFAULT_REGION": "${AWS_DEFAULT_REGION:-us-east-1}",
                            "INFER_BUCKET": "${INFER_BUCKET:-infer}", "INFER_CREATE_BUCKET": "${INFER_CREATE_BUCKET:-1}"},
            "entrypoint": ["python", "-c"],
            "command": ["import os, boto3\n"
                        "bucket = os.environ['INFER_BUCKET']\n"
                        "if os.environ['INFER_CREATE_BUCKET'] == '0':\n"
                        "    print(f'INFER_CREATE_BUCKET=0: not creating s3://{bucket}')\n"
                        "else:\n"
                        "    boto3.client('s3').create_bucket(Bucket=bucket)\n"
                        "    print(f'created bucket s3://{bucket}')\n"],
        }
    set_args = [part for s in sets for part in ("--set", s)]
    image = CUDA_IMAGE if cuda else INFER_IMAGE
    names: dict[str, list[str]] = {}
    for step in dag.PLAN:
        items = [] if not step.runs(cfg) else step.over.items(cfg, num_classes) if step.over else [{}]
        after = [n for d in dag.depends(step) for n in names[d]] or ["create-bucket"]
        names[step.name] = []
        for item in items:
            name = service_name(step, layout, item)
            names[step.name].append(name)
            gpu = cuda and step.gpu
            services[name] = {
                "image": f"${{INFER_IMAGE:-{image}}}", **network, "restart": "no",
                "depends_on": {d: {"condition": "service_completed_successfully"} for d in after},
                "volumes": ["../configs:/config:ro"],
                "environment": {
                    # From the host environment (or docker/.env), never from this file; unset ones reach
                    # the stage empty, and the first stage says what is missing.
                    "AWS_ENDPOINT_URL": f"${{INFER_S3_ENDPOINT:-{endpoint}}}", "AWS_ACCESS_KEY_ID": "${AWS_ACCESS_KEY_ID:-}",
                    "AWS_SECRET_ACCESS_KEY": "${AWS_SECRET_ACCESS_KEY:-}", "AWS_SESSION_TOKEN": "${AWS_SESSION_TOKEN:-}",
                    "AWS_DEFAULT_REGION": "${AWS_DEFAULT_REGION:-us-east-1}", "AWS_EC2_METADATA_DISABLED": "true",
                    **({REQUIRE_CUDA: "1"} if gpu else {})},
                **({"deploy": GPU_RESERVATION} if gpu else {}),
                "entrypoint": config_check(file),
                "command": ["stage", step.name, *dag.cli_args(item), "--config", f"/config/{COMPOSE_CONFIG}", "--root", ROOT, *set_args],
            }
    out = {"name": "infer-distill", "services": services}
    if s3 == "minio":
        out["volumes"] = {"s3-data": {}}
    return out


COMPOSE_HEADERS = {
    "compose.yaml": """\
# The quickstart DAG as a local dry run: MinIO (quay.io) on a bridge network, published on
# 127.0.0.1 only, and one service per step and fan-out item, each `infer-distill stage ...`.
#   cp docker/.env.example docker/.env                  # once: pick a password
#   docker/build.sh                                     # the infer-distill:cpu image
#   docker compose -f docker/compose.yaml up -d && docker compose -f docker/compose.yaml wait report
#   AWS_ENDPOINT_URL=http://127.0.0.1:9000 infer-distill show s3://infer/quickstart/report   # from the host
#   docker compose -f docker/compose.yaml down -v
""",
    "compose.cuda.yaml": """\
# compose.yaml on an NVIDIA GPU: the infer-distill:cuda image, and a GPU reserved for every GPU
# step (the NVIDIA Container Toolkit must be installed), which refuses to run on the CPU when CUDA
# is unusable (INFER_REQUIRE_CUDA=1; README, GPU: the driver it needs).
#   docker/build.sh cuda
#   docker compose -f docker/compose.cuda.yaml up -d && docker compose -f docker/compose.cuda.yaml wait report
""",
    "compose.moto.yaml": """\
# The quickstart DAG with a moto S3 server built here (docker/build.sh cpu moto), every service on
# the host's network and 127.0.0.1 only: for machines that cannot pull images.
#   docker compose -f docker/compose.moto.yaml up -d && docker compose -f docker/compose.moto.yaml wait report
""",
    "compose.test.yaml": """\
# docker/compose.moto.yaml at test size (tests/test_containers.py): the same DAG, fewer epochs
# and iterations.
""",
}


def render_compose(name: str) -> str:
    s3, sets, cuda = {"compose.yaml": ("minio", COMPOSE_SETS, False), "compose.cuda.yaml": ("minio", COMPOSE_SETS, True),
                      "compose.moto.yaml": ("moto", COMPOSE_SETS, False),
                      "compose.test.yaml": ("moto", COMPOSE_SETS + TEST_SETS, False)}[name]
    body = yaml.dump(compose(name, s3, sets, cuda), Dumper=_Dumper, sort_keys=False, width=120)
    return f"{COMPOSE_HEADERS[name]}#\n# {GENERATED_BY}\n" + body


# ----------------------------------------------------------------------------------------


def generated() -> dict[Path, str]:
    files = {REPO / "helm" / "infer-distill" / "files" / "workflow-template.yaml": render_workflow_template()}
    for name in COMPOSE_HEADERS:
        files[REPO / "docker" / name] = render_compose(name)
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is stale")
    args = p.parse_args(argv)
    stale = []
    for path, text in generated().items():
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path.relative_to(REPO))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'} {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
