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


class DistilledInstances:
    """The K*(M+1)*C training instances of `distilled_instances`, composed only when indexed.

    Holds the natural images as uint8 and the UFCs, K*C + K*M*B images, never the K*(M+1)*C
    float32 instances: indexing with an int64 tensor of instance numbers (a batch) or a slice
    composes just those, exactly as the whole set would be (the same operations on the same
    values), so soft-label's labels and evaluate-student's student do not depend on which way
    they are read. What `method.training.train_student_model` and `stages.ensemble_logits` take
    as their images: `len`, `to(device)` and batch indexing.
    """

    def __init__(self, natural: torch.Tensor, ufc: torch.Tensor, classes_per_ufc: int | None):
        """natural: uint8 [K, C, ch, H, W]; ufc: float [K, M, B, ch, H, W] in pixel units."""
        self.natural, self.ufc = natural, ufc
        self.batch_of_class = class_batch_index(natural.shape[1], classes_per_ufc).to(natural.device)
        self.shape = (natural.shape[0] * (ufc.shape[1] + 1) * natural.shape[1], *natural.shape[2:])

    def __len__(self) -> int:
        return self.shape[0]

    def to(self, device: str | torch.device) -> DistilledInstances:
        """The same instances, composed on `device` (its uint8 natural images and UFCs moved there)."""
        moved = DistilledInstances.__new__(DistilledInstances)
        moved.natural, moved.ufc = self.natural.to(device), self.ufc.to(device)
        moved.batch_of_class, moved.shape = self.batch_of_class.to(device), self.shape
        return moved

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Instances `index` (an int64 tensor of instance numbers, or a slice), float32 [n, ch, H, W] in [0, 1]."""
        if isinstance(index, slice):
            index = torch.arange(len(self), device=self.natural.device)[index]
        index = index.to(self.natural.device)
        C, M = self.natural.shape[1], self.ufc.shape[1]
        k, teacher, c = index // ((M + 1) * C), index // C % (M + 1) - 1, index % C   # the [K, M+1, C] grid
        nat = self.natural[k, c].float() / 255.0
        if M == 0:
            return nat
        ufc = self.ufc[k, teacher.clamp(min=0), self.batch_of_class[c]]            # [n, ch, H, W], one per instance
        composed = compose(nat, ufc, torch.arange(len(index), device=index.device))
        return torch.where((teacher >= 0).view(-1, 1, 1, 1), composed, nat)     # teacher -1: P_k itself


# instances composed at a time where a whole set is wanted: the peak is the set plus one such batch
COMPOSE_BATCH = 4096


def distilled_instances(natural: torch.Tensor, ufc: torch.Tensor, classes_per_ufc: int | None) -> torch.Tensor:
    """All K*(M+1)*C training instances, float [0,1]: per subset k, P_k then P_k + U_{k,m} for every m.

    natural: uint8 [K, C, ch, H, W]; ufc: [K, M, B, ch, H, W].
    """
    instances = DistilledInstances(natural, ufc, classes_per_ufc)
    out = torch.empty(instances.shape)
    for start in range(0, len(instances), COMPOSE_BATCH):
        out[start : start + COMPOSE_BATCH] = instances[start : start + COMPOSE_BATCH]
    return out


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
