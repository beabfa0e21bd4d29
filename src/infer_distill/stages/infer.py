"""INFER's stages, and the two every method shares (prepare-data, train-teacher).
"""
from __future__ import annotations

import math

import torch

from infer_distill.config.budget import BASELINES
from infer_distill.config.schema import Config
from infer_distill.dag.metrics import (
    BaselineMetrics,
    DataMetrics,
    DistilledMetrics,
    StudentMetrics,
    SubsetsMetrics,
    TeacherMetrics,
    UfcShardMetrics,
)
from infer_distill.data.augment import augmentation
from infer_distill.data.sources import encoded_storage, open_source
from infer_distill.data.splits import EncodedSplitWriter, SplitWriter
from infer_distill.data.stream import ChannelStats
from infer_distill.errors import DataError, StageError
from infer_distill.method.synthesis import check_forward_budget, decode_ufc, encode_ufc, synthesize_ufcs
from infer_distill.method.training import Ensemble, PixelImages, StudentResult, evaluate, train_student_model, train_teacher_model
from infer_distill.models.architectures import has_small_stem
from infer_distill.models.networks import MODEL_REGISTRY, SMALL_IMAGE_MAX, check_architecture, describe_architecture
from infer_distill.outputs.instances import DistilledInstances, read_distilled
from infer_distill.runtime.fast_path import CompileTime
from infer_distill.stages.artifacts import _begin, _write, load_input, sources, tensor_bytes
from infer_distill.stages.inputs import (
    _import_weights,
    build_model,
    compute_setup,
    cpu_weights,
    data_splits,
    held_or_streamed,
    load_teachers,
)
from infer_distill.stages.preflight import STEMS, _require_teacher, check_pretrained
from infer_distill.storage import open_artifact

# ----------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------


def prepare_data(cfg: Config, out: str, progress: bool = True) -> dict:
    """Materialise the train/test split once (data.splits), so later stages never touch the source.

    As uint8 rows, or as the source's image files with how they decode to those rows (dataset.storage).

    The source is listed first (folders and zips: every file, nothing decoded), so a budget the classes cannot
    fill is refused before any decoding; then each split streams through: decoded a batch at a time on the
    usable cores (image files stored as they are: each one's header checked, pixels decoded only for channel
    statistics the source does not publish), its channel statistics accumulated, its rows written as they come.
    Memory is a few batches, whatever the dataset's size.
    """
    output = _begin(out, {})
    read = sources(cfg, "prepare-data")  # before loading: a source changed while it is read is remade next time
    with open_source(cfg.dataset) as source:
        if cfg.dataset.download:
            read = sources(cfg, "prepare-data")  # the files the download has just fetched
        classes = source.classes
        k = cfg.check_budget(len(classes))
        train_split, test_split = source.split("train"), source.split("test")
        if train_split.class_counts is not None:  # known from the listing: refused before a pixel is decoded
            _check_per_class(train_split.class_counts, k, classes)
        stats = ChannelStats() if source.stats is None else None
        on_batch = (lambda x, _y: stats.add(x)) if stats is not None else None
        encoded = encoded_storage(cfg.dataset, source)
        if encoded is None:
            train = SplitWriter("train", train_split.batches(PREPARE_BATCH, progress=progress), len(classes), on_batch)
            test = SplitWriter("test", test_split.batches(PREPARE_BATCH, progress=progress), len(classes))
        else:  # the image files as they are: pixels decoded only where the channel statistics need them
            train = EncodedSplitWriter("train", train_split.encoded(PREPARE_BATCH, stats is not None, progress),
                                       encoded, len(classes), on_batch)
            test = EncodedSplitWriter("test", test_split.encoded(PREPARE_BATCH, False, progress), encoded, len(classes))

        def metrics() -> DataMetrics:  # what the splits' writers counted as the rows streamed by
            _check_per_class(train.class_counts, k, classes)  # a source without a listing (WebDataset): once read
            mean, std = source.stats or stats.result()
            in_chans, image_size = train.shape[0], train.shape[-1]
            padding, hflip = augmentation(cfg.dataset, image_size)
            return DataMetrics(
                num_classes=len(classes), classes=classes, in_chans=in_chans, image_size=image_size,
                mean=list(mean), std=list(std), num_train=train.count, num_test=test.count,
                min_train_per_class=int(train.class_counts.min()), crop_padding=padding, hflip=hflip,
                splits={"train": train.description(), "test": test.description()},
            )

        return _write(output, cfg, {**train.files(), **test.files()}, metrics, read, stage=DataMetrics.kind)


PREPARE_BATCH = 256  # images decoded and written at a time: 38 MB at 224 px, a few of them in flight


def _check_per_class(counts: torch.Tensor, k: int, classes: list[str]) -> None:
    """K disjoint subsets need K training images of every class: refused here, not after the teachers trained."""
    if int(counts.min()) < k:
        c = int(counts.argmin())
        raise DataError(f"class {classes[c]!r} has {int(counts[c])} training images, but K={k} disjoint subsets need {k} "
                        "per class; lower budget.ipc or raise dataset.train_per_class")


def train_teacher(cfg: Config, arch: str, data: str, out: str, progress: bool = True) -> dict:
    """Train one teacher architecture on the real training set (or import given weights); record its test accuracy."""
    if arch not in cfg.teachers.archs:
        raise StageError(f"teacher {arch!r} is not in teachers.archs {cfg.teachers.archs}")
    check_pretrained(cfg, arch)
    output = _begin(out, {"data": data})
    device, fast = compute_setup(cfg, trains=True)
    dm, (test,) = data_splits(cfg, data, "test")  # evaluated once, batch by batch: never held whole
    torch.manual_seed(cfg.seed)
    small_stem = cfg.teachers.small_image_stem(arch)
    model = build_model(arch, dm, small_stem)
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
            _, (train,) = data_splits(cfg, data, "train")  # imported weights read no training image
            rows = held_or_streamed(train, "train", device, f"teacher {arch}")
            losses = train_teacher_model(model, rows, cfg.teachers, (d.crop_padding, d.hflip), device, cfg.seed,
                                         desc=f"teacher {arch}", progress=progress, fast_path=fast)
            trained = {"training": fast.training_precision}
    fast.place(model, device)
    acc = evaluate(model, test, device, cfg.teachers.batch_size)
    _check_teacher_accuracy(cfg, arch, acc, d)
    metrics = TeacherMetrics(arch=arch, test_acc=acc, train_losses=losses, imported_from=source,
                             architecture=describe_architecture(arch, d.num_classes, d.in_chans, d.image_size, small_stem),
                             num_params=sum(p.numel() for p in model.parameters()),
                             compute=fast.describe(device, compile_time.seconds, **trained, evaluation="fp32"))
    return _write(output, cfg, {"weights.safetensors": cpu_weights(model)}, metrics, read, arch=arch)


def _check_teacher_accuracy(cfg: Config, arch: str, acc: float, d: DataMetrics) -> None:
    """Refuse a teacher that scores about chance: its BatchNorm statistics and soft labels would carry nothing of the
    data (weights loaded into a network other than the one they were trained in score so, without any error)."""
    margin, chance = cfg.teachers.min_accuracy_over_chance, 1 / d.num_classes
    if margin is None or acc >= chance + margin:
        return
    source = cfg.teachers.pretrained.get(arch)
    if source is None:
        why = "train it longer (teachers.epochs) or with another lr"
    else:
        why = f"the weights in {source} do not work in the network built for them"
        if has_small_stem(arch) and d.image_size <= SMALL_IMAGE_MAX:
            other = "stock" if cfg.teachers.small_image_stem(arch) else "small_image"
            why += (f": if they were trained in the {other} network, set teachers.pretrained_stem.{arch}={other} ({STEMS}); "
                    "else check teachers.normalization")
        else:
            why += "; check that they were trained on this dataset, and teachers.normalization"
    raise StageError(f"teacher {arch}: test accuracy {acc:.1%} is less than {margin:.1%} above chance ({chance:.1%} for "
                     f"{d.num_classes} classes): {why}; teachers.min_accuracy_over_chance=null accepts it")


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
    dm, (train,) = data_splits(cfg, data, "train")
    d = DataMetrics.from_manifest(dm)
    C = d.num_classes
    K = cfg.check_budget(C)
    indices = draw_per_class(train.labels, K, cfg.seed, d.classes)   # the labels alone: no image is read
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
    dm, (train,) = data_splits(cfg, data, "train")
    sub_art, sub_manifest = load_input(subsets, cfg, "select-subsets")
    indices = sub_art.read_tensors("subsets.safetensors")["indices"]
    K = len(indices)
    if subset_ids[-1] >= K:
        raise StageError(f"subset ids {subset_ids} must be within 0..{K - 1} (K={K})")
    check_forward_budget(indices.shape[1], cfg.synthesis)  # before the teachers load
    device, fast = compute_setup(cfg, trains=False)
    models = load_teachers(cfg, teachers, dm, device)
    # its subsets' rows alone: uint8 [S, C, ch, H, W]
    natural = train.read(indices[subset_ids].flatten()).reshape(len(subset_ids), indices.shape[1], *train.shape)
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


@torch.no_grad()
def ensemble_logits(ensemble: Ensemble, images: torch.Tensor | DistilledInstances, device: str, batch_size: int) -> torch.Tensor:
    """The ensemble's averaged logits of `images`, `batch_size` at a time (callers give teachers.batch_size: no more
    memory than a teacher's training step)."""
    return torch.cat([ensemble(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])



def soft_label(cfg: Config, data: str, subsets: str, teachers: list[str], ufc: list[str], out: str) -> dict:
    """Collect every UFC shard; static labels = the teachers' mean logits on every (un-augmented) instance."""
    output = _begin(out, {"data": data, "subsets": subsets, "teachers": teachers, "ufc": ufc})
    dm, (train,) = data_splits(cfg, data, "train")
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
    natural = train.read(indices.flatten()).reshape(K, C, *train.shape)     # [K, C, ch, H, W]: the K*C subset rows
    device, fast = compute_setup(cfg, trains=False)
    ensemble = Ensemble(load_teachers(cfg, teachers, dm, device))
    instances = DistilledInstances(natural, decode_ufc(stored_ufc), cfg.synthesis.classes_per_ufc)  # composed per batch
    labels = ensemble_logits(ensemble, instances, device, cfg.teachers.batch_size).to(getattr(torch, cfg.labels.dtype))

    M, B = stored_ufc["ufc"].shape[1], stored_ufc["ufc"].shape[2]
    files = {"distilled.safetensors": {"natural": natural, **stored_ufc, "soft_labels": labels}}
    stored = {name: tensor_bytes(t) for name, t in files["distilled.safetensors"].items()}
    budget = {
        "ipc": cfg.budget.ipc, "num_subsets": K, "num_teachers": M, "num_classes": C, "class_batches": B,
        "num_natural": K * C, "num_ufcs": K * M * B, "num_instances": len(instances),
        "ufc_dtype": cfg.synthesis.ufc_dtype, "label_dtype": cfg.labels.dtype,
        "stored_bytes": sum(stored.values()), "stored_bytes_by_tensor": stored, "train_bytes": train.nbytes,
        "compression_ratio": sum(stored.values()) / train.nbytes,
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
    dm, (test_split,) = data_splits(cfg, data, "test")
    d = DataMetrics.from_manifest(dm)
    art, _ = load_input(distilled, cfg, "soft-label")
    t = read_distilled(art)
    images = DistilledInstances(t["natural"], t["ufc"], cfg.synthesis.classes_per_ufc)  # each batch composed when drawn
    device, fast = compute_setup(cfg, trains=True)
    # dynamic labels: the teachers label every batch inside the training step, so they run as the student does
    ensemble = Ensemble(load_teachers(cfg, teachers, dm, device, fast)) if label_mode == "dynamic" else None
    desc = f"student {arch} {label_mode} seed {seed}"
    test = held_or_streamed(test_split, "test", device, desc)
    torch.manual_seed(seed)
    student = build_model(arch, dm).to(device)
    with CompileTime(fast.compile) as compile_time:
        result: StudentResult = train_student_model(
            student, images, t["soft_labels"] if ensemble is None else None, ensemble, test, cfg.students,
            cfg.students.epochs_for(label_mode), cfg.labels.temperature, (d.crop_padding, d.hflip),
            device, seed, desc=desc, progress=progress, fast_path=fast)
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
    dm, (train, test_split) = data_splits(cfg, data, "train", "test")
    sub_art, _ = load_input(subsets, cfg, "select-subsets")
    subset_indices = sub_art.read_tensors("subsets.safetensors")["indices"]
    d = DataMetrics.from_manifest(dm)
    per_class = cfg.baseline_per_class(d.num_classes, d.in_chans * d.image_size ** 2)
    drawn = draw_per_class(train.labels, per_class, cfg.seed, d.classes)        # [per_class, C]
    if not torch.equal(drawn[: len(subset_indices)], subset_indices):
        raise StageError(f"{subsets} holds subsets that are not the first rows of this config's draw: rerun select-subsets")
    natural = train.read(drawn.flatten())                 # the drawn rows alone, row-major: INFER's instance order
    images = PixelImages(natural)                         # float pixels a batch at a time: uint8 held, not float32
    # labelled as soft-label labels (fp32 teachers), trained as evaluate-student trains (the fast path on CUDA)
    device, fast = compute_setup(cfg, trains=True)
    ensemble = Ensemble(load_teachers(cfg, teachers, dm, device))
    labels = ensemble_logits(ensemble, images, device, cfg.teachers.batch_size).to(getattr(torch, cfg.labels.dtype))

    infer_steps = cfg.infer_static_steps(d.num_classes)
    steps_per_epoch = math.ceil(len(images) / cfg.students.batch_size)
    epochs = cfg.baseline_epochs(baseline, len(images), d.num_classes)
    desc = f"baseline {baseline} {arch} seed {seed}"
    test = held_or_streamed(test_split, "test", device, desc)
    torch.manual_seed(seed)
    student = build_model(arch, dm).to(device)
    with CompileTime(fast.compile) as compile_time:
        result = train_student_model(
            student, images, labels.float(), None, test, cfg.students, epochs, cfg.labels.temperature,
            (d.crop_padding, d.hflip), device, seed, desc=desc, progress=progress, fast_path=fast)
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
