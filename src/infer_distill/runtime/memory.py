"""How many bytes of a data split a stage may hold whole: the data memory budget.

A stage that trains on a split (a teacher, the full-data reference) or evaluates a student on the
test split after every few epochs holds the split's images whole, on the device the loop computes
on, when they fit this budget, and otherwise reads them from the data artifact batch by batch
(`method.training.Rows`): the same numbers either way (the same rows in the same batches, the same
operations on them), only the memory and the bytes read differ.

INFER_DATA_MEMORY_BYTES sets the budget in bytes (0: stream every split). Unset, it is half of the
memory this process may still take: the machine's available memory (MemAvailable in /proc/meminfo)
or, when less, what its cgroup's memory limit leaves (a container's, a pod's); and on CUDA, where the loops keep data on the
GPU, at most half of the GPU's free memory. The other half is for the models, their activations,
the batches being read and whatever else the process holds.
"""
from __future__ import annotations

import os
from pathlib import Path

from infer_distill.errors import ConfigError

ENV = "INFER_DATA_MEMORY_BYTES"
# above any machine's memory: a larger value is a typo
_MOST = 1 << 60


def _meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_left(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What the cgroup memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`) leaves this process's cgroup,
    None where there is no limit."""
    for limit_file, used_file in (("memory.max", "memory.current"),
                                  ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit, used = (root / limit_file).read_text().strip(), (root / used_file).read_text().strip()
        except OSError:
            continue
        try:
            # "max" (v2) or a number near 2^63 (v1): no limit
            return max(0, int(limit) - int(used)) if limit != "max" and int(limit) < 1 << 60 else None
        except ValueError:
            return None
    return None


def host_memory_left() -> int | None:
    """Bytes of memory this process may still take, None where the machine does not say."""
    known = [m for m in (_meminfo_available(), _cgroup_left()) if m is not None]
    return min(known) if known else None


def data_memory_budget(device: str) -> int:
    """Bytes of split images a stage computing on `device` ('cpu' or 'cuda') may hold whole (see the module's doc)."""
    raw = os.environ.get(ENV)
    if raw is not None and raw != "":
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if not 0 <= value <= _MOST:
            raise ConfigError(f"{ENV}={raw!r} is not a whole number of bytes from 0 to {_MOST}: fix or unset it "
                              "(unset: half of the memory left, see infer_distill.runtime.memory)")
        return value
    host = host_memory_left()
    budget = host // 2 if host is not None else _MOST
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        budget = min(budget, free // 2)
    return budget
