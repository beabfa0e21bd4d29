"""The methods INFER is compared with: each distils a set in soft-label's format, scored by
the same students; and the full-data reference.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from infer_distill.config.schema import METHODS, Config
from infer_distill.dag.metrics import DataMetrics, FullDataMetrics, MethodScoreMetrics, MethodSetMetrics
from infer_distill.dag.metrics import read as read_metrics
from infer_distill.data.splits import Split
from infer_distill.errors import ConfigError, StageError
from infer_distill.method import peers
from infer_distill.method.training import Ensemble, Held, PixelImages, train_student_hard, train_student_model
from infer_distill.outputs.instances import distilled_instances, instance_origins, read_distilled
from infer_distill.runtime.fast_path import CompileTime
from infer_distill.stages.artifacts import _begin, _write, load_input, tensor_bytes
from infer_distill.stages.infer import _check_student_arch, draw_per_class, ensemble_logits
from infer_distill.stages.inputs import build_model, compute_setup, cpu_weights, data_splits, held_or_streamed, load_teachers
from infer_distill.storage import open_artifact
from infer_distill.storage.artifact import Artifact

# ----------------------------------------------------------------------------------------
# The methods INFER is compared with (method/peers.py): each a distilled set in soft-label's format,
# scored by the same students
# ----------------------------------------------------------------------------------------


def _peer_images(cfg: Config, method: str, per_class: int, train: Split, dm: dict,
                 models: list[nn.Module], device: str, progress: bool) -> tuple[torch.Tensor, dict]:
    """uint8 [per_class, C, ch, H, W] images of `method`, and what the method records about them; each method reads
    the training rows it looks at: random its drawn rows, herding every row of one class at a time (it weighs every
    image of a class), rded its candidate rows, sre2l none."""
    d = DataMetrics.from_manifest(dm)
    classes = d.classes
    train_y = train.labels
    if method == "random":
        drawn = draw_per_class(train_y, per_class, cfg.seed, classes)
        return train.read(drawn.flatten()).reshape(per_class, len(classes), *train.shape), {}
    if method == "herding":
        columns = []
        for c in range(len(classes)):
            pool = (train_y == c).nonzero().flatten()
            if len(pool) < per_class:
                raise StageError(f"herding: class {classes[c]!r} has {len(pool)} training images, {per_class} needed")
            images = train.read(pool)
            columns.append(images[peers.herding(peers.penultimate_features(models[0], images, device, cfg.teachers.batch_size), per_class)])
        return torch.stack(columns, 1), {"features": f"penultimate, teacher {cfg.teachers.archs[0]}"}
    if method == "rded":
        r = cfg.rded
        # RDED draws mipc candidates per class; a class with fewer images offers all it has
        candidates = min(r.candidates, int(torch.bincount(train_y, minlength=len(classes)).min()))
        drawn = draw_per_class(train_y, candidates, cfg.seed, classes)            # [candidates, C]
        gen = torch.Generator().manual_seed(cfg.seed)
        picked = []
        try:
            for c in range(len(classes)):
                images, _, _ = peers.rded_select(models, train.read(drawn[:, c]), c, per_class, r.crops, r.factor, gen, device)
                picked.append(images)
        except ValueError as e:
            raise ConfigError(f"rded: {e}: lower budget.ipc or rded.factor, or raise rded.candidates") from None
        return torch.stack(picked, 1), {"rded_candidates": candidates}
    if method == "sre2l":
        s = cfg.sre2l
        result = peers.sre2l_recover(models, per_class, len(classes), train.shape, d.mean, d.std,
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
    dm, (train,) = data_splits(cfg, data, "train")
    d = DataMetrics.from_manifest(dm)
    C, numel = d.num_classes, d.in_chans * d.image_size ** 2
    per_class = cfg.method_per_class(C, numel)
    device, fast = compute_setup(cfg, trains=False)
    models = load_teachers(cfg, teachers, dm, device)
    natural, recorded = _peer_images(cfg, method, per_class, train, dm, models, device, progress)
    labels = ensemble_logits(Ensemble(models), PixelImages(natural.flatten(0, 1)), device, cfg.teachers.batch_size).to(getattr(torch, cfg.labels.dtype))
    similarity = set_similarity(models[0], natural.flatten(0, 1), torch.arange(C).repeat(per_class), device,
                                cfg.teachers.batch_size)
    ufc = torch.zeros(per_class, 0, 1, *natural.shape[2:])
    files = {"distilled.safetensors": {"natural": natural, "ufc": ufc, "soft_labels": labels}}
    stored = {name: tensor_bytes(t) for name, t in files["distilled.safetensors"].items()}
    budget = {
        "method": method, "ipc": cfg.budget.ipc, "num_subsets": per_class, "num_teachers": 0, "num_classes": C,
        "class_batches": 1, "num_natural": per_class * C, "num_ufcs": 0, "num_instances": per_class * C,
        "ufc_dtype": None, "label_dtype": cfg.labels.dtype, "stored_bytes": sum(stored.values()),
        "stored_bytes_by_tensor": stored, "budget_bytes": cfg.method_budget_bytes(C, numel),
        "train_bytes": train.nbytes, "compression_ratio": sum(stored.values()) / train.nbytes,
        "images_per_class_equivalent": per_class,
    }
    metrics = MethodSetMetrics(budget=budget, **d.description(), **recorded, feature_similarity=similarity,
                               instance_order="row r: one image of every class, classes 0..C-1",
                               compute=fast.describe(device, labels="fp32"))
    return _write(output, cfg, files, metrics, method=method)


def set_similarity(teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str, batch_size: int) -> dict:
    """`peers.feature_similarity` of a set's instances on `teacher`'s penultimate features, `batch_size` images a pass."""
    return peers.feature_similarity(peers.penultimate_features(teacher, images, device, batch_size), labels)


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
    dm, (test_split,) = data_splits(cfg, data, "test")
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
    test = held_or_streamed(test_split, "test", device, desc)
    with CompileTime(fast.compile) as compile_time:
        if score == "soft":
            result = train_student_model(student, images, t["soft_labels"], None, test, cfg.students, epochs,
                                         cfg.labels.temperature, augment, device, seed, desc=desc, progress=progress, fast_path=fast)
        else:
            result = train_student_hard(student, images, hard, test, cfg.students, epochs, augment, device, seed,
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
    dm, (train_split, test_split) = data_splits(cfg, data, "train", "test")
    device, fast = compute_setup(cfg, trains=True)
    desc = f"full data {arch}"
    train = held_or_streamed(train_split, "train", device, desc)
    # the test split held beside the training split only where both fit
    test = held_or_streamed(test_split, "test", device, desc, held=train_split.nbytes if isinstance(train, Held) else 0)
    epochs = cfg.students.full_data_epochs or cfg.students.epochs
    torch.manual_seed(cfg.seed)
    student = build_model(arch, dm).to(device)
    d = DataMetrics.from_manifest(dm)
    with CompileTime(fast.compile) as compile_time:
        result = train_student_hard(student, train, train.labels, test, cfg.students, epochs, (d.crop_padding, d.hflip),
                                    device, cfg.seed, desc=desc, progress=progress, fast_path=fast)
    best_epoch, best_acc = result.best
    metrics = FullDataMetrics(
        arch=arch, seed=cfg.seed, final_acc=result.final_acc, best_acc=best_acc, best_epoch=best_epoch,
        epochs=epochs, num_instances=len(train), curve=result.curve,
        compute=fast.describe(device, compile_time.seconds, training=fast.training_precision, evaluation="fp32"))
    return _write(output, cfg, {"weights.safetensors": cpu_weights(student)}, metrics, arch=arch)
