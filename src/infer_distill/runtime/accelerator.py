"""The GPU guard: a step that was given a GPU never trains on the CPU because CUDA is unusable.

`device: auto` falls back to the CPU when torch sees no CUDA device, which is right on a laptop
and wrong in a pod that holds a GPU: there the usual cause is a node driver older than the one the
image's torch was built for, and the step would hold the GPU for days while training on the CPU.
A pod that requested a GPU says so with INFER_REQUIRE_CUDA=1 (the Kubeflow pipeline, the Helm
chart and the CUDA compose file set it on exactly their GPU steps); with it, or with
`device: cuda`, no usable CUDA is a ConfigError (exit 2) that names the driver found, the driver
this torch needs and the fix.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from infer_distill.errors import ConfigError

REQUIRE_CUDA = "INFER_REQUIRE_CUDA"
PROC_VERSION = Path("/proc/driver/nvidia/version")

# ----------------------------------------------------------------------------------------
# Which driver a CUDA build of torch needs
# ----------------------------------------------------------------------------------------

# The minimum Linux x86_64 driver of each CUDA toolkit's GA release, from NVIDIA's CUDA Toolkit
# Release Notes, table "CUDA Toolkit and Corresponding Driver Versions"
# (https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/). PyTorch's wheels bundle the CUDA
# runtime of their toolkit, so this is the driver floor of a torch built for that CUDA version.
# (Through CUDA's minor-version compatibility an older driver of the same major version may still
# run it; the guard speaks only when torch finds CUDA unusable, and then names this floor.)
DRIVER_FLOOR: dict[str, str] = {
    "11.8": "520.61.05",
    "12.1": "530.30.02",
    "12.4": "550.54.14",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def required_driver(cuda: str) -> str | None:
    """The driver floor of a torch built for CUDA `cuda` ("12.8", "13.0.1"), or None if the table lacks it."""
    return DRIVER_FLOOR.get(".".join(cuda.split(".")[:2]))


# ----------------------------------------------------------------------------------------
# Which driver this machine has
# ----------------------------------------------------------------------------------------

# "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 ..." and, for the open
# kernel modules, "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build ..."
_NVRM = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)\b")
_VERSION = re.compile(r"^\s*(\d+\.\d+(?:\.\d+)?)\s*$")


def parse_proc_version(text: str) -> str | None:
    """The driver version in the text of /proc/driver/nvidia/version, or None."""
    match = _NVRM.search(text)
    return match.group(1) if match else None


def parse_nvidia_smi(text: str) -> str | None:
    """The driver version in `nvidia-smi --query-gpu=driver_version --format=csv,noheader` (one line per GPU)."""
    versions = {m.group(1) for line in text.splitlines() if (m := _VERSION.match(line))}
    return versions.pop() if len(versions) == 1 else None


def installed_driver() -> tuple[str | None, str]:
    """(driver version or None, where it was read or why none was found)."""
    try:
        version = parse_proc_version(PROC_VERSION.read_text())
        if version:
            return version, str(PROC_VERSION)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20)
            version = parse_nvidia_smi(done.stdout) if done.returncode == 0 else None
            if version:
                return version, "nvidia-smi"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None, f"no {PROC_VERSION}{' and no answer from nvidia-smi' if smi else ', no nvidia-smi'}"


# ----------------------------------------------------------------------------------------
# The guard
# ----------------------------------------------------------------------------------------


def cuda_required_by_pod() -> bool:
    """Whether this process runs in a pod or container that requested a GPU ($INFER_REQUIRE_CUDA)."""
    value = os.environ.get(REQUIRE_CUDA, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{REQUIRE_CUDA}={os.environ[REQUIRE_CUDA]!r}: use 1 (this pod requested a GPU: "
                      "refuse to run without CUDA) or 0")


def check_cuda(device: str) -> None:
    """Raise ConfigError when CUDA is needed here (`device: cuda`, or a GPU pod with `device: auto`) and unusable.

    `device: cpu` is an explicit choice and is never refused.
    """
    import torch

    if device == "cpu" or not (device == "cuda" or cuda_required_by_pod()):
        return
    if torch.cuda.is_available():
        return
    raise ConfigError(no_cuda_message(device, torch.__version__, torch.version.cuda, *installed_driver()))


def no_cuda_message(device: str, torch_version: str, torch_cuda: str | None, driver: str | None, driver_source: str) -> str:
    asked = ("device: 'cuda' was asked for" if device == "cuda"
             else f"this pod requested a GPU ({REQUIRE_CUDA}=1, device: {device})")
    found = f"NVIDIA driver {driver} (from {driver_source})" if driver else f"no NVIDIA driver ({driver_source})"
    build = "build the image for CUDA (docker/build.sh cuda; README, GPU)"
    if torch_cuda is None:
        return (f"{asked}, but torch {torch_version} is a CPU-only build; found {found}. Fix: {build}, "
                "or set device=cpu")
    floor = required_driver(torch_cuda)
    need = (f"torch {torch_version} is built for CUDA {torch_cuda} and needs NVIDIA driver >= {floor}" if floor else
            f"torch {torch_version} is built for CUDA {torch_cuda} (see NVIDIA's CUDA release notes for its minimum driver)")
    rebuild = ("or an image built for the node's CUDA: docker/build.sh cuda with TORCH_CUDA=cu126 (or cu128, ...) "
               "for a CUDA 12.x driver (docker/README.md)")
    if driver and floor and version_tuple(driver) >= version_tuple(floor):
        cause = ("the driver is new enough, so the GPU is not reaching this container: check the NVIDIA container "
                 "runtime / device plugin (nvidia.com/gpu resource, NVIDIA_VISIBLE_DEVICES)")
        return f"{asked}, but torch sees no usable CUDA device; found {found}; {need}: {cause}"
    fix = f"a node with driver >= {floor}, " if floor else "a node with a driver for that CUDA version, "
    return f"{asked}, but torch sees no usable CUDA device; found {found}; {need}. Fix: {fix}{rebuild}"
