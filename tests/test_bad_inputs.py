"""Every bad input a user can give, as one table: the real CLI exits 2, names the field or file and the fix, and
leaves nothing behind.

Each row builds its inputs under `given/`, runs `infer_distill.cli.commands` in this process with `--out` (or
`--root`) at `out/`, and checks the exit code, fragments of the message and that the test folder holds nothing
the run made. Every failure happens before any training, so the whole table takes seconds. The store's own
cases (S3 URIs, manifests) have their table beside the store's tests.
"""
from __future__ import annotations

import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_folder
from PIL import Image

from infer_distill.cli import main

Build = Callable[[Path, Path], list[str]]  # (given folder, out folder) -> argv


def _sets(sets) -> list[str]:
    return [part for s in sets for part in ("--set", s)]


def _run(out: Path, sets=(), *args: str) -> list[str]:
    return ["run", "--out", str(out), "--no-progress", *_sets([*TINY, *sets]), *args]


# ----------------------------------------------------------------------------------------
# Row builders: config values, datasets, weight files, stage flags
# ----------------------------------------------------------------------------------------


def config(id: str, sets: list[str], *fragments: str):
    """`run` with these --set values."""
    return pytest.param(lambda given, out: _run(out, sets), fragments, id=id)


def config_file(id: str, text: str | bytes | None, *fragments: str):
    """`run --config FILE` with FILE holding `text` (None: no file there)."""
    def build(given: Path, out: Path) -> list[str]:
        path = given / "config.yaml"
        if text is not None:
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["run", "--config", str(path), "--out", str(out), "--no-progress"]
    return pytest.param(build, fragments, id=id)


def config_path(id: str, make: Callable[[Path], Path | str], *fragments: str):
    """`run --config PATH` with PATH what `make` gives (a folder, a device, a FIFO, a link)."""
    return pytest.param(lambda given, out: ["run", "--config", str(make(given)), "--out", str(out), "--no-progress"],
                        fragments, id=id)


def dataset(id: str, make: Callable[[Path], Path | str], *fragments: str, sets: tuple[str, ...] = (), name="imagefolder"):
    """`run` on the dataset `make` builds under given/ (it returns dataset.root)."""
    def build(given: Path, out: Path) -> list[str]:
        return _run(out, [f"dataset.name={name}", f"dataset.root={make(given)}", "budget.ipc=2", *sets])
    return pytest.param(build, fragments, id=id)


def weights(id: str, make: Callable[[Path], Path], *fragments: str, arch: str = "convnet_d2_w32"):
    """`run` on digits with teachers.pretrained.<arch> the file `make` writes."""
    def build(given: Path, out: Path) -> list[str]:
        return _run(out, [f"teachers.pretrained={{{arch}: {make(given)}}}"])
    return pytest.param(build, fragments, id=id)


def stage(id: str, args: list[str], *fragments: str, sets: tuple[str, ...] = ()):
    """`stage ARGS --root out/`."""
    return pytest.param(lambda given, out: ["stage", *args, "--root", str(out), *_sets([*TINY, *sets])], fragments, id=id)


# ---- files the rows give ---------------------------------------------------------------------


def images(given: Path, train: int = 4) -> Path:
    """A valid image folder (3 classes, 12x12 PNGs) that K=1 subsets fit."""
    return make_folder(given / "images", {"train": train, "test": 2})


def with_file(name: str, content: Callable[[], bytes]) -> Callable[[Path], Path]:
    """The valid image folder plus train/sky/<name> holding `content`."""
    def make(given: Path) -> Path:
        root = images(given)
        (root / "train" / "sky" / name).write_bytes(content())
        return root
    return make


def png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def bomb() -> bytes:
    """A PNG whose header says 20000 x 20000 pixels (over PIL's bomb limit): a few bytes, never decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def zipped(members: dict[str, bytes]) -> Callable[[Path], Path]:
    def make(given: Path) -> Path:
        with zipfile.ZipFile(given / "data.zip", "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return given / "data.zip"
    return make


def zipped_large(name: str, size: int) -> Callable[[Path], Path]:
    """A valid zipped dataset plus the member `name` of `size` zero bytes (stored deflated: a few hundred kB)."""
    def make(given: Path) -> Path:
        with zipfile.ZipFile(given / "data.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for member in ("train/a/0.png", "test/a/0.png"):
                z.writestr(member, solid())
            with z.open(name, "w", force_zip64=True) as f:
                chunk = bytes(1024 * 1024)
                for _ in range(size // len(chunk)):
                    f.write(chunk)
        return given / "data.zip"
    return make


def folder(layout: dict[str, bytes | None]) -> Callable[[Path], Path]:
    """A dataset root holding `layout`: path -> file bytes, or None for a folder."""
    def make(given: Path) -> Path:
        root = given / "root"
        root.mkdir()
        for rel, data in layout.items():
            path = root / rel
            if data is None:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        return root
    return make


def solid(w: int = 12, h: int = 12) -> bytes:
    return png(Image.new("RGB", (w, h), (0, 0, 255)))


def state_file(name: str, state: Callable[[], dict], save: str = "safetensors") -> Callable[[Path], Path]:
    def make(given: Path) -> Path:
        from safetensors.torch import save_file

        path = given / name
        tensors = state()
        if save == "safetensors":
            save_file(tensors, path)
        else:  # written, never read back here: what a user may hand over
            torch.save(tensors, path)
        return path
    return make


def net_state(arch: str, **sizes) -> Callable[[], dict]:
    def state() -> dict:
        from infer_distill.models.networks import create_model

        return create_model(arch, **{"num_classes": 10, "in_chans": 1, "image_size": 8, **sizes}).state_dict()
    return state


def torch_saved(name: str, obj: Callable[[], object]) -> Callable[[Path], Path]:
    def make(given: Path) -> Path:
        torch.save(obj(), given / name)
        return given / name
    return make


def fifo(name: str) -> Callable[[Path], Path]:
    """A FIFO (named pipe) at given/<name>: opening it to read blocks until someone writes, forever in a test."""
    def make(given: Path) -> Path:
        os.mkfifo(given / name)
        return given / name
    return make


def link(name: str, target: str) -> Callable[[Path], Path]:
    """A symlink at given/<name> to `target` (its own name: a loop)."""
    def make(given: Path) -> Path:
        os.symlink(target, given / name)
        return given / name
    return make


def with_entry(name: str, make_entry: Callable[[Path], None]) -> Callable[[Path], Path]:
    """The valid image folder plus train/sky/<name> made by `make_entry(path)` (a FIFO, a link)."""
    def make(given: Path) -> Path:
        root = images(given)
        make_entry(root / "train" / "sky" / name)
        return root
    return make


def tiny_imagenet(annotations: Callable[[Path], None]) -> Callable[[Path], Path]:
    """A tiny-imagenet root whose val/val_annotations.txt `annotations(path)` makes."""
    def make(given: Path) -> Path:
        root = folder({"train/n1/images/0.JPEG": solid(), "val/images/0.JPEG": solid()})(given)
        annotations(root / "val" / "val_annotations.txt")
        return root
    return make


def shards(members: list[tuple[str, bytes]], classes: bytes | None = b"sky\nleaf\n") -> Callable[[Path], Path]:
    """A WebDataset root: train-{0..1}.tar of valid samples (12x12 PNGs, 4 a class) with `members` appended to the
    second, test-0.tar of 2 a class, and classes.txt holding `classes` (None: none)."""
    import io
    import tarfile

    def tar(path: Path, items: list[tuple[str, bytes]]) -> None:
        with tarfile.open(path, "w") as t:
            for name, data in items:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))

    def samples(prefix: str, per_class: int) -> list[tuple[str, bytes]]:
        return [m for c in range(2) for i in range(per_class) for m in ((f"{prefix}{c}-{i}.png", solid()),
                                                                         (f"{prefix}{c}-{i}.cls", str(c).encode()))]

    def make(given: Path) -> Path:
        root = given / "wds"
        root.mkdir()
        train = samples("s", 4)
        tar(root / "train-0.tar", train[:8])
        tar(root / "train-1.tar", train[8:] + members)
        tar(root / "test-0.tar", samples("t", 2))
        if classes is not None:
            (root / "classes.txt").write_bytes(classes)
        return root
    return make


def raw_file(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(given: Path) -> Path:
        (given / name).write_bytes(data)
        return given / name
    return make


# ----------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------

WDS = ("dataset.train_shards=train-{0..1}.tar", "dataset.test_shards=test-0.tar")  # the shards `shards` writes

ROWS = [
    # ---- config: non-finite and out-of-range numbers, types, unknown keys ---------------------
    config("teachers.lr infinite", ["teachers.lr=.inf"], "teachers.lr: Input should be a finite number"),
    config("teachers.lr NaN", ["teachers.lr=.nan"], "teachers.lr: Input should be a finite number"),
    config("teachers.lr negative", ["teachers.lr=-0.1"], "teachers.lr: Input should be greater than 0"),
    config("teachers.lr huge", ["teachers.lr=1e9"], "teachers.lr: Input should be less than or equal to 10"),
    config("teachers.momentum 1", ["teachers.momentum=1"], "teachers.momentum: Input should be less than 1"),
    config("teachers.weight_decay negative", ["teachers.weight_decay=-1"], "teachers.weight_decay: Input should be greater"),
    config("teachers.label_smoothing above 1", ["teachers.label_smoothing=1.5"], "teachers.label_smoothing: Input should be less than 1"),
    config("teachers.epochs negative", ["teachers.epochs=-1"], "teachers.epochs: Input should be greater than or equal to 0"),
    config("teachers.epochs not a number", ["teachers.epochs=many"], "teachers.epochs: Input should be a valid integer", "'many'"),
    config("teachers.batch_size 0", ["teachers.batch_size=0"], "teachers.batch_size: Input should be greater than or equal to 1"),
    config("teachers.archs empty", ["teachers.archs=[]"], "teachers.archs: List should have at least 1 item"),
    config("teachers.archs a string", ["teachers.archs=resnet_tiny"], "teachers.archs: Input should be a valid list"),
    config("teachers.archs unknown", ["teachers.archs=[resnet_tiny, vgg99]"], "teachers.archs: unknown architecture 'vgg99'", "known: "),
    config("teachers.archs twice", ["teachers.archs=[resnet_tiny, resnet_tiny]"], "teachers.archs", "must be distinct"),
    config("teachers.archs without BatchNorm", ["teachers.archs=[convnet_d3_w32_nonorm, resnet_tiny]"],
           "teachers.archs", "'convnet_d3_w32_nonorm' has no BatchNorm layers, so it cannot be a teacher",
           "choose an architecture with BatchNorm"),
    config("teachers.pretrained not a teacher", ["teachers.pretrained={resnet50: torchvision}"], "not in teachers.archs"),
    config("teachers.pretrained empty path", ["teachers.pretrained={resnet_tiny: ''}"], "teachers.pretrained.resnet_tiny: String should have at least 1 character"),
    config("teachers.pretrained torchvision for a convnet", ["teachers.pretrained={convnet_d2_w32: torchvision}"],
           "teachers.pretrained.convnet_d2_w32=torchvision: torchvision has no published weights for 'convnet_d2_w32'",
           "or give a .safetensors/.pth file"),
    config("teachers.pretrained torchvision for a timm network", ["teachers.archs=[mobilenetv2]", "teachers.pretrained={mobilenetv2: torchvision}"],
           "torchvision has no published weights for 'mobilenetv2'; it is timm's mobilenetv2_100: use timm"),
    config("teachers.pretrained an unknown torchvision enum member",
           ["teachers.archs=[resnet18]", "teachers.pretrained={resnet18: 'torchvision:IMAGENET9K'}"],
           "ResNet18_Weights has no member 'IMAGENET9K'; use one of IMAGENET1K_V1"),
    config("teachers.pretrained an unknown timm tag", ["teachers.archs=[efficientnet_b0]", "teachers.pretrained={efficientnet_b0: 'timm:nope'}"],
           "timm has no pretrained efficientnet_b0.nope; its tags: "),
    config("teachers.normalization of a trained teacher", ["teachers.normalization={resnet_tiny: {mean: [0.5], std: [0.2]}}"],
           "teachers.normalization names 'resnet_tiny', which imports no weights"),
    config("teachers.normalization std 0", ["teachers.pretrained={resnet_tiny: w.pth}", "teachers.normalization={resnet_tiny: {mean: [0.5], std: [0]}}"],
           "teachers.normalization.resnet_tiny.std.0: Input should be greater than 0"),
    config("synthesis.lr minus infinity", ["synthesis.lr=-.inf"], "synthesis.lr: Input should be a finite number"),
    config("synthesis.iterations 0", ["synthesis.iterations=0"], "synthesis.iterations: Input should be greater than or equal to 1"),
    config("synthesis.betas above 1", ["synthesis.betas=[0.5, 1.5]"], "synthesis.betas.1: Input should be less than 1"),
    config("synthesis.betas one value", ["synthesis.betas=[0.5]"], "synthesis.betas.1: Field required"),
    config("synthesis.r_bn NaN", ["synthesis.r_bn=.nan"], "synthesis.r_bn: Input should be a finite number"),
    config("synthesis.first_bn_multiplier negative", ["synthesis.first_bn_multiplier=-1"], "synthesis.first_bn_multiplier: Input should be greater"),
    config("synthesis.jitter negative", ["synthesis.jitter=-1"], "synthesis.jitter: Input should be greater than or equal to 0"),
    config("synthesis.classes_per_ufc 0", ["synthesis.classes_per_ufc=0"], "synthesis.classes_per_ufc: Input should be greater"),
    config("synthesis.ufc_dtype unknown", ["synthesis.ufc_dtype=int8"], "synthesis.ufc_dtype: Input should be 'uint8', 'float16' or 'float32'"),
    config("synthesis.max_images_per_forward 0", ["synthesis.max_images_per_forward=0"],
           "synthesis.max_images_per_forward: Input should be greater than or equal to 1"),
    config("synthesis.max_images_per_forward below one UFC", ["synthesis.max_images_per_forward=9"],  # digits: 10 classes a UFC
           "synthesis.max_images_per_forward=9 is smaller than one UFC's group of 10 images", "lower synthesis.classes_per_ufc"),
    config("labels.temperature 0", ["labels.temperature=0"], "labels.temperature: Input should be greater than 0"),
    config("labels.temperature infinite", ["labels.temperature=.inf"], "labels.temperature: Input should be a finite number"),
    config("labels.modes unknown", ["labels.modes=[soft]"], "labels.modes.0: Input should be 'static' or 'dynamic'"),
    config("labels.dtype unknown", ["labels.dtype=bfloat16"], "labels.dtype: Input should be 'float16' or 'float32'"),
    config("students.lr infinite", ["students.lr=.inf"], "students.lr: Input should be a finite number"),
    config("students.mixup_alpha negative", ["students.mixup_alpha=-1"], "students.mixup_alpha: Input should be greater"),
    config("students.weight_decay NaN", ["students.weight_decay=.nan"], "students.weight_decay: Input should be a finite number"),
    config("students.seeds negative", ["students.seeds=[0, -1]"], "students.seeds.1: Input should be greater than or equal to 0"),
    config("students.seeds 2^64", ["students.seeds=[18446744073709551616]"], "students.seeds.0: Input should be less than 9223372036854775808"),
    config("students.seeds empty", ["students.seeds=[]"], "students.seeds: List should have at least 1 item"),
    config("students.epochs 0", ["students.epochs=0"], "students.epochs: Input should be greater than or equal to 1"),
    config("students.baselines twice", ["students.baselines=[random_soft, random_soft]"], "students.baselines", "must be distinct"),
    config("students.baselines unknown", ["students.baselines=[nope]"], "students.baselines.0: Input should be 'random_soft' or 'random_soft_steps'"),
    config("students.archs unknown", ["students.archs=[nope]"], "students.archs: unknown architecture 'nope'"),
    config("seed negative", ["seed=-1"], "seed: Input should be greater than or equal to 0"),
    config("seed 2^63", ["seed=9223372036854775808"], "seed: Input should be less than 9223372036854775808"),
    config("seed a fraction", ["seed=1.5"], "seed: Input should be a valid integer", "(given: 1.5)"),
    config("device unknown", ["device=tpu"], "device: Input should be 'auto', 'cpu' or 'cuda'"),
    config("precision unknown", ["precision=fp8"], "precision: Input should be 'auto', 'fp32' or 'bf16'"),
    config("budget.ipc 0", ["budget.ipc=0"], "budget.ipc: Input should be greater than or equal to 1"),
    config("budget.ipc too small for the teachers", ["budget.ipc=1"], "budget.ipc=1 is too small for INFER with 2 teachers and 10 classes",
           "Raise budget.ipc to at least 2"),
    config("dataset.name unknown", ["dataset.name=mnist"], "dataset.name: Input should be 'digits'"),
    config("dataset.image_size too small", ["dataset.image_size=4"], "dataset.image_size: Input should be greater than or equal to 8"),
    config("dataset.train_split leaves the root", ["dataset.train_split=../x"], "dataset.train_split: '../x' is not a folder name"),
    config("dataset.test_split a parent", ["dataset.test_split=.."], "dataset.test_split: '..' is not a folder name"),
    config("dataset.train_per_class 0", ["dataset.train_per_class=0"], "dataset.train_per_class: Input should be greater"),
    config("unknown key", ["synthesis.iteratons=5"], "synthesis.iteratons: unknown key (check the spelling; `infer-distill config` prints every key with its default)"),
    config("unknown section", ["optimiser.lr=1"], "optimiser: unknown key"),
    config("section given a value", ["teachers=5"], "teachers: Input should be a valid dictionary"),
    # ---- config: bounds where a larger value is an absurd allocation or run ----------------------
    config("budget.ipc 2^63", ["budget.ipc=9223372036854775808"], "budget.ipc: Input should be less than or equal to 1000"),
    config("budget.ipc 1e9 as a number", ["budget.ipc=1.0e+9"], "budget.ipc: Input should be less than or equal to 1000"),
    config("budget.ipc 1e9 as YAML text", ["budget.ipc=1e9"], "budget.ipc: Input should be a valid integer", "'1e9'"),
    config("budget.ipc 1001", ["budget.ipc=1001"], "budget.ipc: Input should be less than or equal to 1000"),
    config("dataset.crop_padding 100000", ["dataset.crop_padding=100000"], "dataset.crop_padding: Input should be less than or equal to 128"),
    config("dataset.crop_padding negative", ["dataset.crop_padding=-1"], "dataset.crop_padding: Input should be greater than or equal to 0"),
    config("dataset.image_size 100000", ["dataset.image_size=100000"], "dataset.image_size: Input should be less than or equal to 1024"),
    config("teachers.epochs a million", ["teachers.epochs=1000000"], "teachers.epochs: Input should be less than or equal to 10000"),
    config("teachers.batch_size a million", ["teachers.batch_size=1000000"], "teachers.batch_size: Input should be less than or equal to 65536"),
    config("students.epochs a million", ["students.epochs=1000000"], "students.epochs: Input should be less than or equal to 10000"),
    config("students.epochs_dynamic a million", ["students.epochs_dynamic=1000000"], "students.epochs_dynamic: Input should be less than or equal to 10000"),
    config("students.full_data_epochs a million", ["students.full_data_epochs=1000000"], "students.full_data_epochs: Input should be less than or equal"),
    config("students.eval_every a million", ["students.eval_every=1000000"], "students.eval_every: Input should be less than or equal to 10000"),
    config("students.batch_size a million", ["students.batch_size=1000000"], "students.batch_size: Input should be less than or equal to 65536"),
    config("students.seeds 101 of them", [f"students.seeds=[{', '.join(map(str, range(101)))}]"], "students.seeds: List should have at most 100 items"),
    config("synthesis.iterations a billion", ["synthesis.iterations=1000000000"], "synthesis.iterations: Input should be less than or equal to 100000"),
    config("synthesis.jitter a million", ["synthesis.jitter=1000000"], "synthesis.jitter: Input should be less than or equal to 1024"),
    config("sre2l.iterations a billion", ["methods=[infer, sre2l]", "sre2l.iterations=1000000000"], "sre2l.iterations: Input should be less than or equal to 100000"),
    config("sre2l.jitter a million", ["sre2l.jitter=1000000"], "sre2l.jitter: Input should be less than or equal to 1024"),
    config("rded.factor 100", ["rded.factor=100"], "rded.factor: Input should be less than or equal to 16"),
    config("rded.crops a million", ["rded.crops=1000000"], "rded.crops: Input should be less than or equal to 1000"),
    config("rded.candidates a billion", ["rded.candidates=1000000000"], "rded.candidates: Input should be less than or equal to 100000"),
    # ---- config: true/false is not a number ---------------------------------------------------------
    config("teachers.epochs true", ["teachers.epochs=true"], "teachers.epochs: Input should be a number, not a boolean"),
    config("students.epochs false", ["students.epochs=false"], "students.epochs: Input should be a number, not a boolean"),
    config("budget.ipc true", ["budget.ipc=true"], "budget.ipc: Input should be a number, not a boolean"),
    config("seed true", ["seed=true"], "seed: Input should be a number, not a boolean"),
    config("students.seeds [true]", ["students.seeds=[true]"], "students.seeds: Input should be a number, not a boolean"),
    config("teachers.lr true", ["teachers.lr=true"], "teachers.lr: Input should be a number, not a boolean"),
    config("synthesis.iterations true", ["synthesis.iterations=true"], "synthesis.iterations: Input should be a number, not a boolean"),
    config("dataset.image_size true", ["dataset.image_size=true"], "dataset.image_size: Input should be a number, not a boolean"),
    config("dataset.crop_padding true", ["dataset.crop_padding=true"], "dataset.crop_padding: Input should be a number, not a boolean"),
    config("synthesis.betas [true, 0.5]", ["synthesis.betas=[true, 0.5]"], "synthesis.betas: Input should be a number, not a boolean"),
    config("labels.temperature true", ["labels.temperature=true"], "labels.temperature: Input should be a number, not a boolean"),
    config("rded.factor true", ["rded.factor=true"], "rded.factor: Input should be a number, not a boolean"),
    config("students.mixup_alpha false", ["students.mixup_alpha=false"], "students.mixup_alpha: Input should be a number, not a boolean"),
    config("dataset.train_per_class true", ["dataset.train_per_class=true"], "dataset.train_per_class: Input should be a number, not a boolean"),
    # ---- config: the same thing twice -----------------------------------------------------------------
    config("students.seeds twice the same", ["students.seeds=[0, 0]"], "students.seeds: entries must be distinct, got [0, 0]"),
    config("students.archs twice", ["students.archs=[convnet_d3_w32, convnet_d3_w32]"], "students.archs: entries must be distinct"),
    config("labels.modes twice", ["labels.modes=[static, static]"], "labels.modes: label modes must be distinct"),
    config("methods twice", ["methods=[infer, infer]"], "methods: methods must be distinct"),
    config("students.scores twice", ["students.scores=[soft, soft]"], "students.scores: entries must be distinct"),
    config("students.protocols twice", ["students.protocols=[epochs, epochs]"], "students.protocols: entries must be distinct"),
    config("dataset.train_split equal to test_split", ["dataset.train_split=test"], "train_split and test_split both read the folder 'test'",
           "give the test images' own folder"),
    config("dataset.test_split equal to train_split", ["dataset.test_split=train"], "both read the folder 'train'"),
    config("imagenet train_split val", ["dataset.name=imagenet", "dataset.root=x", "dataset.train_split=val"], "both read the folder 'val'"),
    config("tiny-imagenet train_split val", ["dataset.name=tiny-imagenet", "dataset.root=x", "dataset.train_split=val"], "both read the folder 'val'"),
    config("cifar10 from an S3 prefix", ["dataset.name=cifar10", "dataset.root=s3://bucket/cifar"],
           "dataset.name=cifar10 reads local files, not an S3 prefix", "imagefolder, tiny-imagenet, imagenet, webdataset"),
    config("hf from an S3 prefix", ["dataset.name=hf", "dataset.root=s3://bucket/hf"], "dataset.name=hf reads local files"),
    config("--set a mapping with a key twice", ["teachers.pretrained={resnet_tiny: a.pth, resnet_tiny: b.pth}"],
           "--set value", "the key 'resnet_tiny' is given twice"),
    # ---- config files: encodings, keys twice, what is not a file ---------------------------------------
    config_file("--config not UTF-8", b"teachers:\n  archs: [r\xe9seau]\n", "config.yaml is not UTF-8 text (byte 0xe9 at offset 21)", "save it as UTF-8"),
    config_file("--config UTF-16", "students:\n  epochs: 2\n".encode("utf-16"), "config.yaml is not UTF-8 text"),
    config_file("--config a PNG", solid(), "config.yaml is not UTF-8 text"),
    config_file("--config a section twice", "teachers:\n  epochs: 1\nstudents:\n  epochs: 2\nteachers:\n  lr: 0.1\n",
                "config.yaml is not valid YAML", "the key 'teachers' is given twice (first on line 1): keep one"),
    config_file("--config a key twice", "students:\n  epochs: 2\n  epochs: 3\n", "the key 'epochs' is given twice (first on line 2)"),
    config_file("--config a nested key twice", "teachers:\n  pretrained:\n    resnet_tiny: a.pth\n    resnet_tiny: b.pth\n",
                "the key 'resnet_tiny' is given twice"),
    config_file("--config nested 200000 deep", "[" * 200_000 + "]" * 200_000, "nests too deeply to be a config"),
    config_file("--config over 1 MiB", "# " + "x" * (1024 * 1024) + "\n", "cannot be read", "over the limit of 1,048,576",
                "give a YAML file of at most 1,048,576 bytes"),
    config_file("--config a python object tag", "seed: !!python/object/apply:os.system [echo hi]\n", "config.yaml is not valid YAML",
                "could not determine a constructor"),
    config_file("--config a list as a key", "? [1, 2]\n: 3\n", "config.yaml is not valid YAML", "found unhashable key"),
    config_file("--config a key twice beside a merge", "base: &b {epochs: 1}\nstudents: {<<: *b, epochs: 2, epochs: 3}\n",
                "the key 'epochs' is given twice"),
    config_file("--config tab-indented", "students:\n\tepochs: 2\n", "config.yaml is not valid YAML"),
    config_file("--config a scalar", "5\n", "must hold a mapping of sections"),
    config_file("--config an alias bomb", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")) + "students:\n  seeds: *i\n",
        "students.seeds.0: Input should be a valid integer (given: [[[", "i: unknown key"),
    config_path("--config a directory", lambda given: given, "is a directory, not a file: give a path to a YAML file"),
    config_path("--config /dev/null", lambda given: "/dev/null", "config file /dev/null is a character device, not a file"),
    config_path("--config a FIFO", fifo("config.yaml"), "config.yaml is a FIFO (named pipe), not a file"),
    config_path("--config a symlink loop", link("config.yaml", "config.yaml"), "config.yaml cannot be read (Too many levels of symbolic links)"),
    config_path("--config below a file", lambda given: raw_file("plain", b"x")(given) / "config.yaml", "plain/config.yaml cannot be read (Not a directory)"),
    # ---- --set syntax and config files --------------------------------------------------------
    config("--set without =", ["synthesis.iterations"], "--set 'synthesis.iterations': expected key.path=value"),
    config("--set empty key", ["=5"], "--set '=5': the key '' has an empty part"),
    config("--set empty key part", ["teachers..lr=1"], "--set 'teachers..lr=1': the key 'teachers..lr' has an empty part"),
    config("--set below a value", ["teachers.epochs.x=1"], "--set 'teachers.epochs.x=1': 'epochs' is a value, not a section"),
    config_file("--config missing", None, "config.yaml does not exist: give a path to a YAML file, or one of the shipped configs"),
    config_file("--config not YAML", "teachers: [unclosed\n", "config.yaml is not valid YAML"),
    config_file("--config a list", "- a\n- b\n", "must hold a mapping of sections"),
    config_file("--config unknown key", "teachers:\n  lrr: 0.1\n", "config.yaml is invalid", "teachers.lrr: unknown key"),
    config_file("--config non-finite number", "students:\n  lr: .nan\n", "students.lr: Input should be a finite number"),
    # ---- datasets ------------------------------------------------------------------------------
    dataset("dataset.root missing", lambda given: given / "no-such-data", "no-such-data does not exist", "point it at the data directory"),
    pytest.param(lambda given, out: _run(out, ["dataset.name=imagefolder"]), ("dataset.root must be set",), id="dataset.root unset"),
    dataset("dataset.root a text file", raw_file("notes.txt", b"hello"), "notes.txt is neither a directory nor a zip archive"),
    dataset("dataset.root empty", folder({}), "has no 'train' split", "found top-level entries: (none: it is empty)"),
    dataset("split without class folders", folder({"train/README.txt": b"x", "test": None}), "split 'train' has no class folders"),
    dataset("class folder without images", folder({"train/a/notes.txt": b"x", "test/a/0.png": solid()}),
            "class folders without images", "['a']", "remove them or add images"),
    dataset("splits with other classes", folder({"train/a/0.png": solid(), "test/b/0.png": solid()}),
            "have different classes", "only in 'train': ['a']"),
    dataset("corrupted PNG", with_file("999-corrupt.png", lambda: b"\x89PNG\r\n\x1a\nnot really"), "cannot decode image",
            "999-corrupt.png", "remove or replace the file"),
    dataset("truncated PNG", with_file("999-truncated.png", lambda: solid(64, 64)[:60]), "cannot decode image", "999-truncated.png"),
    dataset("decompression bomb", with_file("999-bomb.png", bomb), "999-bomb.png is refused as a possible decompression bomb",
            "remove the file"),
    dataset("16-bit PNG", with_file("999-deep.png", lambda: png(Image.fromarray(np.full((12, 12), 40000, np.uint16)))),
            "999-deep.png has 16-bit samples (PIL mode I;16)", "convert the dataset to 8 bits"),
    dataset("zip member leaves its folder", zipped({"train/a/0.png": solid(), "train/a/../../x.png": solid(), "test/a/0.png": solid()}),
            "data.zip under dataset.root: member 'train/a/../../x.png' leaves its folder"),
    dataset("zip member absolute", zipped({"/train/a/0.png": solid()}), "member '/train/a/0.png' leaves its folder"),
    dataset("zip with another layout", zipped({"images/cat/0.png": solid()}), "data.zip", "train/<class>/<file>", "[images]"),
    dataset("broken zip in the root", folder({"part.zip": b"PK\x03\x04 not a zip"}), "part.zip under dataset.root is not a readable zip"),
    dataset("too few images per class", lambda given: images(given, train=2), "has 2 training images, but K=6",
            "lower budget.ipc or raise dataset.train_per_class", sets=("budget.ipc=10",)),
    dataset("images not square", folder({"train/a/0.png": solid(12, 9), "test/a/0.png": solid(12, 9)}), "is 12x9, not square",
            "set dataset.image_size", sets=("budget.ipc=3",)),  # one class: K = 1 needs ipc 3 (checked before decoding)
    dataset("images of two sizes", with_file("999-big.png", lambda: solid(16, 16)), "999-big.png is 16x16",
            "set dataset.image_size to resize"),
    dataset("cifar10 files missing", lambda given: given, "cannot read CIFAR-10", "set dataset.download=true", name="cifar10"),
    dataset("tiny-imagenet without annotations", folder({"train/n1/images/0.JPEG": solid(), "val/images/0.JPEG": solid()}),
            "val/val_annotations.txt is missing", name="tiny-imagenet"),
    # ---- datasets: what is not an image file (never read: a FIFO or device would block or never end) ---
    dataset("image a FIFO", with_entry("999-pipe.png", os.mkfifo), "cannot read image", "999-pipe.png",
            "a FIFO (named pipe), not a regular file", "replace it with an image file"),
    dataset("image a link to /dev/zero", with_entry("999-zero.png", lambda p: os.symlink("/dev/zero", p)), "999-zero.png",
            "a character device, not a regular file"),
    dataset("image a symlink loop", with_entry("999-loop.png", lambda p: os.symlink(p.name, p)), "999-loop.png",
            "Too many levels of symbolic links"),
    dataset("image a dangling link", with_entry("999-gone.png", lambda p: os.symlink("/no/such/image.png", p)), "999-gone.png",
            "No such file or directory"),
    dataset("image over 256 MiB", with_entry("999-huge.png", lambda p: (p.touch(), os.truncate(p, 300 * 1024 * 1024))),
            "999-huge.png", "314,572,800 bytes, over the limit of 268,435,456"),
    dataset("zip member over 256 MiB", zipped_large("train/a/1.png", 257 * 1024 * 1024), "train/a/1.png",
            "269,484,032 bytes, over the limit of 268,435,456", sets=("budget.ipc=3",)),
    dataset("dataset.root a FIFO", fifo("data"), "dataset.root", "data is a FIFO (named pipe): point it at the data directory or .zip"),
    dataset("dataset.root a FIFO named .zip", fifo("data.zip"), "data.zip is a FIFO (named pipe)"),
    dataset("dataset.root /dev/null", lambda given: "/dev/null", "dataset.root /dev/null is a character device"),
    dataset("dataset.root a symlink loop", link("data", "data"), "dataset.root", "cannot be read (Too many levels of symbolic links)"),
    dataset("a FIFO named .zip in the root", lambda given: (os.mkfifo(given / "x.zip"), given)[1], "has no 'train' split", "x.zip"),
    # ---- datasets: WebDataset shards -----------------------------------------------------------
    config("webdataset without shards", ["dataset.name=webdataset", "dataset.root=x"],
           "dataset.train_shards must be set for dataset.name=webdataset"),
    dataset("webdataset pattern unbalanced", shards([]), "dataset.train_shards='train-{0..1.tar'", "a '{' without its '}'",
            name="webdataset", sets=("dataset.train_shards=train-{0..1.tar", "dataset.test_shards=test-0.tar")),
    dataset("webdataset shard missing", shards([]), "train-2.tar does not exist", "fix dataset.train_shards",
            name="webdataset", sets=("dataset.train_shards=train-{0..2}.tar", "dataset.test_shards=test-0.tar")),
    dataset("webdataset label out of range", shards([("x.png", solid()), ("x.cls", b"2")]), "train-1.tar: member 'x.cls'",
            "holds the label 2, outside 0..1", name="webdataset", sets=WDS),
    dataset("webdataset label not a number", shards([("x.png", solid()), ("x.cls", b"sky")]), "train-1.tar: member 'x.cls'",
            "holds 'sky', not a class index", name="webdataset", sets=WDS),
    dataset("webdataset sample without label", shards([("x.png", solid())]), "train-1.tar: sample 'x' lacks a .cls label",
            name="webdataset", sets=WDS),
    dataset("webdataset sample without image", shards([("x.cls", b"1")]), "train-1.tar: sample 'x' lacks an image",
            name="webdataset", sets=WDS),
    dataset("webdataset shard not a tar", lambda given: (shards([])(given) / "train-1.tar").write_bytes(b"no tar" * 200)
            and given / "wds", "train-1.tar is not a readable tar archive", name="webdataset", sets=WDS),
    dataset("webdataset without classes", shards([], classes=None), "has no classes.txt", "set dataset.num_classes",
            name="webdataset", sets=WDS),
    dataset("webdataset classes.txt disagrees", shards([]), "dataset.num_classes=3 but", "names 2 classes",
            name="webdataset", sets=(*WDS, "dataset.num_classes=3")),
    dataset("tiny-imagenet annotations not UTF-8", tiny_imagenet(lambda p: p.write_bytes(b"0.JPEG\tn\xe91\n")),
            "val/val_annotations.txt is not UTF-8 text", name="tiny-imagenet"),
    dataset("tiny-imagenet annotations a FIFO", tiny_imagenet(os.mkfifo), "cannot read val/val_annotations.txt",
            "a FIFO (named pipe)", name="tiny-imagenet"),
    # ---- teacher weight files ------------------------------------------------------------------
    weights("pretrained file missing", lambda given: given / "none.safetensors", "teachers.pretrained.convnet_d2_w32",
            "none.safetensors is not a file; give a .safetensors or .pth/.pt state dict"),
    weights("pretrained a folder", lambda given: given, "teachers.pretrained.convnet_d2_w32", "is not a file"),
    weights("pretrained a text file", raw_file("notes.safetensors", b"these are no weights"),
            "notes.safetensors is neither a safetensors nor a torch.save file", "safetensors.torch.save_file"),
    weights("pretrained header too large", raw_file("huge.safetensors", (2**62).to_bytes(8, "little") + b"{}"),
            "huge.safetensors is neither a safetensors nor a torch.save file"),
    weights("pretrained torch.save of an object", torch_saved("teacher.pt", lambda: {"w": torch.zeros(1), "p": Path("x")}),
            "teacher.pt cannot be read with torch.load(weights_only=True)", "constructs nothing else",
            "Unsupported global: GLOBAL pathlib.PosixPath"),
    weights("pretrained bare pickle", raw_file("teacher.pkl", pickle.dumps({"w": [1.0]}, protocol=4)),
            "teacher.pkl cannot be read with torch.load(weights_only=True)"),
    weights("pretrained torch.save of no tensors", torch_saved("teacher.pth", lambda: {"epoch": 3, "w": [1.0]}),
            "teacher.pth holds entries that are not tensors (['epoch', 'w'])"),
    weights("pretrained .pth of another architecture", state_file("other.pth", net_state("resnet_tiny"), save="torch"),
            "the weights in", "other.pth do not fit convnet_d2_w32", "missing", "unexpected"),
    weights("pretrained of another architecture", state_file("other.safetensors", net_state("resnet_tiny")),
            "the weights in", "other.safetensors do not fit convnet_d2_w32", "missing", "unexpected"),
    weights("pretrained with the Normalize wrapper", state_file("wrapped.safetensors", net_state("convnet_d2_w32", mean=[0.5], std=[0.2])),
            "wrapped.safetensors do not fit convnet_d2_w32", "without the Normalize wrapper"),
    weights("pretrained for other classes", state_file("cifar100.safetensors", net_state("convnet_d2_w32", num_classes=100)),
            "do not fit convnet_d2_w32 for this dataset", "'classifier.weight' has shape [100, 128], [10, 128] needed"),
    weights("pretrained for other channels", state_file("rgb.safetensors", net_state("convnet_d2_w32", in_chans=3)),
            "tensor 'features.0.weight' has shape [32, 3, 3, 3], [32, 1, 3, 3] needed"),
    weights("pretrained a FIFO", fifo("teacher.safetensors"), "teacher.safetensors is not a file"),
    weights("pretrained /dev/urandom", lambda given: Path("/dev/urandom"), "/dev/urandom is not a file"),
    weights("pretrained a symlink loop", link("loop.pth", "loop.pth"), "loop.pth is not a file"),
    # ---- stage flags ---------------------------------------------------------------------------
    stage("--subset-ids not numbers", ["synthesize-ufc", "--subset-ids", "0,x"], "--subset-ids '0,x': expected comma-separated subset numbers"),
    stage("--subset-ids twice the same", ["synthesize-ufc", "--subset-ids", "1,1"], "subset ids [1, 1] must be distinct numbers from 0"),
    stage("--subset-ids negative", ["synthesize-ufc", "--subset-ids=-1,0"], "must be distinct numbers from 0"),
    stage("--subset-ids empty", ["synthesize-ufc", "--subset-ids", ","], "--subset-ids ',': expected comma-separated subset numbers"),
    stage("--subset-ids missing", ["synthesize-ufc"], "stage synthesize-ufc needs --subset-ids"),
    stage("--arch missing", ["train-teacher"], "stage train-teacher needs --arch"),
    stage("--arch not a teacher", ["train-teacher", "--arch", "resnet50"], "teacher 'resnet50' is not in teachers.archs"),
    stage("--arch unknown student", ["evaluate-student", "--arch", "vgg99"], "student architecture 'vgg99' (--arch) is unknown", "known: "),
    stage("--arch unknown baseline student", ["evaluate-baseline", "--arch", "vgg99", "--baseline", "random_soft"],
          "student architecture 'vgg99' (--arch) is unknown"),
    stage("--baseline missing", ["evaluate-baseline", "--arch", "convnet_d3_w32"], "stage evaluate-baseline needs --baseline"),
    stage("--baseline unknown", ["evaluate-baseline", "--arch", "convnet_d3_w32", "--baseline", "nope"],
          "argument --baseline: invalid choice: 'nope'", "random_soft"),
    stage("--seed negative", ["evaluate-student", "--arch", "convnet_d3_w32", "--seed=-1"], "--seed -1: a seed must be at least 0"),
    stage("--seed 2^64", ["evaluate-student", "--arch", "convnet_d3_w32", "--seed", str(2**64)], "a seed must be at least 0 and below 2^63"),
    stage("--seed not a number", ["evaluate-student", "--arch", "convnet_d3_w32", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    stage("--label-mode unknown", ["evaluate-student", "--arch", "convnet_d3_w32", "--label-mode", "soft"],
          "argument --label-mode: invalid choice: 'soft'"),
    stage("stage unknown", ["distil"], "invalid choice: 'distil'", "prepare-data"),
    stage("train-teacher, pretrained file missing", ["train-teacher", "--arch", "resnet_tiny"],
          "teachers.pretrained.resnet_tiny: /no/such.safetensors is not a file", sets=("teachers.pretrained={resnet_tiny: /no/such.safetensors}",)),
    pytest.param(lambda given, out: ["plan", "--items-dir", "/dev/null"], ("--items-dir /dev/null: cannot make that folder "
                 "(a character device): give a folder path",), id="plan --items-dir /dev/null"),
    pytest.param(lambda given, out: ["plan", "--items-dir", str(raw_file("plain", b"x")(given) / "items")],
                 ("plain/items: cannot make that folder (Not a directory)",), id="plan --items-dir below a file"),
    pytest.param(lambda given, out: ["plan", "--items-dir", str(fifo("items")(given))],
                 ("cannot make that folder (a FIFO (named pipe))",), id="plan --items-dir a FIFO"),
    pytest.param(lambda given, out: ["stage", "select-subsets", "--out", str(out), *_sets(TINY)],
                 ("stage select-subsets needs --data (or --root to derive every location)",), id="input location missing"),
]


# ----------------------------------------------------------------------------------------
# The test
# ----------------------------------------------------------------------------------------


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def assert_nothing_left(root: Path, before: set[Path]) -> None:
    """Nothing under `root` that the refused run made: no file, no folder."""
    made = sorted(_tree(root) - before)
    assert not made, f"the refused run left: {made}"


def test_the_table_is_large_and_its_ids_distinct():
    assert len(ROWS) >= 190 and len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("build, fragments", ROWS)
def test_bad_input_exits_2_naming_it_and_leaves_nothing(build: Build, fragments: tuple[str, ...], tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory would show in the tree too
    given, out = tmp_path / "given", tmp_path / "out"
    given.mkdir()
    argv = build(given, out)
    before = _tree(tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses flags by exiting 2
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert "Traceback" not in err
    assert_nothing_left(tmp_path, before)


# ----------------------------------------------------------------------------------------
# Links in image folders: followed, never walked round
# ----------------------------------------------------------------------------------------


def _load(root: Path):
    from infer_distill.config.schema import DatasetConfig
    from infer_distill.data.sources import load_dataset, source_digest

    cfg = DatasetConfig(name="imagefolder", root=str(root))
    return load_dataset(cfg), source_digest(cfg)


def test_a_class_folder_that_is_a_symlink_is_read_through_it(tmp_path):
    root = images(tmp_path)
    os.rename(root / "train" / "sky", tmp_path / "sky-elsewhere")
    os.symlink(tmp_path / "sky-elsewhere", root / "train" / "sky")
    data, digest = _load(root)
    assert data.classes == ["apple", "leaf", "sky"] and data.train_y.bincount().tolist() == [4, 4, 4]
    assert digest["files"] == 4 * 3 + 2 * 3


def test_a_symlink_loop_in_an_image_folder_is_walked_once(tmp_path):
    root = images(tmp_path)
    os.symlink(".", root / "train" / "sky" / "again")      # sky/again/again/... is sky itself
    os.symlink("..", root / "train" / "sky" / "up")        # sky/up is train/, which holds sky again
    data, digest = _load(root)
    assert data.train_y.bincount().tolist() == [4, 4, 4]   # each image once: no folder entered twice
    assert digest == _load(root)[1]


def test_show_prints_a_manifest_with_values_of_any_type(tmp_path, capsys):
    """`show` prints what an altered manifest holds (its checks are the readers'), with no traceback."""
    from infer_distill.storage import open_artifact

    open_artifact(tmp_path / "art").write({"x.bin": b"x"}, {"stage": ["not", "a", "stage"], "metrics": [1, 2],
                                                             "elapsed_s": "long", "inputs": "data", "seed": {"a": 1}})
    assert main(["show", str(tmp_path / "art")]) == 0
    out = capsys.readouterr().out
    assert "['not', 'a', 'stage'] artifact" in out and "in long s" in out and "input " in out and "data" in out
    assert main(["show", str(tmp_path)]) == 0  # the folder above: a run root listing it


def test_a_yaml_merge_key_is_no_key_given_twice(tmp_path):
    """`<<: *base` then a key of the base: an override YAML allows, not a key written twice."""
    from infer_distill.config.loading import load_config

    path = tmp_path / "c.yaml"
    path.write_text("teachers:\n  <<: {epochs: 3, lr: 0.1}\n  epochs: 4\n")
    cfg = load_config(path)
    assert (cfg.teachers.epochs, cfg.teachers.lr) == (4, 0.1)
