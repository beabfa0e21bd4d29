"""The generated compose files without Docker: the GPU variant reserves a GPU for, and requires CUDA on,
exactly the plan's GPU steps; every stage service refuses a config it was not rendered from.
(That their services are the plan's DAG is checked in test_plan.py; `docker compose config` on
them in test_containers.py.)"""
from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from conftest import REPO

from infer_distill import dag
from infer_distill.cli.commands import build_parser
from infer_distill.config.loading import load_config
from infer_distill.runtime.accelerator import REQUIRE_CUDA
from pipelines import render

GPU_RESERVATION = {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}}


def _stage_services(name: str) -> dict:
    services = yaml.safe_load((REPO / "docker" / name).read_text())["services"]
    return {n: s for n, s in services.items() if (s.get("command") or [""])[0] == "stage"}


def _step(service: dict) -> dag.Step:
    return dag.STEPS[build_parser().parse_args(service["command"]).name]


@pytest.mark.parametrize("name", list(render.COMPOSE_HEADERS))
def test_only_the_cuda_variant_reserves_gpus_and_only_for_gpu_steps(name):
    services = _stage_services(name)
    cuda = name == "compose.cuda.yaml"
    assert {_step(s).name for s in services.values() if s["environment"].get(REQUIRE_CUDA) == "1"} == \
        ({s.name for s in dag.PLAN if s.gpu and (not s.over or s.over.items(load_config(REPO / "configs" / "quickstart.yaml"), 10))}
         if cuda else set())  # (the quickstart runs no step of an empty fan-out: the methods' steps)
    for service_name, service in services.items():
        gpu = cuda and _step(service).gpu
        assert service.get("deploy") == (GPU_RESERVATION if gpu else None), service_name
        assert (REQUIRE_CUDA in service["environment"]) == gpu, service_name
        assert service["image"] == ("${INFER_IMAGE:-infer-distill:cuda}" if cuda else "${INFER_IMAGE:-infer-distill:cpu}")


# ----------------------------------------------------------------------------------------
# The config check in front of every stage
# ----------------------------------------------------------------------------------------


def _run_entrypoint(service: dict, config, program: str = "echo") -> subprocess.CompletedProcess:
    """The service's entrypoint as the container runs it (compose turns `$$` into `$`), with its command,
    `--config` pointing at `config`; `program` stands for the image's infer-distill."""
    sh, flag, script, _ = service["entrypoint"]
    command = [str(config) if a == f"/config/{render.COMPOSE_CONFIG}" else a for a in service["command"]]
    return subprocess.run([sh, flag, script.replace("$$", "$"), shutil.which(program), *command],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.processes  # runs sh
@pytest.mark.parametrize("name", list(render.COMPOSE_HEADERS))
def test_a_stage_service_runs_only_the_config_it_was_rendered_from(name, tmp_path):
    services = _stage_services(name)
    assert all(s["entrypoint"] == services["prepare-data"]["entrypoint"] for s in services.values())
    service = services["train-teacher-resnet-tiny"]
    config = tmp_path / "quickstart.yaml"
    shutil.copyfile(REPO / "configs" / render.COMPOSE_CONFIG, config)

    same = _run_entrypoint(service, config)
    assert same.returncode == 0, same.stderr
    assert same.stdout.split() == [str(config) if a.startswith("/config/") else a for a in service["command"]]

    config.write_text(config.read_text().replace("resnet_tiny]", "resnet_tiny, convnet_d3_w64]"))  # a teacher added
    edited = _run_entrypoint(service, config)
    assert edited.returncode == 2 and edited.stdout == ""
    assert edited.stderr.strip() == (f"error: {config} is not the config docker/{name} was rendered from (its services "
                                     "follow its teachers, shards and student runs): render them again: "
                                     "python pipelines/render.py")
    config.unlink()
    assert _run_entrypoint(service, config).returncode == 2
