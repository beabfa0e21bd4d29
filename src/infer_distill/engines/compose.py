"""The plan as docker compose services: an S3 server (MinIO on a bridge network, or moto on the host's),
a job that creates the bucket, and one service per step and fan-out item, each `infer-distill stage ...`,
waiting for every service of the steps before it.

The services follow the config at render time (one per teacher, shard and student run) while the
containers read it live from a bind mount: every stage service first checks that the config's sha256
is the one it was rendered from, and refuses with exit 2 (render again) otherwise.

Where the number of classes is known only once prepare-data has read the data (imagefolder, hf, ...),
the shards are planned at run time, as the Argo template plans them: one synthesize-ufc service asks
the finished select-subsets for them and runs them one after another (compose has no run-time fan-out).

`infer-distill render compose --config C --out DIR` writes them for any config; the repository's
docker/compose*.yaml are the quickstart's (pipelines/render.py).
"""
from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infer_distill import dag
from infer_distill.config.budget import KNOWN_NUM_CLASSES
from infer_distill.config.loading import dump_config, find_config, load_config
from infer_distill.config.schema import Config
from infer_distill.dag.layout import Layout
from infer_distill.engines.stage_command import output_flag
from infer_distill.errors import ConfigError
from infer_distill.runtime.accelerator import REQUIRE_CUDA

MINIO_IMAGE = "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"
MOTO_IMAGE = "infer-distill-moto:5.2.5"  # docker/build.sh moto
INFER_IMAGE = "infer-distill:cpu"        # docker/build.sh
CUDA_IMAGE = "infer-distill:cuda"        # docker/build.sh cuda
GPU_RESERVATION = {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}}
S3_PORT = "${S3_PORT:-9000}"


@dataclass(frozen=True)
class Rendering:
    """What one compose file is rendered from: the config (its bytes, as the services mount it), how the
    services reach it, and what its messages tell a person."""
    name: str                  # the file's name, e.g. compose.yaml
    config: bytes              # the config file the services read, byte for byte
    config_name: str           # its name under /config
    mount: str                 # the host folder mounted at /config, relative to the compose file
    rerender: str              # the command that renders the file again
    s3: str = "minio"          # minio (bridge network) or moto (host network)
    sets: list[str] = field(default_factory=list)  # --set overrides every stage gets
    cuda: bool = False         # the CUDA image, a GPU reserved for (and required by) every GPU step
    shown_as: str = ""         # how the refusal names the file (default: its name)
    env_hint: str = "see docker/.env.example"  # where a person finds the settings the file needs
    run: str = "quickstart"    # the run root's default name: s3://$INFER_BUCKET/$INFER_RUN

    @property
    def root(self) -> str:
        return f"s3://${{INFER_BUCKET:-infer}}/${{INFER_RUN:-{self.run}}}"


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:  # every service spelled out, no &anchors
        return True


def service_name(step: dag.Step, layout: Layout, item: dict) -> str:
    """e.g. train-teacher-resnet-tiny, synthesize-ufc-subsets-0000-0002, evaluate-student-convnet-d3-w32-static-seed0;
    a fan-out planned at run time: the step's name."""
    if not step.over or not item:
        return step.name
    return f"{step.name}-{dag.location(layout, step, item).rsplit('/', 1)[-1]}".replace("_", "-").lower()


def config_check(r: Rendering, then: str = 'exec "$$0" "$$@"\n') -> list[str]:
    """The entrypoint of a stage service: run `infer-distill <command>` (`then`) only if the --config it is given is
    byte for byte the one the file's services were rendered from (compose reads `$$` as `$`)."""
    digest = hashlib.sha256(r.config).hexdigest()
    script = ("set -eu\n"
              "config=; previous=\n"
              "for arg in \"$$@\"; do [ \"$$previous\" != --config ] || config=$$arg; previous=$$arg; done\n"
              f"if [ \"$$(sha256sum \"$$config\" | cut -d' ' -f1)\" != {digest} ]; then\n"
              f"  echo \"error: $$config is not the config {r.shown_as or r.name} was rendered from (its services follow its teachers, "
              f"shards and student runs): render them again: {r.rerender}\" >&2\n"
              "  exit 2\n"
              "fi\n"
              f"{then}")
    return ["sh", "-c", script, "infer-distill"]


def each_item(fanout: dag.FanOut) -> str:
    """The last line of the entrypoint of a step whose items `fanout.source` plans at run time: ask that step for
    them (it is done, so `stage` skips it and writes its items: [{"subset_ids": "0,1,2"}, ...]), then run
    `infer-distill <command>` once per item, in turn, each item's keys as flags; the first failure's exit code is
    the service's."""
    items = f"/tmp/{fanout.name}.json"
    return ("exec python -c '\n"
            "import json, subprocess, sys\n"
            "program, stage, name, *args = sys.argv[1:]\n"
            f"code = subprocess.call([program, stage, \"{fanout.source}\", *args, \"{output_flag(fanout)}\", \"{items}\"])\n"
            f"for item in [] if code else json.load(open(\"{items}\")):\n"
            "    flags = [part for key, value in item.items() for part in (\"--\" + key.replace(\"_\", \"-\"), str(value))]\n"
            "    code = subprocess.call([program, stage, name, *args, *flags])\n"
            "    if code:\n"
            "        break\n"
            "sys.exit(code)\n"
            "' \"$$0\" \"$$@\"\n")


def data_mounts(cfg: Config) -> list[str]:
    """The dataset's folder or archive, mounted read-only at the same path, for the steps that read it."""
    root = cfg.dataset.root
    if not root:
        return []
    if os.path.isabs(root):
        return [f"{root}:{root}:ro"]
    if os.path.exists(root):
        raise ConfigError(f"dataset.root {root!r} is a relative path: the compose services run in containers, which mount "
                          f"it at the same path: give it as an absolute path (e.g. {os.path.abspath(root)})")
    return []  # not a path here (a Hugging Face dataset id): nothing to mount


def compose(cfg: Config, r: Rendering) -> dict:
    """The DAG of `cfg` (the config `r.config`, loaded with `r.sets`) as compose services."""
    # None: known once prepare-data has read the data; the fan-outs it decides are then planned at run time.
    num_classes = KNOWN_NUM_CLASSES.get(cfg.dataset.name)
    s3, sets, cuda = r.s3, r.sets, r.cuda
    env_hint = r.env_hint
    mounts = data_mounts(cfg)
    run_time = [f for f in dag.FANOUTS.values() if f.source != "config" and num_classes is None]
    layout = Layout(r.root)
    host_network = s3 == "moto"
    network = {"network_mode": "host"} if host_network else {}
    endpoint = f"http://127.0.0.1:{S3_PORT}" if host_network else "http://s3:9000"
    services: dict[str, dict] = {}
    if s3 == "minio":
        services["s3"] = {
            "image": f"${{S3_IMAGE:-{MINIO_IMAGE}}}",
            "command": ["server", "/data", "--console-address", ":9001"],
            "environment": {"MINIO_ROOT_USER": f"${{MINIO_ROOT_USER:?set MINIO_ROOT_USER ({env_hint})}}",
                            "MINIO_ROOT_PASSWORD": f"${{MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD ({env_hint})}}"},
            # Published on loopback only: the host reads the bucket (infer-distill show s3://...), no one else does.
            "ports": [f"127.0.0.1:{S3_PORT}:9000", "127.0.0.1:${S3_CONSOLE_PORT:-9001}:9001"],
            "volumes": ["s3-data:/data"],
            "healthcheck": {"test": ["CMD", "mc", "ready", "local"], "interval": "2s", "timeout": "5s", "retries": 30},
        }
        services["create-bucket"] = {
            "image": f"${{S3_IMAGE:-{MINIO_IMAGE}}}",
            "depends_on": {"s3": {"condition": "service_healthy"}},
            "environment": {"MINIO_ROOT_USER": f"${{MINIO_ROOT_USER:?set MINIO_ROOT_USER ({env_hint})}}",
                            "MINIO_ROOT_PASSWORD": f"${{MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD ({env_hint})}}",
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
                            "AWS_ACCESS_KEY_ID": f"${{MINIO_ROOT_USER:?set MINIO_ROOT_USER ({env_hint})}}",
                            "AWS_SECRET_ACCESS_KEY": f"${{MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD ({env_hint})}}",
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
        planned_later = step.over in run_time
        items = ([] if not step.runs(cfg) else [{}] if planned_later
                 else step.over.items(cfg, num_classes) if step.over else [{}])
        after = [n for d in dag.depends(step) for n in names[d]] or ["create-bucket"]
        names[step.name] = []
        volumes = [f"{r.mount}:/config:ro", *(mounts if step.reads_dataset else [])]
        for item in items:
            name = service_name(step, layout, item)
            names[step.name].append(name)
            gpu = cuda and step.gpu
            services[name] = {
                "image": f"${{INFER_IMAGE:-{image}}}", **network, "restart": "no",
                "depends_on": {d: {"condition": "service_completed_successfully"} for d in after},
                "volumes": volumes,
                "environment": {
                    # From the host environment (or a .env file), never from this file; unset ones reach
                    # the stage empty, and the first stage says what is missing.
                    "AWS_ENDPOINT_URL": f"${{INFER_S3_ENDPOINT:-{endpoint}}}", "AWS_ACCESS_KEY_ID": "${AWS_ACCESS_KEY_ID:-}",
                    "AWS_SECRET_ACCESS_KEY": "${AWS_SECRET_ACCESS_KEY:-}", "AWS_SESSION_TOKEN": "${AWS_SESSION_TOKEN:-}",
                    "AWS_DEFAULT_REGION": "${AWS_DEFAULT_REGION:-us-east-1}", "AWS_EC2_METADATA_DISABLED": "true",
                    **({REQUIRE_CUDA: "1"} if gpu else {})},
                **({"deploy": GPU_RESERVATION} if gpu else {}),
                "entrypoint": config_check(r, each_item(step.over)) if planned_later else config_check(r),
                "command": ["stage", step.name, *dag.cli_args(item), "--config", f"/config/{r.config_name}", "--root", r.root, *set_args],
            }
    out = {"name": "infer-distill", "services": services}
    if s3 == "minio":
        out["volumes"] = {"s3-data": {}}
    return out


def render(cfg: Config, r: Rendering, header: str, generated_by: str) -> str:
    """The compose file: `header` (what it is, how to run it), then `generated_by` (how to render it again)."""
    body = yaml.dump(compose(cfg, r), Dumper=_Dumper, sort_keys=False, width=120)
    return f"{header}#\n# {generated_by}\n" + body


# The files `infer-distill render compose` writes: (S3 server, CUDA) of each.
FILES = {"compose.yaml": ("minio", False), "compose.cuda.yaml": ("minio", True)}
HEADER = """\
# The INFER DAG of {config} as docker compose services: MinIO (quay.io) on a bridge network,
# published on 127.0.0.1 only, a job that creates the bucket, and one service per step and fan-out
# item, each `infer-distill stage ...` in the {image} image{gpu}.
# Settings (in the environment or a .env file beside this one): MINIO_ROOT_USER, MINIO_ROOT_PASSWORD
# (the local S3 server's admin account), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (what the stages
# use; the admin account works), INFER_BUCKET and INFER_RUN (the run root: s3://$INFER_BUCKET/$INFER_RUN,
# by default s3://infer/{run}).
#   docker compose -f {file} up -d && docker compose -f {file} wait report
#   docker compose -f {file} down -v
"""
MARK = "# Generated from infer_distill.dag by infer-distill render"


def write(cfg: Config, config: str | None, sets: list[str], out: Path) -> list[Path]:
    """Write FILES for `cfg` (the config file or shipped name `config` with `sets`; None: the defaults) under `out`,
    with the config the services mount (config/<name>). Overwrites only files this command wrote."""
    source = find_config(config) if config else None
    name = source.name if source else "config.yaml"
    text = source.read_text(encoding="utf-8") if source else dump_config(load_config(None))
    rerender = shlex.join(["infer-distill", "render", "compose", *(["--config", config] if config else []),
                           *(part for s in sets for part in ("--set", s)), "--out", str(out)])
    files = {out / "config" / name: f"{MARK} compose from {source or 'the default config'}: the services refuse any "
                                    f"other config; edit that one and render again ({rerender}).\n" + text}
    for file, (s3, cuda) in FILES.items():
        r = Rendering(name=file, config=files[out / "config" / name].encode(), config_name=name, mount="./config",
                      rerender=rerender, s3=s3, sets=list(sets), cuda=cuda, shown_as=str(out / file),
                      env_hint="in the environment or a .env file beside this one", run=Path(name).stem)
        header = HEADER.format(config=source or "the default config", file=out / file, run=r.run,
                               image=f"${{INFER_IMAGE:-{CUDA_IMAGE if cuda else INFER_IMAGE}}}",
                               gpu=", a GPU reserved for each GPU step" if cuda else "")
        files[out / file] = render(cfg, r, header, f"{MARK[2:]} compose; do not edit ({rerender}).")
    return write_generated(files)


def write_generated(files: dict[Path, str]) -> list[Path]:
    """Write `files`, refusing (before writing any) to overwrite one this command did not write."""
    for path in files:
        if path.exists() and not (path.is_file() and MARK in path.read_text(encoding="utf-8", errors="replace")):
            raise ConfigError(f"{path} exists and was not written by infer-distill render: move it away, or give "
                              "another --out")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)
