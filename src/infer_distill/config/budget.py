"""Budget arithmetic (K, bytes stored) and what is known of datasets and baselines before any
data is loaded.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from infer_distill.errors import ConfigError

if TYPE_CHECKING:
    from infer_distill.config.schema import Config

DTYPE_BYTES = {"uint8": 1, "float16": 2, "float32": 4}


def num_subsets(ipc: int, num_teachers: int, num_classes: int, class_batches: int = 1) -> int:
    """K = floor(ipc / (1 + M * B / C)): K natural images plus K*M*B UFCs shared by C classes fit in ipc.

    B (class batches per UFC) is 1 when one UFC covers all classes, as in the paper's formula.
    Integer arithmetic, so K*(C + M*B) <= ipc*C holds exactly.
    """
    return (ipc * num_classes) // (num_classes + num_teachers * class_batches)


# The datasets whose number of classes is known before the data is loaded (plan and preflight check the budget).
# (classes, channels, native side) of the datasets whose images are known before they are loaded
KNOWN_IMAGES = {"digits": (10, 1, 8), "cifar10": (10, 3, 32), "cifar100": (100, 3, 32)}
KNOWN_NUM_CLASSES = {name: classes for name, (classes, _, _) in KNOWN_IMAGES.items()}


def smallest_feasible_ipc(cfg: Config, num_classes: int) -> int:
    """The smallest budget.ipc at which INFER has a subset (K >= 1) with these teachers and classes."""
    return -(-(num_classes + len(cfg.teachers.archs) * cfg.class_batches(num_classes)) // num_classes)


def check_budget(cfg: Config, num_classes: int) -> int:
    """K, INFER's number of subsets; refused when it is 0 (a config without infer needs none: 0)."""
    if not cfg.runs_infer():
        return 0
    k = cfg.num_subsets(num_classes)
    if k < 1:
        m = len(cfg.teachers.archs)
        raise ConfigError(
            f"budget.ipc={cfg.budget.ipc} is too small for INFER with {m} teachers and {num_classes} classes: "
            f"K = floor(ipc / (1 + M*B/C)) = 0 natural subsets. Raise budget.ipc to at least "
            f"{smallest_feasible_ipc(cfg, num_classes)}, use fewer teachers, or leave infer out of methods to distil the "
            "others alone at this budget."
        )
    return k


# students.baselines: what each baseline trains on (its manifest's description)
BASELINES = {
    "random_soft": "random real ({per_class}/class) + soft labels, same epochs",
    "random_soft_steps": "random real ({per_class}/class) + soft labels, same optimiser steps",
}
