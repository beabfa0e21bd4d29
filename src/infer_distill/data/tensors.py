"""A dataset as uint8 tensors in memory, and the sources that come as tensors: digits, CIFAR,
Hugging Face datasets (loaded whole when opened, then served as slices).
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from infer_distill.config.schema import DatasetConfig
from infer_distill.data.stream import Batch, Source, SourceSplit, Stats
from infer_distill.errors import DataError


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


CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})

# ----------------------------------------------------------------------------------------
# Tensor datasets: digits, CIFAR
# ----------------------------------------------------------------------------------------

def _load_digits(cfg: DatasetConfig) -> TensorSource:
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
    return TensorSource(cfg, {"train": (x[train_mask], y[train_mask]), "test": (x[~train_mask], y[~train_mask])},
                        [str(d) for d in range(10)], stats=None)


_CIFAR = {"cifar10": ("CIFAR-10", "CIFAR10", CIFAR10_STATS), "cifar100": ("CIFAR-100", "CIFAR100", CIFAR100_STATS)}


def _load_cifar(cfg: DatasetConfig) -> TensorSource:
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

    return TensorSource(cfg, {"train": tensors(train), "test": tensors(test)}, list(train.classes), stats)


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
        from infer_distill.errors import MissingExtra

        raise MissingExtra(feature, "hf", e) from None
    return datasets


def _load_hf(cfg: DatasetConfig) -> TensorSource:
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
    train, test = (_hf_tensors(cfg, split, name) for split, name in zip(splits, (cfg.train_split, cfg.test_split)))
    return TensorSource(cfg, {"train": train, "test": test}, classes, stats=None)


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


class TensorSource(Source):
    """A source already in memory as uint8 [N, C, H, W] tensors per split: `split` applies the per-class limits and
    the resize of the config, and its batches are slices."""

    def __init__(self, cfg: DatasetConfig, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], classes: list[str],
                 stats: Stats | None) -> None:
        self.cfg, self._splits, self.classes, self.stats = cfg, splits, classes, stats

    def split(self, name: str) -> TensorSplit:
        x, y = self._splits[name]
        x, y = _first_per_class(x, y, self.cfg.train_per_class if name == "train" else self.cfg.test_per_class)
        size = self.cfg.image_size
        if size is not None and size != x.shape[-1]:
            x = TF.resize(x, [size, size], antialias=True)
        return TensorSplit(name, x, y, len(self.classes))


class TensorSplit(SourceSplit):
    def __init__(self, name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
        self.name, self.x, self.y, self.num_classes = name, x, y, num_classes

    @property
    def count(self) -> int:
        return len(self.y)

    @property
    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.y, minlength=self.num_classes)

    def batches(self, batch_size: int, progress: bool = True) -> Iterator[Batch]:
        for start in range(0, len(self.y), batch_size):
            yield self.x[start:start + batch_size], self.y[start:start + batch_size]


def _first_per_class(x: torch.Tensor, y: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` samples of each class, in the original order (all of them if None)."""
    if limit is None:
        return x, y
    keep = torch.zeros(len(y), dtype=torch.bool)
    for label in y.unique():
        keep[torch.nonzero(y == label).flatten()[:limit]] = True
    return x[keep], y[keep]
