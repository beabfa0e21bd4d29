"""The distilled set as a product: load it into your own training code, or export it for other tools.

    from infer_distill import DistilledSet
    ds = DistilledSet.open("runs/quickstart/distilled")          # or s3://bucket/run1/distilled
    image, soft_label, label = ds[0]                             # a torch Dataset ...
    images, soft_labels, labels = ds.tensors()                   # ... or the whole set in memory

    infer-distill export runs/quickstart/distilled --format imagefolder --out runs/exported

A set is the soft-label stage's `distilled/` artifact: K natural subsets, K*M*B UFCs and the
static soft labels of every instance. `DistilledSet` composes the instances with the very
functions evaluate-student trains on (`stages.read_distilled`, `stages.distilled_instances`),
so instance i here is instance i there, with the same values. The export writes the composed
images as 8-bit PNGs (or one .npz), the soft labels, the class names and a DATASHEET.md that
describes the set to someone who receives only the files.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from . import __version__
from pydantic import ValidationError

from .config import StudentConfig, fingerprint
from .data import require_datasets
from .methods import DESCRIPTIONS
from .metrics import ImageDescription
from .metrics import read as read_metrics
from .plan import Layout
from .stages import DISTILLED_DESCRIPTION, distilled_instances, instance_origins, read_distilled
from .store import Artifact, ArtifactError, open_artifact

FORMATS = ("imagefolder", "npz", "hf")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as 8-bit pixels, round(255 x): within half an 8-bit step of the input."""
    return (images * 255.0).round().clamp(0, 255).to(torch.uint8)


class DistilledSet(Dataset):
    """The instances of a distilled set, in evaluate-student's order, with their labels and origins.

    Attributes (N = K*(M+1)*C instances; per subset k: P_k, then P_k + U_{k,m} for every teacher m;
    classes 0..C-1 within each):
      images       float32 [N, ch, H, W] in [0, 1] (or uint8, round(255 x), with dtype=torch.uint8)
      soft_labels  float32 [N, C]: the teachers' mean logits (static labels; use them at `temperature`)
      labels       int64 [N]: the hard label, the class of the natural image
      subsets      int64 [N]: k;  teachers: int64 [N]: m, or -1 for the natural image P_k
      classes, teacher_archs, mean, std (the normalisation the pipeline's models apply),
      crop_padding, hflip (the augmentation its students train with), temperature, manifest, uri
    """

    def __init__(self, uri: str, manifest: dict[str, Any], images: torch.Tensor, soft_labels: torch.Tensor,
                 origins: dict[str, torch.Tensor], transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        described: ImageDescription = read_metrics(manifest, uri)  # soft-label's or distill-method's
        settings = manifest["settings"]
        self.uri, self.manifest, self.transform = uri, manifest, transform
        self.images, self.soft_labels = images, soft_labels
        self.labels, self.subsets, self.teachers = origins["label"], origins["subset"], origins["teacher"]
        self.classes: list[str] = list(described.classes)
        self.teacher_archs: list[str] = [t["arch"] for t in settings["teachers"]]
        self.mean: tuple[float, ...] = tuple(described.mean)
        self.std: tuple[float, ...] = tuple(described.std)
        self.crop_padding: int = described.crop_padding
        self.hflip: bool = described.hflip
        self.temperature: float = settings["labels"]["temperature"]

    @classmethod
    def open(cls, uri: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32,
             transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> DistilledSet:
        """Read and verify a soft-label artifact (a local path or s3://bucket/prefix), and compose its instances.

        The store checks every file against its size and sha256; here the manifest must be a
        soft-label one, unaltered (its settings match its fingerprint), and the tensors must have
        the shapes it records. The whole set is composed in memory, as evaluate-student does:
        N x ch x H x W x 4 bytes as float32, a quarter of that with dtype=torch.uint8.
        """
        if dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"dtype {dtype}: use torch.float32 (images in [0, 1]) or torch.uint8 (8-bit pixels)")
        art = open_artifact(uri)
        try:
            manifest = art.read_manifest()
        except ArtifactError:
            distilled = Layout(art.uri).distilled
            if open_artifact(distilled).exists():
                raise ArtifactError(f"{art.uri} is a run root, not a distilled set: give its soft-label artifact, {distilled}") from None
            raise
        _check_manifest(art.uri, manifest)
        t = read_distilled(art)
        natural, ufc, soft_labels = t["natural"], t["ufc"], t["soft_labels"]
        _check_shapes(art.uri, manifest, natural, ufc, soft_labels)
        # a peer method's set (distill-method) has no UFCs and so no synthesis settings
        images = distilled_instances(natural, ufc, manifest["settings"].get("synthesis", {}).get("classes_per_ufc"))
        K, C, M = natural.shape[0], natural.shape[1], ufc.shape[1]
        return cls(art.uri, manifest, to_uint8(images) if dtype == torch.uint8 else images, soft_labels,
                   instance_origins(K, M, C), transform)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image [ch, H, W], soft label logits [C], hard label), the image through `transform` if one was given."""
        image = self.images[i]
        return (self.transform(image) if self.transform else image), self.soft_labels[i], self.labels[i]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole set at once, for training from memory: (images, soft_labels, labels)."""
        return self.images, self.soft_labels, self.labels

    def teacher_name(self, i: int) -> str:
        """The architecture whose UFC instance i carries, or "natural"."""
        m = int(self.teachers[i])
        return "natural" if m < 0 else self.teacher_archs[m]

    def read_test_split(self, data_uri: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The real test set the set was made for: uint8 images [N, ch, H, W] and int64 labels.

        From `data_uri`, else the prepare-data artifact the soft-label stage read (where it
        recorded it, then `data` beside this set in its run root); it must have been made with
        this set's dataset settings.
        """
        dataset = {"dataset": self.manifest["settings"]["dataset"]}
        candidates = [data_uri] if data_uri else [self.manifest["inputs"]["data"], self.neighbour("data")]
        misses: list[str] = []
        found = _find_artifact(candidates, "prepare-data", lambda settings: settings == dataset, misses)
        if found is None:
            raise ArtifactError(f"no prepare-data artifact with the dataset settings of {self.uri} ({'; '.join(misses)}): "
                                "give the data artifact the set was distilled from")
        t = found[0].read_tensors("test.safetensors")
        return t["x"], t["y"]

    def student_recipe(self) -> StudentConfig:
        """The run's student settings (its config's `students`), as the report of the run beside the set records them.

        The soft-label artifact does not depend on them (students train after it), so its own
        manifest cannot hold them: the run's report, made from this very set, does.
        """
        found = _run_report(self)
        if found is None:
            raise ArtifactError(f"no report of the run beside {self.uri} records its student settings: give the run's config "
                                "(`load_config(path).students`)")
        try:
            return StudentConfig.model_validate(found["settings"]["students"])
        except (KeyError, ValidationError) as e:
            raise ArtifactError(f"{self.neighbour('report')}: its students settings cannot be read ({e}): re-run the report stage") from e

    def neighbour(self, name: str) -> str:
        """The URI of artifact `name` beside this one in its run root (the layout `infer-distill run` writes: INFER's
        set at <root>/distilled, a peer method's at <root>/methods/<method>)."""
        uri = self.uri.rstrip("/")
        method = self.manifest["settings"].get("method")
        where = Layout("").method_set(method) if self.manifest["stage"] == "distill-method" else Layout("").distilled
        head = uri.removesuffix(where) if uri.endswith(where) else uri.rpartition("/")[0]
        return f"{head}/{name}" if head else name


def _find_artifact(uris: list[str], stage: str, settings_match: Callable[[dict], bool],
                   misses: list[str] | None = None) -> tuple[Artifact, dict] | None:
    """The first of `uris` holding a readable `stage` artifact whose settings match, with its manifest; else None
    (and why each one did not do, appended to `misses`)."""
    misses = [] if misses is None else misses
    for uri in dict.fromkeys(uris):
        try:
            art = open_artifact(uri)
            manifest = art.read_manifest()
        except ArtifactError as e:
            misses.append(str(e))
            continue
        if manifest.get("stage") == stage and settings_match(manifest.get("settings", {})):
            return art, manifest
        misses.append(f"{uri} is a {manifest.get('stage')!r} artifact, not the {stage!r} one of these settings")
    return None


def _check_manifest(uri: str, manifest: dict[str, Any]) -> None:
    stage = manifest.get("stage")
    if stage not in ("soft-label", "distill-method"):
        raise ArtifactError(f"{uri} is a {stage!r} artifact, not a distilled set: give the soft-label stage's output, "
                            "the distilled/ folder of a run (e.g. runs/quickstart/distilled)")
    if fingerprint(manifest.get("settings", {})) != manifest.get("fingerprint"):
        raise ArtifactError(f"{uri}: the settings in manifest.json do not match its fingerprint (the manifest was altered): "
                            "re-run the soft-label stage")
    missing = [k for k in ("budget", *DISTILLED_DESCRIPTION) if k not in manifest.get("metrics", {})]
    if missing:
        raise ArtifactError(f"{uri} records no {', '.join(missing)} (made before soft-label recorded them): "
                            "delete it and re-run the soft-label stage (`infer-distill run` rebuilds only what is missing)")


def _check_shapes(uri: str, manifest: dict[str, Any], natural: torch.Tensor, ufc: torch.Tensor, soft_labels: torch.Tensor) -> None:
    """The tensors agree with each other and with what the manifest records (K, M, B, C, N)."""
    b = manifest["metrics"]["budget"]
    K, M, B, C = b["num_subsets"], b["num_teachers"], b["class_batches"], b["num_classes"]
    expected = {
        "natural": (natural.shape[:2], (K, C)),
        "ufc": (ufc.shape[:3] + ufc.shape[3:], (K, M, B) + natural.shape[2:]),
        "soft_labels": (soft_labels.shape, (K * (M + 1) * C, C)),
    }
    for name, (shape, want) in expected.items():
        if tuple(shape) != tuple(want):
            raise ArtifactError(f"{uri}: tensor {name!r} in distilled.safetensors has shape {tuple(shape)}, but the manifest "
                                f"records K={K}, M={M}, B={B}, C={C} ({want} expected): re-run the soft-label stage")
    # a peer method's set stores no UFCs (M = 0) but is labelled by the teachers all the same
    teachers = len(manifest["settings"]["teachers"]) if manifest["stage"] == "soft-label" else 0
    if len(manifest["metrics"]["classes"]) != C or teachers != M:
        raise ArtifactError(f"{uri}: manifest.json lists {len(manifest['metrics']['classes'])} classes and "
                            f"{len(manifest['settings']['teachers'])} teachers, its budget C={C} and M={M}: re-run the soft-label stage")


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


def _soft_labels_f32(ds: DistilledSet) -> np.ndarray:
    return ds.soft_labels.numpy().astype("<f4")


def _write_imagefolder(ds: DistilledSet, root: Path, test: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """PNGs, then the per-file tables, every one in the order ImageFolder reads the files (`imagefolder_order`)."""
    names, order = _file_names(ds), imagefolder_order(ds)
    folders = class_folders(ds.classes)
    _write_files(root, ((name, _png(image)) for name, image in zip(names, ds.images)))
    if test is not None:
        x, y = test
        width = max(5, len(str(len(y) - 1)))  # names sort in test-set order
        _write_files(root, ((f"test/{folders[int(y[i])]}/{i:0{width}d}.png", _png(x[i])) for i in range(len(y))))
    soft = _soft_labels_f32(ds)
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
        ("classes.json", (json.dumps(ds.classes, indent=1) + "\n").encode()),
        ("DATASHEET.md", datasheet(ds, "imagefolder", test is not None).encode()),
    ])


def _write_npz(ds: DistilledSet, root: Path, test: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    sheet = datasheet(ds, "npz", test is not None)
    arrays = {
        "images": ds.images.numpy(), "soft_labels": _soft_labels_f32(ds), "labels": ds.labels.numpy(),
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
    soft = _soft_labels_f32(ds)
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
            "task_categories:\n- image-classification\n"
            "tags:\n- dataset-distillation\n- soft-labels\n- infer-distill\n"
            f"size_categories:\n- {size}\n"
            "---\n\n")


# ----------------------------------------------------------------------------------------
# The datasheet
# ----------------------------------------------------------------------------------------


def content_sha256(ds: DistilledSet) -> dict[str, str]:
    """Checksums of what an export holds, independent of its format: the 8-bit images [N, ch, H, W]
    and the float32 soft labels [N, C], as C-order little-endian bytes in instance order."""
    pixels = ds.images if ds.images.dtype == torch.uint8 else to_uint8(ds.images)
    return {"images": hashlib.sha256(pixels.numpy().tobytes()).hexdigest(),
            "soft_labels": hashlib.sha256(_soft_labels_f32(ds).tobytes()).hexdigest()}


def _teacher_accuracies(ds: DistilledSet) -> list[float | None]:
    """Each teacher's test accuracy from its train-teacher artifact, where one made with these settings can be read."""
    recorded = ds.manifest["inputs"].get("teachers", [])
    accs: list[float | None] = []
    for m, settings in enumerate(ds.manifest["settings"]["teachers"]):
        candidates = recorded[m : m + 1] + [ds.neighbour(f"teachers/{settings['arch']}")]
        found = _find_artifact(candidates, "train-teacher", lambda s, t=settings: s.get("teacher") == t)
        accs.append(found[1]["metrics"]["test_acc"] if found else None)
    return accs


def _run_report(ds: DistilledSet) -> dict | None:
    """The manifest of the run's report beside this set, if there is one: its settings are INFER's set's plus the
    students' (and the methods'); a peer method's set shares them but for INFER's synthesis and its own."""
    mine = ds.manifest["settings"]

    def same_set(settings: dict) -> bool:
        if ds.manifest["stage"] == "soft-label":
            return {k: v for k, v in settings.items() if k not in ("students", "label_modes", "methods")} == mine
        method = mine["method"]
        return method in settings.get("methods", []) and all(
            settings.get(k) == v for k, v in mine.items() if k not in ("method", method))

    found = _find_artifact([ds.neighbour("report")], "report", same_set)
    return found[1] if found else None


def _recipe(ds: DistilledSet) -> tuple[StudentConfig, str]:
    """The student recipe the datasheet states, and where its numbers come from."""
    try:
        return ds.student_recipe(), "read from the run's report"
    except ArtifactError:
        return StudentConfig(), "infer-distill's defaults: no report of the run beside the set records its own settings"


def _pct(x: float | None) -> str:
    return "not recorded" if x is None else f"{100 * x:.2f} %"


@dataclass(frozen=True)
class _Provenance:
    """What the datasheet says of how the set was made: INFER's (soft-label) or a peer method's (distill-method)."""

    by: str               # "distilled with ..." (the method and where it is published)
    instances: str        # what every instance is
    hard_label: str       # what its hard label is the class of
    pixels: str           # what the export's 8-bit PNGs are of the set's images
    rows: list[str]       # the rows of the source and budget table on the method, its teachers and its structure
    stored: str           # what the stored bytes are made of
    slots: str            # the export's file names: what <slot> and <teacher> say
    teacher: str          # the export's teacher column


def _made_by(ds: DistilledSet) -> _Provenance:
    m, settings = ds.manifest, ds.manifest["settings"]
    b = m["metrics"]["budget"]
    teachers = ", ".join(f"{a} ({_pct(acc)} test accuracy)" for a, acc in zip(ds.teacher_archs, _teacher_accuracies(ds)))
    if m["stage"] == "soft-label":
        return _Provenance(
            by="distilled with INFER (\"Breaking Class Barriers: Efficient Dataset Distillation via Inter-Class Feature "
               "Compensator\", Zhang et al., ICLR 2025, arXiv 2408.06927)",
            instances="Every instance is a real training image (natural) or the same image plus a Universal Feature "
                      "Compensator (UFC) synthesised against one teacher, clipped to [0, 1].",
            hard_label="the class of the real image",
            pixels="**8-bit images.** The export quantises every composed image to 8 bits, round(255 x), as PNG does: pixels "
                   "are within half an 8-bit step of the set's float images (natural images are exact, they are 8-bit). "
                   "`infer_distill.DistilledSet` gives the unquantised float images.",
            rows=[f"| teachers (M = {len(ds.teacher_archs)}) | {teachers} |",
                  f"| images per class (ipc) | {b['ipc']} |",
                  f"| natural subsets (K) | {b['num_subsets']}, one real image per class each |",
                  f"| UFCs | {b['num_ufcs']} (K x M x {b['class_batches']} per subset and teacher), stored as {b['ufc_dtype']} |"],
            stored="natural images, UFCs and labels as the pipeline stores them",
            slots="`<slot>` 0 for the natural image and m + 1 for teacher m, `<teacher>` the architecture whose UFC it "
                  "carries, or `natural`",
            teacher="the architecture whose UFC it carries, or `natural`")
    method = settings["method"]
    name, published, instance = DESCRIPTIONS[method]
    own = settings.get(method) or {}  # the method's own settings (rded, sre2l)
    # what distill-method recorded of how the method chose (herding's features, the candidates RDED had; not SRe2L's per-row losses)
    recorded = {k: m["metrics"][k] for k in ("features", "rded_candidates") if k in m["metrics"]}
    method_settings = ", ".join([f"{k} {v}" for k, v in own.items()] + [f"{k.replace('_', ' ')}: {v}" for k, v in recorded.items()]
                                + [f"seed {settings['seed']}"])
    return _Provenance(
        by=f"made with {name} ({published}), a method infer-distill compares INFER with at equal stored bytes,",
        instances=f"Every instance is {instance}, stored as 8-bit pixels.",
        hard_label="the class it was made for",
        pixels="**8-bit images.** The set stores every image as 8 bits, so the export's PNGs are its images exactly.",
        rows=[f"| method | {name} ({method}): {method_settings} |",
              f"| labelling teachers | {teachers} |",
              f"| images per class (ipc) | {b['ipc']}: the budget whose INFER set's stored bytes this set may take, "
              f"{b['budget_bytes']:,} bytes |",
              f"| instances per class | {b['num_subsets']}, as many as fit in those bytes with their soft labels |"],
        stored="images and labels as the pipeline stores them, within the byte budget above",
        slots="`<slot>` 0 and `<teacher>` `natural` for every image (no teacher adds anything to this set's images)",
        teacher="`natural` for every image")


def datasheet(ds: DistilledSet, fmt: str, with_test: bool) -> str:
    """DATASHEET.md: what the set is, where it comes from, what it costs, how to check it and how to train on it."""
    m, settings = ds.manifest, ds.manifest["settings"]
    b = m["metrics"]["budget"]
    n, (ch, h, w), c = len(ds), ds.images.shape[1:], len(ds.classes)
    dataset = settings["dataset"]
    source = dataset["name"] + (f" (root {dataset['root']})" if dataset.get("root") else "")
    limits = ", ".join(f"{k} {dataset[k]}" for k in ("train_per_class", "test_per_class", "image_size") if dataset.get(k))
    made = _made_by(ds)
    found = _run_report(ds)
    report = found["metrics"]["report"] if found else None
    recipe, recipe_source = _recipe(ds)
    if m["stage"] == "soft-label":
        students = [f"{s['arch']}, {s['label_mode']} labels, {len(s['seeds'])} seed(s): {_pct(s['final_acc_mean'])} final epoch"
                    + (f" (± {100 * s['final_acc_std']:.2f} over seeds)" if len(s["seeds"]) > 1 else "")
                    + f", {_pct(s['best_acc_mean'])} best over epochs"
                    for s in (report or {}).get("student_summary", [])]
        students += [f"baseline {s['arch']}, {s['description']}: {_pct(s['final_acc_mean'])} final epoch"
                     for s in (report or {}).get("baseline_summary", [])]
    else:  # the report's method table: this method's scores
        students = [f"{r['arch']}, {score} labels, equal {r['protocol']}, {len(r[score]['seeds'])} seed(s): "
                    f"{_pct(r[score]['mean'])} final epoch"
                    for r in (report or {}).get("methods", []) if r["method"] == settings["method"]
                    for score in ("soft", "hard") if r.get(score)]
    sums = content_sha256(ds)
    source_files = "\n".join(f"| `{name}` | `{entry['sha256']}` | {entry['bytes']:,} |" for name, entry in sorted(m["files"].items()))
    layout = _LAYOUT[fmt].format(n=n, c=c, ch=ch, h=h, w=w, test=_TEST_LAYOUT[fmt] if with_test else "",
                                 slots=made.slots, teacher=made.teacher)
    loader = _LOADER[fmt].format(n=n, ch=ch, h=h, w=w)
    settings_code = ", ".join(f"{k}={v!r}" for k, v in recipe.model_dump(include=set(_RECIPE_KEYS)).items())
    lines = [
        f"# Distilled set: {dataset['name']}, {n // c} training instances per class (budget: {b['ipc']} images per class)",
        "",
        f"{n:,} training instances of {c} classes, {ch}x{h}x{w} pixels, {made.by} "
        f"by infer-distill {m.get('infer_distill_version', '?')}; exported by infer-distill {__version__}.",
        "",
        f"{made.instances} Its label is the teachers' mean logits on it "
        f"(soft label, use at temperature {ds.temperature:g}); {made.hard_label} is its hard label.",
        "",
        made.pixels,
        "",
        "## Contents",
        "",
        layout,
        "",
        f"Instance order: {m['metrics']['instance_order']}. Classes (index = label): "
        + ", ".join(f"{i} {name}" for i, name in enumerate(ds.classes[:20])) + (f", ... ({c} in all)" if c > 20 else "") + ".",
        "",
        "## Source and budget",
        "",
        "| | |",
        "|---|---|",
        f"| source dataset | {source}{', ' + limits if limits else ''} |",
        *made.rows,
        f"| soft labels | {b['num_instances']:,} x {c}, stored as {b['label_dtype']} |",
        f"| bytes stored | {b['stored_bytes']:,} ({made.stored}) |",
        f"| compression ratio | {b['compression_ratio']:.4f} of the {b['train_bytes']:,} bytes of training images |",
        f"| student accuracy (real test set) | {'; '.join(students) if students else 'not recorded (no report of this run beside the set)'} |",
        f"| normalisation | mean {_floats(ds.mean)}, std {_floats(ds.std)} (per channel, pixels in [0, 1]) |",
        f"| augmentation the students train with | random crop with padding {ds.crop_padding}, horizontal flip {'on' if ds.hflip else 'off'} |",
        f"| config fingerprint | `{m['fingerprint']}` (seed {m.get('seed')}, made {m.get('created_at', '?')}) |",
        "",
        "## Checksums",
        "",
        f"Source artifact `{ds.uri}` ({m['stage']} stage):",
        "",
        "| file | sha256 | bytes |",
        "|---|---|---|",
        source_files,
        "",
        "Content of this export, whatever its format (sha256 of C-order, little-endian bytes in instance order):",
        "",
        f"- images, uint8 [{n}, {ch}, {h}, {w}]: `{sums['images']}`",
        f"- soft labels, float32 [{n}, {c}]: `{sums['soft_labels']}`",
        "",
        "## Training on it with soft labels",
        "",
        f"The recipe of the run's students ({recipe_source}): {recipe.epochs} epochs in batches of {recipe.batch_size}, "
        f"AdamW (learning rate {recipe.lr:g}, weight decay {recipe.weight_decay:g}) with a cosine schedule to zero over all "
        f"steps, random crop (padding {ds.crop_padding}) and {'horizontal flip' if ds.hflip else 'no flip'}, MixUp "
        f"(alpha {recipe.mixup_alpha:g}) of images and logits alike, and the loss KL(softmax(z_teacher / T) || "
        f"softmax(z_student / T)) at T = {ds.temperature:g}, averaged over the batch, with no T^2 factor.",
        "",
        "With infer-distill installed, that is `train_student_model` with these settings "
        "(`examples/train_your_own.py` trains any timm model this way):",
        "",
        "```python",
        _LIBRARY.format(uri=ds.uri, settings=settings_code),
        "```",
        "",
        "Without it, the same recipe in plain PyTorch, from this folder:",
        "",
        "```python",
        loader,
        _TRAIN.format(mean=list(ds.mean), std=list(ds.std), temperature=ds.temperature, padding=ds.crop_padding, hflip=ds.hflip,
                      **recipe.model_dump(include=set(_RECIPE_KEYS))),
        "```",
        "",
        "To compare with ordinary training, train on the same images with their hard labels (cross-entropy on "
        + ("the class folders); in infer-distill, `dataset.name: imagefolder` with `dataset.root` at this folder reads "
           "train/ and test/ as they are." if fmt == "imagefolder" and with_test else
           "the class folders); in infer-distill, `dataset.name: imagefolder` reads train/<class>/ beside a test/<class>/ "
           "split of real images (`export --include-test` writes one)." if fmt == "imagefolder" else
           "the `label` column); in infer-distill, `dataset.name: hf` with `dataset.root` at this folder reads its train and "
           "test splits." if fmt == "hf" and with_test else "the `label` column)." if fmt == "hf" else "`labels`)."),
        "",
    ]
    return "\n".join(lines)


def _floats(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


_LAYOUT = {
    "imagefolder": (
        "- `train/<class>/<subset>_<slot>_<teacher>.png`: the {n:,} instances, lossless PNG ({ch} channel(s), {h}x{w}); "
        "`<subset>` is k (4 digits), {slots}. Class folders sort in label order (names that would not are prefixed with "
        "their label), so torchvision's `ImageFolder` target is the label\n"
        "- **Row order: the order `torchvision.datasets.ImageFolder(\"train\")` reads the files** (class folders sorted, "
        "then file names sorted), so its sample j pairs with row j of each of these three:\n"
        "- `instances.csv`: file, label, class, subset, teacher, instance (the index in `DistilledSet` and in the "
        "checksums below)\n"
        "- `soft_labels.npy`: float32 [{n}, {c}], row j the soft label of `instances.csv` row j\n"
        "- `train/metadata.jsonl`: file_name, label, soft_label, subset, teacher per image, the columns "
        "`datasets.load_dataset(\"imagefolder\", data_dir=...)` adds to the images\n"
        "- `classes.json`: class names, index = label{test}"
    ),
    "npz": (
        "`distilled.npz` (`numpy.load(path, allow_pickle=False)`): `images` uint8 [{n}, {ch}, {h}, {w}], "
        "`soft_labels` float32 [{n}, {c}], `labels`, `subsets`, `teachers` int64 [{n}] (teacher -1: natural), "
        "`teacher_archs`, `classes` (index = label), `mean`, `std`, `datasheet` (this text){test}."
    ),
}
_LAYOUT["hf"] = (
    "A `datasets.DatasetDict` written with `save_to_disk` (`datasets.load_from_disk(\"path/to/this/folder\")`): split "
    "`train` holds the {n:,} instances in instance order, with columns `image` (lossless PNG, {ch} channel(s), {h}x{w}), "
    "`label` (ClassLabel, the class names), `soft_label` (float32 [{c}], the logits), `subset` (k) and `teacher` ({teacher}){test}. This card is its README.md; to publish it, "
    "`datasets.load_from_disk(folder).push_to_hub(\"you/name\")` with a Hugging Face token, then upload README.md."
)
_TEST_LAYOUT = {
    "imagefolder": "\n- `test/<class>/<index>.png`: the real test split the set was made for, to measure accuracy on",
    "npz": "; `test_images` uint8, `test_labels` int64: the real test split the set was made for",
    "hf": "; split `test` (image, label): the real test split the set was made for",
}
_LOADER = {
    "imagefolder": (
        "import csv\n"
        "import numpy as np, torch, torch.nn.functional as F\n"
        "from PIL import Image\n"
        "\n"
        "def load():\n"
        "    rows = list(csv.DictReader(open(\"instances.csv\")))\n"
        "    pixels = np.stack([np.array(Image.open(r[\"file\"])) for r in rows]).reshape({n}, {h}, {w}, {ch})\n"
        "    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255    # [N, ch, H, W] in [0, 1]\n"
        "    return images, torch.from_numpy(np.load(\"soft_labels.npy\"))\n"
    ),
    "hf": (
        "import numpy as np, torch, torch.nn.functional as F\n"
        "from datasets import load_from_disk\n"
        "\n"
        "def load():\n"
        "    train = load_from_disk(\".\")[\"train\"]\n"
        "    pixels = np.stack([np.array(image) for image in train[\"image\"]]).reshape({n}, {h}, {w}, {ch})\n"
        "    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255    # [N, ch, H, W] in [0, 1]\n"
        "    return images, torch.tensor(np.array(train[\"soft_label\"], dtype=np.float32))\n"
    ),
    "npz": (
        "import numpy as np, torch, torch.nn.functional as F\n"
        "\n"
        "def load():\n"
        "    arrays = np.load(\"distilled.npz\", allow_pickle=False)\n"
        "    images = torch.from_numpy(arrays[\"images\"]).float() / 255              # [N, ch, H, W] in [0, 1]\n"
        "    return images, torch.from_numpy(arrays[\"soft_labels\"])\n"
    ),
}
# The student settings the datasheet states (StudentConfig's training keys; archs, seeds and baselines are the run's choices).
_RECIPE_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "mixup_alpha", "eval_every")
_LIBRARY = (
    "from infer_distill import DistilledSet\n"
    "from infer_distill.config import StudentConfig\n"
    "from infer_distill.training import train_student_model\n"
    "\n"
    "ds = DistilledSet.open({uri!r})      # or this export's source artifact, wherever it is now\n"
    "recipe = StudentConfig({settings})   # ds.student_recipe() reads them from the run's report\n"
    "images, soft_labels, _ = ds.tensors()\n"
    "test_x, test_y = ds.read_test_split()\n"
    "result = train_student_model(model, images, soft_labels, None, test_x, test_y, recipe, recipe.epochs, ds.temperature,\n"
    "                             (ds.crop_padding, ds.hflip), \"cpu\", seed=0)   # model: yours, normalising its input\n"
    "print(result.final_acc, result.best)"
)
_TRAIN = (
    "def crop_flip(x, padding={padding}, hflip={hflip}):\n"
    "    \"\"\"Each image: a random crop of it zero-padded by `padding`, then (if hflip) a horizontal flip with p = 0.5.\"\"\"\n"
    "    h, w = x.shape[-2:]\n"
    "    padded = F.pad(x, [padding] * 4)\n"
    "    out = torch.empty_like(x)\n"
    "    for i in range(len(x)):\n"
    "        top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()\n"
    "        out[i] = padded[i, :, top:top + h, left:left + w]\n"
    "        if hflip and torch.rand(()) < 0.5:\n"
    "            out[i] = out[i].flip(-1)\n"
    "    return out\n"
    "\n"
    "def train(model, epochs={epochs}, batch_size={batch_size}, lr={lr!r}, weight_decay={weight_decay!r}, mixup_alpha={mixup_alpha!r},\n"
    "          temperature={temperature!r}, seed=0):\n"
    "    \"\"\"`model` maps normalised images [B, ch, H, W] to logits [B, C]; the defaults are the run's student settings.\"\"\"\n"
    "    images, soft = load()\n"
    "    mean, std = torch.tensor({mean}).view(1, -1, 1, 1), torch.tensor({std}).view(1, -1, 1, 1)\n"
    "    torch.manual_seed(seed)\n"
    "    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)\n"
    "    steps = epochs * -(-len(images) // batch_size)\n"
    "    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)\n"
    "    model.train()\n"
    "    for _ in range(epochs):\n"
    "        for idx in torch.randperm(len(images)).split(batch_size):\n"
    "            x, z = crop_flip(images[idx]), soft[idx]\n"
    "            lam = float(torch.distributions.Beta(mixup_alpha, mixup_alpha).sample()) if mixup_alpha > 0 else 1.0\n"
    "            perm = torch.randperm(len(idx))\n"
    "            x, z = lam * x + (1 - lam) * x[perm], lam * z + (1 - lam) * z[perm]   # MixUp images and logits alike\n"
    "            log_p = F.log_softmax(model((x - mean) / std) / temperature, 1)\n"
    "            loss = F.kl_div(log_p, F.softmax(z / temperature, 1), reduction=\"batchmean\")\n"
    "            opt.zero_grad()\n"
    "            loss.backward()\n"
    "            opt.step()\n"
    "            sched.step()\n"
    "    return model"
)
