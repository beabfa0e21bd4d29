"""Checks that run before any expensive work: the config, the output locations, teachers'
architectures and pretrained files.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from infer_distill.config.budget import KNOWN_IMAGES, KNOWN_NUM_CLASSES
from infer_distill.config.schema import Config
from infer_distill.dag.metrics import DataMetrics
from infer_distill.errors import ConfigError, DataError
from infer_distill.method.synthesis import BatchNormUseError, check_forward_budget, recorded_bn_inputs
from infer_distill.models import architectures
from infer_distill.models.networks import (
    Normalize,
    check_architecture,
    create_model,
    library_weights,
    read_pth,
    require_batchnorm,
)
from infer_distill.runtime.fast_path import resolve_fast_path
from infer_distill.storage import open_artifact, read_file

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
        cfg.check_budget(KNOWN_NUM_CLASSES[cfg.dataset.name])
        check_forward_budget(KNOWN_NUM_CLASSES[cfg.dataset.name], cfg.synthesis)
    elif cfg.dataset.root is None:
        raise DataError(f"dataset.root must be set for dataset.name={cfg.dataset.name!r} (a directory or .zip)")
    # lexists: a symlink loop or a FIFO at the root is there, and the loader says what it is
    # hf: a root that is no path is a Hub id; an s3:// root (folders, WebDataset shards) is listed when the source opens
    elif not os.path.lexists(Path(cfg.dataset.root).expanduser()) and cfg.dataset.name != "hf" and "://" not in cfg.dataset.root:
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
        size, shapes = (m.num_classes, m.in_chans, m.image_size), True
    elif cfg.dataset.name in KNOWN_IMAGES:
        classes, chans, side = KNOWN_IMAGES[cfg.dataset.name]
        size, shapes = (classes, chans, cfg.dataset.image_size or side), True
    else:
        size, shapes = (2, 3, 32), False

    def expected(small_stem: bool) -> dict[str, list[int]]:
        model = create_model(arch, num_classes=size[0], in_chans=size[1], image_size=size[2], small_stem=small_stem)
        return {k: list(v.shape) for k, v in _network(model).state_dict().items()}

    small_stem, found = cfg.teachers.small_image_stem(arch), _file_shapes(arch, source)
    try:
        _check_fits(arch, source, expected(small_stem), found, shapes)
    except ConfigError:
        if not architectures.has_small_stem(arch) or expected(not small_stem) != found:
            raise
        want, have = ("small_image", "stock") if not small_stem else ("stock", "small_image")
        raise ConfigError(f"teachers.pretrained_stem.{arch}: the weights in {source} fit {arch} with the {want} stem, not "
                          f"the {have} one it is set to; set teachers.pretrained_stem.{arch}={want} if they were trained "
                          f"that way ({STEMS}), or give weights of the {have} network") from None


# What each value of teachers.pretrained_stem builds, as the refusals name them
STEMS = ("stock: the library's own network; small_image: the stride-1 stem without max-pool that teachers trained "
         "here get at 64 px and below")


def _file_shapes(arch: str, source: str) -> dict[str, list[int]]:
    """{tensor name: shape} of a weights file; refuses anything but a state dict."""
    return {k: list(v.shape) for k, v in read_weights(arch, source)[0].items()}


def read_weights(arch: str, source: str) -> tuple[dict[str, torch.Tensor], bytes]:
    """The state dict in `teachers.pretrained.<arch>`'s file, a local path or `s3://bucket/key` (read with the
    environment's credentials), and the file's bytes: a safetensors file, or a torch.save file read with
    weights_only=True, which never constructs other objects, wherever the file comes from."""
    field = f"teachers.pretrained.{arch}"
    data = read_file(source)
    if data is None:
        raise ConfigError(f"{field}: {source} is not a file; give a .safetensors or .pth/.pt state dict (a path or "
                          "s3://bucket/key), 'torchvision' or 'timm'")
    if _is_pickle(data):
        try:
            return read_pth(io.BytesIO(data)), data
        except ValueError as e:
            raise ConfigError(f"{field}: {source} {e}") from None
    from safetensors.torch import load

    try:
        return load(data), data
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError
        raise ConfigError(f"{field}: {source} is neither a safetensors nor a torch.save file ({e}); give a "
                          "state dict saved with safetensors.torch.save_file or torch.save") from None


def _is_pickle(data: bytes) -> bool:
    """torch.save's zip (it holds a data.pkl) or a bare pickle (protocol 2 and later start with 0x80 and the protocol)."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    return len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5


def _check_fits(arch: str, source: str, expected: dict[str, list[int]], found: dict[str, list[int]], shapes: bool) -> None:
    """Refuse weights whose tensor names (and with `shapes`, shapes) are not those of `arch`'s network."""
    field = f"teachers.pretrained.{arch}"
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"{field}: the weights in {source} do not fit {arch}: {len(missing)} tensors missing "
                          f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}; give a state dict of {arch} "
                          "as infer_distill.models.networks.create_model builds it (without the Normalize wrapper)")
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
