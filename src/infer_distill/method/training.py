"""Training loops: teachers on the real data, students on the distilled set (docs/method.md, sections 3 and 6).

Data lives on the device as tensors, or, when a split is too large for that, is read from its data artifact
batch by batch (`Rows`: the same batches and results either way); augmentation is batched torch (no
per-image PIL calls). Every random draw comes from an explicit generator seeded by the caller. A `FastPath`
(runtime/fast_path.py) says how training computes: the default, PLAIN, is fp32, NCHW and eager; on CUDA the
stages pass bf16 autocast and channels_last. Evaluation is always IEEE fp32.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from infer_distill.config.schema import StudentConfig, TeacherConfig
from infer_distill.data.augment import random_crop_flip
from infer_distill.runtime.fast_path import PLAIN, FastPath
from infer_distill.runtime.progress import progress_bar

# ----------------------------------------------------------------------------------------
# Images read by row: a data artifact's split (data.splits.Split), or tensors held whole
# ----------------------------------------------------------------------------------------


@runtime_checkable
class Rows(Protocol):
    """uint8 images [N, ch, H, W] and their int64 labels, read by row: `data.splits.Split` (from the data artifact,
    a batch at a time) or `Held` (tensors held whole). The loops below read both the same way, so a split that does
    not fit in memory gives the same results as one that does."""

    @property
    def labels(self) -> torch.Tensor: ...

    def __len__(self) -> int: ...

    def read(self, rows: torch.Tensor) -> torch.Tensor: ...

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass(frozen=True)
class Held:
    """`Rows` held whole as tensors (uint8 images, int64 labels), where the loops compute on them: on the device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: str | torch.device) -> Held:
        return Held(self.images.to(device), self.labels.to(device))

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        return self.images[rows.to(self.images.device)]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self), batch_size):
            yield self.images[i : i + batch_size], self.labels[i : i + batch_size]


class PixelImages:
    """uint8 images read as float pixels in [0, 1] a batch at a time: real images a student trains on (a
    baseline's, a peer method's) held at a quarter of float32's memory, on the host and on the device. Each
    batch is exactly the float tensor the whole set divided by 255 would give."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> torch.Size:
        return self.images.shape

    def to(self, device: str | torch.device) -> PixelImages:
        return PixelImages(self.images.to(device))

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.images[index].float() / 255.0


T = TypeVar("T")
_END = object()


def _ahead(items: Iterable[T], pin: bool = False) -> Iterator[T]:
    """`items` in order, each made in a background thread while the caller works on the one before: a batch read from
    storage arrives while the previous one computes. The items do not depend on when they are made (no random draw).
    With `pin` (a CUDA device), the tensors of each item are copied to pinned host memory in that thread too, so their
    copy to the device can overlap the step before (`.to(device, non_blocking=True)`)."""
    it = iter(items)

    def make() -> object:
        item = next(it, _END)
        if pin and item is not _END:
            item = tuple(t.pin_memory() if isinstance(t, torch.Tensor) else t for t in item)  # type: ignore[union-attr]
        return item

    with ThreadPoolExecutor(1, thread_name_prefix="infer-read") as pool:
        pending = pool.submit(make)
        while (item := pending.result()) is not _END:
            pending = pool.submit(make)
            yield item  # type: ignore[misc]


def _read_ahead(rows: Rows, items: Iterable[T], device: str) -> Iterable[T]:
    """`items` made from `rows`: read ahead in a thread (into pinned memory for a CUDA device) unless `rows` is held
    in memory, where a read is an index."""
    return items if isinstance(rows, Held) else _ahead(items, pin=torch.device(device).type == "cuda")


def _labels(rows: Rows, idx: torch.Tensor, device: str) -> torch.Tensor:
    return rows.labels[idx.to(rows.labels.device)].to(device)


# ----------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, test: Rows, device: str, batch_size: int) -> float:
    """Top-1 accuracy (fraction of 1) of `model` on the uint8 images of `test`, in fp32: the reported number never runs
    under autocast. Batches of `batch_size` consecutive rows, whether `test` is held or read from its artifact. Callers
    give the batch size the model trains at: evaluating then never takes more memory than a training step of the same
    loop (a fixed 1,000 images took 8 GB for a small network at 224 px on a CPU).

    The count stays on the device until the end, so evaluation does not wait for the device once per batch.
    """
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for images, labels in _read_ahead(test, test.batches(batch_size), device):
        x = images.to(device, non_blocking=True).float() / 255.0
        correct += (model(x).argmax(1) == labels.to(device)).sum()
    return correct.item() / max(1, len(test))


# ----------------------------------------------------------------------------------------
# One optimisation step of each recipe: the library's loops are built from these, and so can
# any other loop (benchmarks, training another model on a distilled set).
# ----------------------------------------------------------------------------------------


def cross_entropy_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    augment: tuple[int, bool],
    generator: torch.Generator,
    label_smoothing: float = 0.0,
    fast_path: FastPath = PLAIN,
) -> torch.Tensor:
    """One step on hard labels: crop/flip, cross-entropy, backward, optimizer step; returns the (detached) loss.

    The teacher recipe's step (with label smoothing, under `teacher_optimizer`) and the hard-label
    student's (without, under `student_optimizer`). `images` are float [B, ch, H, W] in [0, 1];
    `augment` is (crop padding, horizontal flips); the crops and flips are drawn from `generator`.
    Only the forward pass runs under `fast_path`'s autocast; the loss is taken in fp32.
    """
    x = random_crop_flip(images, *augment, generator=generator)
    with fast_path.training_autocast(x.device.type):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def student_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    *,
    soft_logits: torch.Tensor | None = None,
    ensemble: Callable[[torch.Tensor], torch.Tensor] | None = None,
    temperature: float,
    mixup_alpha: float,
    augment: tuple[int, bool],
    generator: torch.Generator,
    rng: random.Random,
    fast_path: FastPath = PLAIN,
) -> torch.Tensor:
    """One MixUp + KL(T) step on a batch of distilled instances; returns the (detached) loss.

    Static labels: `soft_logits` [B, C] of the batch, mixed with the same weights as the images.
    Dynamic labels: `ensemble(x)` labels the augmented, mixed batch. Crops, flips and the MixUp
    pairing are drawn from `generator`, the MixUp weight ~ Beta(alpha, alpha) from `rng`. The
    forward passes (the student's, and the teachers' with dynamic labels: part of every step)
    run under `fast_path`'s autocast; the loss is taken in fp32.
    """
    if (soft_logits is None) == (ensemble is None):
        raise ValueError("give exactly one of soft_logits (static labels) or ensemble (dynamic labels)")
    x = random_crop_flip(images, *augment, generator=generator)
    lam = rng.betavariate(mixup_alpha, mixup_alpha) if mixup_alpha > 0 else 1.0
    perm = torch.randperm(len(x), generator=generator).to(x.device, non_blocking=True)
    if soft_logits is not None:
        x, z = mixup(x, soft_logits, lam, perm)
    else:
        x = lam * x + (1 - lam) * x[perm]
    with fast_path.training_autocast(x.device.type):
        if ensemble is not None:
            with torch.no_grad():
                z = ensemble(x)
        logits = model(x)
    loss = kd_loss(logits.float(), z.float(), temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def teacher_optimizer(model: nn.Module, cfg: TeacherConfig, total_steps: int
                      ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with Nesterov momentum and weight decay; one-cycle learning rate over `total_steps` (step it once per batch)."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    # cycle_momentum=False: OneCycleLR would otherwise overwrite the momentum with its own 0.85..0.95 cycle.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(1, total_steps),
                                                pct_start=0.2, anneal_strategy="linear", cycle_momentum=False)
    return opt, sched


def student_optimizer(model: nn.Module, cfg: StudentConfig, total_steps: int
                      ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with weight decay; cosine learning rate to zero over `total_steps` (step it once per batch)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)


def mixup(x: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix images and their targets (logits or one-hot) with the same lambda and permutation."""
    return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(z_t / T) || softmax(z_s / T)), batch mean."""
    return F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1),
                    reduction="batchmean")


# ----------------------------------------------------------------------------------------
# Teachers: SGD + Nesterov, one-cycle schedule, label smoothing, crop/flip
# ----------------------------------------------------------------------------------------


def train_teacher_model(
    model: nn.Module,
    train: Rows,
    cfg: TeacherConfig,
    augment: tuple[int, bool],
    device: str,
    seed: int,
    desc: str = "teacher",
    progress: bool = True,
    fast_path: FastPath = PLAIN,
) -> list[float]:
    """Train in place on the uint8 images of `train` (`Held` on the device, or a split read a batch at a time, the
    next batch read while one trains: the same batches either way); returns the mean training loss of every epoch."""
    gen = torch.Generator().manual_seed(seed)
    net = fast_path.for_training(model, device)
    n = len(train)
    opt, sched = teacher_optimizer(model, cfg, cfg.epochs * math.ceil(n / cfg.batch_size))
    losses = []
    bar = progress_bar(range(cfg.epochs), desc, disable=not progress)
    for _ in bar:
        model.train()
        order = torch.randperm(n, generator=gen).to(train.labels.device)  # where `train` is indexed: no copy per batch
        total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no wait per step
        batches = ((train.read(idx), _labels(train, idx, device)) for idx in order.split(cfg.batch_size))
        for images, labels in _read_ahead(train, batches, device):
            loss = cross_entropy_step(net, opt, images.to(device, non_blocking=True).float() / 255.0, labels, augment=augment, generator=gen,
                                      label_smoothing=cfg.label_smoothing, fast_path=fast_path)
            sched.step()
            total += loss.double() * len(labels)
        losses.append(total.item() / n)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


# ----------------------------------------------------------------------------------------
# Students: MixUp + KL(T) against teacher logits (static or dynamic), AdamW + cosine
# ----------------------------------------------------------------------------------------


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


# One step on a batch: (optimizer, batch, generator, rng) -> detached loss; the batch is what a loop's `fetch`
# made of the batch's indices (its first tensor has one row per image).
Batch = tuple[torch.Tensor, ...]
BatchStep = Callable[[torch.optim.Optimizer, Batch, torch.Generator, random.Random], torch.Tensor]


def _fit_student(
    model: nn.Module,
    num_images: int,
    fetch: Callable[[torch.Tensor], Batch],
    step: BatchStep,
    test: Rows,
    cfg: StudentConfig,
    epochs: int,
    device: str,
    seed: int,
    desc: str,
    progress: bool,
    streamed: bool = False,
) -> StudentResult:
    """The student recipe shared by every label kind: AdamW, cosine schedule, seeded batches, test curve.

    `model` is the student itself (its optimiser, its evaluation); `step` may call a compiled wrapper of it. `fetch`
    makes the batch of given indices (on the device where the images are unless `streamed`: read from storage, each
    batch read in a background thread while the one before trains).
    """
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    if isinstance(test, Held):
        test = test.to(device)
    opt, sched = student_optimizer(model, cfg, epochs * math.ceil(num_images / cfg.batch_size))
    result = StudentResult()
    bar = progress_bar(range(1, epochs + 1), desc, disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(num_images, generator=gen)
        batches = (fetch(idx) for idx in (order if streamed else order.to(device)).split(cfg.batch_size))
        total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no wait per step
        for batch in _ahead(batches) if streamed else batches:
            loss = step(opt, batch, gen, rng)
            sched.step()
            total += loss.double() * len(batch[0])
        result.losses.append(total.item() / num_images)
        if epoch % cfg.eval_every == 0 or epoch == epochs:
            result.curve.append((epoch, evaluate(model, test, device, cfg.batch_size)))
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", acc=f"{result.curve[-1][1]:.3f}")
    return result


def train_student_model(
    model: nn.Module,
    images: torch.Tensor,
    soft_logits: torch.Tensor | None,
    ensemble: Callable[[torch.Tensor], torch.Tensor] | None,
    test: Rows,
    cfg: StudentConfig,
    epochs: int,
    temperature: float,
    augment: tuple[int, bool],
    device: str,
    seed: int,
    desc: str = "student",
    progress: bool = True,
    fast_path: FastPath = PLAIN,
) -> StudentResult:
    """Train on float images [N, ch, H, W] in [0,1] with MixUp + KL(T) (`student_step`); test on `test` (`Held`
    tensors, e.g. `Held(test_x, test_y)`, or a data artifact's split, read a batch at a time).

    `images` is a tensor, or anything read like one: `len`, `.to(device)` and a batch by an int64
    index tensor (evaluate-student's `outputs.instances.DistilledInstances`, which composes each batch).

    Static labels: `soft_logits` [N, C], mixed with the images. Dynamic labels: `ensemble(x)`
    gives the teachers' averaged logits of every augmented, mixed batch (place its teachers
    with the same `fast_path`).
    """
    net = fast_path.for_training(model, device)
    x_all = images.to(device)
    z_all = soft_logits.to(device) if soft_logits is not None else None

    def fetch(idx: torch.Tensor) -> Batch:
        return (x_all[idx],) if z_all is None else (x_all[idx], z_all[idx])

    def step(opt: torch.optim.Optimizer, batch: Batch, gen: torch.Generator, rng: random.Random) -> torch.Tensor:
        return student_step(net, opt, batch[0], soft_logits=None if z_all is None else batch[1], ensemble=ensemble,
                            temperature=temperature, mixup_alpha=cfg.mixup_alpha, augment=augment, generator=gen, rng=rng,
                            fast_path=fast_path)

    return _fit_student(model, len(x_all), fetch, step, test, cfg, epochs, device, seed, desc, progress)


class Ensemble(nn.Module):
    """Averaged logits of the frozen teachers: the labels of the distilled set (docs/method.md, section 5)."""

    def __init__(self, teachers: list[nn.Module]):
        super().__init__()
        self.teachers = nn.ModuleList(teachers).eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(x).float() for t in self.teachers]).mean(0)  # averaged in fp32, under autocast too

    def train(self, mode: bool = True) -> "Ensemble":  # teachers stay in eval mode whatever the caller does
        return super().train(False)


def train_student_hard(
    model: nn.Module,
    images: torch.Tensor | Rows,
    labels: torch.Tensor,
    test: Rows,
    cfg: StudentConfig,
    epochs: int,
    augment: tuple[int, bool],
    device: str,
    seed: int,
    desc: str = "student (hard labels)",
    progress: bool = True,
    fast_path: FastPath = PLAIN,
) -> StudentResult:
    """The hard-label baseline: plain cross-entropy on class indices, no MixUp, no teacher.

    Everything else is the student recipe of `train_student_model` (crop/flip, AdamW, cosine
    schedule, batch size, evaluation schedule), so only the labels and the loss differ. `images`
    are float images in [0, 1] as `train_student_model` takes them, or uint8 `Rows` (the full-data
    reference: a training split, held on the device or read a batch at a time), each batch scaled
    to [0, 1] as it is used: the same values as scaling the whole split first.
    """
    net = fast_path.for_training(model, device)
    rows = images if isinstance(images, Rows) else None
    y_all = labels.to(device)
    if rows is None:
        x_all = images.to(device)

        def fetch(idx: torch.Tensor) -> Batch:
            return x_all[idx], y_all[idx]
    else:
        def fetch(idx: torch.Tensor) -> Batch:
            return rows.read(idx).to(device).float() / 255.0, y_all[idx.to(device)]

    def step(opt: torch.optim.Optimizer, batch: Batch, gen: torch.Generator, _rng: random.Random) -> torch.Tensor:
        return cross_entropy_step(net, opt, *batch, augment=augment, generator=gen, fast_path=fast_path)

    return _fit_student(model, len(labels), fetch, step, test, cfg, epochs, device, seed, desc, progress,
                        streamed=rows is not None and not isinstance(rows, Held))
