"""docker/build.sh without building: the `docker` it calls is a recorder on PATH, so these check the
commands it gives (platform, tags, build arguments); the images themselves are built and run in
test_containers.py."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
import tomllib
import yaml
from conftest import REPO

pytestmark = pytest.mark.processes  # runs bash

PREFIX = "ghcr.io/acme/infer-distill"
RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["DOCKER_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["buildx", "version"]:
    sys.exit(1)   # the legacy builder
if sys.argv[1:3] == ["image", "inspect"] and "-f" in sys.argv:
    print(1000000000)
"""


def build(tmp_path, *args, **env) -> list[list[str]]:
    """Run docker/build.sh ARGS; the `docker build` command lines it ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(RECORDER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    log.unlink(missing_ok=True)
    clean = {k: v for k, v in os.environ.items()
             if k not in ("WHEEL_DIRS", "PIP_CERT", "SSL_CERT_FILE", "TORCH_CUDA", "PLATFORM", "DOCKER_BUILDKIT", "TORCH_INDEX_URL")}
    run_env = {**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_LOG": str(log), "TMPDIR": str(tmp_path),
               "IMAGE_PREFIX": PREFIX, "BASE_IMAGE": "python:3.11-slim-bookworm", **env}
    done = subprocess.run(["bash", str(REPO / "docker" / "build.sh"), *args], env=run_env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return [c for c in map(json.loads, log.read_text().splitlines()) if c[0] == "build"]


def _flag(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, a in enumerate(command) if a == flag]


def _build_args(command: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in _flag(command, "--build-arg"))


def test_images_are_built_for_amd64_by_default_and_tagged_with_the_charts_default_tag(tmp_path):
    (cuda,) = build(tmp_path, "cuda")
    assert _flag(cuda, "--platform") == ["linux/amd64"]  # also on Apple Silicon: what x86 GPU nodes run
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((REPO / "helm" / "infer-distill" / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    # the chart's default image tag (<appVersion>-cuda, see test_helm_chart.py) is one this build gives
    assert sorted(_flag(cuda, "-t")) == sorted([f"{PREFIX}:cuda", f"{PREFIX}:{version}-cuda"])
    assert _build_args(cuda)["VARIANT"] == "cuda" and _build_args(cuda)["TORCH_CUDA"] == ""


@pytest.mark.parametrize("args, env, platform", [
    (["--platform", "linux/arm64", "cpu"], {}, ["linux/arm64"]),
    (["--platform=linux/arm64", "cpu"], {}, ["linux/arm64"]),
    (["cpu"], {"PLATFORM": "linux/arm64"}, ["linux/arm64"]),
    (["cpu"], {"PLATFORM": ""}, []),  # empty: the build host's own platform
])
def test_the_platform_can_be_overridden(tmp_path, args, env, platform):
    (cpu,) = build(tmp_path, *args, **env)
    assert _flag(cpu, "--platform") == platform


def test_torch_cuda_selects_pytorchs_cuda_build_for_the_cuda_variant_only(tmp_path):
    cpu, cuda = build(tmp_path, "cpu", "cuda", TORCH_CUDA="cu126")
    assert _build_args(cuda)["TORCH_CUDA"] == "cu126" and _build_args(cpu)["TORCH_CUDA"] == ""
