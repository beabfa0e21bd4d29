"""Budget arithmetic (K, bytes stored) and what is known of datasets and baselines before any
data is loaded.
"""
from __future__ import annotations

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


# students.baselines: what each baseline trains on (its manifest's description)
BASELINES = {
    "random_soft": "random real ({per_class}/class) + soft labels, same epochs",
    "random_soft_steps": "random real ({per_class}/class) + soft labels, same optimiser steps",
}
