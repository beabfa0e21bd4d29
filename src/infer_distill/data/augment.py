"""The batched crop/flip augmentation every training loop shares, and each dataset's defaults.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from infer_distill.config.schema import DatasetConfig
from infer_distill.errors import DataError

# The size each dataset comes in. Default crop padding is an eighth of the image side (1 px for
# 8x8 digits, 4 for CIFAR, 8 for Tiny-ImageNet, 28 for ImageNet); an imagefolder's size is only
# known once loaded, so `dataset_defaults` assumes CIFAR-sized images unless told the size.
_NATIVE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32, "imagefolder": 32, "hf": 32, "webdataset": 32, "tiny-imagenet": 64,
                "imagenet": 224}
_NO_HFLIP = {"digits"}  # mirrored digits are other glyphs (or none)
def dataset_defaults(name: str, image_size: int | None = None) -> dict:
    """{"hflip": bool, "crop_padding": int} for a dataset; padding scales with `image_size` (default: native)."""
    if name not in _NATIVE_SIZE:
        raise DataError(f"dataset.name: unknown dataset {name!r}; known: {', '.join(_NATIVE_SIZE)}")
    size = image_size or _NATIVE_SIZE[name]
    return {"hflip": name not in _NO_HFLIP, "crop_padding": size // 8}


def augmentation(cfg: DatasetConfig, image_size: int) -> tuple[int, bool]:
    """(crop_padding, hflip) for training: the config's values where set, else the dataset's defaults
    for images of side `image_size` (the loaded size, which `dataset.image_size` may have changed)."""
    defaults = dataset_defaults(cfg.name, image_size)
    padding = defaults["crop_padding"] if cfg.crop_padding is None else cfg.crop_padding
    hflip = defaults["hflip"] if cfg.hflip is None else cfg.hflip
    return padding, hflip


def random_crop_flip(x: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per sample: a random HxW crop of `x` zero-padded by `padding`, then a horizontal flip with p=0.5.

    x is float or uint8 [B, C, H, W] on any device; the output has the same shape, dtype and device.
    The offsets and flips are drawn on the CPU (`generator` is a CPU generator, None: torch's global
    one) and then moved to x's device, so a seed gives the same augmentation on every device.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip expects a batch [B, C, H, W], got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"random_crop_flip: padding must be >= 0, got {padding}")
    if padding == 0 and not hflip:
        return x
    b, c, h, w = x.shape
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5 if hflip else torch.zeros(b, dtype=torch.bool)
    # non_blocking: a blocking copy to a GPU would wait for all the work queued before it, once per batch
    top, left, flip = (t.to(x.device, non_blocking=True) for t in (top, left, flip))

    # Index arithmetic instead of a loop over samples: rows[b, i] and cols[b, j] are where output
    # pixel (i, j) of sample b comes from in the padded image; a flip reads the columns backwards.
    rows = top[:, None] + torch.arange(h, device=x.device)
    cols = left[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x, (padding, padding, padding, padding))
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]
