"""The distilled instances: natural images composed with UFCs, in the one order every reader
uses (evaluate-student trains on it, DistilledSet serves it, the export writes it).
"""
from __future__ import annotations

from dataclasses import fields

import torch

from infer_distill.dag.metrics import ImageDescription
from infer_distill.errors import ArtifactError
from infer_distill.method.synthesis import class_batch_index, compose, decode_ufc
from infer_distill.storage.artifact import Artifact


def read_distilled(art: Artifact) -> dict[str, torch.Tensor]:
    """The distilled set as float tensors: natural uint8 [K, C, ...], ufc float32 [K, M, B, ...], soft_labels float32 [N, C]."""
    t = art.read_tensors("distilled.safetensors")
    needed = {"natural", "ufc", "soft_labels"} | ({"ufc_scale", "ufc_offset"} if "ufc" in t and t["ufc"].dtype == torch.uint8 else set())
    if needed - set(t):
        raise ArtifactError(f"artifact {art.uri}: distilled.safetensors has no tensor {', '.join(sorted(needed - set(t)))} "
                            f"(it has {', '.join(sorted(t)) or 'none'}): re-run the soft-label stage")
    return {"natural": t["natural"], "ufc": decode_ufc(t), "soft_labels": t["soft_labels"].float()}


def distilled_instances(natural: torch.Tensor, ufc: torch.Tensor, classes_per_ufc: int | None) -> torch.Tensor:
    """All K*(M+1)*C training instances, float [0,1]: per subset k, P_k then P_k + U_{k,m} for every m.

    natural: uint8 [K, C, ch, H, W]; ufc: [K, M, B, ch, H, W].
    """
    nat = natural.float() / 255.0
    batch_of_class = class_batch_index(natural.shape[1], classes_per_ufc)
    composed = compose(nat.unsqueeze(1), ufc, batch_of_class)                # [K, M, C, ch, H, W]
    return torch.cat([nat.unsqueeze(1), composed], 1).flatten(0, 2)


def instance_origins(num_subsets: int, num_teachers: int, num_classes: int) -> dict[str, torch.Tensor]:
    """Where each instance of `distilled_instances` comes from, in its order: int64 [K*(M+1)*C] each.

    "subset" k, "teacher" m (-1: the natural image P_k itself) and "label", the class c of the
    natural image (its hard label); the same [K, M+1, C] grid, flattened the same way.
    """
    k, m, c = torch.meshgrid(torch.arange(num_subsets), torch.arange(-1, num_teachers), torch.arange(num_classes), indexing="ij")
    return {"subset": k.flatten(), "teacher": m.flatten(), "label": c.flatten()}


# What a reader of the distilled artifact alone needs to use the set (infer_distill.DistilledSet), copied from
# the data artifact into soft-label's metrics: class names, the normalisation the students' models apply,
# and the augmentation they train with.
DISTILLED_DESCRIPTION = tuple(f.name for f in fields(ImageDescription))
