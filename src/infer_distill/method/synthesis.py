"""Universal Feature Compensator (UFC) synthesis (docs/method.md, section 4).

For a natural subset P_k (one real image per class) and a frozen teacher f_m, one UFC U_{k,m}
is a single image-shaped tensor added to every image of P_k. It minimises

    CE(f_m(jitter(clip(P_k + U))), y) + r_bn * sum_l w_l (||mu_l - mu_l^run||_2 + ||var_l - var_l^run||_2)

where mu_l, var_l are the batch statistics of the input of BatchNorm layer l, w_1 =
first_bn_multiplier and w_l = 1 otherwise.

Speed: instead of one UFC at a time, a shard of S subsets goes through each teacher as one
batch of S * C images (or a few chunks of it, below). BatchNorm in eval mode treats samples
independently, so the logits are those of separate forward passes; the BatchNorm statistics are
taken *per group* (one group = the images one UFC is added to), so every group's loss is
exactly its one-at-a-time loss. The UFCs are disjoint parameters, so the gradient of the summed
loss w.r.t. U_{k,m} is the gradient of its own loss, and Adam is element-wise: the grouped
optimisation is the one-at-a-time optimisation, run in parallel (tests/test_synthesis.py checks
values and gradients).

Memory: the activations a backward pass keeps grow with the images of the pass (at 224 px about
56 MB per image for ResNet-18, 126 MB for EfficientNet-B0), so a shard's groups go through each
teacher in chunks of at most `synthesis.max_images_per_forward` images, each chunk's loss
backpropagated before the next runs. A chunk holds whole groups, so every group's BatchNorm
statistics are still over exactly its own images, and the UFC gradients summed over the chunks
are those of one pass: chunking changes where the work runs, not what it computes.

Randomness (jitter) is drawn from a generator per subset, so a subset's UFCs do not depend on
which other subsets share its shard.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from infer_distill.config.schema import SynthesisConfig
from infer_distill.errors import ConfigError
from infer_distill.models.networks import batchnorm_layers
from infer_distill.runtime.progress import progress_bar

# ----------------------------------------------------------------------------------------
# Grouped BatchNorm-statistics loss
# ----------------------------------------------------------------------------------------


class BatchNormUseError(ValueError):
    """A teacher whose BatchNorm layers do not each run exactly once per forward pass."""


@contextmanager
def recorded_bn_inputs(model: nn.Module) -> Iterator[dict[nn.BatchNorm2d, torch.Tensor]]:
    """The input of every BatchNorm2d of `model`, keyed by layer, for ONE forward pass inside the block.

    Each layer's input must be matched with that layer's running statistics, so inputs are kept
    per layer, never in call order. A layer that runs twice raises at once, one that did not run
    raises when the block ends, both naming the layer. The hooks live exactly as long as the
    block (the official code leaks one set per call, which makes each further UFC slower).
    """
    layers = batchnorm_layers(model)
    names = {module: name for name, module in model.named_modules()}
    inputs: dict[nn.BatchNorm2d, torch.Tensor] = {}

    def record(bn: nn.BatchNorm2d, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        if bn in inputs:
            raise BatchNormUseError(
                f"BatchNorm layer {names[bn]!r} ran twice in one forward pass; INFER matches "
                "each BatchNorm layer's statistics once per pass, so a teacher may not reuse a BatchNorm module")
        inputs[bn] = args[0]

    handles = [bn.register_forward_hook(record) for bn in layers]
    try:
        yield inputs
        idle = [names[bn] for bn in layers if bn not in inputs]
        if idle:
            raise BatchNormUseError(
                f"BatchNorm layer{'s' if len(idle) > 1 else ''} {', '.join(map(repr, idle))} "
                "did not run in the forward pass; INFER matches the statistics of every BatchNorm layer, so a teacher's "
                "BatchNorm layers must all run (remove unused ones from the model)")
    finally:
        for h in handles:
            h.remove()


def group_bn_loss(
    bn_inputs: Mapping[nn.BatchNorm2d, torch.Tensor],
    bn_layers: Sequence[nn.BatchNorm2d],
    group_ids: torch.Tensor,
    num_groups: int,
    first_bn_multiplier: float,
) -> torch.Tensor:
    """Per-group sum_l w_l (||mean - running_mean||_2 + ||var - running_var||_2); returns [num_groups].

    `bn_inputs` maps each layer of `bn_layers` to its input; w_l is `first_bn_multiplier` for
    the first layer of `bn_layers` and 1 for the others.
    """
    # Averaging matrix A[g, n] = 1/|g| for samples n of group g: group means are A @ per-sample means.
    one_hot = F.one_hot(group_ids, num_groups).T.to(bn_inputs[bn_layers[0]].dtype)
    avg = one_hot / one_hot.sum(1, keepdim=True)
    loss = one_hot.new_zeros(num_groups)
    for i, bn in enumerate(bn_layers):
        flat = bn_inputs[bn].flatten(2)                          # [N, ch, h*w]
        mean = avg @ flat.mean(2)                                # [G, ch]
        centred = flat - mean[group_ids].unsqueeze(2)            # two-pass variance, as torch.var
        var = avg @ centred.pow(2).mean(2)                       # biased, as the official loss
        weight = first_bn_multiplier if i == 0 else 1.0
        loss = loss + weight * (
            torch.linalg.vector_norm(mean - bn.running_mean, dim=1) + torch.linalg.vector_norm(var - bn.running_var, dim=1)
        )
    return loss


def group_losses(
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    group_ids: torch.Tensor,
    num_groups: int,
    r_bn: float,
    first_bn_multiplier: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, ce, bn) losses per group, each [num_groups], for one forward pass of `teacher`."""
    bn_layers = batchnorm_layers(teacher)
    with recorded_bn_inputs(teacher) as bn_inputs:
        logits = teacher(images)
    ce_per_sample = F.cross_entropy(logits, labels, reduction="none")
    zeros = torch.zeros(num_groups, dtype=ce_per_sample.dtype, device=images.device)
    # index_add, not bincount: bincount sizes its output from the data, which makes a GPU wait
    counts = zeros.index_add(0, group_ids, torch.ones_like(ce_per_sample))
    ce = zeros.index_add(0, group_ids, ce_per_sample) / counts
    bn = group_bn_loss(bn_inputs, bn_layers, group_ids, num_groups, first_bn_multiplier)
    return ce + r_bn * bn, ce, bn


# ----------------------------------------------------------------------------------------
# Composition and augmentation
# ----------------------------------------------------------------------------------------


def class_batch_index(num_classes: int, classes_per_ufc: int | None) -> torch.Tensor:
    """For every class, which of the UFCs of a (subset, teacher) pair is added to it."""
    per = classes_per_ufc or num_classes
    return torch.arange(num_classes) // per


def compose(natural: torch.Tensor, ufc: torch.Tensor, batch_of_class: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """clip(P + U): natural [..., C, ch, H, W] in [0,1], ufc [..., B, ch, H, W] -> [..., C, ch, H, W]."""
    composed = natural + ufc.index_select(-4, batch_of_class.to(ufc.device))
    return composed.clamp(0.0, 1.0) if clip else composed


# ----------------------------------------------------------------------------------------
# How the distilled set stores UFCs
# ----------------------------------------------------------------------------------------
# A UFC is image-shaped, so at uint8 it costs exactly one stored image (plus its scale and
# offset, 8 bytes): the budget in image-equivalents and the budget in bytes then agree. Each
# UFC gets its own affine map over its own range, so the rounding error is at most half of
# (max - min) / 255 of that UFC.


def encode_ufc(ufc: torch.Tensor, dtype: str) -> dict[str, torch.Tensor]:
    """UFCs [..., ch, H, W] (float, pixel units) as stored: {"ufc"} or, for uint8, {"ufc", "ufc_scale", "ufc_offset"}."""
    if dtype in ("float16", "float32"):
        return {"ufc": ufc.to(getattr(torch, dtype))}
    if dtype != "uint8":
        raise ValueError(f"unknown UFC dtype {dtype!r}; use uint8, float16 or float32")
    flat = ufc.float().flatten(-3)
    lo, hi = flat.min(-1).values, flat.max(-1).values
    scale = (hi - lo) / 255.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))        # a constant UFC: every code 0
    codes = ((flat - lo.unsqueeze(-1)) / safe.unsqueeze(-1)).round().clamp(0, 255).to(torch.uint8)
    return {"ufc": codes.view(ufc.shape), "ufc_scale": scale, "ufc_offset": lo}


def decode_ufc(stored: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float32 UFCs (pixel units) from what `encode_ufc` stored."""
    ufc = stored["ufc"]
    if ufc.dtype != torch.uint8:
        return ufc.float()
    scale, offset = stored["ufc_scale"], stored["ufc_offset"]
    return offset[..., None, None, None] + scale[..., None, None, None] * ufc.float()


def _jitter(x: torch.Tensor, cfg: SynthesisConfig, gen: torch.Generator) -> torch.Tensor:
    """The same random transform for every image of one group (as the official code does per call)."""
    if cfg.random_resized_crop:
        from torchvision.transforms.v2 import functional as TF

        h, w = x.shape[-2:]
        scale = 0.08 + 0.92 * torch.rand((), generator=gen).item()
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand((), generator=gen).item())
        ch = min(h, max(1, round(math.sqrt(scale * h * w / ratio))))
        cw = min(w, max(1, round(math.sqrt(scale * h * w * ratio))))
        top = int(torch.randint(0, h - ch + 1, (), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (), generator=gen))
        x = TF.resized_crop(x, top, left, ch, cw, [h, w], antialias=True)
        if torch.rand((), generator=gen).item() < 0.5:
            x = x.flip(-1)
    if cfg.jitter:
        dx, dy = torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=gen).tolist()
        x = torch.roll(x, shifts=(dx, dy), dims=(-2, -1))
    return x


# ----------------------------------------------------------------------------------------
# Optimisation of a shard of UFCs
# ----------------------------------------------------------------------------------------


def forward_chunks(group_sizes: Sequence[int], max_images: int) -> list[range]:
    """Consecutive groups packed into chunks of at most `max_images` images, in order; a group is never split.

    A group's BatchNorm statistics are over all of its images, so they must share one forward pass.
    """
    largest = max(group_sizes)
    if largest > max_images:
        raise ConfigError(
            f"synthesis.max_images_per_forward={max_images} is smaller than one UFC's group of {largest} images (one "
            "image per class it covers): the BatchNorm statistics of a UFC are over all its images, so they go through a "
            f"teacher together; raise synthesis.max_images_per_forward to at least {largest} or lower synthesis.classes_per_ufc")
    chunks, start, images = [], 0, 0
    for g, n in enumerate(group_sizes):
        if images + n > max_images:
            chunks.append(range(start, g))
            start, images = g, 0
        images += n
    chunks.append(range(start, len(group_sizes)))
    return chunks


def check_forward_budget(num_classes: int, cfg: SynthesisConfig) -> None:
    """Refuse (ConfigError) a `max_images_per_forward` below one group of `num_classes` classes, before any work."""
    batch_of_class = class_batch_index(num_classes, cfg.classes_per_ufc)
    forward_chunks(torch.bincount(batch_of_class).tolist(), cfg.max_images_per_forward)


@dataclass
class SynthesisResult:
    ufc: torch.Tensor            # float32 [S, M, B, ch, H, W], CPU
    initial_loss: torch.Tensor   # [S, M, B]
    final_loss: torch.Tensor     # [S, M, B] at the last iteration
    final_ce: torch.Tensor
    final_bn: torch.Tensor
    seconds: float


def synthesize_ufcs(
    teachers: list[nn.Module],
    natural: torch.Tensor,
    subset_ids: list[int],
    cfg: SynthesisConfig,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = True,
    pixel_std: Sequence[float] | None = None,
) -> SynthesisResult:
    """Optimise every UFC U_{s,m,b} for the S subsets in `natural` (uint8 [S, C, ch, H, W]).

    Class c of every subset has label c; subset s has id subset_ids[s] (it seeds the jitter).
    The official code optimises the UFC in normalised units (pixel / std), so its learning rate
    means a step of lr * std in pixels: Adam runs on U / pixel_std here for the same steps. The
    result is returned in pixel units ([0, 1] scale), the units of `compose`.
    """
    S, C = natural.shape[:2]
    M = len(teachers)
    batch_of_class = class_batch_index(C, cfg.classes_per_ufc)
    B = int(batch_of_class.max()) + 1
    device = torch.device(device)

    natural_f = natural.to(device, torch.float32) / 255.0
    # the classes each UFC of a (subset, teacher) pair is added to, as device indices (a boolean mask would make a GPU wait)
    classes_of_batch = [torch.nonzero(batch_of_class == b).flatten().to(device) for b in range(B)]
    batch_of_class = batch_of_class.to(device)
    # group g = s * B + b: the images of subset s that UFC b is added to, one group per UFC of one teacher
    groups = [(s, b) for s in range(S) for b in range(B)]
    chunks = forward_chunks([len(classes_of_batch[b]) for _, b in groups], cfg.max_images_per_forward)
    # per chunk, fixed over the iterations: the labels of its images and each image's group within the chunk
    chunk_labels = [torch.cat([classes_of_batch[groups[g][1]] for g in chunk]) for chunk in chunks]
    chunk_group_ids = [
        torch.arange(len(chunk), device=device).repeat_interleave(
            torch.tensor([len(classes_of_batch[groups[g][1]]) for g in chunk], device=device))
        for chunk in chunks
    ]
    gens = [torch.Generator().manual_seed(seed * 1_000_003 + k) for k in subset_ids]
    jitters = bool(cfg.jitter or cfg.random_resized_crop)

    for t in teachers:
        t.eval().requires_grad_(False)
    std = torch.tensor(pixel_std or [1.0] * natural.shape[2], device=device).view(-1, 1, 1)
    normalised = torch.zeros(S, M, B, *natural.shape[2:], device=device, requires_grad=True)
    opt = torch.optim.Adam([normalised], lr=cfg.lr, betas=cfg.betas)

    def composed_group(ufc: torch.Tensor, s: int, b: int) -> torch.Tensor:
        classes = classes_of_batch[b]
        x = compose(natural_f[s, classes], ufc[s], batch_of_class[classes], cfg.clip_during_optimisation)
        return _jitter(x, cfg, gens[s]) if jitters else x

    initial = last = None
    start = time.perf_counter()
    bar = progress_bar(range(cfg.iterations), f"UFC subsets {subset_ids[0]}..{subset_ids[-1]}", disable=not progress)
    for it in bar:
        for group in opt.param_groups:  # cosine schedule to 0, no warm-up (official lr_cosine_policy)
            group["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * it / cfg.iterations))
        opt.zero_grad(set_to_none=True)
        step_losses = []
        for m, teacher in enumerate(teachers):
            losses = []
            # Chunks in group order, so each subset's generator draws its groups' jitter in the same order for
            # any chunking; each chunk's backward frees its activations before the next forward.
            for chunk, labels, group_ids in zip(chunks, chunk_labels, chunk_group_ids):
                ufc = normalised[:, m] * std    # per chunk: a backward frees the graph it ran through
                images = torch.cat([composed_group(ufc, *groups[g]) for g in chunk])
                total, ce, bn = group_losses(teacher, images, labels, group_ids, len(chunk), cfg.r_bn, cfg.first_bn_multiplier)
                total.sum().backward()  # gradients of disjoint UFCs: the sum over chunks is one pass's gradient
                losses.append((total.detach(), ce.detach(), bn.detach()))
            step_losses.append([torch.cat([chunk_losses[i] for chunk_losses in losses]).view(S, B) for i in range(3)])
        opt.step()
        last = [torch.stack([sl[i] for sl in step_losses], 1) for i in range(3)]  # [S, M, B], kept on the device
        if it == 0:
            initial = last[0]
        if it % 50 == 0 or it == cfg.iterations - 1:  # reading the loss waits for the device: now and then only
            bar.set_postfix(loss=f"{last[0].mean():.4f}")
    ufc = (normalised * std).detach().cpu()  # waits for the device: the time below is the whole optimisation
    seconds = time.perf_counter() - start
    return SynthesisResult(ufc, initial.cpu(), *(loss.cpu() for loss in last), seconds)
