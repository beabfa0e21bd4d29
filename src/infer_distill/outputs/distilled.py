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

import os
import reprlib
import typing
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pydantic import ConfigDict, ValidationError, create_model
from torch.utils.data import Dataset

from infer_distill.config.schema import StudentConfig
from infer_distill.dag.artifact_settings import fingerprint
from infer_distill.dag.layout import Layout
from infer_distill.dag.metrics import ImageDescription, is_distilled_set
from infer_distill.dag.metrics import read as read_metrics
from infer_distill.data.splits import open_split
from infer_distill.errors import ArtifactError
from infer_distill.outputs.instances import DISTILLED_DESCRIPTION, distilled_instances, instance_origins, read_distilled
from infer_distill.storage import open_artifact
from infer_distill.storage.artifact import Artifact

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
        the shapes it records. The whole set is composed in memory (the values evaluate-student composes batch by
        batch): N x ch x H x W x 4 bytes as float32, a quarter of that with dtype=torch.uint8.
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
        art.check_files(manifest)
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
        test = open_split(found[0], "test")
        return test.read_all(), test.labels

    def student_recipe(self) -> StudentConfig:
        """The run's student settings (its config's `students`), as the report of the run beside the set records them.

        The soft-label artifact does not depend on them (students train after it), so its own
        manifest cannot hold them: the run's report, made from this very set, does.
        """
        found = run_report(self)
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
    if not is_distilled_set(stage):
        raise ArtifactError(f"{uri} is a {stage!r} artifact, not a distilled set: give the soft-label stage's output, "
                            "the distilled/ folder of a run (e.g. runs/quickstart/distilled)")
    if fingerprint(manifest.get("settings", {})) != manifest.get("fingerprint"):
        raise ArtifactError(f"{uri}: the settings in manifest.json do not match its fingerprint (the manifest was altered): "
                            "re-run the soft-label stage")
    metrics = manifest.get("metrics")
    missing = [k for k in ("budget", *DISTILLED_DESCRIPTION) if k not in (metrics if isinstance(metrics, dict) else {})]
    if missing:
        raise ArtifactError(f"{uri} records no {', '.join(missing)} (made before soft-label recorded them): "
                            "delete it and re-run the soft-label stage (`infer-distill run` rebuilds only what is missing)")
    problems = _description_problems(metrics, stage) + _recipe_problems(manifest)
    if problems:
        raise ArtifactError(f"{uri}: manifest.json records {'; '.join(problems[:3])} (altered, or not made by infer-distill): "
                            "re-run the soft-label stage")


# ImageDescription's fields, typed strictly: a string is no list of numbers, an object no class name
_DESCRIPTION = create_model("ImageDescription", __config__=ConfigDict(strict=True),
                            **{k: (t, ...) for k, t in typing.get_type_hints(ImageDescription).items()})


def _description_problems(metrics: dict[str, Any], stage: str) -> list[str]:
    """What is wrong with the types of the set's description and budget (its fingerprint covers its settings only)."""
    problems = []
    try:
        _DESCRIPTION.model_validate({k: metrics[k] for k in DISTILLED_DESCRIPTION})
    except ValidationError as e:
        problems += [f"metrics.{'.'.join(map(str, err['loc']))}={_short(err['input'])}, where {err['msg'].lower()}"
                     for err in e.errors()[:3]]
    budget = metrics["budget"] if isinstance(metrics["budget"], dict) else {}
    wanted = {**_BUDGET, **_BUDGET_OF[stage]}
    wrong = [k for k, kind in wanted.items() if not (type(budget.get(k)) is kind or kind is float and type(budget.get(k)) is int)
             or kind is int and budget[k] < 0]
    if wrong:
        problems.append(f"a metrics.budget without {', '.join(f'{k} ({wanted[k].__name__})' for k in wrong[:4])}")
    return problems


# What the readers of a set (its shapes, the datasheet) take from its metrics.budget, by type
_BUDGET = {"ipc": int, "num_subsets": int, "num_teachers": int, "num_classes": int, "class_batches": int, "num_ufcs": int,
           "num_instances": int, "stored_bytes": int, "train_bytes": int, "compression_ratio": float, "label_dtype": str}
_BUDGET_OF = {"soft-label": {"ufc_dtype": str}, "distill-method": {"budget_bytes": int, "method": str}}


def _short(value: Any) -> str:
    return reprlib.repr(value)


def _recipe_problems(manifest: dict[str, Any]) -> list[str]:
    """What is wrong with the settings and inputs the set and its datasheet are read by (the fingerprint only says
    that the settings are the ones recorded with it, not what they are)."""
    settings = manifest.get("settings") if isinstance(manifest.get("settings"), dict) else {}
    teachers, labels, dataset = settings.get("teachers"), settings.get("labels"), settings.get("dataset")
    synthesis = settings.get("synthesis", {})
    problems = []
    if not (isinstance(teachers, list) and all(isinstance(t, dict) and isinstance(t.get("arch"), str) for t in teachers)):
        problems.append("settings.teachers that is not a list of teachers, each with its arch")
    if not (isinstance(labels, dict) and type(labels.get("temperature")) in (int, float)):
        problems.append("settings.labels without a temperature")
    if not (isinstance(dataset, dict) and isinstance(dataset.get("name"), str)):
        problems.append("settings.dataset without a name")
    per_ufc = synthesis.get("classes_per_ufc") if isinstance(synthesis, dict) else "?"
    if not (per_ufc is None or type(per_ufc) is int and per_ufc >= 1):
        problems.append("settings.synthesis without a valid classes_per_ufc")
    if manifest.get("stage") == "distill-method" and not (isinstance(settings.get("method"), str) and type(settings.get("seed")) is int):
        problems.append("settings without the method and seed")
    inputs = manifest.get("inputs")
    if not (isinstance(inputs, dict) and isinstance(inputs.get("data"), str) and all(
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(u, str) for u in v)) for v in inputs.values())):
        problems.append("inputs that are not the locations it was made from (data first)")
    return problems


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


def run_report(ds: DistilledSet) -> dict | None:
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


def soft_labels_f32(ds: DistilledSet) -> np.ndarray:
    return ds.soft_labels.numpy().astype("<f4")
