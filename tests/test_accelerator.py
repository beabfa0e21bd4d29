"""The GPU guard (infer_distill.accelerator): a pod that requested a GPU, or `device: cuda`, never
runs on the CPU. No GPU here, so torch.cuda.is_available is patched; the driver is read from a real
file in /proc's format (and from a real nvidia-smi executable on PATH)."""
from __future__ import annotations

import stat

import pytest
import torch
from conftest import TINY

from infer_distill.cli import main as cli_main
from infer_distill.config.loading import load_config
from infer_distill.errors import ConfigError
from infer_distill.runtime import accelerator
from infer_distill.runtime.accelerator import REQUIRE_CUDA, check_cuda, no_cuda_message, parse_nvidia_smi, parse_proc_version

PROPRIETARY = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
               "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
OPEN = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
        "(dvs-builder@U16-I3-B03-4-3)  Tue Jul 22 12:56:48 UTC 2025\nGCC version:  gcc version 13.3.0\n")
ARM = "NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  570.133.20  Release Build  (dvs-builder@U22)\n"


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """This process on a machine whose /proc driver file is `tmp/version` and whose PATH is `tmp/bin` alone."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setattr(accelerator, "PROC_VERSION", tmp_path / "version")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv(REQUIRE_CUDA, raising=False)
    return tmp_path


def _cuda(monkeypatch, available: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)


# ----------------------------------------------------------------------------------------
# Driver versions
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, version", [(PROPRIETARY, "550.54.15"), (OPEN, "580.65.06"), (ARM, "570.133.20"),
                                           ("", None), ("NVRM version: something else\n", None)])
def test_driver_version_from_proc(text, version):
    assert parse_proc_version(text) == version


@pytest.mark.parametrize("text, version", [("580.65.06\n", "580.65.06"), ("570.26\n570.26\n", "570.26"),
                                           ("", None), ("NVIDIA-SMI has failed because it couldn't communicate with the "
                                                        "NVIDIA driver.\n", None), ("550.54.15\n580.65.06\n", None)])
def test_driver_version_from_nvidia_smi(text, version):
    assert parse_nvidia_smi(text) == version


@pytest.mark.parametrize("cuda, floor", [("13.0", "580.65.06"), ("12.8", "570.26"), ("12.6", "560.28.03"),
                                         ("12.4", "550.54.14"), ("12.1", "530.30.02"), ("12.6.3", "560.28.03"),
                                         ("12.7", None), ("14.0", None)])
def test_the_driver_each_cuda_build_needs(cuda, floor):
    assert accelerator.required_driver(cuda) == floor


def test_the_driver_is_read_from_proc_first(machine):
    (machine / "version").write_text(OPEN)
    assert accelerator.installed_driver() == ("580.65.06", str(machine / "version"))
    (machine / "version").unlink()
    version, where = accelerator.installed_driver()
    assert version is None and "no nvidia-smi" in where


@pytest.mark.processes  # runs nvidia-smi
def test_the_driver_is_read_from_nvidia_smi_without_proc(machine):
    smi = machine / "bin" / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1 $2" = "--query-gpu=driver_version --format=csv,noheader" ] || exit 9\n'
                   'echo 535.161.08\necho 535.161.08\n')
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    assert accelerator.installed_driver() == ("535.161.08", "nvidia-smi")
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    version, where = accelerator.installed_driver()
    assert version is None and "no answer from nvidia-smi" in where


# ----------------------------------------------------------------------------------------
# The guard's decisions
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, require, available, refused", [
    ("auto", None, False, False),   # a laptop: the CPU, as asked
    ("auto", "0", False, False),
    ("auto", "1", False, True),     # a GPU pod without usable CUDA: refused
    ("auto", "true", False, True),
    ("auto", "1", True, False),
    ("cuda", None, False, True),
    ("cuda", "1", True, False),
    ("cuda", None, True, False),
    ("cpu", "1", False, False),     # explicitly the CPU: never refused
])
def test_the_guard_refuses_exactly_a_cpu_fallback_that_was_not_asked_for(machine, monkeypatch, device, require, available,
                                                                          refused):
    _cuda(monkeypatch, available)
    if require is not None:
        monkeypatch.setenv(REQUIRE_CUDA, require)
    if refused:
        with pytest.raises(ConfigError):
            check_cuda(device)
    else:
        check_cuda(device)
    cfg = load_config(None, [f"device={device}"])
    if refused:
        with pytest.raises(ConfigError):
            cfg.resolve_device()
    else:
        assert cfg.resolve_device() == ("cuda" if device == "cuda" or (device == "auto" and available) else "cpu")


def test_an_unknown_value_of_the_variable_is_refused_naming_it(machine, monkeypatch):
    _cuda(monkeypatch, True)
    monkeypatch.setenv(REQUIRE_CUDA, "maybe")
    with pytest.raises(ConfigError, match=f"{REQUIRE_CUDA}='maybe': use 1"):
        check_cuda("auto")


def test_the_message_names_the_driver_found_the_driver_needed_and_the_fix():
    old = no_cuda_message("auto", "2.14.1", "13.0", "550.54.15", "/proc/driver/nvidia/version")
    assert f"this pod requested a GPU ({REQUIRE_CUDA}=1" in old
    assert "NVIDIA driver 550.54.15 (from /proc/driver/nvidia/version)" in old
    assert "torch 2.14.1 is built for CUDA 13.0 and needs NVIDIA driver >= 580.65.06" in old
    assert "a node with driver >= 580.65.06" in old and "TORCH_CUDA=cu126" in old
    none = no_cuda_message("cuda", "2.14.1", "12.8", None, "no /proc/driver/nvidia/version, no nvidia-smi")
    assert "device: 'cuda' was asked for" in none and "no NVIDIA driver (no /proc/driver/nvidia/version" in none
    assert "needs NVIDIA driver >= 570.26" in none
    # a new enough driver: the GPU is not reaching the container
    plumbing = no_cuda_message("auto", "2.14.1", "13.0", "580.82.07", "nvidia-smi")
    assert "the driver is new enough" in plumbing and "device plugin" in plumbing
    cpu_build = no_cuda_message("auto", "2.13.0+cpu", None, None, "no nvidia-smi")
    assert "CPU-only build" in cpu_build and "docker/build.sh cuda" in cpu_build
    assert "see NVIDIA's CUDA release notes" in no_cuda_message("auto", "2.14.1", "12.7", "560.1", "nvidia-smi")


def test_a_gpu_pod_without_cuda_exits_2_before_any_work(machine, monkeypatch, tmp_path, capsys):
    (machine / "version").write_text(PROPRIETARY)
    _cuda(monkeypatch, False)
    monkeypatch.setenv(REQUIRE_CUDA, "1")
    out = tmp_path / "run"
    sets = [a for s in [*TINY, "device=auto"] for a in ("--set", s)]
    assert cli_main(["run", "--out", str(out), *sets]) == 2
    err = capsys.readouterr().err
    assert "this pod requested a GPU" in err and "NVIDIA driver 550.54.15" in err and "Traceback" not in err
    assert not [p for p in out.rglob("*") if p.is_file()]  # refused before any artifact was written
