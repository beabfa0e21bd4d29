"""One validated config for the whole pipeline.

Every setting of every stage lives here, loaded from YAML with `--set a.b=value` overrides.
Unknown keys are rejected (a typo must not silently fall back to a default). The embedded
defaults are the quickstart (configs/quickstart.yaml: digits, small nets, 2 CPU cores); the
full-scale configs in configs/ set the official values explicitly.

Each stage's artifact records the slice of this config it depends on (its `*_settings` function, named by its plan step), so
that a later stage, or a resumed run, can tell an artifact made with other settings from a
valid one and say which setting differs.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from . import architectures


class ConfigError(ValueError):
    """A config that cannot be run; the message names the field and how to fix it."""


class _Strict(BaseModel):
    # allow_inf_nan=False: an infinite or NaN number (`teachers.lr=.inf`) is refused, never trained with
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Seeds feed torch.manual_seed and numpy, which take at most 64 bits; the JSON of every manifest keeps them exact below 2^63.
Seed = Annotated[int, Field(ge=0, lt=2**63, description="a seed: 0 <= seed < 2^63")]


def _folder_name(name: str) -> str:
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"{name!r} is not a folder name: give the name of one folder directly under dataset.root, e.g. 'train'")
    return name


# A split is one folder under dataset.root (or at a zip's top level), never a path that leaves it.
SplitName = Annotated[str, AfterValidator(_folder_name)]


# ----------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------

DatasetName = Literal["digits", "cifar10", "cifar100", "imagefolder", "hf", "tiny-imagenet", "imagenet"]


class DatasetConfig(_Strict):
    name: DatasetName = "digits"
    root: str | None = Field(None, description="data directory or .zip (not used by digits)")
    download: bool = Field(False, description="cifar10/cifar100: let torchvision download")
    train_split: SplitName = "train"
    test_split: SplitName = "test"
    image_size: int | None = Field(None, ge=8, description="resize to this square size; None keeps the source size")
    train_per_class: int | None = Field(None, ge=1, description="keep only the first N training images per class")
    test_per_class: int | None = Field(None, ge=1, description="keep only the first N test images per class")
    hflip: bool | None = Field(None, description="horizontal flips in augmentation; None: the dataset's default")
    crop_padding: int | None = Field(None, ge=0, description="random-crop padding; None: the dataset's default")
    image_column: str = Field("image", min_length=1, description="dataset.name=hf: the column of images")
    label_column: str = Field("label", min_length=1, description="dataset.name=hf: the column of class labels")

    @model_serializer(mode="wrap")
    def _hf_columns_only_for_hf(self, handler: Any) -> dict:
        # The column names mean something for dataset.name=hf alone; leaving them out elsewhere keeps the
        # settings (and fingerprints) of every other dataset what they were before the hf reader existed.
        data = handler(self)
        if self.name != "hf":
            data = {k: v for k, v in data.items() if k not in ("image_column", "label_column")}
        return data


class BudgetConfig(_Strict):
    ipc: int = Field(10, ge=1, description="stored images per class (natural images plus a share of the UFCs)")


class Normalization(_Strict):
    mean: list[float] = Field(min_length=1, description="per channel, of pixels in [0, 1]")
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> "Normalization":
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        return self


class TeacherConfig(_Strict):
    archs: list[str] = Field(default_factory=lambda: ["convnet_d3_w32", "convnet_d2_w64", "resnet_tiny"], min_length=1)
    epochs: int = Field(15, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD (Nesterov) momentum, constant through training")
    weight_decay: float = Field(5e-4, ge=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    pretrained: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict,
        description="arch -> weights to import instead of training: 'torchvision' or 'torchvision:<Weights member>' "
                    "(torchvision's published weights), 'timm' or 'timm:<pretrained tag>', or a local .safetensors, .pth "
                    "or .pt state dict",
    )
    normalization: dict[str, Normalization] = Field(
        default_factory=dict,
        description="arch -> {mean, std} an imported teacher's weights expect; default: the published weights' own, "
                    "and the dataset's for a local file",
    )

    @field_validator("archs")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"teacher architectures must be distinct, got {v}")
        return v


class SynthesisConfig(_Strict):
    iterations: int = Field(1000, ge=1, description="official: 1000 (CIFAR), 2000 (ImageNet)")
    lr: float = Field(0.25, gt=0, le=100)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.5, 0.9)
    r_bn: float = Field(1.0, ge=0, le=1e6)
    first_bn_multiplier: float = Field(10.0, ge=0, le=1e6)
    jitter: int = Field(1, ge=0, description="random roll of up to this many pixels (official CIFAR: 4)")
    random_resized_crop: bool = Field(False, description="ImageNet-style RandomResizedCrop + flip during synthesis")
    classes_per_ufc: int | None = Field(None, ge=1, description="classes one UFC covers; None: all classes")
    subsets_per_shard: int = Field(0, ge=0, description="subsets synthesised together (one pod in the DAG); 0: all")
    clip_during_optimisation: bool = Field(
        True, description="teachers see clip(P + U) while the UFC is optimised (false: the unclipped sum, as the official code)")
    ufc_dtype: Literal["uint8", "float16", "float32"] = Field(
        "uint8", description="how the distilled set stores each UFC: uint8 (one image's bytes + 8: an affine scale and offset), float16 or float32")


class LabelConfig(_Strict):
    modes: list[Literal["static", "dynamic"]] = Field(
        default_factory=lambda: ["static"], min_length=1,
        description="static: the teachers' mean logits on the un-augmented instances, computed once and reused under "
                    "crop/flip/MixUp (as in the paper); dynamic: the teachers label every augmented, mixed batch",
    )
    temperature: float = Field(30.0, gt=0, le=1e4)
    dtype: Literal["float16", "float32"] = Field(
        "float16", description="how static soft labels are stored (the random-real baselines' labels are rounded the same way)"
    )


class StudentConfig(_Strict):
    archs: list[str] = Field(default_factory=lambda: ["convnet_d3_w32"], min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    epochs: int = Field(100, ge=1, description="epochs with static labels")
    epochs_dynamic: int | None = Field(None, ge=1, description="epochs with dynamic labels; None: same as epochs")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.01, ge=0, le=1)
    mixup_alpha: float = Field(0.8, ge=0, le=100)
    eval_every: int = Field(1, ge=1, description="evaluate on the test set every N epochs (and always after the last)")
    baselines: list[Literal["random_soft", "random_soft_steps"]] = Field(
        default_factory=lambda: ["random_soft"],
        description="students trained beside INFER's on ipc random real images per class with the same ensemble labels and "
                    "training: random_soft for the same epochs, random_soft_steps for the same optimiser steps; [] skips them")

    @field_validator("baselines")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"baselines must be distinct, got {v}")
        return v

    scores: list[Literal["soft", "hard"]] = Field(
        default_factory=lambda: ["soft"], min_length=1,
        description="how the methods' sets are scored: soft (the student above: MixUp + KL on the set's static labels), "
                    "hard (the same student with cross-entropy on the instances' class labels, no soft label)")
    protocols: list[Literal["epochs", "steps"]] = Field(
        default_factory=lambda: ["epochs"], min_length=1,
        description="the peers' training length: epochs (students.epochs, as INFER's) and/or steps (INFER's static "
                    "student's optimiser steps; instance counts differ)")
    full_data_reference: bool = Field(
        False, description="train each student architecture once with hard labels on the whole real training set "
                           "(the reference of the hard-label recovery, HLR; expensive: full_data_epochs over all the data)")
    full_data_epochs: int | None = Field(
        None, ge=1, description="epochs of the full-data reference; None: students.epochs (a full training set needs far "
                                "fewer epochs than a distilled one to converge)")

    @field_validator("scores", "protocols")
    @classmethod
    def _no_repeats(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"entries must be distinct, got {v}")
        return v

    def epochs_for(self, label_mode: str) -> int:
        return self.epochs_dynamic if label_mode == "dynamic" and self.epochs_dynamic else self.epochs


class TrackingConfig(_Strict):
    backend: Literal["none", "mlflow", "tensorboard"] = Field(
        "none", description="log the config, losses, accuracies and report of a run to MLflow (its local store under the run "
                            "root, or MLFLOW_TRACKING_URI) or TensorBoard (<out>/tensorboard); needs the extra of that name")
# The distillation methods a run compares at equal stored bytes (docs/method.md, section 9)
METHODS = ("infer", "random", "herding", "rded", "sre2l")
MethodName = Literal["infer", "random", "herding", "rded", "sre2l"]


class RdedConfig(_Strict):
    """RDED's selection; defaults from its CIFAR-10 scripts (LINs-lab/RDED): whole crops, no stitching."""

    factor: int = Field(1, ge=1, description="crops stitched per side of one image (RDED: 1 on CIFAR-10, 2 on ImageNet)")
    crops: int = Field(5, ge=1, description="random resized crops scored per candidate image (RDED's num_crop)")
    candidates: int = Field(300, ge=1, description="candidate real images drawn per class (RDED's mipc)")


class Sre2lConfig(_Strict):
    """SRe2L's recover; defaults from its CIFAR code (VILA-Lab/SRe2L, small_dataset/recover_cifar.sh and .py)."""

    iterations: int = Field(1000, ge=1)
    lr: float = Field(0.25, gt=0, le=100)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.5, 0.9)
    r_bn: float = Field(0.01, ge=0, le=1e6)
    first_bn_multiplier: float = Field(10.0, ge=0, le=1e6)
    jitter: int = Field(4, ge=0, description="random roll of up to this many pixels")
    flip: bool = Field(False, description="random horizontal flip each step (SRe2L's ImageNet recover; its CIFAR one has none)")


class Config(_Strict):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    teachers: TeacherConfig = Field(default_factory=TeacherConfig)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    labels: LabelConfig = Field(default_factory=LabelConfig)
    students: StudentConfig = Field(default_factory=StudentConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The fast path (fast_path.py): how the work is computed on its device, never what is computed.
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast for teacher and student training on a CUDA GPU with native bf16, fp32 "
                            "elsewhere; fp32: no autocast; bf16: bf16 autocast for training on any device. All other work "
                            "(synthesis, labels, evaluation) is IEEE fp32")
    channels_last: Literal["auto"] | bool = Field("auto", description="channels_last models; auto: on CUDA only")
    cudnn_benchmark: bool = Field(True, description="CUDA: cuDNN times its convolution algorithms once per shape")
    compile: bool = Field(False, description="torch.compile the teacher and student in training (compile time in the manifests)")
    seed: Seed = 0
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    methods: list[MethodName] = Field(
        default_factory=lambda: ["infer"], min_length=1,
        description="the methods distilled and scored at INFER's stored bytes, with its teachers, labels and students: "
                    "infer (always), random, herding, rded, sre2l")
    rded: RdedConfig = Field(default_factory=RdedConfig)
    sre2l: Sre2lConfig = Field(default_factory=Sre2lConfig)

    @field_validator("methods")
    @classmethod
    def _distinct_methods(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"methods must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _without_infer(self) -> "Config":
        """Without infer the peers run alone, at ipc real images' bytes: nothing may need INFER's steps."""
        if self.runs_infer():
            return self
        if self.students.baselines:
            raise ValueError(f"students.baselines={self.students.baselines} train beside INFER's students, but methods="
                             f"{self.methods} has no infer: set students.baselines=[] (the random method is that baseline)")
        if "steps" in self.students.protocols:
            raise ValueError(f"students.protocols has steps (INFER's optimiser steps), but methods={self.methods} has no infer: "
                             "use students.protocols=[epochs]")
        return self

    @model_validator(mode="after")
    def _known_archs(self) -> "Config":
        for section, archs in (("teachers.archs", self.teachers.archs), ("students.archs", self.students.archs)):
            for arch in archs:
                problem = architectures.problem(arch, teacher=section == "teachers.archs")
                if problem:
                    raise ValueError(f"{section}: {problem}")
        for arch in self.teachers.pretrained:
            if arch not in self.teachers.archs:
                raise ValueError(f"teachers.pretrained names {arch!r}, which is not in teachers.archs {self.teachers.archs}")
        for arch in self.teachers.normalization:
            if arch not in self.teachers.pretrained:
                raise ValueError(f"teachers.normalization names {arch!r}, which imports no weights (teachers.pretrained): "
                                 "a teacher trained here uses the dataset's normalisation")
        return self

    # ---- derived quantities ---------------------------------------------------------------

    def runs_infer(self) -> bool:
        """INFER's own steps run: `methods` has infer (without it, the peers are distilled and scored alone)."""
        return "infer" in self.methods

    def class_batches(self, num_classes: int) -> int:
        """How many UFCs one (subset, teacher) pair needs: one per batch of classes."""
        per = self.synthesis.classes_per_ufc or num_classes
        return math.ceil(num_classes / per)

    def num_subsets(self, num_classes: int) -> int:
        return num_subsets(self.budget.ipc, len(self.teachers.archs), num_classes, self.class_batches(num_classes))

    def shard_plan(self, num_classes: int) -> list[list[int]]:
        """Subset ids grouped into synthesis shards (one DAG pod each); same plan for every engine."""
        k = self.num_subsets(num_classes)
        per = self.synthesis.subsets_per_shard or k
        return [list(range(i, min(i + per, k))) for i in range(0, k, per)]

    def infer_stored_bytes(self, num_classes: int, image_numel: int) -> int:
        """Bytes of the distilled set: K*C uint8 natural images, K*M*B UFCs at ufc_dtype, K*(M+1)*C static labels."""
        k, m, b, c = self.num_subsets(num_classes), len(self.teachers.archs), self.class_batches(num_classes), num_classes
        ufc = image_numel * DTYPE_BYTES[self.synthesis.ufc_dtype] + (8 if self.synthesis.ufc_dtype == "uint8" else 0)
        return k * c * image_numel + k * m * b * ufc + k * (m + 1) * c * c * DTYPE_BYTES[self.labels.dtype]

    def baseline_per_class(self, num_classes: int, image_numel: int) -> int:
        """Real images per class the baselines get: ipc, or more where the distilled set stores more bytes than
        ipc real images with their labels would (small images, many labels), so a baseline never has less room."""
        per_instance = image_numel + num_classes * DTYPE_BYTES[self.labels.dtype]
        return max(self.budget.ipc, math.ceil(self.infer_stored_bytes(num_classes, image_numel) / (num_classes * per_instance)))

    def student_runs(self) -> list[dict]:
        """The INFER students to train: one per label mode x architecture x seed (a DAG fan-out)."""
        return [{"arch": a, "seed": s, "label_mode": m} for m in self.labels.modes for a in self.students.archs for s in self.students.seeds]

    def baseline_runs(self) -> list[dict]:
        """The baseline students to train: one per baseline x architecture x seed (a DAG fan-out)."""
        return [{"arch": a, "seed": s, "baseline": b} for b in self.students.baselines for a in self.students.archs for s in self.students.seeds]

    def method_budget_bytes(self, num_classes: int, image_numel: int) -> int:
        """The bytes a peer method may store: INFER's, or ipc real images per class with their labels where that is
        more (or where INFER does not run)."""
        per_instance = image_numel + num_classes * DTYPE_BYTES[self.labels.dtype]
        infer = self.infer_stored_bytes(num_classes, image_numel) if self.runs_infer() else 0
        return max(infer, self.budget.ipc * num_classes * per_instance)

    def method_per_class(self, num_classes: int, image_numel: int) -> int:
        """Images per class a peer method stores: as many as fit in `method_budget_bytes` with their labels."""
        per_instance = image_numel + num_classes * DTYPE_BYTES[self.labels.dtype]
        return self.method_budget_bytes(num_classes, image_numel) // (num_classes * per_instance)

    def peer_methods(self) -> list[str]:
        """The methods other than INFER: one distill-method step each."""
        return [m for m in self.methods if m != "infer"]

    def method_runs(self) -> list[dict]:
        """The method students to train: method x score x protocol x architecture x seed, without INFER's soft-label
        students (evaluate-student trains them) and without an equal-steps run of INFER (its steps are its epochs)."""
        return [{"method": m, "score": sc, "protocol": p, "arch": a, "seed": s}
                for m in self.methods for sc in self.students.scores for p in self.students.protocols
                for a in self.students.archs for s in self.students.seeds
                if not (m == "infer" and (sc == "soft" or p == "steps"))]

    def full_data_runs(self) -> list[dict]:
        """The full-data hard-label references (HLR): one per student architecture, when asked for."""
        return [{"arch": a} for a in self.students.archs] if self.students.full_data_reference else []

    def resolve_device(self) -> str:
        import torch

        from .accelerator import check_cuda

        check_cuda(self.device)  # device: cuda, or a pod that requested a GPU, with no usable CUDA: refused
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


DTYPE_BYTES = {"uint8": 1, "float16": 2, "float32": 4}


def num_subsets(ipc: int, num_teachers: int, num_classes: int, class_batches: int = 1) -> int:
    """K = floor(ipc / (1 + M * B / C)): K natural images plus K*M*B UFCs shared by C classes fit in ipc.

    B (class batches per UFC) is 1 when one UFC covers all classes, as in the paper's formula.
    Integer arithmetic, so K*(C + M*B) <= ipc*C holds exactly.
    """
    return (ipc * num_classes) // (num_classes + num_teachers * class_batches)


# The datasets whose number of classes is known before the data is loaded (plan and preflight check the budget).
# (classes, channels, native side) of the datasets whose images are known before they are loaded
KNOWN_IMAGES = {"digits": (10, 1, 8), "cifar10": (10, 3, 32), "cifar100": (100, 3, 32)}
KNOWN_NUM_CLASSES = {name: classes for name, (classes, _, _) in KNOWN_IMAGES.items()}


def smallest_feasible_ipc(cfg: Config, num_classes: int) -> int:
    """The smallest budget.ipc at which INFER has a subset (K >= 1) with these teachers and classes."""
    return -(-(num_classes + len(cfg.teachers.archs) * cfg.class_batches(num_classes)) // num_classes)


def check_budget(cfg: Config, num_classes: int) -> int:
    """K, INFER's number of subsets; refused when it is 0 (a config without infer needs none: 0)."""
    if not cfg.runs_infer():
        return 0
    k = cfg.num_subsets(num_classes)
    if k < 1:
        m = len(cfg.teachers.archs)
        raise ConfigError(
            f"budget.ipc={cfg.budget.ipc} is too small for INFER with {m} teachers and {num_classes} classes: "
            f"K = floor(ipc / (1 + M*B/C)) = 0 natural subsets. Raise budget.ipc to at least "
            f"{smallest_feasible_ipc(cfg, num_classes)}, use fewer teachers, or leave infer out of methods to distil the "
            "others alone at this budget."
        )
    return k


# students.baselines: what each baseline trains on (its manifest's description)
BASELINES = {
    "random_soft": "random real ({per_class}/class) + soft labels, same epochs",
    "random_soft_steps": "random real ({per_class}/class) + soft labels, same optimiser steps",
}


# ----------------------------------------------------------------------------------------
# Which settings each stage depends on (cumulative over its inputs)
# ----------------------------------------------------------------------------------------

# Placement: where and how the work is spread, never what it computes. None of these is part of
# any artifact's settings, so changing one reuses finished work (`device` and the fast-path keys
# `precision`, `channels_last`, `cudnn_benchmark`, `compile` and `tracking`, which only reports
# what was computed, are not either: no settings function reads them; a subset's UFCs do not depend on which subsets share its shard, docs/method.md
# section 4).
PLACEMENT = {"synthesis": {"subsets_per_shard"}}
# How the methods are scored: which runs exist, not how any one of them trains
METHOD_SCORING = {"scores", "protocols", "full_data_reference", "full_data_epochs"}


# One function per artifact kind: `plan.Step.settings` names it, so a step and its settings are
# declared together; `plan.settings(cfg, stage, **item)` is how every caller asks.


def data_settings(cfg: Config) -> dict:
    return {"dataset": cfg.dataset.model_dump(mode="json")}


def _teacher(cfg: Config, arch: str) -> dict:
    norm = cfg.teachers.normalization.get(arch)
    return {"arch": arch, **cfg.teachers.model_dump(mode="json", exclude={"archs", "pretrained", "normalization"}),
            "pretrained": cfg.teachers.pretrained.get(arch), **({"normalization": norm.model_dump(mode="json")} if norm else {})}


def teacher_settings(cfg: Config, arch: str) -> dict:
    return {**data_settings(cfg), "teacher": _teacher(cfg, arch), "seed": cfg.seed}


def subset_settings(cfg: Config) -> dict:
    return {**data_settings(cfg), "budget": cfg.budget.model_dump(mode="json"), "num_teachers": len(cfg.teachers.archs),
            "classes_per_ufc": cfg.synthesis.classes_per_ufc, "seed": cfg.seed}


def _teachers(cfg: Config) -> list[dict]:
    return [_teacher(cfg, a) for a in cfg.teachers.archs]


def _synthesis(cfg: Config) -> dict:
    # ufc_dtype is how soft-label stores the UFCs: it does not change the optimised UFCs
    return {**subset_settings(cfg), "teachers": _teachers(cfg),
            "synthesis": cfg.synthesis.model_dump(mode="json", exclude=PLACEMENT["synthesis"] | {"ufc_dtype"})}


def ufc_settings(cfg: Config, subset_ids: list[int]) -> dict:
    return {**_synthesis(cfg), "subset_ids": list(subset_ids)}


def _label_recipe(cfg: Config) -> dict:
    return {"temperature": cfg.labels.temperature, "dtype": cfg.labels.dtype}


def distilled_settings(cfg: Config) -> dict:
    return {**_synthesis(cfg), "ufc_dtype": cfg.synthesis.ufc_dtype, "labels": _label_recipe(cfg)}


def _student_recipe(cfg: Config) -> dict:
    return cfg.students.model_dump(mode="json", exclude={"archs", "seeds", "baselines", *METHOD_SCORING})


def student_settings(cfg: Config, arch: str, seed: int, label_mode: str) -> dict:
    return {**distilled_settings(cfg), "student": {"arch": arch, "seed": seed, "label_mode": label_mode, **_student_recipe(cfg)}}


def baseline_settings(cfg: Config, arch: str, seed: int, baseline: str) -> dict:
    # the budget (ipc, and INFER's instance count for equal steps) comes with subset_settings
    return {**subset_settings(cfg), "teachers": _teachers(cfg), "labels": _label_recipe(cfg),
            "student": {"arch": arch, "seed": seed, "baseline": baseline, **_student_recipe(cfg)}}


def method_set_settings(cfg: Config, method: str) -> dict:
    # a peer's set: INFER's budget (subset_settings), its teachers' labels, and the method's own settings
    own = {"rded": cfg.rded, "sre2l": cfg.sre2l}.get(method)
    return {**subset_settings(cfg), "teachers": _teachers(cfg), "labels": _label_recipe(cfg), "method": method,
            **({method: own.model_dump(mode="json")} if own else {})}


def method_score_settings(cfg: Config, method: str, score: str, protocol: str, arch: str, seed: int) -> dict:
    made = distilled_settings(cfg) if method == "infer" else method_set_settings(cfg, method)
    return {**made, "student": {"method": method, "score": score, "protocol": protocol, "arch": arch, "seed": seed,
                                **_student_recipe(cfg)}}


def full_data_settings(cfg: Config, arch: str) -> dict:
    return {**data_settings(cfg), "student": {"arch": arch, "seed": cfg.seed, "labels": "hard", **_student_recipe(cfg),
                                              "epochs": cfg.students.full_data_epochs or cfg.students.epochs}}


def report_settings(cfg: Config) -> dict:
    return {**distilled_settings(cfg), "students": cfg.students.model_dump(mode="json"), "label_modes": cfg.labels.modes,
            **({"methods": cfg.methods} if cfg.methods != ["infer"] else {})}


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def diff_settings(expected: dict, found: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two settings dicts (plan.settings) (first few)."""
    out: list[str] = []
    for key in sorted(set(expected) | set(found)):
        path = f"{prefix}{key}"
        a, b = expected.get(key, "<absent>"), found.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_settings(a, b, path + ".")
        elif a != b:
            out.append(f"{path}: artifact has {b!r}, config has {a!r}")
    return out


# ----------------------------------------------------------------------------------------
# Loading: YAML + --set overrides
# ----------------------------------------------------------------------------------------

def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars or flow lists: 5, 0.1, true, cpu, [a, b]."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set synthesis.iterations=100")
        path, value = item.split("=", 1)
        node = raw
        parts = path.strip().split(".")
        if not all(part.strip() for part in parts):
            raise ConfigError(f"--set {item!r}: the key {path.strip()!r} has an empty part; expected key.path=value, "
                              "e.g. --set synthesis.iterations=100")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


# ----------------------------------------------------------------------------------------
# The configs shipped with the package (infer_distill/configs; configs/ in a checkout links there)
# ----------------------------------------------------------------------------------------

PACKAGED_CONFIGS = Path(__file__).resolve().with_name("configs")  # absolute: a later chdir must not lose it


def packaged_configs() -> dict[str, Path]:
    """The shipped configs by name, e.g. {"quickstart": .../configs/quickstart.yaml}."""
    return {p.stem: p for p in sorted(PACKAGED_CONFIGS.glob("*.yaml"))}


def config_description(path: Path) -> str:
    """The first sentence of a config's leading comment."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    return text[: end + 1] if (end := text.find(". ")) >= 0 else text


def find_config(spec: str | Path) -> Path:
    """A config file by path, or a shipped config by name (`cifar10-ipc10`, with or without .yaml)."""
    path, shipped = Path(spec), packaged_configs()
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and name in shipped:
        return shipped[name]
    hint = f"--config {name} (shipped with the package)" if name in shipped else f"one of the shipped configs: {', '.join(shipped)}"
    raise ConfigError(f"config file {path} does not exist: give a path to a YAML file, or {hint} (`infer-distill configs` lists them)")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    raw: dict = {}
    if path is not None:
        path = find_config(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections (dataset:, budget:, ...)")
    raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, source=str(path) if path else "config")


def validate_config(raw: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see configs/quickstart.yaml for every key)"
            elif err["type"] != "value_error" and not isinstance(err.get("input"), dict):  # a section's own errors are listed by key
                msg += f" (given: {err['input']!r})"
            lines.append(f"  {loc}: {msg}")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
