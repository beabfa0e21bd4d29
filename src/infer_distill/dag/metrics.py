"""What each step records of its artifact (the manifest's `metrics`): one frozen dataclass per step of `dag.PLAN`.

A stage builds its step's class and `stages._write` stores `to_dict()` as `manifest["metrics"]`;
a reader builds the class back with `from_manifest` (or `read`, by the manifest's stage) and
reads attributes, so the keys a stage writes and the keys its readers pick are the same
definition. `to_dict()` gives the JSON the stages have always written, so artifacts made before
these classes existed read as they did. Torch-free: the plan and the CLI's `show` read metrics
without importing torch.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from pydantic import TypeAdapter, ValidationError

from infer_distill.errors import ArtifactError


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    """Checks a manifest's metrics against the field types of `cls` (ints taken where floats are declared)."""
    return TypeAdapter(cls)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Every plan step's metrics class, by step name: each class enters itself (tests/test_metrics.py checks it covers dag.PLAN).
METRICS: dict[str, type[StageMetrics]] = {}


def _recorded_when_set() -> Any:
    """A field some artifacts of the kind record and others do not (a peer method's own numbers): None, and then
    absent from `to_dict()`, as the stage has always left it out."""
    return field(default=None, metadata={"omitted_when_none": True})


@dataclass(frozen=True, kw_only=True)
class StageMetrics:
    """The metrics of one kind of artifact; `kind` is its plan step (its manifest's `stage`)."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A class that names its step (`kind`) is that step's metrics class (METRICS), wherever it is defined."""
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            METRICS[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        """What the manifest stores as `metrics`."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.metadata.get("omitted_when_none") and getattr(self, f.name) is None)}

    @classmethod
    def from_dict(cls, metrics: Any, uri: str = "") -> StageMetrics:
        """The metrics as the manifest of a `kind` artifact (at `uri`, for the message) records them; an
        ArtifactError names each key missing or unknown."""
        where = f"{cls.kind} artifact{' ' + uri if uri else ''}"
        if not isinstance(metrics, dict):
            raise ArtifactError(f"{where}: manifest.json records no metrics (a {type(metrics).__name__}): rerun stage {cls.kind}")
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if not f.metadata.get("omitted_when_none")}
        missing, unknown = sorted(required - set(metrics)), sorted(set(metrics) - known)
        if missing or unknown:
            problems = ([f"lack {', '.join(missing)}"] if missing else []) + ([f"have unknown {', '.join(unknown)}"] if unknown else [])
            raise ArtifactError(f"{where}: its metrics {' and '.join(problems)} (made by another version of infer-distill?): "
                                f"rerun stage {cls.kind} to remake it")
        try:
            return _adapter(cls).validate_python(metrics)
        except ValidationError as e:
            problem = e.errors()[0]
            key = ".".join(map(str, problem["loc"]))
            raise ArtifactError(f"{where}: metrics.{key}={_short(problem.get('input'))}: {problem['msg'].lower()} "
                                f"(altered by hand, or made by another version of infer-distill?): rerun stage {cls.kind} "
                                "to remake it") from None

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], uri: str = "") -> StageMetrics:
        """The metrics of a manifest that must be of a `kind` artifact."""
        stage = manifest.get("stage")
        if stage != cls.kind:
            raise ArtifactError(f"{uri or 'the artifact'} is a {stage!r} artifact, but a {cls.kind!r} artifact is needed here")
        return cls.from_dict(manifest.get("metrics"), uri)

    def accuracies(self) -> dict[str, float]:
        """Its test accuracies (fractions of 1), by name: what the Kubeflow UI and `show` list."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name.endswith("_acc") and isinstance(getattr(self, f.name), float)}

    def scalars(self, settings: dict[str, Any]) -> list[tuple[str, float, int]]:
        """What experiment tracking logs of it, as (key, value, step); `settings`: the manifest's."""
        return []


@dataclass(frozen=True, kw_only=True)
class ImageDescription:
    """What a model or a reader needs to know of the images beside the pixels: the data artifact records it, and each
    distilled set copies it, so a set can be used without its data artifact (infer_distill.DistilledSet)."""

    classes: list[str]
    mean: list[float]             # per channel: the normalisation the pipeline's models apply to [0, 1] pixels
    std: list[float]
    crop_padding: int             # the students' augmentation: random crop after padding by this many pixels ...
    hflip: bool                   # ... and random horizontal flips

    def description(self) -> dict[str, Any]:
        """These fields alone, as a distilled set's metrics take them."""
        return {f.name: getattr(self, f.name) for f in fields(ImageDescription)}


@dataclass(frozen=True, kw_only=True)
class DataMetrics(StageMetrics, ImageDescription):
    kind: ClassVar[str] = "prepare-data"
    num_classes: int
    in_chans: int
    image_size: int               # the side of the square images, in pixels
    num_train: int
    num_test: int
    min_train_per_class: int      # the smallest class's training images: K subsets need K of each class
    # How each split's images are stored, by split ("train", "test"): {"rows", "shape" [C, H, W], "dtype", "block_rows",
    # "encoding" ("raw" rows, or "source": the image files, with the "image_size" they decode to)} (data.splits, which
    # reads it). A data artifact without it stores a split in one safetensors file, as earlier versions did, and one
    # without "encoding" is of the version before: neither is current, and prepare-data remakes it.
    splits: dict[str, dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class TeacherMetrics(StageMetrics):
    kind: ClassVar[str] = "train-teacher"
    arch: str
    test_acc: float
    train_losses: list[float]     # mean loss of each epoch; [] for imported weights
    imported_from: str | None     # teachers.pretrained's source of the weights; None: trained here
    architecture: dict[str, str]  # models.describe_architecture: the name and the small-image stem adaptation
    num_params: int
    compute: dict[str, Any]       # fast_path.FastPath.describe: device, precision of each part, compile time

    def scalars(self, settings: dict[str, Any]) -> list[tuple[str, float, int]]:
        prefix = f"teacher/{self.arch}"
        return [(f"{prefix}/train_loss", loss, epoch) for epoch, loss in enumerate(self.train_losses, 1)] + \
               [(f"{prefix}/test_acc", self.test_acc, len(self.train_losses))]


@dataclass(frozen=True, kw_only=True)
class SubsetsMetrics(StageMetrics):
    kind: ClassVar[str] = "select-subsets"
    num_subsets: int              # K
    num_classes: int
    num_teachers: int             # M
    class_batches: int            # B: the UFCs each teacher has per subset (classes grouped by synthesis.classes_per_ufc)
    shards: list[list[int]]       # the subset ids of each synthesize-ufc item, as this config groups them


@dataclass(frozen=True, kw_only=True)
class UfcShardMetrics(StageMetrics):
    kind: ClassVar[str] = "synthesize-ufc"
    subset_ids: list[int]
    ufc_shape: list[int]          # [subsets, teachers, class batches, ch, H, W]
    synthesis_s: float
    ufc_iterations_per_s: float   # optimiser iterations of single UFCs per second
    images_per_s: float           # the same counted in the composed images those iterations optimise
    initial_loss: list            # [subset][teacher][class batch], before the first and after the last iteration
    final_loss: list
    final_ce: list                # the last iteration's cross-entropy and BatchNorm-matching parts of final_loss
    final_bn: list
    compute: dict[str, Any]

    def scalars(self, settings: dict[str, Any]) -> list[tuple[str, float, int]]:
        """The mean loss over the shard's UFCs at iteration 0 and at the last (the two points it records)."""
        key = f"synthesis/subsets {self.subset_ids[0]}..{self.subset_ids[-1]}/loss"
        return [(key, _mean(self.initial_loss), 0), (key, _mean(self.final_loss), settings["synthesis"]["iterations"])]


@dataclass(frozen=True, kw_only=True)
class SetMetrics(StageMetrics, ImageDescription):
    """What every distilled set records, INFER's or a peer method's: an artifact whose step's metrics class is one of
    these is a set `infer_distill.DistilledSet` opens and exports."""

    # K, M, B, C, instances, stored bytes (in all and per tensor), compression against the training images
    budget: dict[str, Any]
    instance_order: str           # how the instances are ordered, in words (outputs.instances.distilled_instances)
    compute: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class DistilledMetrics(SetMetrics):
    kind: ClassVar[str] = "soft-label"


@dataclass(frozen=True, kw_only=True)
class MethodSetMetrics(SetMetrics):
    kind: ClassVar[str] = "distill-method"
    # budget: as soft-label's, with the method, no UFCs and the peers' byte budget
    feature_similarity: dict[str, Any]  # method.peers.feature_similarity of the set on the first teacher's features
    features: str | None = _recorded_when_set()         # herding: which features it herds
    rded_candidates: int | None = _recorded_when_set()  # rded: the images per class it chose from
    initial_loss: list | None = _recorded_when_set()    # sre2l: its recovery loss per image, first and last iteration
    final_loss: list | None = _recorded_when_set()


@dataclass(frozen=True, kw_only=True)
class TrainedStudent(StageMetrics):
    """What every kind of student records: a fresh `arch` trained for `epochs` and tested on the real test set."""

    arch: str
    seed: int
    final_acc: float              # the headline: test accuracy after the last epoch
    best_acc: float               # the best over epochs (what the paper reports), at best_epoch
    best_epoch: int
    epochs: int
    curve: list                   # [epoch, test accuracy] after every epoch
    compute: dict[str, Any]

    def tracking_prefix(self) -> str:
        raise NotImplementedError

    def scalars(self, settings: dict[str, Any]) -> list[tuple[str, float, int]]:
        """Its loss and test accuracy per epoch, final and best accuracy, under `tracking_prefix()/seed<n>`."""
        prefix = f"{self.tracking_prefix()}/seed{self.seed}"
        return [(f"{prefix}/train_loss", loss, epoch) for epoch, loss in enumerate(getattr(self, "train_losses", []), 1)] + \
               [(f"{prefix}/test_acc", acc, epoch) for epoch, acc in self.curve] + \
               [(f"{prefix}/final_acc", self.final_acc, self.epochs), (f"{prefix}/best_acc", self.best_acc, self.best_epoch)]


@dataclass(frozen=True, kw_only=True)
class StudentMetrics(TrainedStudent):
    kind: ClassVar[str] = "evaluate-student"
    label_mode: str               # static (the set's stored labels) or dynamic (the teachers label every batch)
    architecture: dict[str, str]
    train_losses: list[float]

    def tracking_prefix(self) -> str:
        return f"student/{self.arch}/{self.label_mode}"


@dataclass(frozen=True, kw_only=True)
class BaselineMetrics(TrainedStudent):
    kind: ClassVar[str] = "evaluate-baseline"
    baseline: str
    description: str              # config.BASELINES' words for it, with its images per class
    per_class: int                # real images per class it trains on
    architecture: dict[str, str]
    steps: int                    # optimiser steps
    infer_static_steps: int       # those of INFER's static student, which random_soft_steps matches
    num_instances: int
    stored_bytes: int             # its images and labels, as INFER's set would store them
    train_losses: list[float]

    def tracking_prefix(self) -> str:
        return f"baseline/{self.baseline}/{self.arch}"


@dataclass(frozen=True, kw_only=True)
class MethodScoreMetrics(TrainedStudent):
    kind: ClassVar[str] = "evaluate-method"
    method: str
    score: str                    # soft (MixUp + KL on the set's labels) or hard (cross-entropy on its classes)
    protocol: str                 # epochs (students.epochs) or steps (INFER's static student's optimiser steps)
    steps: int
    num_instances: int
    stored_bytes: int             # of the method's set
    train_losses: list[float]

    def tracking_prefix(self) -> str:
        return f"method/{self.method}/{self.score}/{self.protocol}/{self.arch}"


@dataclass(frozen=True, kw_only=True)
class FullDataMetrics(TrainedStudent):
    kind: ClassVar[str] = "evaluate-full-data"
    num_instances: int            # the whole real training set

    def tracking_prefix(self) -> str:
        return f"full_data/{self.arch}"


@dataclass(frozen=True, kw_only=True)
class ReportMetrics(StageMetrics):
    kind: ClassVar[str] = "report"
    report: dict[str, Any]        # report.json: report.summarise's rows and aggregates, and the method table

    def accuracies(self) -> dict[str, float]:
        """Each student's mean final accuracy over seeds and each teacher's test accuracy."""
        return {**{f"{r['arch']}_{r['label_mode']}_final_acc_mean": r["final_acc_mean"] for r in self.report["student_summary"]},
                **{f"teacher_{r['arch']}_test_acc": r["test_acc"] for r in self.report["teachers"]}}


def _mean(values: Any) -> float:
    """The mean of a nested list of numbers (a shard's [subset, teacher, class batch] losses)."""
    flat = list(_leaves(values))
    return sum(flat) / len(flat)


def _leaves(values: Any):
    if isinstance(values, list):
        for v in values:
            yield from _leaves(v)
    else:
        yield float(values)


def is_distilled_set(stage: Any) -> bool:
    """Whether artifacts of step `stage` are distilled sets (their metrics are a SetMetrics)."""
    return isinstance(stage, str) and issubclass(METRICS.get(stage, StageMetrics), SetMetrics)


def read(manifest: dict[str, Any], uri: str = "") -> StageMetrics:
    """The metrics of any artifact, as the class of its manifest's stage."""
    stage = manifest.get("stage")
    if not isinstance(stage, str) or stage not in METRICS:  # a manifest altered by hand may hold anything there
        raise ArtifactError(f"{uri or 'the artifact'} is a {stage!r} artifact, which no step of the plan makes: "
                            f"give an artifact of one of {', '.join(METRICS)}")
    return METRICS[stage].from_manifest(manifest, uri)
