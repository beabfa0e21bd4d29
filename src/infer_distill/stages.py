"""The pipeline's stages: each one plain function over a config, input artifact URIs and an output URI.

    prepare-data -> train-teacher (per architecture) -> select-subsets -> synthesize-ufc (per shard)
                 -> soft-label -> evaluate-student (per architecture x seed x label mode) -> report

The CLI, the KFP components, the compose services and the Helm templates all call these
functions (through `infer-distill stage NAME`); none re-implements a stage.

Every output is an artifact (store.py): safetensors + manifest.json recording the slice of the
config it depends on (plan.settings: each step's settings function), what it read from outside the pipeline by content
(`sources`: the dataset's file list, a pretrained teacher file's sha256) and the sha256 of each
input artifact's manifest. Reading an input checks that slice against the current config, so an
artifact made with other settings is refused with the differing keys; `is_current` also checks
the sources, the files and that the inputs are still the ones it was made from, which is all a
resumed run needs to redo a corrupt or stale stage and everything downstream of it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import time
import zipfile
from datetime import datetime, timezone
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from . import __version__, architectures, plan
from .config import (BASELINES, KNOWN_IMAGES, KNOWN_NUM_CLASSES, METHODS, Config, ConfigError, check_budget, diff_settings,
                     fingerprint, smallest_feasible_ipc)
from .data import augmentation, load_dataset, source_digest
from .errors import DataError, StageError
from .fast_path import PLAIN, CompileTime, FastPath, resolve_fast_path
from .metrics import (BaselineMetrics, DataMetrics, DistilledMetrics, FullDataMetrics, ImageDescription, MethodScoreMetrics,
                      MethodSetMetrics, ReportMetrics, StageMetrics, StudentMetrics, SubsetsMetrics, TeacherMetrics, UfcShardMetrics)
from .metrics import read as read_metrics
from .models import (MODEL_REGISTRY, Normalize, check_architecture, create_model, download_library_weights, library_weights,
                     describe_architecture, read_pth, require_batchnorm)
from .store import Artifact, ArtifactError, open_artifact
from .synthesis import BatchNormUseError, class_batch_index, compose, decode_ufc, encode_ufc, recorded_bn_inputs, synthesize_ufcs
from .training import Ensemble, StudentResult, evaluate, train_student_hard, train_student_model, train_teacher_model


# ----------------------------------------------------------------------------------------
# Artifact helpers
# ----------------------------------------------------------------------------------------


Inputs = Mapping[str, str | list[str]]  # input name -> artifact URI, or a list of them (teachers, UFC shards, ...)


def manifest_digest(uri: str) -> str:
    """sha256 of an artifact's manifest: it names the artifact's every file (by sha256) and when it was made."""
    manifest = open_artifact(uri).read_manifest()
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def input_digests(inputs: Inputs) -> dict[str, str | list[str]]:
    """The manifest digest of every input (a list of them for a list of inputs)."""
    return {name: [manifest_digest(u) for u in uri] if isinstance(uri, list) else manifest_digest(uri)
            for name, uri in inputs.items()}


@dataclass
class _Output:
    """An artifact being made: where, since when, and from which inputs (digested before any of them is read)."""

    uri: str
    inputs: dict
    input_digests: dict
    started: float


def _begin(out: str, inputs: Inputs) -> _Output:
    """What every stage does first: check that the output is writable and record its inputs as they are now."""
    started = time.perf_counter()
    open_artifact(out).check_writable()
    return _Output(out, dict(inputs), input_digests(inputs), started)


def _write(out: _Output, cfg: Config, files: dict, metrics: StageMetrics, read: dict | None = None, **keys) -> dict:
    """Write the artifact of the step `metrics` belong to; `read`: what the stage read from outside the pipeline,
    as `sources` gives it."""
    stage = metrics.kind
    settings = plan.settings(cfg, stage, **keys)
    manifest = {
        "stage": stage,
        "fingerprint": fingerprint({**settings, "sources": read} if read else settings),
        "settings": settings,
        **({"sources": read} if read else {}),
        "seed": cfg.seed,
        "inputs": out.inputs,
        "input_digests": out.input_digests,
        "metrics": metrics.to_dict(),
        "elapsed_s": round(time.perf_counter() - out.started, 3),
        # microseconds: a remade input gets a manifest (and digest) of its own even within one second
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "infer_distill_version": __version__,
    }
    return open_artifact(out.uri).write(files, manifest)


def load_input(uri: str, cfg: Config, stage: str, **keys) -> tuple[Artifact, dict]:
    """Open an input artifact and check it was made by `stage` with the settings `cfg` implies."""
    art = open_artifact(uri)
    manifest = art.read_manifest()
    if manifest.get("stage") != stage:
        raise ArtifactError(f"{uri} is a {manifest.get('stage')!r} artifact, but a {stage!r} artifact is needed here")
    expected = plan.settings(cfg, stage, **keys)
    if manifest.get("settings") != expected:
        diffs = diff_settings(expected, manifest.get("settings", {}))
        raise ArtifactError(
            f"{uri} was made with a different config:\n  " + "\n  ".join(diffs[:8])
            + f"\nRerun stage {stage!r} with this config, or point --out at a fresh location."
        )
    return art, manifest


def is_current(uri: str, cfg: Config, stage: str, inputs: Inputs | None = None, **keys) -> bool:
    """True if the artifact at `uri` can stand for running `stage` now, so a resumed run skips it.

    It must have these settings and the metrics its step's class (metrics.METRICS) reads, have read
    the sources there now (`sources`), every file must match its recorded size and sha256 (a
    safetensors file must also have a readable header), and
    the manifests of the inputs it was made from must be the ones now at `inputs`: the artifacts
    the stage would read (a walker may name more than the stage used); None: the locations the
    artifact records. So a corrupt or stale artifact is remade, and remaking a stage makes
    everything made from it stale, with no bookkeeping in the walker.
    """
    try:
        art, manifest = load_input(uri, cfg, stage, **keys)
        read_metrics(manifest, uri)  # its readers need its metrics whole: one another version wrote otherwise is remade
        if manifest.get("sources", {}) != sources(cfg, stage, **keys):
            return False
        for name in manifest["files"]:
            data = art.read_bytes(name)
            if name.endswith(".safetensors") and not safetensors_header_ok(data):
                return False
        recorded = manifest.get("input_digests")
        inputs = manifest.get("inputs", {}) if inputs is None else inputs
        if not isinstance(recorded, dict) or not set(recorded) <= set(inputs):
            return False
        return recorded == input_digests({name: inputs[name] for name in recorded})
    except ArtifactError:
        return False


def sources(cfg: Config, stage: str, **keys) -> dict:
    """What `stage` reads from outside the pipeline, by content: prepare-data the dataset source's file
    list (data.source_digest), train-teacher a pretrained weights file's sha256; {} where nothing is read
    (digits, torchvision's own weights, every later stage). Only the stage that reads a source computes
    this: a later stage learns of a change through its inputs' manifests, so its pod needs no dataset.
    """
    if stage == "prepare-data":
        digest = source_digest(cfg.dataset)
        return {"dataset": digest} if digest else {}
    if stage == "train-teacher":
        source = cfg.teachers.pretrained.get(keys["arch"])
        if source and not architectures.is_library_source(source):
            return {"pretrained_sha256": file_sha256(source)}
    return {}


def file_sha256(path: str) -> str | None:
    """sha256 of a local file, None if there is none; computed once per file version (path, size, times, inode)."""
    try:
        st = Path(path).expanduser().stat()
    except OSError:
        return None
    return _file_sha256(str(Path(path).expanduser().resolve()), (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev))


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, version: tuple) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


# Bytes per element of each safetensors dtype (the format's own names)
_SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                       "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def safetensors_header_ok(data: bytes) -> bool:
    """Whether `data` is a safetensors file a reader can load: its header (read alone, no tensor copied) is a
    JSON table whose tensors, by dtype and shape, tile the bytes after it exactly, as safetensors requires."""
    if len(data) < 8:
        return False
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        return False
    try:
        header = json.loads(data[8 : 8 + size])
        spans = []
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            shape = entry["shape"]
            if not all(isinstance(d, int) and d >= 0 for d in shape) or end - begin != math.prod(shape) * _SAFETENSORS_DTYPES[entry["dtype"]]:
                return False
            spans.append((begin, end))
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            return False
        position = end
    return position == len(data) - 8 - size


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _data(cfg: Config, uri: str, split: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    art, manifest = load_input(uri, cfg, "prepare-data")
    t = art.read_tensors(f"{split}.safetensors")
    return t["x"], t["y"], manifest


def build_model(arch: str, data_manifest: dict) -> nn.Module:
    """A fresh `arch` sized and normalised for the data artifact's images."""
    m = DataMetrics.from_manifest(data_manifest)
    return create_model(arch, num_classes=m.num_classes, in_chans=m.in_chans, image_size=m.image_size, mean=m.mean, std=m.std)


def load_teachers(cfg: Config, uris: list[str], data_manifest: dict, device: str, fast_path: FastPath = PLAIN
                  ) -> list[nn.Module]:
    """The frozen teachers, in eval mode, placed on `device` as `fast_path` says (channels_last or not)."""
    if len(uris) != len(cfg.teachers.archs):
        raise StageError(f"{len(uris)} teacher artifacts given, but teachers.archs lists {len(cfg.teachers.archs)}: {cfg.teachers.archs}")
    models = []
    for arch, uri in zip(cfg.teachers.archs, uris):
        art, _ = load_input(uri, cfg, "train-teacher", arch=arch)
        model = build_model(arch, data_manifest)
        model.load_state_dict(art.read_tensors("weights.safetensors"))
        models.append(fast_path.place(model, device).eval().requires_grad_(False))
    return models


def compute_setup(cfg: Config, trains: bool) -> tuple[str, FastPath]:
    """A stage's device and fast path (all of it if the stage `trains` a model, else cuDNN autotuning
    alone: synthesis and labels stay fp32, see fast_path.py); on CUDA it sets this process's cuDNN switches."""
    device = cfg.resolve_device()
    fast = resolve_fast_path(cfg, device)
    if not trains:
        fast = fast.without_training()
    if device == "cuda":
        fast.set_cuda_backends()
    return device, fast


def cpu_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors (channels_last weights are stored in the usual layout)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------
# Checks that run before any expensive work
# ----------------------------------------------------------------------------------------


def _require_teacher(model: nn.Module, arch: str, in_chans: int = 3, image_size: int = 32) -> None:
    """A teacher needs BatchNorm layers that each run exactly once per forward pass: one tiny pass checks it."""
    try:
        require_batchnorm(model, arch)
        with torch.no_grad(), recorded_bn_inputs(model):
            model.eval()(torch.zeros(2, in_chans, image_size, image_size))
    except BatchNormUseError as e:
        raise ConfigError(f"teachers.archs: teacher {arch!r}: {e}") from None
    except ValueError as e:  # require_batchnorm's message names the teacher
        raise ConfigError(f"teachers.archs: {e}") from None


def preflight(cfg: Config, out_uris: list[str]) -> None:
    """Cheap checks of everything a run needs, so bad input fails in seconds, not after training."""
    for uri in out_uris:
        open_artifact(uri).check_writable()
    if cfg.dataset.name in KNOWN_NUM_CLASSES:
        check_budget(cfg, KNOWN_NUM_CLASSES[cfg.dataset.name])
    elif cfg.dataset.root is None:
        raise DataError(f"dataset.root must be set for dataset.name={cfg.dataset.name!r} (a directory or .zip)")
    elif not Path(cfg.dataset.root).exists() and cfg.dataset.name != "hf":  # hf: a root that is no path is a Hub id
        raise DataError(f"dataset.root {cfg.dataset.root} does not exist; point it at the data directory or .zip")
    if "rded" in cfg.methods and cfg.dataset.name in KNOWN_IMAGES:
        side = cfg.dataset.image_size or KNOWN_IMAGES[cfg.dataset.name][2]
        if side % cfg.rded.factor:
            raise ConfigError(f"rded.factor={cfg.rded.factor} does not divide the image side {side}: RDED stitches "
                              "factor x factor crops into one image; use a factor that divides it")
    for arch in cfg.teachers.archs:  # tiny instances: building the architecture costs milliseconds
        _require_teacher(create_model(arch, num_classes=2, in_chans=3, image_size=32), arch)
        check_pretrained(cfg, arch)
    for arch in cfg.students.archs:  # timm:/torchvision: names, which config validation checked for syntax alone
        try:
            check_architecture(arch)
        except ConfigError as e:
            raise ConfigError(f"students.archs: {e}") from None
    resolve_fast_path(cfg, cfg.resolve_device())  # precision and compile against what this device and torch can do


def check_pretrained(cfg: Config, arch: str, data_manifest: dict | None = None) -> None:
    """Refuse a `teachers.pretrained.<arch>` that cannot be imported, before any work: published weights the library
    does not have (checked without downloading), or a file that is no state dict of `arch` (a safetensors header,
    or a .pth/.pt read with weights_only=True, which never constructs other objects). Tensor shapes are checked
    where the images are known: with the data artifact's manifest, or for the datasets of KNOWN_IMAGES; else the
    tensor names alone."""
    source = cfg.teachers.pretrained.get(arch)
    if not source:
        return
    if architectures.is_library_source(source):
        library_weights(arch, source)
        return
    if data_manifest is not None:
        m = DataMetrics.from_manifest(data_manifest)
        model, shapes = create_model(arch, num_classes=m.num_classes, in_chans=m.in_chans, image_size=m.image_size), True
    elif cfg.dataset.name in KNOWN_IMAGES:
        classes, chans, side = KNOWN_IMAGES[cfg.dataset.name]
        model, shapes = create_model(arch, num_classes=classes, in_chans=chans, image_size=cfg.dataset.image_size or side), True
    else:
        model, shapes = create_model(arch, num_classes=2, in_chans=3, image_size=32), False
    expected = {k: list(v.shape) for k, v in _network(model).state_dict().items()}
    _check_fits(arch, source, expected, _file_shapes(arch, source), shapes)


def _file_shapes(arch: str, source: str) -> dict[str, list[int]]:
    """{tensor name: shape} of a weights file: a safetensors header, or a torch.save state dict; refuses anything else."""
    field, path = f"teachers.pretrained.{arch}", Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"{field}: {source} is not a file; give a .safetensors or .pth/.pt state dict, 'torchvision' or 'timm'")
    if _is_pickle(path):
        return {k: list(v.shape) for k, v in _read_pth(arch, source).items()}
    return _safetensors_shapes(arch, source)


def _read_pth(arch: str, source: str) -> dict[str, torch.Tensor]:
    try:
        return read_pth(Path(source).expanduser())
    except ValueError as e:
        raise ConfigError(f"teachers.pretrained.{arch}: {source} {e}") from None


def _safetensors_shapes(arch: str, source: str) -> dict[str, list[int]]:
    """{tensor name: shape} from a weights file's safetensors header, naming the file where it is none."""
    from safetensors import safe_open

    try:
        with safe_open(str(Path(source).expanduser()), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError; OSError when unreadable
        raise ConfigError(f"teachers.pretrained.{arch}: {source} is neither a safetensors nor a torch.save file ({e}); give a "
                          "state dict saved with safetensors.torch.save_file or torch.save") from None


def _is_pickle(path: Path) -> bool:
    """torch.save's zip (it holds a data.pkl) or a bare pickle (protocol 2 and later start with 0x80 and the protocol)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _check_fits(arch: str, source: str, expected: dict[str, list[int]], found: dict[str, list[int]], shapes: bool) -> None:
    """Refuse weights whose tensor names (and with `shapes`, shapes) are not those of `arch`'s network."""
    field = f"teachers.pretrained.{arch}"
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"{field}: the weights in {source} do not fit {arch}: {len(missing)} tensors missing "
                          f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}; give a state dict of {arch} "
                          "as infer_distill.models.create_model builds it (without the Normalize wrapper)")
    wrong = [k for k in expected if shapes and expected[k] != found[k]]
    if wrong:
        k = wrong[0]
        raise ConfigError(f"{field}: the weights in {source} do not fit {arch} for this dataset: tensor {k!r} has shape "
                          f"{found[k]}, {expected[k]} needed ({len(wrong)} tensors differ); give weights trained for this "
                          "dataset's classes, channels and image size")


def _network(model: nn.Module) -> nn.Module:
    """The network inside build_model's Sequential(Normalize, net): what pretrained weights are loaded into."""
    if isinstance(model, nn.Sequential) and isinstance(model[0], Normalize):
        return model[1]
    return model


# ----------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------


def prepare_data(cfg: Config, out: str) -> dict:
    """Materialise the train/test split once, as uint8 tensors, so later stages never touch the source."""
    output = _begin(out, {})
    read = sources(cfg, "prepare-data")  # before loading: a source changed while it is read is remade next time
    data = load_dataset(cfg.dataset)
    if cfg.dataset.download:
        read = sources(cfg, "prepare-data")  # the files the download has just fetched
    k = check_budget(cfg, data.num_classes)
    counts = torch.bincount(data.train_y, minlength=data.num_classes)
    if int(counts.min()) < k:  # select-subsets would fail only after the teachers trained
        c = int(counts.argmin())
        raise DataError(f"class {data.classes[c]!r} has {int(counts[c])} training images, but K={k} disjoint subsets need {k} "
                        "per class; lower budget.ipc or raise dataset.train_per_class")
    padding, hflip = augmentation(cfg.dataset, data.image_size)
    metrics = DataMetrics(
        num_classes=data.num_classes, classes=data.classes, in_chans=data.in_chans, image_size=data.image_size,
        mean=list(data.mean), std=list(data.std), num_train=len(data.train_y), num_test=len(data.test_y),
        min_train_per_class=int(counts.min()), crop_padding=padding, hflip=hflip,
    )
    files = {"train.safetensors": {"x": data.train_x, "y": data.train_y}, "test.safetensors": {"x": data.test_x, "y": data.test_y}}
    return _write(output, cfg, files, metrics, read)


def train_teacher(cfg: Config, arch: str, data: str, out: str, progress: bool = True) -> dict:
    """Train one teacher architecture on the real training set (or import given weights); record its test accuracy."""
    if arch not in cfg.teachers.archs:
        raise StageError(f"teacher {arch!r} is not in teachers.archs {cfg.teachers.archs}")
    check_pretrained(cfg, arch)
    output = _begin(out, {"data": data})
    device, fast = compute_setup(cfg, trains=True)
    train_x, train_y, dm = _data(cfg, data, "train")
    test_x, test_y, _ = _data(cfg, data, "test")
    torch.manual_seed(cfg.seed)
    model = build_model(arch, dm)
    d = DataMetrics.from_manifest(dm)
    _require_teacher(model, arch, d.in_chans, d.image_size)
    source = cfg.teachers.pretrained.get(arch)
    check_pretrained(cfg, arch, dm)
    losses: list[float] = []
    trained = {}  # the precision of training, when there is any
    read = {}
    with CompileTime(fast.compile) as compile_time:
        if source:
            norm = cfg.teachers.normalization.get(arch)
            read = _import_weights(model, arch, source, norm.model_dump() if norm else None)
        else:
            losses = train_teacher_model(model, train_x, train_y, cfg.teachers, (d.crop_padding, d.hflip), device, cfg.seed,
                                         desc=f"teacher {arch}", progress=progress, fast_path=fast)
            trained = {"training": fast.training_precision}
    fast.place(model, device)
    acc = evaluate(model, test_x, test_y, device)
    metrics = TeacherMetrics(arch=arch, test_acc=acc, train_losses=losses, imported_from=source,
                             architecture=describe_architecture(arch, d.num_classes, d.in_chans, d.image_size),
                             num_params=sum(p.numel() for p in model.parameters()),
                             compute=fast.describe(device, compile_time.seconds, **trained, evaluation="fp32"))
    return _write(output, cfg, {"weights.safetensors": cpu_weights(model)}, metrics, read, arch=arch)


def _import_weights(model: nn.Module, arch: str, source: str, normalization: Mapping | None = None) -> dict:
    """Load `source` into the model's network and give its Normalize the statistics the weights expect:
    `normalization` ({mean, std}) where given, else published weights' own, else the dataset's (as built).
    Returns what was read from outside the pipeline, as `sources` records it."""
    net = _network(model)
    read = {}
    stats = None
    weights = library_weights(arch, source)
    if weights is not None:
        try:
            state, stats = download_library_weights(weights)
        except Exception as e:  # noqa: BLE001 - any failure here means: weights unavailable
            raise StageError(f"teachers.pretrained.{arch}={source}: could not get {weights[0]}'s published weights ({e}); "
                             "download them where there is internet and give the file's path instead") from None
    else:
        raw = Path(source).expanduser().read_bytes()  # check_pretrained has read it
        read = {"pretrained_sha256": hashlib.sha256(raw).hexdigest()}
        if _is_pickle(Path(source).expanduser()):
            state = _read_pth(arch, source)
        else:
            from safetensors.torch import load

            state = load(raw)
    _check_fits(arch, source, {k: list(v.shape) for k, v in net.state_dict().items()},
                {k: list(v.shape) for k, v in state.items()}, shapes=True)
    net.load_state_dict(state)
    if normalization is not None:
        stats = (list(normalization["mean"]), list(normalization["std"]))
    if stats is not None and model is not net:
        _set_normalization(model[0], arch, *stats)
    return read


def _set_normalization(norm: Normalize, arch: str, mean: list[float], std: list[float]) -> None:
    if len(mean) != norm.mean.numel():
        raise ConfigError(f"teachers.normalization.{arch}: {len(mean)} values for {norm.mean.numel()} image channels; "
                          "give one mean and std per channel")
    norm.mean.copy_(torch.tensor(mean).view_as(norm.mean))
    norm.std.copy_(torch.tensor(std).view_as(norm.std))


def draw_per_class(train_y: torch.Tensor, per_class: int, seed: int, class_names: list[str]) -> torch.Tensor:
    """[per_class, C] distinct training indices: row r holds one seeded random image of every class.

    One permutation per class from one generator, so the first K rows of a larger draw are the
    K rows of a smaller one: the random-real baseline's images contain INFER's natural subsets.
    """
    gen = torch.Generator().manual_seed(seed)
    columns = []
    for c, name in enumerate(class_names):
        pool = (train_y == c).nonzero().flatten()
        if len(pool) < per_class:
            raise StageError(f"class {name!r} has {len(pool)} training images, but {per_class} distinct images per class are "
                             "needed; lower budget.ipc or raise dataset.train_per_class")
        columns.append(pool[torch.randperm(len(pool), generator=gen)[:per_class]])
    return torch.stack(columns, 1)


def select_subsets(cfg: Config, data: str, out: str) -> dict:
    """K disjoint seeded subsets, each one real training image per class: indices [K, C]."""
    output = _begin(out, {"data": data})
    _, train_y, dm = _data(cfg, data, "train")
    d = DataMetrics.from_manifest(dm)
    C = d.num_classes
    K = check_budget(cfg, C)
    indices = draw_per_class(train_y, K, cfg.seed, d.classes)
    metrics = SubsetsMetrics(num_subsets=K, num_classes=C, num_teachers=len(cfg.teachers.archs),
                             class_batches=cfg.class_batches(C), shards=cfg.shard_plan(C))
    return _write(output, cfg, {"subsets.safetensors": {"indices": indices}}, metrics)


def synthesize_ufc(cfg: Config, subset_ids: list[int], data: str, subsets: str, teachers: list[str], out: str,
                   progress: bool = True) -> dict:
    """Optimise the UFCs of the given subsets against every teacher, grouped into one batch per teacher."""
    subset_ids = sorted(subset_ids)
    if not subset_ids or len(set(subset_ids)) != len(subset_ids) or subset_ids[0] < 0:
        raise StageError(f"subset ids {subset_ids} must be distinct numbers from 0, e.g. --subset-ids 0,1,2")
    output = _begin(out, {"data": data, "subsets": subsets, "teachers": teachers})
    train_x, _, dm = _data(cfg, data, "train")
    sub_art, sub_manifest = load_input(subsets, cfg, "select-subsets")
    indices = sub_art.read_tensors("subsets.safetensors")["indices"]
    K = len(indices)
    if subset_ids[-1] >= K:
        raise StageError(f"subset ids {subset_ids} must be within 0..{K - 1} (K={K})")
    device, fast = compute_setup(cfg, trains=False)
    models = load_teachers(cfg, teachers, dm, device)
    natural = train_x[indices[subset_ids]]                                   # [S, C, ch, H, W] uint8
    result = synthesize_ufcs(models, natural, subset_ids, cfg.synthesis, cfg.seed, device, progress,
                             pixel_std=DataMetrics.from_manifest(dm).std)
    ufc_iters = result.ufc.shape[0] * result.ufc.shape[1] * result.ufc.shape[2] * cfg.synthesis.iterations
    metrics = UfcShardMetrics(
        subset_ids=subset_ids, ufc_shape=list(result.ufc.shape), synthesis_s=round(result.seconds, 3),
        ufc_iterations_per_s=ufc_iters / max(result.seconds, 1e-9),
        images_per_s=ufc_iters / max(result.seconds, 1e-9) * natural.shape[1] / result.ufc.shape[2],
        initial_loss=result.initial_loss.tolist(), final_loss=result.final_loss.tolist(),
        final_ce=result.final_ce.tolist(), final_bn=result.final_bn.tolist(),
        compute=fast.describe(device, synthesis="fp32"),
    )
    files = {"ufc.safetensors": {"ufc": result.ufc, "subset_ids": torch.tensor(subset_ids)}}
    return _write(output, cfg, files, metrics, subset_ids=subset_ids)


def read_distilled(art: Artifact) -> dict[str, torch.Tensor]:
    """The distilled set as float tensors: natural uint8 [K, C, ...], ufc float32 [K, M, B, ...], soft_labels float32 [N, C]."""
    t = art.read_tensors("distilled.safetensors")
    return {"natural": t["natural"], "ufc": decode_ufc(t), "soft_labels": t["soft_labels"].float()}


def distilled_instances(natural: torch.Tensor, ufc: torch.Tensor, classes_per_ufc: int | None) -> torch.Tensor:
    """All K*(M+1)*C training instances, float [0,1]: per subset k, P_k then P_k + U_{k,m} for every m.

    natural: uint8 [K, C, ch, H, W]; ufc: [K, M, B, ch, H, W].
    """
    nat = natural.float() / 255.0
    batch_of_class = class_batch_index(natural.shape[1], classes_per_ufc)
    composed = compose(nat.unsqueeze(1), ufc, batch_of_class)                # [K, M, C, ch, H, W]
    return torch.cat([nat.unsqueeze(1), composed], 1).flatten(0, 2)


def instance_origins(num_subsets: int, num_teachers: int, num_classes: int) -> dict[str, torch.Tensor]:
    """Where each instance of `distilled_instances` comes from, in its order: int64 [K*(M+1)*C] each.

    "subset" k, "teacher" m (-1: the natural image P_k itself) and "label", the class c of the
    natural image (its hard label); the same [K, M+1, C] grid, flattened the same way.
    """
    k, m, c = torch.meshgrid(torch.arange(num_subsets), torch.arange(-1, num_teachers), torch.arange(num_classes), indexing="ij")
    return {"subset": k.flatten(), "teacher": m.flatten(), "label": c.flatten()}


@torch.no_grad()
def ensemble_logits(ensemble: Ensemble, images: torch.Tensor, device: str, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([ensemble(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])


# What a reader of the distilled artifact alone needs to use the set (infer_distill.DistilledSet), copied from
# the data artifact into soft-label's metrics: class names, the normalisation the students' models apply,
# and the augmentation they train with.
DISTILLED_DESCRIPTION = tuple(f.name for f in fields(ImageDescription))


def soft_label(cfg: Config, data: str, subsets: str, teachers: list[str], ufc: list[str], out: str) -> dict:
    """Collect every UFC shard; static labels = the teachers' mean logits on every (un-augmented) instance."""
    output = _begin(out, {"data": data, "subsets": subsets, "teachers": teachers, "ufc": ufc})
    train_x, _, dm = _data(cfg, data, "train")
    sub_art, _ = load_input(subsets, cfg, "select-subsets")
    indices = sub_art.read_tensors("subsets.safetensors")["indices"]
    K, C = indices.shape
    shards: dict[int, torch.Tensor] = {}
    for uri in ufc:
        ids = UfcShardMetrics.from_manifest(open_artifact(uri).read_manifest(), uri).subset_ids  # which shard, then check it
        art, _ = load_input(uri, cfg, "synthesize-ufc", subset_ids=ids)
        tensors = art.read_tensors("ufc.safetensors")
        for row, k in enumerate(tensors["subset_ids"].tolist()):
            if k in shards:
                raise StageError(f"subset {k} appears in two UFC shards (second: {uri}); give each shard once")
            shards[k] = tensors["ufc"][row]
    missing = sorted(set(range(K)) - set(shards))
    if missing:
        raise StageError(f"UFC shards cover {len(shards)} of K={K} subsets; missing subsets {missing[:10]}: run synthesize-ufc for them")
    # The set stores the UFCs at synthesis.ufc_dtype, and the labels are computed on exactly
    # what a student will see: the stored (rounded) UFCs, composed and clipped.
    stored_ufc = encode_ufc(torch.stack([shards[k] for k in range(K)]), cfg.synthesis.ufc_dtype)   # [K, M, B, ch, H, W]
    natural = train_x[indices]                                               # [K, C, ch, H, W]
    device, fast = compute_setup(cfg, trains=False)
    ensemble = Ensemble(load_teachers(cfg, teachers, dm, device))
    instances = distilled_instances(natural, decode_ufc(stored_ufc), cfg.synthesis.classes_per_ufc)
    labels = ensemble_logits(ensemble, instances, device).to(getattr(torch, cfg.labels.dtype))

    M, B = stored_ufc["ufc"].shape[1], stored_ufc["ufc"].shape[2]
    files = {"distilled.safetensors": {"natural": natural, **stored_ufc, "soft_labels": labels}}
    stored = {name: tensor_bytes(t) for name, t in files["distilled.safetensors"].items()}
    budget = {
        "ipc": cfg.budget.ipc, "num_subsets": K, "num_teachers": M, "num_classes": C, "class_batches": B,
        "num_natural": K * C, "num_ufcs": K * M * B, "num_instances": len(instances),
        "ufc_dtype": cfg.synthesis.ufc_dtype, "label_dtype": cfg.labels.dtype,
        "stored_bytes": sum(stored.values()), "stored_bytes_by_tensor": stored, "train_bytes": tensor_bytes(train_x),
        "compression_ratio": sum(stored.values()) / tensor_bytes(train_x),
        "images_per_class_equivalent": K * (1 + M * B / C),
    }
    metrics = DistilledMetrics(
        budget=budget, **DataMetrics.from_manifest(dm).description(),
        instance_order="for k in subsets: P_k, then P_k + U_{k,m} for m in teachers; classes 0..C-1 within each",
        compute=fast.describe(device, labels="fp32"))
    return _write(output, cfg, files, metrics)


def evaluate_student(cfg: Config, arch: str, seed: int, label_mode: str, data: str, distilled: str, teachers: list[str],
                     out: str, progress: bool = True) -> dict:
    """Train a fresh student on the distilled set (MixUp + KL at temperature T) and test it on the real test set."""
    if label_mode not in ("static", "dynamic"):
        raise StageError(f"label mode {label_mode!r}: use 'static' or 'dynamic'")
    _check_student_arch(arch)
    # Static labels come with the distilled set; only dynamic ones ask the teachers.
    output = _begin(out, {"data": data, "distilled": distilled, **({"teachers": teachers} if label_mode == "dynamic" else {})})
    test_x, test_y, dm = _data(cfg, data, "test")
    d = DataMetrics.from_manifest(dm)
    art, _ = load_input(distilled, cfg, "soft-label")
    t = read_distilled(art)
    images = distilled_instances(t["natural"], t["ufc"], cfg.synthesis.classes_per_ufc)
    device, fast = compute_setup(cfg, trains=True)
    # dynamic labels: the teachers label every batch inside the training step, so they run as the student does
    ensemble = Ensemble(load_teachers(cfg, teachers, dm, device, fast)) if label_mode == "dynamic" else None
    torch.manual_seed(seed)
    student = build_model(arch, dm).to(device)
    with CompileTime(fast.compile) as compile_time:
        result: StudentResult = train_student_model(
            student, images, t["soft_labels"] if ensemble is None else None, ensemble, test_x, test_y, cfg.students,
            cfg.students.epochs_for(label_mode), cfg.labels.temperature, (d.crop_padding, d.hflip),
            device, seed, desc=f"student {arch} {label_mode} seed {seed}", progress=progress, fast_path=fast)
    best_epoch, best_acc = result.best
    metrics = StudentMetrics(
        arch=arch, seed=seed, label_mode=label_mode, final_acc=result.final_acc, best_acc=best_acc,
        architecture=describe_architecture(arch, d.num_classes, d.in_chans, d.image_size),
        best_epoch=best_epoch, epochs=cfg.students.epochs_for(label_mode), curve=result.curve, train_losses=result.losses,
        compute=fast.describe(device, compile_time.seconds, training=fast.training_precision, evaluation="fp32"))
    return _write(output, cfg, {"weights.safetensors": cpu_weights(student)}, metrics, arch=arch, seed=seed, label_mode=label_mode)


def _check_student_arch(arch: str) -> None:
    if ":" in arch:  # timm:<name> / torchvision:<name>
        check_architecture(arch)
    elif arch not in MODEL_REGISTRY:
        raise StageError(f"student architecture {arch!r} (--arch) is unknown; known: {', '.join(sorted(MODEL_REGISTRY))}")


def evaluate_baseline(cfg: Config, arch: str, seed: int, baseline: str, data: str, subsets: str, teachers: list[str],
                      out: str, progress: bool = True) -> dict:
    """Train the same student on ipc random real images per class, with the same ensemble labels and training as INFER's.

    What the distilled set has to beat: select-subsets' seeded draw continued to ipc images per
    class (INFER's K natural subsets plus ipc - K more real images; more than ipc only where the
    distilled set stores more bytes, see Config.baseline_per_class), labelled by the same
    teachers (static logits, rounded to labels.dtype like INFER's), trained with the same
    MixUp + KL recipe for the same epochs (random_soft) or the same optimiser steps as INFER's
    static student (random_soft_steps: INFER has more instances, so equal epochs give it more steps).
    """
    if baseline not in BASELINES:
        raise StageError(f"baseline {baseline!r}: use one of {', '.join(BASELINES)}")
    _check_student_arch(arch)
    output = _begin(out, {"data": data, "subsets": subsets, "teachers": teachers})
    train_x, train_y, dm = _data(cfg, data, "train")
    test_x, test_y, _ = _data(cfg, data, "test")
    sub_art, _ = load_input(subsets, cfg, "select-subsets")
    subset_indices = sub_art.read_tensors("subsets.safetensors")["indices"]
    d = DataMetrics.from_manifest(dm)
    per_class = cfg.baseline_per_class(d.num_classes, d.in_chans * d.image_size ** 2)
    drawn = draw_per_class(train_y, per_class, cfg.seed, d.classes)             # [per_class, C]
    if not torch.equal(drawn[: len(subset_indices)], subset_indices):
        raise StageError(f"{subsets} holds subsets that are not the first rows of this config's draw: rerun select-subsets")
    natural = train_x[drawn.flatten()]                                           # row-major: INFER's instance order
    images = natural.float() / 255.0
    # labelled as soft-label labels (fp32 teachers), trained as evaluate-student trains (the fast path on CUDA)
    device, fast = compute_setup(cfg, trains=True)
    ensemble = Ensemble(load_teachers(cfg, teachers, dm, device))
    labels = ensemble_logits(ensemble, images, device).to(getattr(torch, cfg.labels.dtype))

    C, batch = d.num_classes, cfg.students.batch_size
    infer_instances = cfg.num_subsets(C) * (len(cfg.teachers.archs) + 1) * C
    infer_steps = cfg.students.epochs * math.ceil(infer_instances / batch)
    steps_per_epoch = math.ceil(len(images) / batch)
    epochs = cfg.students.epochs if baseline == "random_soft" else max(1, round(infer_steps / steps_per_epoch))
    torch.manual_seed(seed)
    student = build_model(arch, dm).to(device)
    with CompileTime(fast.compile) as compile_time:
        result = train_student_model(
            student, images, labels.float(), None, test_x, test_y, cfg.students, epochs, cfg.labels.temperature,
            (d.crop_padding, d.hflip), device, seed, desc=f"baseline {baseline} {arch} seed {seed}",
            progress=progress, fast_path=fast)
    best_epoch, best_acc = result.best
    metrics = BaselineMetrics(
        arch=arch, seed=seed, baseline=baseline, description=BASELINES[baseline].format(per_class=per_class),
        per_class=per_class, architecture=describe_architecture(arch, d.num_classes, d.in_chans, d.image_size),
        final_acc=result.final_acc, best_acc=best_acc, best_epoch=best_epoch, epochs=epochs,
        steps=epochs * steps_per_epoch, infer_static_steps=infer_steps, num_instances=len(images),
        stored_bytes=tensor_bytes(natural) + tensor_bytes(labels), curve=result.curve, train_losses=result.losses,
        compute=fast.describe(device, compile_time.seconds, training=fast.training_precision, evaluation="fp32"))
    return _write(output, cfg, {"weights.safetensors": cpu_weights(student), "labels.safetensors": {"soft_labels": labels}},
                  metrics, arch=arch, seed=seed, baseline=baseline)


# ----------------------------------------------------------------------------------------
# The methods INFER is compared with (methods.py): each a distilled set in soft-label's format,
# scored by the same students
# ----------------------------------------------------------------------------------------


def _peer_images(cfg: Config, method: str, per_class: int, train_x: torch.Tensor, train_y: torch.Tensor, dm: dict,
                 models: list[nn.Module], device: str, progress: bool) -> tuple[torch.Tensor, dict]:
    """uint8 [per_class, C, ch, H, W] images of `method`, and what the method records about them."""
    from . import methods

    d = DataMetrics.from_manifest(dm)
    classes = d.classes
    if method == "random":
        return train_x[draw_per_class(train_y, per_class, cfg.seed, classes)], {}
    if method == "herding":
        columns = []
        for c in range(len(classes)):
            pool = (train_y == c).nonzero().flatten()
            if len(pool) < per_class:
                raise StageError(f"herding: class {classes[c]!r} has {len(pool)} training images, {per_class} needed")
            feats = methods.penultimate_features(models[0], train_x[pool], device)
            columns.append(pool[methods.herding(feats, per_class)])
        return train_x[torch.stack(columns, 1)], {"features": f"penultimate, teacher {cfg.teachers.archs[0]}"}
    if method == "rded":
        r = cfg.rded
        # RDED draws mipc candidates per class; a class with fewer images offers all it has
        candidates = min(r.candidates, int(torch.bincount(train_y, minlength=len(classes)).min()))
        drawn = draw_per_class(train_y, candidates, cfg.seed, classes)            # [candidates, C]
        gen = torch.Generator().manual_seed(cfg.seed)
        picked = []
        try:
            for c in range(len(classes)):
                images, _, _ = methods.rded_select(models, train_x[drawn[:, c]], c, per_class, r.crops, r.factor, gen, device)
                picked.append(images)
        except ValueError as e:
            raise ConfigError(f"rded: {e}: lower budget.ipc or rded.factor, or raise rded.candidates") from None
        return torch.stack(picked, 1), {"rded_candidates": candidates}
    if method == "sre2l":
        s = cfg.sre2l
        result = methods.sre2l_recover(models, per_class, len(classes), tuple(train_x.shape[1:]), d.mean, d.std,
                                       iterations=s.iterations, lr=s.lr, betas=s.betas, r_bn=s.r_bn,
                                       first_bn_multiplier=s.first_bn_multiplier, jitter=s.jitter, flip=s.flip,
                                       seed=cfg.seed, device=device, progress=progress)
        return result.images, {"initial_loss": result.initial_loss.tolist(), "final_loss": result.final_loss.tolist()}
    raise StageError(f"method {method!r}: use one of {', '.join(METHODS[1:])}")


def distill_method(cfg: Config, method: str, data: str, teachers: list[str], out: str, progress: bool = True) -> dict:
    """A peer's distilled set at INFER's stored bytes: its images as uint8, labelled by the same teachers as INFER's.

    Stored as soft-label stores INFER's set, with no UFCs (M = 0 in `distilled_instances`), so
    DistilledSet, the export and the students read it as they read INFER's: per_class rows of one
    image per class, the teachers' mean logits of each image at labels.dtype.
    """
    if method not in METHODS[1:]:
        raise StageError(f"method {method!r}: use one of {', '.join(METHODS[1:])}")
    output = _begin(out, {"data": data, "teachers": teachers})
    train_x, train_y, dm = _data(cfg, data, "train")
    d = DataMetrics.from_manifest(dm)
    C, numel = d.num_classes, d.in_chans * d.image_size ** 2
    per_class = cfg.method_per_class(C, numel)
    device, fast = compute_setup(cfg, trains=False)
    models = load_teachers(cfg, teachers, dm, device)
    natural, recorded = _peer_images(cfg, method, per_class, train_x, train_y, dm, models, device, progress)
    labels = ensemble_logits(Ensemble(models), natural.flatten(0, 1).float() / 255.0, device).to(getattr(torch, cfg.labels.dtype))
    similarity = set_similarity(models[0], natural.flatten(0, 1), torch.arange(C).repeat(per_class), device)
    ufc = torch.zeros(per_class, 0, 1, *natural.shape[2:])
    files = {"distilled.safetensors": {"natural": natural, "ufc": ufc, "soft_labels": labels}}
    stored = {name: tensor_bytes(t) for name, t in files["distilled.safetensors"].items()}
    budget = {
        "method": method, "ipc": cfg.budget.ipc, "num_subsets": per_class, "num_teachers": 0, "num_classes": C,
        "class_batches": 1, "num_natural": per_class * C, "num_ufcs": 0, "num_instances": per_class * C,
        "ufc_dtype": None, "label_dtype": cfg.labels.dtype, "stored_bytes": sum(stored.values()),
        "stored_bytes_by_tensor": stored, "budget_bytes": cfg.method_budget_bytes(C, numel),
        "train_bytes": tensor_bytes(train_x), "compression_ratio": sum(stored.values()) / tensor_bytes(train_x),
        "images_per_class_equivalent": per_class,
    }
    metrics = MethodSetMetrics(budget=budget, **d.description(), **recorded, feature_similarity=similarity,
                               instance_order="row r: one image of every class, classes 0..C-1",
                               compute=fast.describe(device, labels="fp32"))
    return _write(output, cfg, files, metrics, method=method)


def set_similarity(teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str) -> dict:
    """`methods.feature_similarity` of a set's instances on `teacher`'s penultimate features."""
    from . import methods

    return methods.feature_similarity(methods.penultimate_features(teacher, images, device), labels)


def _set_for(cfg: Config, method: str, sets: list[str], distilled: str | None) -> tuple[Artifact, dict]:
    """The distilled set of `method`: INFER's soft-label artifact, or the distill-method one of that method."""
    if method == "infer":
        if distilled is None:
            raise StageError("evaluate-method --method infer needs --distilled, INFER's soft-label artifact")
        return load_input(distilled, cfg, "soft-label")
    for uri in sets:
        if open_artifact(uri).read_manifest().get("settings", {}).get("method") == method:
            return load_input(uri, cfg, "distill-method", method=method)
    raise StageError(f"no distill-method artifact of method {method!r} among {sets}: run distill-method --method {method}")


def evaluate_method(cfg: Config, method: str, score: str, protocol: str, arch: str, seed: int, data: str, distilled: str | None,
                    out: str, methods: list[str] | None = None, progress: bool = True) -> dict:
    """Train the student of evaluate-student on a method's set and test it: the soft-label score (MixUp + KL on the
    set's static labels) or the hard-label score (cross-entropy on the instances' classes, no soft label), for
    students.epochs or for INFER's static student's optimiser steps."""
    if score not in ("soft", "hard") or protocol not in ("epochs", "steps"):
        raise StageError(f"score {score!r} / protocol {protocol!r}: use soft or hard / epochs or steps")
    _check_student_arch(arch)
    sets = methods or []
    # INFER's set, or the peers' (all of them: the plan passes them as one list)
    output = _begin(out, {"data": data, **({"distilled": distilled} if method == "infer" else {"methods": sets})})
    test_x, test_y, dm = _data(cfg, data, "test")
    art, manifest = _set_for(cfg, method, sets, distilled)
    t = read_distilled(art)
    images = distilled_instances(t["natural"], t["ufc"], cfg.synthesis.classes_per_ufc)
    K, C, M = t["natural"].shape[0], t["natural"].shape[1], t["ufc"].shape[1]
    hard = instance_origins(K, M, C)["label"]
    batch = cfg.students.batch_size
    infer_steps = cfg.students.epochs * math.ceil(cfg.num_subsets(C) * (len(cfg.teachers.archs) + 1) * C / batch)
    steps_per_epoch = math.ceil(len(images) / batch)
    epochs = cfg.students.epochs if protocol == "epochs" else max(1, round(infer_steps / steps_per_epoch))
    d = DataMetrics.from_manifest(dm)
    augment = (d.crop_padding, d.hflip)
    device, fast = compute_setup(cfg, trains=True)
    torch.manual_seed(seed)
    student = build_model(arch, dm).to(device)
    desc = f"{method} {score} {protocol} {arch} seed {seed}"
    with CompileTime(fast.compile) as compile_time:
        if score == "soft":
            result = train_student_model(student, images, t["soft_labels"], None, test_x, test_y, cfg.students, epochs,
                                         cfg.labels.temperature, augment, device, seed, desc=desc, progress=progress, fast_path=fast)
        else:
            result = train_student_hard(student, images, hard, test_x, test_y, cfg.students, epochs, augment, device, seed,
                                        desc=desc, progress=progress, fast_path=fast)
    best_epoch, best_acc = result.best
    metrics = MethodScoreMetrics(
        method=method, score=score, protocol=protocol, arch=arch, seed=seed,
        final_acc=result.final_acc, best_acc=best_acc, best_epoch=best_epoch, epochs=epochs,
        steps=epochs * steps_per_epoch, num_instances=len(images),
        stored_bytes=read_metrics(manifest, art.uri).budget["stored_bytes"], curve=result.curve, train_losses=result.losses,
        compute=fast.describe(device, compile_time.seconds, training=fast.training_precision, evaluation="fp32"))
    return _write(output, cfg, {"weights.safetensors": cpu_weights(student)}, metrics,
                  method=method, score=score, protocol=protocol, arch=arch, seed=seed)


def evaluate_full_data(cfg: Config, arch: str, data: str, out: str, progress: bool = True) -> dict:
    """The hard-label reference of HLR: the student trained with cross-entropy on the whole real training set,
    with the students' recipe for students.full_data_epochs (default: their epochs), once per architecture (seed: the config's)."""
    _check_student_arch(arch)
    output = _begin(out, {"data": data})
    train_x, train_y, dm = _data(cfg, data, "train")
    test_x, test_y, _ = _data(cfg, data, "test")
    device, fast = compute_setup(cfg, trains=True)
    epochs = cfg.students.full_data_epochs or cfg.students.epochs
    torch.manual_seed(cfg.seed)
    student = build_model(arch, dm).to(device)
    d = DataMetrics.from_manifest(dm)
    with CompileTime(fast.compile) as compile_time:
        result = train_student_hard(student, train_x.float() / 255.0, train_y, test_x, test_y, cfg.students, epochs,
                                    (d.crop_padding, d.hflip), device, cfg.seed,
                                    desc=f"full data {arch}", progress=progress, fast_path=fast)
    best_epoch, best_acc = result.best
    metrics = FullDataMetrics(
        arch=arch, seed=cfg.seed, final_acc=result.final_acc, best_acc=best_acc, best_epoch=best_epoch,
        epochs=epochs, num_instances=len(train_x), curve=result.curve,
        compute=fast.describe(device, compile_time.seconds, training=fast.training_precision, evaluation="fp32"))
    return _write(output, cfg, {"weights.safetensors": cpu_weights(student)}, metrics, arch=arch)


def report(cfg: Config, data: str, teachers: list[str], ufc: list[str], distilled: str | None, students: list[str], out: str,
           baselines: list[str] | None = None, method_scores: list[str] | None = None, full_data: list[str] | None = None,
           methods: list[str] | None = None) -> dict:
    """report.json, report.md and plots from every upstream manifest (timings summed per stage); without INFER's
    steps (`methods` without infer: `distilled` None, no UFCs and students) the peers' method table alone."""
    from . import report as rep

    if cfg.runs_infer() and distilled is None:
        raise StageError("report needs --distilled, INFER's soft-label artifact (methods has infer)")
    output = _begin(out, {"data": data, "teachers": teachers,
                          **({"ufc": ufc or [], "distilled": distilled, "students": students or [], "baselines": baselines or []}
                             if distilled is not None else {}),
                          **({"method_scores": method_scores} if method_scores else {}),
                          **({"full_data": full_data} if full_data else {}),
                          **({"methods": methods} if methods else {})})
    _, dm = load_input(data, cfg, "prepare-data")
    teacher_manifests = [load_input(u, cfg, "train-teacher", arch=a)[1] for a, u in zip(cfg.teachers.archs, teachers)]
    ufc_manifests = [open_artifact(u).read_manifest() for u in ufc or []]
    dist_art, dist_manifest = load_input(distilled, cfg, "soft-label") if distilled is not None else (None, None)

    def fanned_out(uris: list[str] | None, kind: type[StageMetrics], keys: tuple[str, ...]) -> list[dict]:
        """The manifests at `uris`, each checked against this config for the item its metrics name."""
        manifests = []
        for uri in uris or []:
            m = kind.from_manifest(open_artifact(uri).read_manifest(), uri)
            manifests.append(load_input(uri, cfg, kind.kind, **{k: getattr(m, k) for k in keys})[1])
        return manifests

    student_manifests = fanned_out(students, StudentMetrics, ("arch", "seed", "label_mode"))
    baseline_manifests = fanned_out(baselines, BaselineMetrics, ("arch", "seed", "baseline"))
    score_manifests = fanned_out(method_scores, MethodScoreMetrics, ("method", "score", "protocol", "arch", "seed"))
    full_manifests = fanned_out(full_data, FullDataMetrics, ("arch",))

    timings: dict[str, float] = {"prepare-data": dm["elapsed_s"]}
    for name, manifests in (("train-teacher", teacher_manifests), ("synthesize-ufc", ufc_manifests),
                            ("soft-label", [dist_manifest] if dist_manifest else []), ("evaluate-student", student_manifests),
                            ("evaluate-baseline", baseline_manifests), ("evaluate-method", score_manifests),
                            ("evaluate-full-data", full_manifests)):
        if manifests:
            timings[name] = sum(m["elapsed_s"] for m in manifests)
    student_runs = [StudentMetrics.from_manifest(m) for m in student_manifests]
    baseline_runs = [BaselineMetrics.from_manifest(m) for m in baseline_manifests]
    infer_set = DistilledMetrics.from_manifest(dist_manifest) if dist_manifest else None
    rows = [{"arch": s.arch, "seed": s.seed, "label_mode": s.label_mode, "final_acc": s.final_acc, "best_acc": s.best_acc,
             "best_epoch": s.best_epoch, "curve": s.curve} for s in student_runs]
    baseline_rows = [{"arch": b.arch, "seed": b.seed, "baseline": b.baseline, "description": b.description, "final_acc": b.final_acc,
                      "best_acc": b.best_acc, "best_epoch": b.best_epoch, "epochs": b.epochs, "steps": b.steps,
                      "num_instances": b.num_instances, "stored_bytes": b.stored_bytes, "curve": b.curve} for b in baseline_runs]
    teacher_rows = [{"arch": t.arch, "test_acc": t.test_acc} for t in map(TeacherMetrics.from_manifest, teacher_manifests)]
    summary = rep.summarise(teacher_rows, infer_set.budget if infer_set else None, rows, timings, baseline_rows)
    data_metrics = DataMetrics.from_manifest(dm)
    if not cfg.runs_infer():
        C = data_metrics.num_classes
        summary["infer_not_run"] = {"methods": cfg.methods, "ipc": cfg.budget.ipc, "num_subsets": cfg.num_subsets(C),
                                    "smallest_feasible_ipc": smallest_feasible_ipc(cfg, C)}
    if score_manifests or full_manifests:
        summary["methods"] = rep.method_summary(
            _method_rows(cfg, infer_set, student_runs, [MethodScoreMetrics.from_manifest(m) for m in score_manifests]),
            [{"arch": f.arch, "final_acc": f.final_acc} for f in map(FullDataMetrics.from_manifest, full_manifests)])
        summary["feature_similarity"] = _similarities(cfg, teachers, dm, dist_art, methods or [])
    pngs = {"student_curves.png": rep.student_curves_png(rows, baseline_rows)} if rows or baseline_rows else {}
    if dist_art is not None:
        t = read_distilled(dist_art)
        pngs["ufc_examples.png"] = rep.ufc_examples_png(t["natural"], t["ufc"], data_metrics.classes, cfg.teachers.archs,
                                                        cfg.synthesis.classes_per_ufc)
    if "feature_similarity" in summary:
        pngs["feature_similarity.png"] = rep.similarity_png(summary["feature_similarity"])
    files = {"report.json": rep.json_bytes(summary), "report.md": rep.markdown(summary).encode(),
             "report.html": rep.html(summary, pngs).encode(), **pngs}
    return _write(output, cfg, files, ReportMetrics(report=summary))


def _similarities(cfg: Config, teachers: list[str], dm: dict, dist_art: Artifact | None, methods: list[str]) -> dict:
    """{method: feature_similarity} on the first teacher: INFER's computed here (when it ran), each peer's as its
    distill-method artifact recorded it."""
    out = {}
    if dist_art is not None:
        t = read_distilled(dist_art)
        K, C, M = t["natural"].shape[0], t["natural"].shape[1], t["ufc"].shape[1]
        teacher = load_teachers(cfg, teachers, dm, "cpu")[0]
        out["infer"] = set_similarity(teacher, distilled_instances(t["natural"], t["ufc"], cfg.synthesis.classes_per_ufc),
                                      instance_origins(K, M, C)["label"], "cpu")
    for uri in methods:
        method = open_artifact(uri).read_manifest().get("settings", {}).get("method")
        out[method] = MethodSetMetrics.from_manifest(load_input(uri, cfg, "distill-method", method=method)[1], uri).feature_similarity
    return out


def _method_rows(cfg: Config, infer_set: DistilledMetrics | None, students: list[StudentMetrics],
                 scores: list[MethodScoreMetrics]) -> list[dict]:
    """Every method student as a row of the method table: the evaluate-method runs, and INFER's static-label students
    as its soft-label score (under every protocol: INFER's steps are its epochs)."""
    rows = [{"method": m.method, "score": m.score, "protocol": m.protocol, "arch": m.arch, "seed": m.seed, "final_acc": m.final_acc,
             "steps": m.steps, "num_instances": m.num_instances, "stored_bytes": m.stored_bytes} for m in scores]
    if infer_set is None:
        return rows
    b = infer_set.budget
    for s in students:
        if s.label_mode != "static":
            continue
        steps = s.epochs * math.ceil(b["num_instances"] / cfg.students.batch_size)
        rows += [{"method": "infer", "score": "soft", "protocol": p, "arch": s.arch, "seed": s.seed, "final_acc": s.final_acc,
                  "steps": steps, "num_instances": b["num_instances"], "stored_bytes": b["stored_bytes"]} for p in cfg.students.protocols]
    return rows
