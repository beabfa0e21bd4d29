"""Teacher and student architectures, built by name.

Every model takes images in [0, 1] pixel space; `create_model` can prepend a `Normalize`
module so the dataset's mean/std travel inside the model (and its state_dict) instead of
living in every data loader.

INFER's synthesis loss matches the running statistics of every BatchNorm2d input, so all
registered architectures use BatchNorm2d (`require_batchnorm` checks a teacher before use).
The ImageNet-style networks get a CIFAR stem (no early downsampling) for small images, as the
CIFAR versions used in the dataset-distillation literature do.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import timm
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from . import architectures

__all__ = [
    "MODEL_REGISTRY",
    "Normalize",
    "batchnorm_layers",
    "create_model",
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


def register_model(fn: _B) -> _B:
    """Register a builder `fn(num_classes, in_chans, image_size, **kwargs)` under its name."""
    name = fn.__name__
    if name in MODEL_REGISTRY:
        raise ValueError(f"architecture '{name}' is already registered")
    MODEL_REGISTRY[name] = fn
    architectures.NAMES.add(name)  # configs may name it (validated without importing this module)
    return fn


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    image_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build a registered architecture; with mean/std, wrap it as Sequential(Normalize, net)."""
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown architecture '{name}'; known: {', '.join(sorted(MODEL_REGISTRY))}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    net = MODEL_REGISTRY[name](num_classes=num_classes, in_chans=in_chans, image_size=image_size, **kwargs)
    if mean is None or std is None:
        return net
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(
            f"mean/std have {len(mean)}/{len(std)} values but the model has {in_chans} input channels"
        )
    return nn.Sequential(Normalize(mean, std), net)


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
