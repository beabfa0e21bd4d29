"""Teacher and student architectures, built by name.

Every model takes images in [0, 1] pixel space; `create_model` can prepend a `Normalize`
module so the dataset's mean/std travel inside the model (and its state_dict) instead of
living in every data loader.

INFER's synthesis loss matches the running statistics of every BatchNorm2d input, so all
registered architectures use BatchNorm2d (`require_batchnorm` checks a teacher before use).
The ImageNet-style networks get a CIFAR stem (no early downsampling) for small images, as the
CIFAR versions used in the dataset-distillation literature do.

Besides the registered names, `timm:<name>` and `torchvision:<name>` build any timm or torchvision
classification model, for the dataset's classes and channels; at 64 px and below their stem loses
its downsampling the same way for both libraries (`adapt_small_stem`), unless built with
`small_stem=False` (imported weights trained in the library's own network, `teachers.pretrained_stem`).
"""
from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable, Sequence
from typing import BinaryIO, Literal, TypeVar

import timm
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from infer_distill.errors import ConfigError
from infer_distill.models import architectures
from infer_distill.models.architectures import Arch

__all__ = [
    "MODEL_REGISTRY",
    "Normalize",
    "adapt_small_stem",
    "batchnorm_layers",
    "check_architecture",
    "create_model",
    "describe_architecture",
    "download_library_weights",
    "library_models",
    "library_weights",
    "read_pth",
    "register_model",
    "require_batchnorm",
]

# Images at most this size get the CIFAR stem: a stride-2 stem (plus max-pool) would throw
# away most of an 8x8 or 32x32 image before the first block.
SMALL_IMAGE_MAX = 64

ModelBuilder = Callable[..., nn.Module]
_B = TypeVar("_B", bound=ModelBuilder)

MODEL_REGISTRY: dict[str, ModelBuilder] = {}


# ----------------------------------------------------------------------------------------
# Registry and factory
# ----------------------------------------------------------------------------------------


def register_model(fn: _B | None = None, *, arch: Arch | None = None):
    """Register a builder `fn(num_classes, in_chans, image_size, **kwargs)` under its name.

    `@register_model`, or `@register_model(arch=Arch(batchnorm=False))` for a network config
    validation should refuse as a teacher; the builtins' metadata is `architectures.INFO`.
    """
    if fn is None:
        return functools.partial(register_model, arch=arch)
    name = fn.__name__
    if name in MODEL_REGISTRY:
        raise ValueError(f"architecture '{name}' is already registered")
    MODEL_REGISTRY[name] = fn
    architectures.NAMES.add(name)  # configs may name it (validated without importing this module)
    if arch is not None:
        architectures.INFO[name] = arch
    return fn


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    image_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    small_stem: bool = True,
    **kwargs: object,
) -> nn.Module:
    """Build a registered architecture, or `timm:<name>` / `torchvision:<name>`; with mean/std, wrap it as
    Sequential(Normalize, net). `small_stem=False`: the library's own stem at any image size (imported weights
    trained in the stock network load into the same network)."""
    if architectures.split_library(name) is None and name not in MODEL_REGISTRY:
        raise ValueError(f"unknown architecture '{name}'; known: {', '.join(sorted(MODEL_REGISTRY))}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if architectures.split_library(name) is None:
        # A registered network with a small-image stem sizes nothing else by the image (its global pooling does not
        # care), so built as for a large image it is the library's own network
        size = image_size if small_stem or not architectures.info(name).small_stem else max(image_size, SMALL_IMAGE_MAX + 1)
        net = MODEL_REGISTRY[name](num_classes=num_classes, in_chans=in_chans, image_size=size, **kwargs)
    else:
        net, _ = _library_model(name, num_classes, in_chans, image_size, small_stem, **kwargs)
    if mean is None or std is None:
        return net
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(
            f"mean/std have {len(mean)}/{len(std)} values but the model has {in_chans} input channels"
        )
    return nn.Sequential(Normalize(mean, std), net)


# ----------------------------------------------------------------------------------------
# Any timm or torchvision classification model
# ----------------------------------------------------------------------------------------


@functools.cache
def library_models(library: str) -> frozenset[str]:
    """The model names `timm:` or `torchvision:` may be followed by (torchvision's classification models only)."""
    if library == "timm":
        return frozenset(timm.list_models())
    return frozenset(torchvision.models.list_models(module=torchvision.models))


def check_architecture(name: str) -> None:
    """Raise ConfigError, naming the closest model, if `timm:<name>` / `torchvision:<name>` names no model of that library.

    A timm name may carry a pretrained tag (`resnet18.a1_in1k`); the model is the part before it.
    """
    lib = architectures.split_library(name)
    if lib is None:
        return
    library, model = lib
    known = library_models(library)
    if model.split(".", 1)[0] not in known:
        near = architectures.closest(model, known)
        hint = f"; did you mean {library}:{near}?" if near else ""
        listing = "timm.list_models()" if library == "timm" else "torchvision.models.list_models(module=torchvision.models)"
        raise ConfigError(f"architecture {name!r}: {library} has no classification model {model!r}{hint} "
                          f"(the names are those of {listing})")


def describe_architecture(name: str, num_classes: int, in_chans: int, image_size: int, small_stem: bool = True
                          ) -> dict[str, str]:
    """What a manifest records of the network `create_model` builds: its name and what the small-image stem
    adaptation changed in it ("" where nothing did: above SMALL_IMAGE_MAX px, or built with `small_stem=False`)."""
    if image_size > SMALL_IMAGE_MAX or not small_stem:
        stem = ""
    elif architectures.split_library(name) is None:
        stem = architectures.info(name).small_stem
    else:
        with torch.device("meta"):  # the same network without its weights' memory or init time
            _, stem = _library_model(name, num_classes, in_chans, image_size)
    return {"name": name, "stem": stem}


def _library_model(name: str, num_classes: int, in_chans: int, image_size: int, small_stem: bool = True, **kwargs: object
                   ) -> tuple[nn.Module, str]:
    """The network, and what `adapt_small_stem` changed in it ("" above SMALL_IMAGE_MAX px or without `small_stem`)."""
    check_architecture(name)
    library, model = architectures.split_library(name)  # type: ignore[misc]
    if library == "timm":
        net = timm.create_model(model.split(".", 1)[0], pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    else:
        net = torchvision.models.get_model(model, weights=None, num_classes=num_classes, **kwargs)
        _set_in_chans(net, in_chans)
    return net, adapt_small_stem(net) if small_stem and image_size <= SMALL_IMAGE_MAX else ""


def _first_conv(net: nn.Module) -> tuple[str, nn.Conv2d]:
    for path, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            return path, m
    raise ValueError(f"{type(net).__name__} has no Conv2d layer to take the images")


def _replace(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


def _set_in_chans(net: nn.Module, in_chans: int) -> None:
    """A torchvision network takes `in_chans` channels: its first conv is rebuilt alike (default init) where it differs."""
    path, conv = _first_conv(net)
    if conv.in_channels != in_chans:
        _replace(net, path, nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, stride=conv.stride,  # type: ignore[arg-type]
                                      padding=conv.padding, dilation=conv.dilation, groups=1,  # type: ignore[arg-type]
                                      bias=conv.bias is not None))


def adapt_small_stem(net: nn.Module) -> str:
    """Take the stem's downsampling out, for images of at most SMALL_IMAGE_MAX px; returns what changed, in words.

    The same rule for every library model: the first strided convolution gets stride 1 (its weights
    and init unchanged), and a strided max-pool before the next strided convolution (ResNet's,
    ShuffleNet's, DenseNet's) becomes the identity, as the registered CIFAR stems do.
    """
    changes: list[str] = []
    stem_conv = None
    for path, m in list(net.named_modules()):
        if isinstance(m, nn.Conv2d) and max(m.stride) > 1:
            if stem_conv is not None:
                break
            stem_conv = path
            changes.append(f"{path}: stride {tuple(m.stride)} -> (1, 1)")
            m.stride = (1, 1)
        elif stem_conv is not None and isinstance(m, nn.MaxPool2d) and m.stride not in (1, (1, 1)):
            _replace(net, path, nn.Identity())
            changes.append(f"{path}: max-pool removed")
            break
    return "; ".join(changes)


# ----------------------------------------------------------------------------------------
# Normalisation and BatchNorm helpers
# ----------------------------------------------------------------------------------------


class Normalize(nn.Module):
    """Per-channel (x - mean) / std; buffers, so the statistics are saved with the model."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def batchnorm_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """All BatchNorm2d layers (subclasses such as timm's BatchNormAct2d too), in modules() order."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def require_batchnorm(model: nn.Module, name: str) -> None:
    """Raise ValueError if `model` cannot serve as an INFER teacher (it has no BatchNorm2d)."""
    if not batchnorm_layers(model):
        raise ValueError(
            f"teacher '{name}' has no BatchNorm2d layers; INFER's synthesis loss matches BatchNorm "
            "statistics, so every teacher needs them (choose another architecture)"
        )


# ----------------------------------------------------------------------------------------
# ConvNet family (dataset-distillation ConvNet, with BatchNorm)
# ----------------------------------------------------------------------------------------

ConvNorm = Literal["batch", "none"]


class ConvNet(nn.Module):
    """[Conv3x3 -> norm -> ReLU -> AvgPool2d(2)] x depth, then a linear classifier."""

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        image_size: int,
        depth: int,
        width: int,
        norm: ConvNorm = "batch",
    ) -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"unknown ConvNet norm '{norm}'; known: batch, none")
        # Pool only while the feature map can still halve, so 8x8 digits survive depth 4.
        num_pools = min(depth, image_size.bit_length() - 1)
        layers: list[nn.Module] = []
        channels = in_chans
        for i in range(depth):
            # A conv bias is redundant in front of BatchNorm's own shift.
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            if i < num_pools:
                layers.append(nn.AvgPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        side = image_size // 2**num_pools
        self.classifier = nn.Linear(width * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _convnet_builder(depth: int, width: int) -> ModelBuilder:
    def build(num_classes: int, in_chans: int = 3, image_size: int = 32, norm: ConvNorm = "batch") -> nn.Module:
        return ConvNet(num_classes, in_chans, image_size, depth=depth, width=width, norm=norm)

    build.__name__ = build.__qualname__ = f"convnet_d{depth}_w{width}"
    build.__doc__ = f"ConvNet, depth {depth}, width {width}."
    return build


# One builder per (depth, width): convnet_d3_w128 is the ConvNet of the dataset-distillation
# literature, the narrower and shallower ones suit CPU runs.
for _depth, _width in ((2, 32), (3, 32), (2, 64), (3, 64), (3, 128), (4, 128)):
    register_model(_convnet_builder(_depth, _width))


@register_model
def convnet_d3_w32_nonorm(num_classes: int, in_chans: int = 3, image_size: int = 32) -> nn.Module:
    """ConvNet, depth 3, width 32, no normalisation: a student only (teachers need BatchNorm)."""
    return ConvNet(num_classes, in_chans, image_size, depth=3, width=32, norm="none")


# ----------------------------------------------------------------------------------------
# ResNets
# ----------------------------------------------------------------------------------------


def _kaiming_conv(in_chans: int, out_chans: int, kernel_size: int, stride: int, padding: int) -> nn.Conv2d:
    """A bias-free conv initialised like torchvision's ResNet convs."""
    conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride, padding=padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class ResNetTiny(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, three one-block stages (16/32/64 wide), global pooling."""

    def __init__(self, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _kaiming_conv(in_chans, 16, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        channels = 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            downsample = None
            if stride != 1 or channels != width:
                downsample = nn.Sequential(
                    _kaiming_conv(channels, width, kernel_size=1, stride=stride, padding=0),
                    nn.BatchNorm2d(width),
                )
            stages.append(BasicBlock(channels, width, stride=stride, downsample=downsample))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


@register_model
def resnet_tiny(num_classes: int, in_chans: int = 3, image_size: int = 32) -> nn.Module:
    """Small CIFAR-style ResNet (~80k params), a cheap BatchNorm teacher for CPU runs."""
    del image_size  # global pooling makes the network size-agnostic
    return ResNetTiny(num_classes, in_chans)


def _adapt_torchvision_resnet(net: torchvision.models.ResNet, in_chans: int, image_size: int) -> nn.Module:
    """Give a torchvision ResNet the CIFAR stem for small images and `in_chans` inputs."""
    out_chans = net.conv1.out_channels
    if image_size <= SMALL_IMAGE_MAX:
        net.conv1 = _kaiming_conv(in_chans, out_chans, kernel_size=3, stride=1, padding=1)
        net.maxpool = nn.Identity()
    elif in_chans != 3:
        net.conv1 = _kaiming_conv(in_chans, out_chans, kernel_size=7, stride=2, padding=3)
    return net


@register_model
def resnet18(num_classes: int, in_chans: int = 3, image_size: int = 32, **kwargs: object) -> nn.Module:
    """torchvision ResNet-18, CIFAR stem for images <= 64 px."""
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes, **kwargs)
    return _adapt_torchvision_resnet(net, in_chans, image_size)


@register_model
def resnet50(num_classes: int, in_chans: int = 3, image_size: int = 32, **kwargs: object) -> nn.Module:
    """torchvision ResNet-50, CIFAR stem for images <= 64 px."""
    net = torchvision.models.resnet50(weights=None, num_classes=num_classes, **kwargs)
    return _adapt_torchvision_resnet(net, in_chans, image_size)


# ----------------------------------------------------------------------------------------
# Mobile architectures (timm MobileNetV2 / EfficientNet, torchvision ShuffleNetV2)
# ----------------------------------------------------------------------------------------


def _timm_small_stem(name: str, num_classes: int, in_chans: int, image_size: int, **kwargs: object) -> nn.Module:
    """A timm EfficientNet-family model whose stem keeps full resolution for small images."""
    net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if image_size <= SMALL_IMAGE_MAX:
        # Only the stride changes, so the (padding-1, 3x3) stem keeps its weights and init.
        net.conv_stem.stride = (1, 1)
    return net


@register_model
def mobilenetv2(num_classes: int, in_chans: int = 3, image_size: int = 32, **kwargs: object) -> nn.Module:
    """timm mobilenetv2_100, stride-1 stem for images <= 64 px."""
    return _timm_small_stem("mobilenetv2_100", num_classes, in_chans, image_size, **kwargs)


@register_model
def efficientnet_b0(num_classes: int, in_chans: int = 3, image_size: int = 32, **kwargs: object) -> nn.Module:
    """timm efficientnet_b0, stride-1 stem for images <= 64 px."""
    return _timm_small_stem("efficientnet_b0", num_classes, in_chans, image_size, **kwargs)


@register_model
def shufflenetv2(num_classes: int, in_chans: int = 3, image_size: int = 32, **kwargs: object) -> nn.Module:
    """torchvision shufflenet_v2_x1_0, stride-1 stem and no max-pool for images <= 64 px."""
    net = torchvision.models.shufflenet_v2_x1_0(weights=None, num_classes=num_classes, **kwargs)
    small = image_size <= SMALL_IMAGE_MAX
    if small or in_chans != 3:
        stem: nn.Conv2d = net.conv1[0]
        # Default init, like the rest of torchvision's ShuffleNetV2.
        net.conv1[0] = nn.Conv2d(
            in_chans, stem.out_channels, kernel_size=3, stride=1 if small else 2, padding=1, bias=False
        )
    if small:
        net.maxpool = nn.Identity()
    return net


# ----------------------------------------------------------------------------------------
# Pretrained weights: torchvision's and timm's published ones, and local files
# ----------------------------------------------------------------------------------------

LibraryWeights = tuple[str, str, "str | None"]  # (library, model, torchvision enum member or timm tag)


def library_weights(arch: str, source: str) -> LibraryWeights | None:
    """Which published weights `teachers.pretrained.<arch>: <source>` names, checked without downloading; None for a file.

    `torchvision` / `torchvision:<Weights member>` (e.g. IMAGENET1K_V1; default: the enum's DEFAULT) and
    `timm` / `timm:<pretrained tag>` (default: timm's default tag) apply to an architecture of that
    library: `torchvision:<name>` / `timm:<name>`, or a registered name whose metadata names it.
    """
    library, _, choice = source.partition(":")
    if library not in architectures.LIBRARIES:
        return None
    field = f"teachers.pretrained.{arch}={source}"
    lib = architectures.split_library(arch)
    published = lib or architectures.split_library(architectures.info(arch).pretrained or "")
    if published is None or published[0] != library:
        other = f"; it is {published[0]}'s {published[1]}: use {published[0]}" if published else ""
        raise ConfigError(f"{field}: {library} has no published weights for {arch!r}{other}, or name the architecture "
                          f"{library}:<name> (e.g. {library}:resnet18), or give a .safetensors/.pth file")
    model, _, tag = published[1].partition(".")
    choice = choice or tag or None
    if library == "torchvision":
        try:
            enum = torchvision.models.get_model_weights(model)
        except (ValueError, KeyError):
            raise ConfigError(f"{field}: torchvision publishes no weights for {model!r}") from None
        if choice is not None and choice not in enum.__members__:
            raise ConfigError(f"{field}: {enum.__name__} has no member {choice!r}; use one of {', '.join(enum.__members__)}")
    else:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{model}.*")]
        if not tags or (choice is not None and choice not in tags):
            have = f"; its tags: {', '.join(tags)}" if tags else ""
            raise ConfigError(f"{field}: timm has no pretrained {model}{'.' + choice if choice else ''}{have}")
    return library, model, choice


def download_library_weights(weights: LibraryWeights) -> tuple[dict[str, torch.Tensor], tuple[list[float], list[float]]]:
    """The state dict of published weights (from the library's cache, else downloaded) and their (mean, std)."""
    library, model, choice = weights
    if library == "torchvision":
        enum = torchvision.models.get_model_weights(model)
        w = enum[choice] if choice else enum.DEFAULT
        preset = w.transforms()
        return w.get_state_dict(progress=False), (list(preset.mean), list(preset.std))
    net = timm.create_model(f"{model}.{choice}" if choice else model, pretrained=True)
    return net.state_dict(), (list(net.pretrained_cfg["mean"]), list(net.pretrained_cfg["std"]))


# Checkpoint dicts that wrap the state dict (as training scripts save them), outermost first.
_WRAPPERS = ("state_dict", "model", "net")


def read_pth(path: str | os.PathLike[str] | BinaryIO) -> dict[str, torch.Tensor]:
    """The state dict in a torch.save file (a path, or the file's bytes as a binary stream), read with weights_only=True: tensors and plain containers only, so a
    pickled object of any other kind is refused, never constructed. Unwraps `state_dict`/`model`/`net` keys and
    the `module.` prefix of DataParallel. Raises ValueError saying what the file holds instead."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message wraps the reason (`Unsupported global: GLOBAL pathlib.PosixPath`) in advice to drop weights_only
        reason = str(e).partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0].strip() or str(e)
        raise ValueError(f"cannot be read with torch.load(weights_only=True), which loads tensors and plain containers "
                         f"only and constructs nothing else ({reason.splitlines()[0]}); save the model's state_dict() "
                         "with torch.save or safetensors") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError and others for a file it cannot read
        raise ValueError(f"is not a torch.save file ({e})") from None
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    others = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise ValueError(f"holds entries that are not tensors ({others[:3]}); save the model's state_dict() alone")
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj
