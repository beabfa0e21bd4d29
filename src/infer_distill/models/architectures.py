"""The architecture names a config may use, known without importing torch (`infer_distill.models` builds them).

A name is one of:
- a registered name (`NAMES`): the builtins below, and every architecture `models.register_model`
  registers, a user's own included; tests/test_models.py checks that `BUILTIN` names exactly the
  builders models/networks.py defines and that `INFO` says the truth about each of them;
- `timm:<name>`, any name of `timm.list_models()`, or `torchvision:<name>`, any classification model
  of `torchvision.models.list_models()`.

Config validation (`problem`) checks registered names against `NAMES`, so `infer-distill config`
and `plan` refuse a misspelt one, naming the closest, without loading torch. Library names are
checked here for their syntax alone: listing timm's models imports torch, so whether the model
exists (and, for a teacher, has BatchNorm) is checked by the preflight of `run` and `stage`
(`models.check_architecture`, the teacher check), before any work.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

LIBRARIES = ("timm", "torchvision")


@dataclass(frozen=True)
class Arch:
    """What a registered architecture is, as far as the pipeline cares."""

    batchnorm: bool = True
    """It has BatchNorm2d layers, so it can be a teacher (INFER's synthesis loss matches their statistics)."""
    small_stem: str = ""
    """What changes in it for images of at most 64 px (`models.SMALL_IMAGE_MAX`); "" where nothing does."""
    pretrained: str | None = None
    """Where published ImageNet weights of the same network are: `torchvision:<model>` or `timm:<model>`."""


INFO: dict[str, Arch] = {
    **{f"convnet_d{d}_w{w}": Arch() for d, w in ((2, 32), (3, 32), (2, 64), (3, 64), (3, 128), (4, 128))},
    "convnet_d3_w32_nonorm": Arch(batchnorm=False),
    "resnet_tiny": Arch(),
    "resnet18": Arch(small_stem="3x3 stride-1 stem conv, no max-pool", pretrained="torchvision:resnet18"),
    "resnet50": Arch(small_stem="3x3 stride-1 stem conv, no max-pool", pretrained="torchvision:resnet50"),
    "mobilenetv2": Arch(small_stem="stride-1 stem conv", pretrained="timm:mobilenetv2_100"),
    "efficientnet_b0": Arch(small_stem="stride-1 stem conv", pretrained="timm:efficientnet_b0"),
    "shufflenetv2": Arch(small_stem="stride-1 stem conv, no max-pool", pretrained="torchvision:shufflenet_v2_x1_0"),
}
BUILTIN = frozenset(INFO)
NAMES: set[str] = set(BUILTIN)

# A timm or torchvision model name (timm's may carry a pretrained tag: `resnet18.a1_in1k`).
_LIBRARY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def info(name: str) -> Arch:
    """The metadata of a registered name (a user's registration without any: the defaults)."""
    return INFO.get(name, Arch())


def has_small_stem(name: str) -> bool:
    """Whether images of at most 64 px change `name`'s network (its stem): every timm and torchvision model, and the
    registered ones whose INFO says so."""
    return split_library(name) is not None or bool(info(name).small_stem)


def is_library_source(source: str) -> bool:
    """`teachers.pretrained` naming published weights (`torchvision[:<member>]`, `timm[:<tag>]`), not a local file."""
    return source.partition(":")[0] in LIBRARIES


def split_library(name: str) -> tuple[str, str] | None:
    """("timm", "resnet10t") for `timm:resnet10t`; None for a registered-style name."""
    library, sep, model = name.partition(":")
    return (library, model) if sep else None


def closest(name: str, known: list[str] | set[str] | frozenset[str]) -> str | None:
    found = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return found[0] if found else None


def problem(name: str, teacher: bool) -> str | None:
    """Why `name` cannot be used (as a teacher, with `teacher`), in words naming the fix; None if it can."""
    lib = split_library(name)
    if lib is not None:
        library, model = lib
        if library not in LIBRARIES:
            return (f"unknown architecture library {library!r} in {name!r}; use timm:<name> or torchvision:<name>, "
                    "or a registered name")
        if not _LIBRARY_NAME.fullmatch(model):
            return f"{name!r} names no {library} model; give {library}:<model name>, e.g. {library}:resnet18"
        return None
    if name not in NAMES:
        near = closest(name, NAMES)
        hint = f"did you mean {near!r}? " if near else ""
        return (f"unknown architecture {name!r}; {hint}known: {', '.join(sorted(NAMES))}; or timm:<name> / "
                "torchvision:<name> for any timm or torchvision classification model")
    if teacher and not info(name).batchnorm:
        return (f"{name!r} has no BatchNorm layers, so it cannot be a teacher: INFER's synthesis loss matches the "
                "BatchNorm statistics of every teacher; use it as a student, or choose an architecture with BatchNorm")
    return None
