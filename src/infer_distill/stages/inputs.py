"""What the stages read and compute with: a data artifact's splits (held whole or read a batch at a time), models
built from its description, teachers from their artifacts, imported weights, the device and fast path.
"""
from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping

import torch
from torch import nn

from infer_distill.config.schema import Config
from infer_distill.dag.metrics import DataMetrics
from infer_distill.data.splits import Split, open_split
from infer_distill.errors import ConfigError, StageError
from infer_distill.method.training import Held, Rows
from infer_distill.models.networks import Normalize, create_model, download_library_weights, library_weights
from infer_distill.runtime.fast_path import PLAIN, FastPath, resolve_fast_path
from infer_distill.runtime.memory import data_memory_budget
from infer_distill.stages.artifacts import load_input
from infer_distill.stages.preflight import _check_fits, _network, read_weights


def data_splits(cfg: Config, uri: str, *names: str) -> tuple[dict, list[Split]]:
    """The prepare-data artifact at `uri`, checked against `cfg`: its manifest and the named splits, each read by
    rows (`data.splits.Split`: a stage reads the labels, rows or batches it uses, not the whole file)."""
    art, manifest = load_input(uri, cfg, "prepare-data")
    return manifest, [open_split(art, name) for name in names]


def held_or_streamed(split: Split, name: str, device: str, use: str, held: int = 0) -> Rows:
    """`split` for a loop that reads it again and again (`use`, e.g. "student evaluation"): held whole on `device`
    when its images fit the data memory budget (runtime.memory) beside the `held` bytes of splits the stage
    already holds, else the split itself, read a batch at a time each time (the same results; the log says so)."""
    budget = data_memory_budget(device)
    if held + split.nbytes <= budget:
        return Held(split.read_all(), split.labels).to(device)
    print(f"{use}: the {name} split's {split.nbytes:,} bytes of images exceed the data memory budget "
          f"({max(0, budget - held):,} bytes left, INFER_DATA_MEMORY_BYTES): read from the data artifact a batch at a time",
          file=sys.stderr, flush=True)
    return split


def build_model(arch: str, data_manifest: dict, small_stem: bool = True) -> nn.Module:
    """A fresh `arch` sized and normalised for the data artifact's images (`small_stem`: see `create_model`)."""
    m = DataMetrics.from_manifest(data_manifest)
    return create_model(arch, num_classes=m.num_classes, in_chans=m.in_chans, image_size=m.image_size, mean=m.mean, std=m.std,
                        small_stem=small_stem)


def load_teachers(cfg: Config, uris: list[str], data_manifest: dict, device: str, fast_path: FastPath = PLAIN
                  ) -> list[nn.Module]:
    """The frozen teachers, in eval mode, placed on `device` as `fast_path` says (channels_last or not)."""
    if len(uris) != len(cfg.teachers.archs):
        raise StageError(f"{len(uris)} teacher artifacts given, but teachers.archs lists {len(cfg.teachers.archs)}: {cfg.teachers.archs}")
    models = []
    for arch, uri in zip(cfg.teachers.archs, uris):
        art, _ = load_input(uri, cfg, "train-teacher", arch=arch)
        model = build_model(arch, data_manifest, cfg.teachers.small_image_stem(arch))
        model.load_state_dict(art.read_tensors("weights.safetensors"))
        models.append(fast_path.place(model, device).eval().requires_grad_(False))
    return models


def compute_setup(cfg: Config, trains: bool) -> tuple[str, FastPath]:
    """A stage's device and fast path (all of it if the stage `trains` a model, else cuDNN autotuning
    alone: synthesis and labels stay fp32, see runtime/fast_path.py); on CUDA it sets this process's cuDNN switches."""
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
        state, raw = read_weights(arch, source)
        read = {"pretrained_sha256": hashlib.sha256(raw).hexdigest()}
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
