"""Model registry: every architecture builds, runs, trains and has BatchNorm for INFER."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from infer_distill.config.loading import validate_config
from infer_distill.models import architectures, networks
from infer_distill.models.networks import (
    MODEL_REGISTRY,
    Normalize,
    batchnorm_layers,
    create_model,
    register_model,
    require_batchnorm,
)

NUM_CLASSES = 5
ALL_MODELS = sorted(MODEL_REGISTRY)
# Training the ImageNet-sized networks even for one step takes seconds each on a CPU: slow tier.
WITH_SLOW_BIG_ONES = [n if n.startswith("convnet") or n == "resnet_tiny" else pytest.param(n, marks=pytest.mark.slow)
                      for n in ALL_MODELS]
# (in_chans, image_size): 8x8 grey digits and 32x32 RGB CIFAR.
SHAPES = [(1, 8), (3, 32)]


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_registry_has_the_documented_names() -> None:
    expected = {
        "convnet_d2_w32", "convnet_d3_w32", "convnet_d2_w64", "convnet_d3_w64",
        "convnet_d3_w128", "convnet_d4_w128", "resnet_tiny", "resnet18",
        "resnet50", "mobilenetv2", "efficientnet_b0", "shufflenetv2",
    }
    assert expected <= set(MODEL_REGISTRY)


def test_the_torch_free_names_are_the_builders_defined_here() -> None:
    """Config validation checks architectures against `architectures.BUILTIN` without importing models."""
    assert {name for name, fn in MODEL_REGISTRY.items() if fn.__module__ == networks.__name__} == set(architectures.BUILTIN)


def test_a_registered_architecture_is_a_valid_config_name(monkeypatch) -> None:
    monkeypatch.setattr(networks, "MODEL_REGISTRY", dict(MODEL_REGISTRY))
    monkeypatch.setattr(architectures, "NAMES", set(architectures.NAMES))
    with pytest.raises(ValueError, match="unknown architecture 'my_net'"):
        validate_config({"students": {"archs": ["my_net"]}})

    @register_model
    def my_net(num_classes: int, in_chans: int = 3, image_size: int = 32) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size * image_size, num_classes))

    assert validate_config({"students": {"archs": ["my_net"]}}).students.archs == ["my_net"]


@pytest.mark.parametrize("name", WITH_SLOW_BIG_ONES)
@pytest.mark.parametrize(("in_chans", "image_size"), SHAPES)
def test_forward_and_backward(name: str, in_chans: int, image_size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, in_chans=in_chans, image_size=image_size)
    x = torch.rand(2, in_chans, image_size, image_size)

    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, NUM_CLASSES)

    model.train()
    # Cross-entropy, not out.sum(): BatchNorm in train mode makes the batch sum constant,
    # which would give all-zero gradients and hide a broken backward pass.
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    loss.backward()
    grad = _first_conv(model).weight.grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


TEACHER_MODELS = [n for n in ALL_MODELS if not n.endswith("_nonorm")]


@pytest.mark.parametrize("name", TEACHER_MODELS)
def test_every_teacher_runs_each_listed_batchnorm_once_in_the_listed_order(name: str) -> None:
    """Synthesis matches the statistics of the layers batchnorm_layers lists and weights the first one most
    (first_bn_multiplier): every normalisation layer of a teacher must be listed, run once, and the first listed run first."""
    model = create_model(name, NUM_CLASSES, in_chans=1, image_size=8).eval()
    require_batchnorm(model, name)
    ran: list[nn.Module] = []
    every_norm = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    handles = [m.register_forward_hook(lambda module, *_: ran.append(module)) for m in every_norm]
    with torch.no_grad():
        model(torch.rand(2, 1, 8, 8))
    for h in handles:
        h.remove()
    assert ran == batchnorm_layers(model) and len(ran) >= 2


def test_registered_nonorm_student_is_rejected_as_teacher() -> None:
    model = create_model("convnet_d3_w32_nonorm", NUM_CLASSES, in_chans=1, image_size=8)
    with pytest.raises(ValueError, match="no BatchNorm2d"):
        require_batchnorm(model, "convnet_d3_w32_nonorm")


def test_convnet_without_norm_is_rejected_as_teacher() -> None:
    model = create_model("convnet_d3_w32", NUM_CLASSES, norm="none")
    assert batchnorm_layers(model) == []
    with pytest.raises(ValueError, match="BatchNorm") as info:
        require_batchnorm(model, "convnet_d3_w32")
    assert "convnet_d3_w32" in str(info.value)


def test_convnet_rejects_unknown_norm() -> None:
    with pytest.raises(ValueError, match="norm"):
        create_model("convnet_d3_w32", NUM_CLASSES, norm="instance")


def test_convnet_skips_pooling_that_would_empty_the_feature_map() -> None:
    # 8x8 can halve only three times, so depth 4 pools three times and ends at 1x1.
    model = create_model("convnet_d4_w128", NUM_CLASSES, in_chans=1, image_size=8)
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == 3
    assert model.classifier.in_features == 128
    # 64x64 at depth 3 keeps every pool: 8x8 features.
    model = create_model("convnet_d3_w32", NUM_CLASSES, image_size=64)
    assert model.classifier.in_features == 32 * 8 * 8


@pytest.mark.parametrize("name", ["convnet_d2_w32", "resnet_tiny"])
@pytest.mark.parametrize(("in_chans", "image_size"), SHAPES)
def test_create_model_with_normalization(name: str, in_chans: int, image_size: int) -> None:
    mean = [0.5, 0.4, 0.3][:in_chans]
    std = [0.25, 0.2, 0.1][:in_chans]
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, in_chans=in_chans, image_size=image_size, mean=mean, std=std)
    assert isinstance(model, nn.Sequential)
    assert isinstance(model[0], Normalize)

    state = model.state_dict()
    assert torch.equal(state["0.mean"].flatten(), torch.tensor(mean))
    assert torch.equal(state["0.std"].flatten(), torch.tensor(std))

    model.eval()
    x = torch.rand(2, in_chans, image_size, image_size)
    normalised = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model[1](normalised))


def test_normalize_round_trips_through_state_dict() -> None:
    source = create_model("convnet_d2_w32", NUM_CLASSES, in_chans=1, image_size=8, mean=[0.3], std=[0.2])
    target = create_model("convnet_d2_w32", NUM_CLASSES, in_chans=1, image_size=8, mean=[0.0], std=[1.0])
    target.load_state_dict(source.state_dict())
    assert torch.equal(target[0].mean, source[0].mean)
    assert torch.equal(target[0].std, source[0].std)


def test_mean_std_must_match_channels() -> None:
    with pytest.raises(ValueError, match="input channels"):
        create_model("convnet_d2_w32", NUM_CLASSES, in_chans=3, mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match="both mean and std"):
        create_model("convnet_d2_w32", NUM_CLASSES, mean=[0.5, 0.5, 0.5])


def test_unknown_name_lists_known_architectures() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'nope'") as info:
        create_model("nope", NUM_CLASSES)
    message = str(info.value)
    for name in MODEL_REGISTRY:
        assert name in message


@pytest.mark.parametrize("name", ALL_MODELS)
def test_small_images_keep_full_resolution_in_the_stem(name: str) -> None:
    model = create_model(name, NUM_CLASSES, in_chans=1, image_size=32)
    conv = _first_conv(model)
    assert conv.in_channels == 1
    assert conv.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet18", "shufflenetv2", "mobilenetv2"])
def test_large_images_keep_the_standard_stem(name: str) -> None:
    model = create_model(name, NUM_CLASSES, in_chans=1, image_size=224)
    conv = _first_conv(model)
    assert conv.in_channels == 1
    assert conv.stride == (2, 2)
