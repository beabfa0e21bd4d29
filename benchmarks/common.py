"""What the benchmark commands share: one data and teacher pool for many runs, machine facts.

A benchmark compares several runs of the pipeline (M = 1, 2, 3; ipc 10 and 50; ablations) that
differ after the teachers. Each run has its own root, walked by `plan.run_in_process`; their data
and teachers live once in a pool and are linked into every root. `run_in_process` then finds
them current (same settings, same input digests) and skips them, so a teacher is trained once
per benchmark, and again only when its settings change.
"""
from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from infer_distill import __version__, plan
from infer_distill.config import Config
from infer_distill.plan import StepResult
from infer_distill.stages import Layout


def pooled_inputs(cfg: Config, pool: str | Path, root: str | Path, progress: bool = False,
                  on_step: Callable[[StepResult], None] | None = None) -> None:
    """Make (or reuse) the data and `cfg`'s teachers under `pool`, and link them into run `root`.

    Local paths only (links). A pooled artifact is remade when `cfg` asks for other settings, so
    two runs that disagree on the teacher recipe need two pools.
    """
    pool_layout, run_layout = Layout(str(pool)), Layout(str(root))
    pooled = [(plan.STEPS["prepare-data"], {}, {}, pool_layout.data)]
    pooled += [(plan.STEPS["train-teacher"], {"arch": a}, {"data": pool_layout.data}, pool_layout.teacher(a)) for a in cfg.teachers.archs]
    for step, item, inputs, uri in pooled:
        result = plan.run_item(cfg, step, item, inputs, uri, progress)
        if on_step:
            on_step(result)
    links = [(pool_layout.data, run_layout.data)] + [(pool_layout.teacher(a), run_layout.teacher(a)) for a in cfg.teachers.archs]
    for target, link in links:
        link_path = Path(link)
        link_path.parent.mkdir(parents=True, exist_ok=True)
        if link_path.is_symlink() or link_path.exists():
            if link_path.is_symlink() and Path(os.readlink(link_path)) == Path(target).resolve():
                continue
            if link_path.is_dir() and not link_path.is_symlink():
                raise FileExistsError(f"{link} is a directory, not a link into the pool {pool}: remove it or use a fresh root")
            link_path.unlink()
        link_path.symlink_to(Path(target).resolve(), target_is_directory=True)


def machine_info(device: str) -> dict:
    """What ran the benchmark: CPU, cores, threads, GPU (name, memory, driver), library versions."""
    info = {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "infer_distill": __version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "gpu_multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version()})
        try:
            import subprocess
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info
