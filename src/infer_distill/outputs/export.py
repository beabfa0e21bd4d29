"""Export a distilled set: an ImageFolder of PNGs, one .npz or a Hugging Face dataset, each with
a DATASHEET.md.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from infer_distill.data.tensors import require_datasets
from infer_distill.errors import ArtifactError
from infer_distill.outputs.datasheet import datasheet, source_title
from infer_distill.outputs.distilled import FORMATS, DistilledSet, soft_labels_f32

# ----------------------------------------------------------------------------------------
# Export: an ImageFolder of PNGs or one .npz, each with a DATASHEET.md
# ----------------------------------------------------------------------------------------


def export(uri: str, fmt: str, out: str | os.PathLike[str], include_test: bool = False) -> Path:
    """Write the set at `uri` to the new local directory `out` as `fmt` ("imagefolder" or "npz"); returns `out`.

    imagefolder: train/<class>/<subset>_<slot>_<teacher>.png, instances.csv (file, labels, origin,
    instance index), soft_labels.npy (float32 logits) and train/metadata.jsonl (the Hugging Face
    imagefolder builder's per-file columns), all three row for row in the order torchvision's
    ImageFolder reads the files, so pairing by index is right; classes.json, DATASHEET.md. npz:
    distilled.npz with the same content, and DATASHEET.md. hf: a Hugging Face `datasets.DatasetDict`
    (`save_to_disk`; image, label, soft_label, subset and teacher columns in instance order) with
    the datasheet as its card, README.md (needs the `hf` extra).
    include_test adds the real test split the set was made for (test/<class>/<index>.png,
    test_images/test_labels, or a test split), so `out` is a complete `dataset.name: imagefolder`
    (or `hf`) root.

    Everything is written to a temporary sibling and renamed into place: on any failure `out`
    is left as it was. `out` must not exist, or be an empty directory.
    """
    if fmt not in FORMATS:
        raise ArtifactError(f"export format {fmt!r}: use one of {', '.join(FORMATS)}")
    target = _check_out(out)
    ds = DistilledSet.open(uri, dtype=torch.uint8)
    test = ds.read_test_split() if include_test else None
    if fmt in ("imagefolder", "hf"):
        _check_imagefolder(ds)
    writer = {"imagefolder": _write_imagefolder, "npz": _write_npz, "hf": _write_hf}[fmt]
    with _staged_dir(target) as tmp:
        writer(ds, tmp, test)
    return target


def _check_out(out: str | os.PathLike[str]) -> Path:
    text = os.fspath(out)
    if "://" in text:
        raise ArtifactError(f"--out {text}: export writes a local directory; give a local path (copy it to object storage afterwards)")
    target = Path(text).expanduser().absolute()
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise ArtifactError(f"--out {text} already exists and is not an empty directory: choose a new --out (export never overwrites)")
    return target


@contextmanager
def _staged_dir(target: Path):
    """A temporary directory beside `target`, renamed to `target` only if the block completes."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
    except OSError as e:
        raise ArtifactError(f"--out {target} is not writable: {e.strerror or e}; choose another --out") from e
    try:
        yield tmp
        os.rename(tmp, target)  # replaces an empty directory atomically
    except OSError as e:
        raise ArtifactError(f"cannot write the export to {target}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left once renamed


def _check_imagefolder(ds: DistilledSet) -> None:
    channels = ds.images.shape[1]
    if channels not in (1, 3):
        raise ArtifactError(f"{ds.uri}: images have {channels} channels; PNG holds 1 (grey) or 3 (RGB): use --format npz")
    for name in ds.classes:
        if name in ("", ".", "..") or "/" in name or "\\" in name or name.startswith("."):
            raise ArtifactError(f"{ds.uri}: class name {name!r} cannot be a folder name: use --format npz")


def class_folders(classes: list[str]) -> list[str]:
    """The folder of each class in an ImageFolder export, so that sorted folder order is label order.

    torchvision's ImageFolder (and every reader built on it) numbers classes by their sorted folder
    names; names already in sorted order keep their name, others get their label as a prefix
    (`003_bird`), so the reader's target is always the set's label.
    """
    if classes == sorted(classes):
        return list(classes)
    width = len(str(len(classes) - 1))
    return [f"{c:0{width}d}_{name}" for c, name in enumerate(classes)]


def _file_names(ds: DistilledSet) -> list[str]:
    """Where instance i goes: train/<class folder>/<subset>_<slot>_<teacher>.png, slot 0 the natural image, m+1 teacher m.

    Within a class folder the names sort in instance order (subset, then natural, teacher 0, 1, ...).
    """
    folders, width = class_folders(ds.classes), len(str(len(ds.teacher_archs)))
    return [f"train/{folders[int(ds.labels[i])]}/{int(ds.subsets[i]):04d}_{int(ds.teachers[i]) + 1:0{width}d}_{ds.teacher_name(i)}.png"
            for i in range(len(ds))]


def imagefolder_order(ds: DistilledSet) -> list[int]:
    """The instances in the order torchvision's ImageFolder reads the export: by class folder, then by file name.

    The class folders sort in label order and the names within a folder in instance order, so this
    is the instances stably sorted by label.
    """
    return sorted(range(len(ds)), key=lambda i: int(ds.labels[i]))


def _png(image: torch.Tensor) -> bytes:
    """One uint8 image [ch, H, W] (ch 1 or 3) as lossless PNG bytes."""
    pixels = image.numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _write_files(root: Path, files: Iterable[tuple[str, bytes]]) -> None:
    for rel, data in files:  # one file's bytes in memory at a time
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _write_imagefolder(ds: DistilledSet, root: Path, test: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """PNGs, then the per-file tables, every one in the order ImageFolder reads the files (`imagefolder_order`)."""
    names, order = _file_names(ds), imagefolder_order(ds)
    folders = class_folders(ds.classes)
    _write_files(root, ((name, _png(image)) for name, image in zip(names, ds.images)))
    if test is not None:
        x, y = test
        width = max(5, len(str(len(y) - 1)))  # names sort in test-set order
        _write_files(root, ((f"test/{folders[int(y[i])]}/{i:0{width}d}.png", _png(x[i])) for i in range(len(y))))
    soft = soft_labels_f32(ds)
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["file", "label", "class", "subset", "teacher", "instance"])
    metadata = []
    for i in order:
        label = int(ds.labels[i])
        writer.writerow([names[i], label, ds.classes[label], int(ds.subsets[i]), ds.teacher_name(i), i])
        # file_name relative to train/, as the Hugging Face imagefolder builder reads metadata.jsonl
        metadata.append(json.dumps({"file_name": names[i].removeprefix("train/"), "label": label,
                                    "soft_label": soft[i].tolist(), "subset": int(ds.subsets[i]),
                                    "teacher": ds.teacher_name(i)}) + "\n")
    buf = io.BytesIO()
    np.save(buf, soft[order], allow_pickle=False)
    _write_files(root, [
        ("instances.csv", rows.getvalue().encode()),
        ("soft_labels.npy", buf.getvalue()),
        ("train/metadata.jsonl", "".join(metadata).encode()),
        ("classes.json", (json.dumps(ds.classes, indent=1, ensure_ascii=False) + "\n").encode()),
        ("DATASHEET.md", datasheet(ds, "imagefolder", test is not None).encode()),
    ])


def _write_npz(ds: DistilledSet, root: Path, test: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    sheet = datasheet(ds, "npz", test is not None)
    arrays = {
        "images": ds.images.numpy(), "soft_labels": soft_labels_f32(ds), "labels": ds.labels.numpy(),
        "subsets": ds.subsets.numpy(), "teachers": ds.teachers.numpy(), "classes": np.array(ds.classes, dtype=str),
        "teacher_archs": np.array(ds.teacher_archs, dtype=str), "mean": np.array(ds.mean), "std": np.array(ds.std),
        "datasheet": np.array(sheet),
    }
    if test is not None:
        arrays.update(test_images=test[0].numpy(), test_labels=test[1].numpy())
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # plain arrays only: np.load(..., allow_pickle=False) reads it
    _write_files(root, [("distilled.npz", buf.getvalue()), ("DATASHEET.md", sheet.encode())])


def _write_hf(ds: DistilledSet, root: Path, test: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """A DatasetDict saved with save_to_disk: train (the instances, in instance order) and, with `test`, test."""
    datasets = require_datasets("export --format hf")
    label = datasets.ClassLabel(names=ds.classes)
    png = datasets.Image()
    train_features = datasets.Features({
        "image": png, "label": label, "soft_label": datasets.Sequence(datasets.Value("float32"), length=len(ds.classes)),
        "subset": datasets.Value("int64"), "teacher": datasets.Value("string"),
    })
    soft = soft_labels_f32(ds)
    splits = {"train": datasets.Dataset.from_dict({
        "image": [{"bytes": _png(image), "path": None} for image in ds.images],  # our lossless PNGs, as the other formats
        "label": ds.labels.tolist(), "soft_label": soft.tolist(), "subset": ds.subsets.tolist(),
        "teacher": [ds.teacher_name(i) for i in range(len(ds))],
    }, features=train_features)}
    if test is not None:
        x, y = test
        splits["test"] = datasets.Dataset.from_dict(
            {"image": [{"bytes": _png(image), "path": None} for image in x], "label": y.tolist()},
            features=datasets.Features({"image": png, "label": label}))
    datasets.DatasetDict(splits).save_to_disk(str(root))
    sheet = datasheet(ds, "hf", test is not None)
    _write_files(root, [("README.md", (_card_header(ds) + sheet).encode()), ("DATASHEET.md", sheet.encode())])


def _card_header(ds: DistilledSet) -> str:
    """The YAML block a Hugging Face dataset card starts with."""
    n = len(ds)
    size = "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000 else "100K<n<1M"
    return ("---\n"
            f"pretty_name: {json.dumps('Distilled set: ' + source_title(ds.manifest['settings']['dataset']), ensure_ascii=False)}\n"
            "task_categories:\n- image-classification\n"
            "tags:\n- dataset-distillation\n- soft-labels\n- infer-distill\n"
            f"size_categories:\n- {size}\n"
            "---\n\n")
