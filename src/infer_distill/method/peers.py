"""The methods INFER is compared with at equal bytes (docs/method.md, section 9): their selection and synthesis.

Each returns the images of a distilled set as uint8 [P, C, ch, H, W] (row p holds one image of
every class, as INFER's natural subsets do), so the stage that stores them (`stages.distill_method`)
labels, stores and accounts for every method's images exactly as soft-label does INFER's.

What each method makes is `DESCRIPTIONS` (the datasheet of its set says it too):
- random: P seeded real images per class (`stages.draw_per_class`, the random-real baseline's draw);
- herding: picked greedily on the first teacher's penultimate features (`herding`);
- rded: crops of real images scored by the teachers and stitched (`rded_select`);
- sre2l: images optimised from noise against the teachers (`sre2l_recover`; the UFC loss, `group_losses`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from infer_distill.method.synthesis import group_losses
from infer_distill.runtime.progress import progress_bar

# Each peer method: its name as published, where, and what its set's images are.
DESCRIPTIONS = {
    "random": ("random real images", "the random-real baseline of dataset distillation",
               "a real training image of its class, drawn at random (seeded)"),
    "herding": ("herding", "Welling, \"Herding Dynamical Weights to Learn\", ICML 2009",
                "a real training image of its class, picked greedily so that the running mean of the picked images' "
                "penultimate features on the first teacher tracks the mean over the whole class"),
    "rded": ("RDED", "Sun et al., \"On the Diversity and Realism of Distilled Dataset: An Efficient Dataset Distillation "
             "Paradigm\", CVPR 2024",
             "factor x factor crops of real training images of its class, stitched into one image: random square crops "
             "of candidate images scored by the teachers' cross-entropy for the class, the best crop of each candidate "
             "kept and the best of those used"),
    "sre2l": ("SRe2L", "Yin et al., \"Squeeze, Recover and Relabel: Dataset Condensation at ImageNet Scale From A New "
              "Perspective\", NeurIPS 2023",
              "synthesised from Gaussian noise against the teachers: cross-entropy for its class plus matching of the "
              "teachers' BatchNorm statistics, under random jitter (and flips where set), with no real image in it"),
}


# ----------------------------------------------------------------------------------------
# Features and scores from the teachers
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def penultimate_features(model: nn.Module, images: torch.Tensor, device: str, batch_size: int) -> torch.Tensor:
    """The input of the model's last Linear layer (its penultimate features), float32 [N, D], for uint8 images or
    float ones in [0, 1]."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not head:
        raise ValueError("the model has no Linear layer: its penultimate features are undefined")
    captured: list[torch.Tensor] = []
    handle = head[-1].register_forward_pre_hook(lambda _m, args: captured.append(args[0].flatten(1).float().cpu()))
    try:
        model.eval()
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device)
            model(x.float() / 255.0 if x.dtype == torch.uint8 else x)
    finally:
        handle.remove()
    return torch.cat(captured)


@torch.no_grad()
def class_cross_entropy(teachers: Sequence[nn.Module], images: torch.Tensor, label: int, device: str,
                        batch_size: int = 500) -> torch.Tensor:
    """Per image (float [N, ch, H, W] in [0, 1]): the cross-entropy of the teachers' mean logits for class `label`."""
    scores = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device)
        logits = torch.stack([t(x).float() for t in teachers]).mean(0)
        scores.append(F.cross_entropy(logits, torch.full((len(x),), label, device=device), reduction="none").cpu())
    return torch.cat(scores)


def feature_similarity(features: torch.Tensor, labels: torch.Tensor, bins: int = 20) -> dict:
    """Cosine similarity of features [N, D] between every pair of distinct instances, split by whether the two have
    the same class (labels [N]): mean, median and a histogram over [-1, 1] of each (the seed paper's open check of
    how far a method's instances of different classes look alike to the teacher)."""
    unit = F.normalize(features.double(), dim=1)
    cos = unit @ unit.T
    pairs = torch.triu(torch.ones_like(cos, dtype=torch.bool), diagonal=1)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    out = {}
    for name, mask in (("same_class", pairs & same), ("cross_class", pairs & ~same)):
        values = cos[mask].float()
        out[name] = {"pairs": len(values), "mean": float(values.mean()) if len(values) else None,
                     "median": float(values.median()) if len(values) else None,
                     "histogram": torch.histc(values, bins=bins, min=-1.0, max=1.0).int().tolist()}
    return out


# ----------------------------------------------------------------------------------------
# herding
# ----------------------------------------------------------------------------------------


def herding(features: torch.Tensor, count: int) -> list[int]:
    """The `count` rows of `features` [N, D] that herding picks, in the order it picks them.

    Step t picks the row x not yet picked that brings the mean of the picked rows closest to the
    mean mu of all rows: argmin ||mu - (s_{t-1} + x) / t||, s_{t-1} the sum of the rows picked so far.
    """
    if count > len(features):
        raise ValueError(f"herding: {count} picks asked of {len(features)} points")
    feats = features.double()
    mu = feats.mean(0)
    total = torch.zeros_like(mu)
    free = torch.ones(len(feats), dtype=torch.bool)
    picked: list[int] = []
    for t in range(1, count + 1):
        dist = torch.linalg.vector_norm(mu - (total + feats) / t, dim=1)
        dist[~free] = math.inf
        i = int(dist.argmin())
        picked.append(i)
        free[i] = False
        total += feats[i]
    return picked


# ----------------------------------------------------------------------------------------
# rded
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crop:
    image: int          # index into the candidates
    top: int
    left: int
    side: int           # a square crop (RDED: aspect ratio 1)


def random_square_crops(height: int, width: int, count: int, gen: torch.Generator,
                        scale: tuple[float, float] = (0.08, 1.0)) -> list[tuple[int, int, int]]:
    """`count` (top, left, side) square crops with area a uniform fraction of the image in `scale` (RandomResizedCrop's)."""
    crops = []
    for _ in range(count):
        area = (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=gen).item()) * height * width
        side = min(height, width, max(1, round(math.sqrt(area))))
        top = int(torch.randint(0, height - side + 1, (), generator=gen))
        left = int(torch.randint(0, width - side + 1, (), generator=gen))
        crops.append((top, left, side))
    return crops


def resize(images: torch.Tensor, side: int) -> torch.Tensor:
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)


def rded_select(teachers: Sequence[nn.Module], candidates: torch.Tensor, label: int, count: int, crops: int, factor: int,
                gen: torch.Generator, device: str) -> tuple[torch.Tensor, list[Crop], torch.Tensor]:
    """RDED for one class: `count` images, each `factor x factor` of the best-scored crops of the uint8 `candidates`.

    Every candidate gets `crops` random square crops, scored (resized to the image size) by the
    teachers' cross-entropy for `label`; each candidate keeps its best crop, and the
    count * factor^2 best of those, best first, fill the images row by row. Returns the images
    (uint8 [count, ch, H, W]), the crops used (in stitching order) and their scores.
    """
    n, _, h, w = candidates.shape
    if h % factor or w % factor:
        raise ValueError(f"rded: images of {h}x{w} pixels cannot be stitched from {factor}x{factor} crops (factor must divide the side)")
    need = count * factor**2
    if need > n:
        raise ValueError(f"rded: {need} crops needed, but {n} candidate images per class")
    images = candidates.float() / 255.0
    best: list[tuple[float, Crop]] = []
    for i in range(n):
        boxes = random_square_crops(h, w, crops, gen)
        views = torch.cat([resize(images[i : i + 1, :, t : t + s, l : l + s], h) for t, l, s in boxes])
        scores = class_cross_entropy(teachers, views, label, device)
        j = int(scores.argmin())
        best.append((float(scores[j]), Crop(i, *boxes[j])))
    chosen = sorted(best, key=lambda sc: sc[0])[:need]
    tile = h // factor
    out = torch.empty(count, images.shape[1], h, w)
    for k, (_, c) in enumerate(chosen):
        patch = resize(images[c.image : c.image + 1, :, c.top : c.top + c.side, c.left : c.left + c.side], tile)[0]
        row, col = divmod(k % factor**2, factor)
        out[k // factor**2, :, row * tile : (row + 1) * tile, col * tile : (col + 1) * tile] = patch
    return to_uint8(out), [c for _, c in chosen], torch.tensor([s for s, _ in chosen])


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as stored pixels, round(255 x)."""
    return (images * 255.0).round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------
# sre2l
# ----------------------------------------------------------------------------------------


def _move(x: torch.Tensor, shift: list[int], flipped: bool) -> torch.Tensor:
    x = torch.roll(x, shifts=tuple(shift), dims=(-2, -1)) if any(shift) else x
    return x.flip(-1) if flipped else x


@dataclass
class RecoverResult:
    images: torch.Tensor         # uint8 [P, C, ch, H, W]
    noise: torch.Tensor          # float [P, C, ch, H, W] in [0, 1]: where each image started
    initial_loss: torch.Tensor   # [P]: per row (one image of every class), summed over the teachers
    final_loss: torch.Tensor


def sre2l_recover(teachers: Sequence[nn.Module], rows: int, num_classes: int, shape: tuple[int, int, int],
                  mean: Sequence[float], std: Sequence[float], *, iterations: int, lr: float, betas: tuple[float, float],
                  r_bn: float, first_bn_multiplier: float, jitter: int, flip: bool, seed: int, device: str,
                  progress: bool = True) -> RecoverResult:
    """SRe2L's recover: `rows` x `num_classes` images, one of its own per instance, optimised from Gaussian noise.

    Row p is one batch of one image per class (SRe2L's CIFAR batch): its BatchNorm statistics are
    matched as one group, with the loss of the UFC optimiser (`synthesis.group_losses`: CE + r_bn x
    BN). Adam runs on the normalised pixels (SRe2L's units) with a cosine schedule; each step takes
    one random roll of up to `jitter` pixels either way and (with `flip`, SRe2L's ImageNet recipe)
    a horizontal flip per row, and clips to the valid pixel range. With several teachers every image is optimised against all of
    them (their losses summed). Randomness per row from seed, so a row does not depend on the others.
    """
    device_t = torch.device(device)
    m = torch.tensor(mean, device=device_t).view(-1, 1, 1)
    s = torch.tensor(std, device=device_t).view(-1, 1, 1)
    gens = [torch.Generator().manual_seed(seed * 1_000_003 + p) for p in range(rows)]
    noise = torch.stack([torch.randn(num_classes, *shape, generator=g) for g in gens]).to(device_t)   # normalised units
    start_pixels = (noise * s + m).clamp(0, 1)  # the noise as an image (SRe2L clips only after each step)
    param = noise.clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr, betas=betas)
    labels = torch.arange(num_classes, device=device_t).repeat(rows)
    group_ids = torch.arange(rows, device=device_t).repeat_interleave(num_classes)
    for t in teachers:
        t.eval().requires_grad_(False)
    initial = last = None
    for it in progress_bar(range(iterations), "SRe2L recover", disable=not progress):
        for group in opt.param_groups:
            group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * it / iterations))
        opt.zero_grad(set_to_none=True)
        moves = []  # one roll and flip per row this step, the same for every teacher
        for p in range(rows):
            shift = torch.randint(-jitter, jitter + 1, (2,), generator=gens[p]).tolist() if jitter else [0, 0]
            moves.append((shift, flip and torch.rand((), generator=gens[p]).item() < 0.5))
        total = torch.zeros(rows, device=device_t)
        for teacher in teachers:  # each teacher's graph built and freed in turn, as in UFC synthesis
            pixels = param * s + m
            batch = torch.cat([_move(pixels[p], *moves[p]) for p in range(rows)])
            loss, _, _ = group_losses(teacher, batch, labels, group_ids, rows, r_bn, first_bn_multiplier)
            loss.sum().backward()
            total += loss.detach()
        opt.step()
        with torch.no_grad():  # SRe2L clips the optimised image to the valid pixel range after every step
            param.copy_(((param * s + m).clamp(0, 1) - m) / s)
        last = total
        if initial is None:
            initial = total
    final = (param * s + m).detach().clamp(0, 1).cpu()
    return RecoverResult(to_uint8(final), start_pixels.cpu(), initial.cpu(), last.cpu())
