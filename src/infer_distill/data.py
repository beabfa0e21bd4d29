"""Datasets as uint8 tensors in memory, and the batched crop/flip augmentation every stage shares.

`load_dataset(cfg)` returns an `ImageData`: train and test images as uint8 [N, C, H, W], int64
labels, class names and the per-channel normalisation. Sources, by `dataset.name`:

- digits: scikit-learn's 8x8 digits (offline, for tests and quick runs).
- cifar10 / cifar100: torchvision's datasets under `dataset.root` (`dataset.download=true` fetches them).
- imagefolder: `<split>/<class>/<file>` under `dataset.root`, which is a directory, a zip (optionally
  with one top-level folder wrapping the splits), or a directory holding zips whose members start
  with `<split>/` (e.g. one zip per split, such as `cifar10-train-jpeg.zip` and `cifar10-test-png.zip`).
- tiny-imagenet: the official layout (`train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` labelled by
  `val/val_annotations.txt`); its val split is the test split.
- imagenet: the prepared ImageFolder layout (`train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`), resized to
  `dataset.image_size` (default 224).

Everything is materialised as uint8 in memory (50,000 CIFAR images are 150 MB; all of ImageNet at
224 px would be about 190 GB), so for ImageNet set `dataset.train_per_class`: when the teachers are
imported pretrained, only a few natural images per class are needed.

Images are 8 bits per sample: a 16-bit image (PIL mode I;16, say a 16-bit grayscale PNG) is refused,
naming the file, rather than clipped to 255 as PIL's conversion would do; convert the dataset to 8
bits first. An image larger than PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS` x 2)
is refused before it is decoded, and so is a zip member whose name leaves its folder (`..`).

`source_digest(cfg)` digests what a load reads (names, sizes, modification times) without reading
it, so a resumed run remakes the data artifact when its source changed.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from tqdm import tqdm

from .config import DatasetConfig
from .errors import DataError


@dataclass
class ImageData:
    """A loaded dataset: images stay uint8 so that even CIFAR's 60,000 take only 180 MB."""

    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor  # uint8 [M, C, H, W]
    test_y: torch.Tensor  # int64 [M]
    classes: list[str]
    mean: tuple[float, ...]  # per channel, pixel scale [0, 1]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[2]  # images are square


Stats = tuple[tuple[float, ...], tuple[float, ...]]

CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})

# The size each dataset comes in. Default crop padding is an eighth of the image side (1 px for
# 8x8 digits, 4 for CIFAR, 8 for Tiny-ImageNet, 28 for ImageNet); an imagefolder's size is only
# known once loaded, so `dataset_defaults` assumes CIFAR-sized images unless told the size.
_NATIVE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32, "imagefolder": 32, "hf": 32, "tiny-imagenet": 64, "imagenet": 224}
_NO_HFLIP = {"digits"}  # mirrored digits are other glyphs (or none)


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------

def load_dataset(cfg: DatasetConfig) -> ImageData:
    """Load `cfg.name` as uint8 tensors (see the module docstring for the sources and layouts)."""
    loaders = {
        "digits": _load_digits,
        "cifar10": _load_cifar,
        "cifar100": _load_cifar,
        "imagefolder": _load_imagefolder,
        "hf": _load_hf,
        "tiny-imagenet": _load_tiny_imagenet,
        "imagenet": _load_imagenet,
    }
    if cfg.name not in loaders:
        raise DataError(f"dataset.name: unknown dataset {cfg.name!r}; known: {', '.join(loaders)}")
    return loaders[cfg.name](cfg)


def source_digest(cfg: DatasetConfig) -> dict | None:
    """What loading `cfg` reads, by name, size and modification time: {"files": n, "sha256": ...}, or None
    where the source is a package's constant data (digits). One stat per file, nothing decoded.

    The files are those the loader opens: the split folders (walked as the loader walks them) and
    the zips at the top of dataset.root, the zip dataset.root names, or torchvision's CIFAR files;
    a file that is missing counts as missing, so its appearing later changes the digest too.
    """
    if cfg.name == "digits" or cfg.root is None:
        return None  # digits: scikit-learn's data; no root: loading refuses the config
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
    for split in dict.fromkeys(_splits(cfg)):
        for dirpath, _dirnames, filenames in os.walk(root / split):
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
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode("utf-8", "surrogateescape"))
    return {"files": len(lines), "sha256": digest.hexdigest()}


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


# ----------------------------------------------------------------------------------------
# Tensor datasets: digits, CIFAR
# ----------------------------------------------------------------------------------------

def _load_digits(cfg: DatasetConfig) -> ImageData:
    from sklearn.datasets import load_digits  # scikit-learn is slow to import; only digits needs it

    digits = load_digits()
    x = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    y = torch.from_numpy(digits.target.astype(np.int64))
    # No seed needed: per class, the first 80% in the original order train and the rest test, so
    # the split is the same on every machine and the two sets are disjoint by construction.
    train_mask = torch.zeros(len(y), dtype=torch.bool)
    for label in range(10):
        idx = torch.nonzero(y == label).flatten()
        train_mask[idx[: int(0.8 * len(idx))]] = True
    return _tensor_dataset(cfg, x[train_mask], y[train_mask], x[~train_mask], y[~train_mask],
                           [str(d) for d in range(10)], stats=None)


_CIFAR = {"cifar10": ("CIFAR-10", "CIFAR10", CIFAR10_STATS), "cifar100": ("CIFAR-100", "CIFAR100", CIFAR100_STATS)}


def _load_cifar(cfg: DatasetConfig) -> ImageData:
    title, class_name, stats = _CIFAR[cfg.name]
    dataset_cls = getattr(torchvision.datasets, class_name)
    if cfg.root is None:
        raise DataError(f"dataset.root must be set for dataset.name={cfg.name}: the directory torchvision keeps {title} in")
    made = _missing_folders(Path(cfg.root)) if cfg.download else []
    try:
        train, test = (dataset_cls(root=cfg.root, train=t, download=cfg.download) for t in (True, False))
    except Exception as e:  # torchvision raises RuntimeError for missing files, URLError/OSError for downloads
        folder_way = (f"--set dataset.name=imagefolder --set dataset.root=<a folder with train/<class>/ and test/<class>/ "
                      f"images, or zips of them, e.g. the {title} ImageFolder archives>")
        if cfg.download:
            _remove_download(made, dataset_cls)
            raise DataError(f"downloading {title} into dataset.root={cfg.root} failed: {e!r}; check the internet "
                            f"connection; with the files on disk instead: {folder_way}, or torchvision's own "
                            f"{title} files in dataset.root with --set dataset.download=false") from e
        raise DataError(
            f"cannot read {title} from dataset.root={cfg.root} ({e}); set dataset.download=true to fetch it "
            f"(needs internet), or read an ImageFolder: {folder_way}"
        ) from None

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets, dtype=torch.int64)

    return _tensor_dataset(cfg, *tensors(train), *tensors(test), list(train.classes), stats)


def _missing_folders(root: Path) -> list[Path]:
    """`root` and those of its parents that do not exist yet (what a download would create), deepest first."""
    missing = []
    for folder in (root, *root.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _remove_download(made: list[Path], dataset_cls: type) -> None:
    """Undo a failed download into folders it created: torchvision's archive and folder, then the folders if empty.

    Only folders that did not exist before are touched, so nothing a user put there is removed.
    """
    if not made:
        return
    root = made[0]
    for name in (dataset_cls.filename, dataset_cls.base_folder):
        path = root / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty: something else lives there now
            return


# ----------------------------------------------------------------------------------------
# Hugging Face datasets (the `hf` extra)
# ----------------------------------------------------------------------------------------


def require_datasets(feature: str):
    """The `datasets` module, or MissingExtra naming the `hf` extra."""
    try:
        import datasets
    except ImportError as e:
        from .errors import MissingExtra

        raise MissingExtra(feature, "hf", e) from None
    return datasets


def _load_hf(cfg: DatasetConfig) -> ImageData:
    """A folder written by `save_to_disk` (a DatasetDict), an `imagefolder`-builder folder, or a Hub id."""
    datasets = require_datasets("dataset.name=hf")
    if cfg.root is None:
        raise DataError("dataset.root must be set for dataset.name=hf: a save_to_disk folder, an imagefolder folder, or a Hub id")
    root = Path(cfg.root).expanduser()
    try:
        if (root / "dataset_dict.json").is_file():
            dd = datasets.load_from_disk(str(root))
        elif root.is_dir():
            dd = datasets.load_dataset("imagefolder", data_dir=str(root))
        else:
            dd = datasets.load_dataset(cfg.root)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds (FileNotFoundError, DatasetNotFoundError, ...)
        raise DataError(f"dataset.root={cfg.root}: cannot read it with Hugging Face datasets ({e}); give a folder written "
                        "by save_to_disk, an imagefolder folder (<split>/<class>/<file>), or a Hub dataset id") from None
    if not isinstance(dd, datasets.DatasetDict):
        raise DataError(f"dataset.root={cfg.root} holds one split, not a DatasetDict: save the splits together "
                        "(DatasetDict({'train': ..., 'test': ...}).save_to_disk(folder))")
    splits = []
    for field, split in (("dataset.train_split", cfg.train_split), ("dataset.test_split", cfg.test_split)):
        if split not in dd:
            raise DataError(f"{field}={split!r}: dataset.root={cfg.root} has the splits {sorted(dd)}; set {field}")
        splits.append(dd[split])
    classes = _hf_classes(cfg, splits[0])
    (train_x, train_y), (test_x, test_y) = (_hf_tensors(cfg, split, name) for split, name in
                                            zip(splits, (cfg.train_split, cfg.test_split)))
    return _tensor_dataset(cfg, train_x, train_y, test_x, test_y, classes, stats=None)


def _hf_classes(cfg: DatasetConfig, split) -> list[str]:
    for field, column in (("dataset.image_column", cfg.image_column), ("dataset.label_column", cfg.label_column)):
        if column not in split.features:
            raise DataError(f"{field}={column!r}: the dataset's columns are {list(split.features)}; set {field}")
    feature = split.features[cfg.label_column]
    if hasattr(feature, "names"):  # a ClassLabel
        return list(feature.names)
    labels = split.unique(cfg.label_column)
    if not all(isinstance(v, int) and v >= 0 for v in labels):
        raise DataError(f"dataset.label_column={cfg.label_column!r} holds {sorted(map(repr, labels))[:5]}, not class "
                        "indices: give a ClassLabel or integer column")
    return [str(c) for c in range(max(labels) + 1)]


def _hf_tensors(cfg: DatasetConfig, split, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 RGB images [N, 3, H, W] (resized and center-cropped to dataset.image_size where set) and labels."""
    images = []
    for i, image in enumerate(split[cfg.image_column]):
        if not isinstance(image, Image.Image):
            raise DataError(f"dataset.image_column={cfg.image_column!r} holds {type(image).__name__}, not images; set it "
                            "to the dataset's Image column")
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if cfg.image_size is not None and rgb.size != (cfg.image_size, cfg.image_size):
            rgb = TF.center_crop(TF.resize(rgb, cfg.image_size), [cfg.image_size, cfg.image_size])
        if images and rgb.size != images[0].shape[1::-1]:
            raise DataError(f"split {name!r} row {i} is {rgb.size[0]}x{rgb.size[1]}, row 0 {images[0].shape[1]}x"
                            f"{images[0].shape[0]}: set dataset.image_size to resize them all")
        images.append(np.array(rgb))
    if not images:
        raise DataError(f"split {name!r} of dataset.root={cfg.root} has no rows")
    if images[0].shape[0] != images[0].shape[1]:
        raise DataError(f"split {name!r}: images are {images[0].shape[1]}x{images[0].shape[0]}, not square: set dataset.image_size")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(split[cfg.label_column], dtype=torch.int64)


def _tensor_dataset(cfg: DatasetConfig, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                    test_y: torch.Tensor, classes: list[str], stats: Stats | None) -> ImageData:
    """Apply the per-class limits and resize of `cfg` to in-memory square images."""
    train_x, train_y = _first_per_class(train_x, train_y, cfg.train_per_class)
    test_x, test_y = _first_per_class(test_x, test_y, cfg.test_per_class)
    if cfg.image_size is not None and cfg.image_size != train_x.shape[-1]:
        train_x, test_x = (TF.resize(t, [cfg.image_size, cfg.image_size], antialias=True) for t in (train_x, test_x))
    mean, std = stats or _channel_stats(train_x)
    return ImageData(train_x, train_y, test_x, test_y, classes, mean, std)


def _first_per_class(x: torch.Tensor, y: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` samples of each class, in the original order (all of them if None)."""
    if limit is None:
        return x, y
    keep = torch.zeros(len(y), dtype=torch.bool)
    for label in y.unique():
        keep[torch.nonzero(y == label).flatten()[:limit]] = True
    return x[keep], y[keep]


def _channel_stats(x: torch.Tensor) -> Stats:
    """Per-channel mean and std of uint8 images at pixel scale [0, 1].

    Sums of pixel values and of their squares are accumulated as int64, exactly (no float rounding
    over millions of pixels), chunk by chunk so no wide copy of the whole set is made.
    """
    total = torch.zeros(x.shape[1], dtype=torch.int64)
    squares = torch.zeros(x.shape[1], dtype=torch.int64)
    for chunk in x.split(1024):
        wide = chunk.to(torch.int32)
        total += wide.sum(dim=(0, 2, 3), dtype=torch.int64)
        squares += wide.square().sum(dim=(0, 2, 3), dtype=torch.int64)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total.double() / count
    var = squares.double() / count - mean.square()
    return tuple((mean / 255).tolist()), tuple((var.clamp_min(0).sqrt() / 255).tolist())


# ----------------------------------------------------------------------------------------
# Image files: one view over directories, zips and directories of zips
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _File:
    archive: Path | None  # the zip holding the file; None: a plain file
    name: str  # the member name inside the archive, or the file's path

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}" if self.archive else self.name


class _Tree:
    """A dataset root read the same way whether it is a directory, a zip, or a directory of zips.

    `split(name)` lists one top-level folder as {path relative to it: file}, paths in posix style
    with directories ending in "/" (as zip member names do), so empty class folders show too.
    """

    def __init__(self, root: str | None):
        if root is None:
            raise DataError("dataset.root must be set: a directory or .zip holding <split>/<class>/<file>")
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise DataError(f"dataset.root {self.root} does not exist; point it at the data directory or .zip")
        if self.root.is_dir():
            self._archives = sorted(self.root.glob("*.zip"))
        elif zipfile.is_zipfile(self.root):
            self._archives = [self.root]
        else:
            raise DataError(f"dataset.root {self.root} is neither a directory nor a zip archive")
        # Each zip is opened once, on first use (reading the index of 50,000 members takes a while).
        # A ZipFile shares one file position between readers, so decoding threads take turns reading
        # (a stored member is a plain copy, far cheaper than decoding it).
        self._zips: dict[Path, zipfile.ZipFile] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> _Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        for zf in self._zips.values():
            zf.close()

    def split(self, name: str) -> dict[str, _File]:
        """Everything below `<root>/<name>/`: a folder of the directory, else the first zip holding it."""
        folder = self.root / name
        if folder.is_dir():
            entries: dict[str, _File] = {}
            for dirpath, dirnames, filenames in os.walk(folder):
                rel = Path(dirpath).relative_to(folder).as_posix()
                prefix = "" if rel == "." else rel + "/"
                entries.update({prefix + d + "/": _File(None, os.path.join(dirpath, d)) for d in dirnames})
                entries.update({prefix + f: _File(None, os.path.join(dirpath, f)) for f in filenames})
            return entries
        for archive in self._archives:
            names = self._list(archive)
            # Accept the splits at the top of the zip, or inside a single folder wrapping everything
            # (as the official tiny-imagenet-200.zip has).
            tops = {n.split("/", 1)[0] for n in names}
            for prefix in [f"{name}/"] + [f"{t}/{name}/" for t in tops if len(tops) == 1]:
                entries = {n[len(prefix):]: _File(archive, n) for n in names if n.startswith(prefix) and n != prefix}
                if entries:
                    return entries
        raise DataError(
            f"dataset.root {self.root} has no {name!r} split; expected the layout {name}/<class>/<file> "
            f"(in the directory, in a zip, or in a zip inside the directory); found top-level entries: {self._top_level()}"
        )

    def read(self, file: _File) -> bytes:
        if file.archive is None:
            return Path(file.name).read_bytes()
        with self._lock:
            return self._zip(file.archive).read(file.name)

    def _list(self, archive: Path) -> list[str]:
        return self._zip(archive).namelist()

    def _zip(self, archive: Path) -> zipfile.ZipFile:
        if archive not in self._zips:
            try:
                zf = zipfile.ZipFile(archive)
            except zipfile.BadZipFile as e:
                raise DataError(f"{archive} under dataset.root is not a readable zip archive: {e}") from None
            # train/a/../../x.png would count as an image of class a: a member must stay in its folder
            escaping = [n for n in zf.namelist() if n.startswith("/") or ".." in n.replace("\\", "/").split("/")]
            if escaping:
                zf.close()
                raise DataError(f"{archive} under dataset.root: member {escaping[0]!r} leaves its folder ('..' or an "
                                f"absolute path; {len(escaping)} such members); rebuild the zip with plain <split>/<class>/<file> names")
            self._zips[archive] = zf
        return self._zips[archive]

    def _top_level(self) -> str:
        found: list[str] = []
        if self.root.is_dir():
            found += sorted(p.name + "/" if p.is_dir() else p.name for p in self.root.iterdir())
        for archive in self._archives:
            found.append(f"{archive.name}: [{', '.join(sorted({n.split('/', 1)[0] for n in self._list(archive)}))}]")
        shown = ", ".join(found[:20]) + (f", ... ({len(found)} in all)" if len(found) > 20 else "")
        return shown or "(none: it is empty)"


def _is_image(path: str) -> bool:
    base = path.rsplit("/", 1)[-1]
    # Names starting with "." are hidden files or macOS "._x.jpg" metadata, not images.
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------------------
# Folder datasets: imagefolder, tiny-imagenet, imagenet
# ----------------------------------------------------------------------------------------

Items = list[tuple[_File, int]]  # (image file, label)


def _load_imagefolder(cfg: DatasetConfig) -> ImageData:
    return _folder_dataset(cfg, cfg.test_split, cfg.image_size, stats=None)


def _load_imagenet(cfg: DatasetConfig) -> ImageData:
    return _folder_dataset(cfg, _val_split(cfg), cfg.image_size or _NATIVE_SIZE["imagenet"], IMAGENET_STATS)


def _folder_dataset(cfg: DatasetConfig, test_split: str, image_size: int | None, stats: Stats | None) -> ImageData:
    with _Tree(cfg.root) as tree:
        train = _class_folders(tree, cfg.train_split, cfg.train_per_class)
        test = _class_folders(tree, test_split, cfg.test_per_class)
        if set(train) != set(test):
            only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
            raise DataError(
                f"dataset.root {tree.root}: splits {cfg.train_split!r} and {test_split!r} have different classes; "
                f"only in {cfg.train_split!r}: {only_train[:10]}, only in {test_split!r}: {only_test[:10]}"
            )
        classes = sorted(train)
        return _decoded_dataset(tree, classes, _items(train, classes), _items(test, classes), image_size, stats)


def _load_tiny_imagenet(cfg: DatasetConfig) -> ImageData:
    val = _val_split(cfg)
    with _Tree(cfg.root) as tree:
        train = _class_folders(tree, cfg.train_split, cfg.train_per_class)  # <wnid>/images/*.JPEG
        classes = sorted(train)
        entries = tree.split(val)
        if "val_annotations.txt" not in entries:
            raise DataError(f"dataset.root {tree.root}: {val}/val_annotations.txt is missing; tiny-imagenet expects "
                            f"{val}/images/<file> labelled by {val}/val_annotations.txt (file<TAB>wnid<TAB>...)")
        test: dict[str, list[_File]] = {c: [] for c in classes}
        for line_no, line in enumerate(tree.read(entries["val_annotations.txt"]).decode().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{val}/val_annotations.txt line {line_no}"
            fields = line.split("\t")
            if len(fields) < 2:
                raise DataError(f"dataset.root {tree.root}: {where} is not <file><TAB><wnid>...: {line!r}")
            file, wnid = fields[:2]
            if wnid not in test:
                raise DataError(f"dataset.root {tree.root}: {where} names class {wnid!r}, "
                                f"which has no folder in {cfg.train_split}/")
            if f"images/{file}" not in entries:
                raise DataError(f"dataset.root {tree.root}: {where} names {val}/images/{file}, which does not exist")
            test[wnid].append(entries[f"images/{file}"])
        if not any(test.values()):
            raise DataError(f"dataset.root {tree.root}: {val}/val_annotations.txt lists no images")
        test = {c: sorted(files, key=lambda f: f.name)[: cfg.test_per_class] for c, files in test.items()}
        return _decoded_dataset(tree, classes, _items(train, classes), _items(test, classes), cfg.image_size,
                                IMAGENET_STATS)


def _splits(cfg: DatasetConfig) -> tuple[str, str]:
    """(train split, test split) as the loader of `cfg.name` reads them."""
    return cfg.train_split, cfg.test_split if cfg.name == "imagefolder" else _val_split(cfg)


def _val_split(cfg: DatasetConfig) -> str:
    """ImageNet-style datasets call their test split "val"; a test_split changed from the default wins."""
    return "val" if cfg.test_split == "test" else cfg.test_split


def _class_folders(tree: _Tree, split: str, limit: int | None) -> dict[str, list[_File]]:
    """{class: its first `limit` images by name} from `<split>/<class>/...` (class folders may nest images deeper)."""
    classes: dict[str, list[_File]] = {}
    for rel, file in sorted(tree.split(split).items()):
        name, sep, below = rel.partition("/")
        if not sep:
            continue  # a loose file beside the class folders (a README, say) is no class
        images = classes.setdefault(name, [])
        if _is_image(below):
            images.append(file)
    if not classes:
        raise DataError(f"dataset.root {tree.root}: split {split!r} has no class folders; expected {split}/<class>/<file>")
    empty = sorted(c for c, files in classes.items() if not files)
    if empty:
        raise DataError(f"dataset.root {tree.root}: class folders without images ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                        f"in split {split!r}: {empty[:10]}; remove them or add images")
    return {c: files[:limit] for c, files in classes.items()}


def _items(per_class: dict[str, list[_File]], classes: list[str]) -> Items:
    return [(file, label) for label, c in enumerate(classes) for file in per_class[c]]


def _decoded_dataset(tree: _Tree, classes: list[str], train: Items, test: Items, image_size: int | None,
                     stats: Stats | None) -> ImageData:
    train_x, train_y = _decode_images(tree, train, image_size, size=None, desc="train")
    test_x, test_y = _decode_images(tree, test, image_size, size=tuple(train_x.shape[2:]), desc="test")
    mean, std = stats or _channel_stats(train_x)
    return ImageData(train_x, train_y, test_x, test_y, classes, mean, std)


# ----------------------------------------------------------------------------------------
# Decoding: image files -> uint8 tensors, on a thread pool
# ----------------------------------------------------------------------------------------

def _decode_images(tree: _Tree, items: Items, image_size: int | None, size: tuple[int, int] | None,
                   desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(file, label) pairs -> uint8 RGB images [N, 3, H, W] and int64 labels [N].

    Every image must come out H x W = `size` (None: the first image's size) unless `image_size`
    resizes them all. Threads decode in parallel because PIL releases the GIL while decoding; that
    pays off for large images (ImageNet), while for 32x32 ones PIL's per-file Python work dominates.
    """
    first = _decode(tree, items[0][0], image_size)
    size = size or first.shape[:2]
    if size[0] != size[1]:
        raise DataError(f"{desc} image {items[0][0]} is {size[1]}x{size[0]}, not square; "
                        "set dataset.image_size to resize and center-crop every image to one square size")
    out = torch.empty((len(items), 3, *size), dtype=torch.uint8)
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)

    def decode_range(start: int, stop: int) -> int:
        for i in range(start, stop):
            image = first if i == 0 else _decode(tree, items[i][0], image_size)
            if image.shape[:2] != tuple(size):
                (h, w), (eh, ew) = image.shape[:2], size
                raise DataError(f"image {items[i][0]} is {w}x{h} but {desc} images are expected to be {ew}x{eh}; "
                                "set dataset.image_size to resize every image to one square size")
            out[i] = torch.from_numpy(image).permute(2, 0, 1)
        return stop - start

    chunk = 256  # images per task: big enough to amortise scheduling, small enough for a smooth progress bar
    workers = min(16, os.cpu_count() or 1)  # more threads than cores only contend for the GIL
    bar = tqdm(total=len(items), desc=f"decoding {desc}", unit="img", leave=False, disable=None)  # silent unless a TTY
    with ThreadPoolExecutor(max_workers=workers) as pool, bar:
        futures = [pool.submit(decode_range, s, min(s + chunk, len(items))) for s in range(0, len(items), chunk)]
        try:
            for future in as_completed(futures):
                bar.update(future.result())
        except BaseException:
            for future in futures:
                future.cancel()  # a bad image (or Ctrl-C) ends the load now, not after decoding the rest
            raise
    return out, labels


# PIL modes with more than 8 bits per sample: converting them to RGB clips every value above 255
_WIDE_MODES = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def _decode(tree: _Tree, file: _File, image_size: int | None) -> np.ndarray:
    """One image as uint8 RGB [H, W, 3]; with `image_size`, shorter side resized to it, then center-cropped."""
    try:
        with Image.open(io.BytesIO(tree.read(file))) as img:
            if img.mode in _WIDE_MODES:
                raise DataError(f"image {file} has {_WIDE_MODES[img.mode]}-bit samples (PIL mode {img.mode}); the pipeline "
                                "stores 8-bit images and does not reduce them silently: convert the dataset to 8 bits per "
                                "sample first (e.g. the top byte of each 16-bit value)")
            rgb = img if img.mode == "RGB" else img.convert("RGB")  # most files are RGB: skip convert's copy
            if image_size is not None and rgb.size != (image_size, image_size):
                rgb = TF.center_crop(TF.resize(rgb, image_size), [image_size, image_size])
            return np.array(rgb)  # a copy: np.asarray of a PIL image is read-only, which torch warns about
    except Image.DecompressionBombError as e:  # raised when the header is read, before any pixel is decoded
        raise DataError(f"image {file} is refused as a possible decompression bomb ({e}); remove the file, or store it "
                        f"at fewer than {Image.MAX_IMAGE_PIXELS} pixels") from None
    except (OSError, SyntaxError, zipfile.BadZipFile) as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"cannot decode image {file}: {e}; remove or replace the file") from None
