"""Training loops: teachers on the real data, students on the distilled set (docs/method.md, sections 3 and 6).

Data lives on the device as tensors; augmentation is batched torch (no per-image PIL calls).
Every random draw comes from an explicit generator seeded by the caller.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import StudentConfig, TeacherConfig
from .data import random_crop_flip

# ----------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str, batch_size: int = 1000) -> float:
    """Top-1 accuracy (fraction of 1) of `model` on uint8 images."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device, torch.float32) / 255.0
        correct += (model(x).argmax(1).cpu() == labels[i : i + batch_size]).sum().item()
    return correct / max(1, len(images))


# ----------------------------------------------------------------------------------------
# Teachers: SGD + Nesterov, one-cycle schedule, label smoothing, crop/flip
# ----------------------------------------------------------------------------------------


def train_teacher_model(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    cfg: TeacherConfig,
    augment: tuple[int, bool],
    device: str,
    seed: int,
    desc: str = "teacher",
    progress: bool = True,
) -> list[float]:
    """Train in place; returns the mean training loss of every epoch."""
    gen = torch.Generator().manual_seed(seed)
    x_all = train_x.to(device)
    y_all = train_y.to(device)
    n = len(x_all)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * steps_per_epoch),
                                                pct_start=0.2, anneal_strategy="linear")
    losses = []
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x = random_crop_flip(x_all[idx].float() / 255.0, *augment, generator=gen)
            loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        losses.append(total / n)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


# ----------------------------------------------------------------------------------------
# Students: MixUp + KL(T) against teacher logits (static or dynamic), AdamW + cosine
# ----------------------------------------------------------------------------------------


def mixup(x: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix images and their targets (logits or one-hot) with the same lambda and permutation."""
    return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(z_t / T) || softmax(z_s / T)), batch mean."""
    return F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1),
                    reduction="batchmean")


@dataclass
class StudentResult:
    curve: list[tuple[int, float]] = field(default_factory=list)   # (epoch, test accuracy)
    losses: list[float] = field(default_factory=list)

    @property
    def final_acc(self) -> float:
        return self.curve[-1][1]

    @property
    def best(self) -> tuple[int, float]:
        return max(self.curve, key=lambda p: p[1])


def _fit_student(
    model: nn.Module,
    num_images: int,
    batch_loss: Callable[[torch.Tensor, torch.Generator, random.Random], torch.Tensor],
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    cfg: StudentConfig,
    epochs: int,
    device: str,
    seed: int,
    desc: str,
    progress: bool,
) -> StudentResult:
    """The student recipe shared by every label kind: AdamW, cosine schedule, seeded batches, test curve."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    steps = epochs * math.ceil(num_images / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    result = StudentResult()
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(num_images, generator=gen).to(device)
        total = 0.0
        for i in range(0, num_images, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = batch_loss(idx, gen, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        result.losses.append(total / num_images)
        if epoch % cfg.eval_every == 0 or epoch == epochs:
            result.curve.append((epoch, evaluate(model, test_x, test_y, device)))
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", acc=f"{result.curve[-1][1]:.3f}")
    return result


def train_student_model(
    model: nn.Module,
    images: torch.Tensor,
    soft_logits: torch.Tensor | None,
    ensemble: Callable[[torch.Tensor], torch.Tensor] | None,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    cfg: StudentConfig,
    epochs: int,
    temperature: float,
    augment: tuple[int, bool],
    device: str,
    seed: int,
    desc: str = "student",
    progress: bool = True,
) -> StudentResult:
    """Train on float images [N, ch, H, W] in [0,1] with MixUp + KL(T).

    Static labels: `soft_logits` [N, C], mixed with the images. Dynamic labels: `ensemble(x)`
    gives the teachers' averaged logits of every augmented, mixed batch.
    """
    if (soft_logits is None) == (ensemble is None):
        raise ValueError("give exactly one of soft_logits (static labels) or ensemble (dynamic labels)")
    x_all = images.to(device)
    z_all = soft_logits.to(device) if soft_logits is not None else None

    def batch_loss(idx: torch.Tensor, gen: torch.Generator, rng: random.Random) -> torch.Tensor:
        x = random_crop_flip(x_all[idx], *augment, generator=gen)
        lam = rng.betavariate(cfg.mixup_alpha, cfg.mixup_alpha) if cfg.mixup_alpha > 0 else 1.0
        perm = torch.randperm(len(idx), generator=gen).to(device)
        if z_all is not None:
            x, z = mixup(x, z_all[idx], lam, perm)
        else:
            x = lam * x + (1 - lam) * x[perm]
            with torch.no_grad():
                z = ensemble(x)
        return kd_loss(model(x), z, temperature)

    return _fit_student(model, len(x_all), batch_loss, test_x, test_y, cfg, epochs, device, seed, desc, progress)


class Ensemble(nn.Module):
    """Averaged logits of the frozen teachers: the labels of the distilled set (docs/method.md, section 5)."""

    def __init__(self, teachers: list[nn.Module]):
        super().__init__()
        self.teachers = nn.ModuleList(teachers).eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(x) for t in self.teachers]).mean(0)

    def train(self, mode: bool = True) -> "Ensemble":  # teachers stay in eval mode whatever the caller does
        return super().train(False)


def train_student_hard(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    cfg: StudentConfig,
    epochs: int,
    augment: tuple[int, bool],
    device: str,
    seed: int,
    desc: str = "student (hard labels)",
    progress: bool = True,
) -> StudentResult:
    """The hard-label baseline: plain cross-entropy on class indices, no MixUp, no teacher.

    Everything else is the student recipe of `train_student_model` (crop/flip, AdamW, cosine
    schedule, batch size, evaluation schedule), so only the labels and the loss differ.
    """
    x_all, y_all = images.to(device), labels.to(device)

    def batch_loss(idx: torch.Tensor, gen: torch.Generator, _rng: random.Random) -> torch.Tensor:
        return F.cross_entropy(model(random_crop_flip(x_all[idx], *augment, generator=gen)), y_all[idx])

    return _fit_student(model, len(x_all), batch_loss, test_x, test_y, cfg, epochs, device, seed, desc, progress)
