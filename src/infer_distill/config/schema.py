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

import math
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from infer_distill.config.budget import DTYPE_BYTES, num_subsets
from infer_distill.errors import ConfigError
from infer_distill.models import architectures


class _Strict(BaseModel):
    # allow_inf_nan=False: an infinite or NaN number (`teachers.lr=.inf`) is refused, never trained with
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 in a number field: `epochs: true` would train one epoch without a word
        given = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) for v in given) and bool not in _types(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"Input should be a number, not a boolean (given: {value!r})")
        return value


def _types(annotation: Any) -> set[Any]:
    """Every type an annotation names, through unions, containers and Annotated."""
    return {annotation}.union(*(_types(arg) for arg in typing.get_args(annotation)))


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

DatasetName = Literal["digits", "cifar10", "cifar100", "imagefolder", "hf", "tiny-imagenet", "imagenet", "webdataset"]

# The fields of one source alone: left out of the other sources' settings, so their fingerprints stay what they were
# before the source existed.
_SOURCE_FIELDS = {"hf": ("image_column", "label_column"), "webdataset": ("train_shards", "test_shards", "num_classes")}

# The sources whose images are image files (JPEG, PNG, ...): in folders or tar shards, which dataset.root may also
# hold under an S3 prefix (s3://bucket/prefix), and which a data artifact can store as they are (dataset.storage). The
# others (digits, cifar, hf) read tensors from local files.
FILE_SOURCES = ("imagefolder", "tiny-imagenet", "imagenet", "webdataset")


class DatasetConfig(_Strict):
    name: DatasetName = "digits"
    root: str | None = Field(None, description="data directory or .zip (not used by digits); imagefolder, tiny-imagenet, "
                                               "imagenet: also s3://bucket/prefix holding the same layout, unzipped; "
                                               "webdataset: the folder or s3://bucket/prefix holding the shards (and "
                                               "classes.txt). S3 is read with the environment's credentials")
    download: bool = Field(False, description="cifar10/cifar100: let torchvision download")
    train_split: SplitName = "train"
    test_split: SplitName = "test"
    image_size: int | None = Field(None, ge=8, le=1024, description="resize to this square size; None keeps the source size")
    train_per_class: int | None = Field(None, ge=1, description="keep only the first N training images per class")
    test_per_class: int | None = Field(None, ge=1, description="keep only the first N test images per class")
    hflip: bool | None = Field(None, description="horizontal flips in augmentation; None: the dataset's default")
    crop_padding: int | None = Field(None, ge=0, le=128, description="random-crop padding; None: the dataset's default")
    image_column: str = Field("image", min_length=1, description="dataset.name=hf: the column of images")
    label_column: str = Field("label", min_length=1, description="dataset.name=hf: the column of class labels")
    train_shards: str | None = Field(
        None, min_length=1,
        description="dataset.name=webdataset: the training tar shards under dataset.root, a brace pattern such as "
                    "'train-{000000..000146}.tar' ({a,b} lists, {0..9} ranges zero-padded as written; several groups "
                    "multiply); read in the expanded order, members in tar order. Each sample is the members sharing a "
                    "key (the name up to the first dot of its file name): one image (.jpg .jpeg .png .webp .bmp) and "
                    "its label (.cls: the class index as text); other members are skipped")
    test_shards: str | None = Field(None, min_length=1,
                                    description="dataset.name=webdataset: the test shards under dataset.root, as train_shards")
    num_classes: int | None = Field(
        None, ge=1, le=1_000_000,
        description="dataset.name=webdataset: the number of classes where dataset.root holds no classes.txt (one class "
                    "name per line, line i naming label i); the classes are then named '0', '1', ...")
    storage: Literal["auto", "decoded", "encoded"] = Field(
        "auto",
        description="how the data artifact stores the images: 'decoded' as uint8 rows (C x H x W bytes each, read as "
                    "they are), 'encoded' as the source's image files verbatim (JPEG, PNG, ...: a fraction of the bytes, "
                    "decoded, resized and cropped where a stage reads them, to the same rows); 'auto': encoded for "
                    f"image-file sources ({', '.join(FILE_SOURCES)}) with images of at least 96 px a side, "
                    "decoded otherwise (small images, and digits, cifar and hf, which give no image files)")

    @model_serializer(mode="wrap")
    def _source_fields_only_for_their_source(self, handler: Any) -> dict:
        data = handler(self)
        foreign = {f for name, fields in _SOURCE_FIELDS.items() if name != self.name for f in fields}
        return {k: v for k, v in data.items() if k not in foreign}

    @model_validator(mode="after")
    def _s3_root_for_its_sources(self) -> "DatasetConfig":
        if self.root is not None and self.root.startswith("s3://") and self.name not in FILE_SOURCES:
            raise ValueError(f"dataset.root={self.root!r}: dataset.name={self.name} reads local files, not an S3 prefix; "
                             f"copy the data to a local folder, or use a source that reads S3 ({', '.join(FILE_SOURCES)})")
        return self

    @model_validator(mode="after")
    def _two_splits(self) -> "DatasetConfig":
        if self.storage == "encoded" and self.name not in FILE_SOURCES:
            raise ValueError(f"dataset.storage='encoded' but dataset.name={self.name} gives no image files to store: set "
                             f"dataset.storage to 'decoded' or 'auto' (encoded storage needs one of {', '.join(FILE_SOURCES)})")
        if self.name == "webdataset":
            for field in ("train_shards", "test_shards"):
                if getattr(self, field) is None:
                    raise ValueError(f"dataset.{field} must be set for dataset.name=webdataset: the tar shards under "
                                     "dataset.root, e.g. 'train-{000000..000146}.tar'")
            if self.train_shards == self.test_shards:
                raise ValueError("train_shards and test_shards name the same shards: students would be tested on their "
                                 "training images; give the test shards' own pattern")
            return self
        train, test = self.split_folders()
        if train == test:
            raise ValueError(f"train_split and test_split both read the folder {train!r}: students would be tested on "
                             "their training images; give the test images' own folder")
        return self

    def split_folders(self) -> tuple[str, str]:
        """(train, test) folders under dataset.root as the loaders read them: ImageNet-style datasets call their test
        split "val" (a test_split changed from the default wins)."""
        val = self.name in ("imagenet", "tiny-imagenet") and self.test_split == "test"
        return self.train_split, "val" if val else self.test_split


class BudgetConfig(_Strict):
    # at most 1000: ImageNet-1k at ipc 50 is the largest published budget; 1e9 would run until killed
    ipc: int = Field(10, ge=1, le=1000, description="stored images per class (natural images plus a share of the UFCs)")


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
    epochs: int = Field(15, ge=0, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD (Nesterov) momentum, constant through training")
    weight_decay: float = Field(5e-4, ge=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    pretrained: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict,
        description="arch -> weights to import instead of training: 'torchvision' or 'torchvision:<Weights member>' "
                    "(torchvision's published weights), 'timm' or 'timm:<pretrained tag>', or a .safetensors, .pth "
                    "or .pt state dict: a local path or s3://bucket/key (read with the environment's S3 credentials)",
    )
    normalization: dict[str, Normalization] = Field(
        default_factory=dict,
        description="arch -> {mean, std} an imported teacher's weights expect; default: the published weights' own, "
                    "and the dataset's for a local file",
    )
    pretrained_stem: dict[str, Literal["stock", "small_image"]] = Field(
        default_factory=dict,
        description="arch -> the network imported weights load into at 64 px and below: 'stock' (the default: the "
                    "library's own network, as a user trains it) or 'small_image' (the stride-1 stem without max-pool "
                    "that teachers trained here get); other sizes, and networks without a stem adaptation, build alike",
    )
    min_accuracy_over_chance: Annotated[float, Field(ge=0, le=1)] | None = Field(
        0.05,
        description="a teacher scoring below chance (1 / classes) plus this on the test images fails its step; "
                    "null: accept any teacher. A check of the result: in no artifact's settings",
    )

    @field_validator("archs")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"teacher architectures must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _stem_of_imported_weights(self) -> "TeacherConfig":
        for arch in self.pretrained_stem:
            if arch not in self.pretrained:
                raise ValueError(f"pretrained_stem names {arch!r}, which imports no weights (pretrained): a teacher "
                                 "trained here always gets the small-image stem")
        return self

    def small_image_stem(self, arch: str) -> bool:
        """Whether teacher `arch` is built with the small-image stem (at 64 px and below): a teacher trained here is,
        imported weights only where pretrained_stem says small_image."""
        return arch not in self.pretrained or self.pretrained_stem.get(arch) == "small_image"


class SynthesisConfig(_Strict):
    iterations: int = Field(1000, ge=1, le=100_000, description="official: 1000 (CIFAR), 2000 (ImageNet)")
    lr: float = Field(0.25, gt=0, le=100)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.5, 0.9)
    r_bn: float = Field(1.0, ge=0, le=1e6)
    first_bn_multiplier: float = Field(10.0, ge=0, le=1e6)
    jitter: int = Field(1, ge=0, le=1024, description="random roll of up to this many pixels (official CIFAR: 4)")
    random_resized_crop: bool = Field(False, description="ImageNet-style RandomResizedCrop + flip during synthesis")
    classes_per_ufc: int | None = Field(None, ge=1, description="classes one UFC covers; None: all classes")
    subsets_per_shard: int = Field(0, ge=0, description="subsets synthesised together (one pod in the DAG); 0: all")
    max_images_per_forward: int = Field(
        1024, ge=1,
        description="most composed images one forward pass of a teacher takes during synthesis: a shard's UFC groups go "
                    "through each teacher in chunks of whole groups up to this many images (activation memory grows with "
                    "it: about 56 MB per image for ResNet-18 at 224 px); the same UFCs up to floating point for any value "
                    "of at least one group (classes_per_ufc images)")
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

    @field_validator("modes")
    @classmethod
    def _distinct_modes(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"label modes must be distinct, got {v}")
        return v


class StudentConfig(_Strict):
    archs: list[str] = Field(default_factory=lambda: ["convnet_d3_w32"], min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=100)
    epochs: int = Field(100, ge=1, le=10_000, description="epochs with static labels")
    epochs_dynamic: int | None = Field(None, ge=1, le=10_000, description="epochs with dynamic labels; None: same as epochs")
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.01, ge=0, le=1)
    mixup_alpha: float = Field(0.8, ge=0, le=100)
    eval_every: int = Field(1, ge=1, le=10_000, description="evaluate on the test set every N epochs (and always after the last)")
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
        None, ge=1, le=10_000, description="epochs of the full-data reference; None: students.epochs (a full training set "
                                           "needs far fewer epochs than a distilled one to converge)")

    @field_validator("scores", "protocols", "archs", "seeds")
    @classmethod
    def _no_repeats(cls, v: list) -> list:
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

    factor: int = Field(1, ge=1, le=16, description="crops stitched per side of one image (RDED: 1 on CIFAR-10, 2 on ImageNet)")
    crops: int = Field(5, ge=1, le=1000, description="random resized crops scored per candidate image (RDED's num_crop)")
    candidates: int = Field(300, ge=1, le=100_000, description="candidate real images drawn per class (RDED's mipc)")


class Sre2lConfig(_Strict):
    """SRe2L's recover; defaults from its CIFAR code (VILA-Lab/SRe2L, small_dataset/recover_cifar.sh and .py)."""

    iterations: int = Field(1000, ge=1, le=100_000)
    lr: float = Field(0.25, gt=0, le=100)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.5, 0.9)
    r_bn: float = Field(0.01, ge=0, le=1e6)
    first_bn_multiplier: float = Field(10.0, ge=0, le=1e6)
    jitter: int = Field(4, ge=0, le=1024, description="random roll of up to this many pixels")
    flip: bool = Field(False, description="random horizontal flip each step (SRe2L's ImageNet recover; its CIFAR one has none)")


class Config(_Strict):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    teachers: TeacherConfig = Field(default_factory=TeacherConfig)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    labels: LabelConfig = Field(default_factory=LabelConfig)
    students: StudentConfig = Field(default_factory=StudentConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The fast path (runtime/fast_path.py): how the work is computed on its device, never what is computed.
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

    def smallest_feasible_ipc(self, num_classes: int) -> int:
        """The smallest budget.ipc at which INFER has a subset (K >= 1) with these teachers and classes."""
        return -(-(num_classes + len(self.teachers.archs) * self.class_batches(num_classes)) // num_classes)

    def check_budget(self, num_classes: int) -> int:
        """K, INFER's number of subsets; refused when it is 0 (a config without infer needs none: 0)."""
        if not self.runs_infer():
            return 0
        k = self.num_subsets(num_classes)
        if k < 1:
            m = len(self.teachers.archs)
            raise ConfigError(
                f"budget.ipc={self.budget.ipc} is too small for INFER with {m} teachers and {num_classes} classes: "
                f"K = floor(ipc / (1 + M*B/C)) = 0 natural subsets. Raise budget.ipc to at least "
                f"{self.smallest_feasible_ipc(num_classes)}, use fewer teachers, or leave infer out of methods to distil "
                "the others alone at this budget."
            )
        return k

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

    def infer_static_steps(self, num_classes: int) -> int:
        """Optimiser steps of INFER's static student: its epochs over K*(M+1)*C instances in batches."""
        instances = self.num_subsets(num_classes) * (len(self.teachers.archs) + 1) * num_classes
        return self.students.epochs * math.ceil(instances / self.students.batch_size)

    def baseline_epochs(self, baseline: str, num_examples: int, num_classes: int) -> int:
        """Epochs a baseline trains over its `num_examples` real images: INFER's (random_soft), or as many as give
        INFER's static student's optimiser steps (random_soft_steps: INFER has more instances)."""
        if baseline == "random_soft":
            return self.students.epochs
        return max(1, round(self.infer_static_steps(num_classes) / math.ceil(num_examples / self.students.batch_size)))

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

        from infer_distill.runtime.accelerator import check_cuda

        check_cuda(self.device)  # device: cuda, or a pod that requested a GPU, with no usable CUDA: refused
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device
