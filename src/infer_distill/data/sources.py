"""Datasets in: every source as a stream of decoded batches, and as whole uint8 tensors.

`open_source(cfg)` opens `cfg.name` and decodes nothing: `source.classes`, `source.stats` (the published
normalisation, or None), and `source.split("train" | "test")`, whose `batches(batch_size)` gives
(uint8 [n, C, H, W], int64 [n]) in the split's fixed order, holding a few batches at a time;
`count` and `class_counts` where the listing tells them. `load_dataset(cfg)` concatenates the
batches into an `ImageData` (train and test images, labels, class names, per-channel normalisation,
computed exactly with `ChannelStats` where none is published). Sources, by `dataset.name`:

- digits: scikit-learn's 8x8 digits (offline, for tests and quick runs).
- cifar10 / cifar100: torchvision's datasets under `dataset.root` (`dataset.download=true` fetches them).
- hf: a Hugging Face dataset (save_to_disk folder, imagefolder-builder folder, or Hub id).
- imagefolder: `<split>/<class>/<file>` under `dataset.root`, which is a directory, a zip (optionally
  with one top-level folder wrapping the splits), a directory holding zips whose members start
  with `<split>/` (e.g. one zip per split, such as `cifar10-train-jpeg.zip` and `cifar10-test-png.zip`),
  or an S3 prefix `s3://bucket/prefix` holding the same layout (unzipped; as tiny-imagenet and imagenet).
- tiny-imagenet: the official layout (`train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` labelled by
  `val/val_annotations.txt`); its val split is the test split.
- imagenet: the prepared ImageFolder layout (`train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`), resized to
  `dataset.image_size` (default 224).
- webdataset: tar shards in a folder or under `s3://bucket/prefix` (`dataset.train_shards`,
  `dataset.test_shards`: brace patterns), streamed shard by shard (see `data.webdataset`).

The first three load into memory when opened and give slices; the folder sources list their files
when opened and decode batch by batch on a thread pool of the cores this process may use; the
WebDataset source reads its shards as streams. `dataset.train_per_class` keeps the first N images
of each class (ImageNet with imported teachers needs only a few per class).

Images are 8 bits per sample: a 16-bit image (PIL mode I;16, say a 16-bit grayscale PNG) is refused,
naming the file, rather than clipped to 255 as PIL's conversion would do; convert the dataset to 8
bits first. An image larger than PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS` x 2)
is refused before it is decoded, and so is a zip member whose name leaves its folder (`..`).

`source_digest(cfg)` digests what a load reads (names, sizes, modification times or S3 ETags)
without reading it, so a resumed run remakes the data artifact when its source changed.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from infer_distill.config.schema import DatasetConfig
from infer_distill.data import webdataset
from infer_distill.data.folders import _open_imagefolder, _open_imagenet, _open_tiny_imagenet, s3_listing_lines, walk
from infer_distill.data.stream import SPLITS, ChannelStats, DecodeSettings, Source
from infer_distill.data.tensors import _CIFAR, ImageData, _load_cifar, _load_digits, _load_hf
from infer_distill.errors import ConfigError, DataError

# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------

OPENERS: dict[str, Callable[[DatasetConfig], Source]] = {
    "digits": _load_digits,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "imagefolder": _open_imagefolder,
    "hf": _load_hf,
    "tiny-imagenet": _open_tiny_imagenet,
    "imagenet": _open_imagenet,
    "webdataset": webdataset.open_webdataset,
}

# Images per batch when load_dataset gathers a whole split: large enough that the decoding threads stay busy
LOAD_BATCH = 1024


def open_source(cfg: DatasetConfig) -> Source:
    """`cfg.name` opened for reading: listed (folders, shards) or loaded (tensor sources), nothing decoded yet.

    Use it as a context manager (`with open_source(cfg) as source:`) so the archives it opened are closed."""
    if cfg.name not in OPENERS:
        raise DataError(f"dataset.name: unknown dataset {cfg.name!r}; known: {', '.join(OPENERS)}")
    return OPENERS[cfg.name](cfg)


# dataset.storage=auto stores image files as they are from this side up: a 224 px JPEG is some 0.7x its decoded row, so a
# stage reading its rows fetches less; below it rows are small, and a loop reading them epoch after epoch should not
# decode them each time
ENCODED_MIN_SIDE = 96


def encoded_storage(cfg: DatasetConfig, source: Source) -> DecodeSettings | None:
    """How prepare-data stores `source`'s images, as dataset.storage says: its image files as they are (how they decode
    to rows), or None: decoded rows."""
    if cfg.storage == "decoded":
        return None
    settings = source.decode_settings()
    if settings is None:
        if cfg.storage == "encoded":
            raise ConfigError(f"dataset.storage='encoded' but dataset.name={cfg.name} gives no image files to store: set "
                              "dataset.storage to 'decoded' or 'auto'")
        return None
    if cfg.storage == "auto" and min(settings.size) < ENCODED_MIN_SIDE:
        return None
    return settings


def load_dataset(cfg: DatasetConfig, progress: bool = True) -> ImageData:
    """Load `cfg.name` whole, as uint8 tensors: every batch of the source's splits, concatenated."""
    with open_source(cfg) as source:
        stats = ChannelStats()
        parts = {}
        for name in SPLITS:
            split = source.split(name)
            xs, ys = [], []
            filled = 0
            for x, y in split.batches(LOAD_BATCH, progress=progress):
                if name == "train" and source.stats is None:
                    stats.add(x)
                if split.count is None:
                    xs.append(x)
                else:  # the size is known: each batch goes straight into the split's tensor, never a second copy
                    if not xs:
                        xs.append(torch.empty((split.count, *x.shape[1:]), dtype=x.dtype))
                    xs[0][filled:filled + len(x)] = x
                    filled += len(x)
                ys.append(y)
            if not xs:
                raise DataError(f"dataset.root {cfg.root}: the {name} split has no images")
            parts[name] = (xs[0] if len(xs) == 1 else torch.cat(xs)), torch.cat(ys)
        mean, std = source.stats or stats.result()
        return ImageData(*parts["train"], *parts["test"], source.classes, mean, std)


def source_digest(cfg: DatasetConfig) -> dict | None:
    """What loading `cfg` reads, by name, size and modification time (S3: ETag): {"files": n, "sha256": ...}, or
    None where the source is a package's constant data (digits). One stat per file, or the S3 listing; nothing
    decoded.

    The files are those the loader opens: the split folders (walked as the loader walks them, or the
    objects listed under them on S3) and the zips at the top of dataset.root, the zip dataset.root
    names, torchvision's CIFAR files, or a WebDataset's shards and classes.txt; a file that is
    missing counts as missing, so its appearing later changes the digest too.
    """
    if cfg.name == "digits" or cfg.root is None:
        return None  # digits: scikit-learn's data; no root: loading refuses the config
    if cfg.name == "webdataset":  # the shards and classes.txt, local or on S3 (ETags there)
        return _digest_lines(webdataset.listing_lines(cfg))
    if cfg.root.startswith("s3://"):  # a folder source's splits under an S3 prefix (the config allows no other source)
        return _digest_lines(s3_listing_lines(cfg))
    root = Path(cfg.root).expanduser()
    if cfg.name == "hf":  # every file of a saved dataset or imagefolder-builder folder
        return _digest((p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file()) if root.is_dir() else None
    if cfg.name in _CIFAR:
        dataset_cls = getattr(torchvision.datasets, _CIFAR[cfg.name][1])
        names = [name for name, _ in dataset_cls.train_list + dataset_cls.test_list] + [dataset_cls.meta["filename"]]
        return _digest((f"{dataset_cls.base_folder}/{n}", root / dataset_cls.base_folder / n) for n in names)
    if not root.is_dir():
        return _digest([(root.name, root)])
    files = [(p.name, p) for p in sorted(root.glob("*.zip"))]
    for split in dict.fromkeys(cfg.split_folders()):
        for dirpath, _dirnames, filenames in walk(root / split):
            rel = Path(dirpath).relative_to(root).as_posix()
            files += [(f"{rel}/{f}", Path(dirpath, f)) for f in filenames]
    return _digest(files)


def _digest(files) -> dict:
    """{"files": n, "sha256": digest of the sorted (name, size, mtime) lines} of (name, path) pairs."""
    lines = []
    for name, path in files:
        try:
            st = path.stat()
            lines.append(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n")
        except FileNotFoundError:
            lines.append(f"{name}\tmissing\n")
        except OSError as e:  # a symlink loop: loading refuses it by name; here it is what it is
            lines.append(f"{name}\t{e.strerror}\n")
    return _digest_lines(lines)


def _digest_lines(lines: list[str]) -> dict:
    """{"files": n, "sha256": digest of the sorted lines}, one line per file."""
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode("utf-8", "surrogateescape"))
    return {"files": len(lines), "sha256": digest.hexdigest()}
