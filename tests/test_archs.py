"""Any timm or torchvision architecture by name, and the registry's metadata telling the truth."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY
from torch import nn

from infer_distill.cli import main
from infer_distill.config.loading import validate_config
from infer_distill.dag.layout import Layout
from infer_distill.errors import ConfigError
from infer_distill.models import architectures
from infer_distill.models.networks import (
    adapt_small_stem,
    batchnorm_layers,
    check_architecture,
    create_model,
    describe_architecture,
    library_models,
)
from infer_distill.storage import open_artifact

# ---- the registry's metadata, parametrised over it ------------------------------------------


@pytest.mark.parametrize("name", sorted(architectures.INFO))
def test_batchnorm_metadata_is_what_the_network_has(name):
    model = create_model(name, 5, in_chans=3, image_size=32)
    assert bool(batchnorm_layers(model)) == architectures.info(name).batchnorm


@pytest.mark.parametrize("name", sorted(architectures.INFO))
def test_small_stem_metadata_says_whether_small_images_change_the_network(name):
    """A network whose stem does not change keeps the same layers at 32 and 224 px."""
    def layers(size):
        return [(type(m).__name__, getattr(m, "stride", None)) for m in create_model(name, 5, image_size=size).modules()]

    assert (layers(32) != layers(224)) == bool(architectures.info(name).small_stem)


@pytest.mark.parametrize("name", sorted(n for n, a in architectures.INFO.items() if a.pretrained))
def test_the_pretrained_source_of_a_registered_name_has_exactly_its_tensors(name):
    """The library model named as the source of its published weights is the same network at 224 px."""
    source = architectures.info(name).pretrained
    check_architecture(source)
    ours = create_model(name, 1000, image_size=224).state_dict()
    theirs = create_model(source, 1000, image_size=224).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


# ---- config validation: cheap, torch-free, with the reason -------------------------------------


def test_a_batchnorm_less_teacher_is_refused_at_config_time_with_the_reason():
    with pytest.raises(ValueError, match="'convnet_d3_w32_nonorm' has no BatchNorm layers, so it cannot be a teacher: "
                                         "INFER's synthesis loss matches the BatchNorm statistics"):
        validate_config({"teachers": {"archs": ["convnet_d3_w32_nonorm"]}})
    assert validate_config({"students": {"archs": ["convnet_d3_w32_nonorm"]}}).students.archs == ["convnet_d3_w32_nonorm"]


def test_a_typo_names_the_closest_registered_name():
    with pytest.raises(ValueError, match="students.archs: unknown architecture 'resnet81'; did you mean 'resnet18'\\?"):
        validate_config({"students": {"archs": ["resnet81"]}})
    with pytest.raises(ValueError, match="unknown architecture library 'tim' in 'tim:resnet18'"):
        validate_config({"students": {"archs": ["tim:resnet18"]}})
    with pytest.raises(ValueError, match="names no torchvision model"):
        validate_config({"teachers": {"archs": ["torchvision:"]}})


def test_a_library_typo_names_the_closest_model_of_that_library():
    with pytest.raises(ConfigError, match="timm has no classification model 'resnet10tt'; did you mean timm:resnet10t\\?"):
        check_architecture("timm:resnet10tt")
    with pytest.raises(ConfigError, match="did you mean torchvision:mobilenet_v2\\?"):
        check_architecture("torchvision:mobilenet_v22")
    with pytest.raises(ConfigError, match="torchvision has no classification model 'fasterrcnn_resnet50_fpn'"):
        check_architecture("torchvision:fasterrcnn_resnet50_fpn")    # a detection model
    check_architecture("timm:resnet18.a1_in1k")                       # a pretrained tag is allowed
    assert "resnet10t" in library_models("timm") and "mobilenet_v2" in library_models("torchvision")


@pytest.mark.processes
def test_library_names_validate_without_importing_torch():
    code = ("import sys; from infer_distill.config.loading import validate_config; "
            "validate_config({'teachers': {'archs': ['timm:resnet10t', 'torchvision:mobilenet_v2']}, "
            "'students': {'archs': ['timm:resnet10t']}}); "
            "assert not {'torch', 'timm', 'torchvision'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={"PYTHONPATH": str(REPO / "src")})


# ---- building: classes, channels, and the same small-image stem for both libraries ------------


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18"])
def test_small_images_lose_the_stem_downsampling_alike_in_both_libraries(name):
    model = create_model(name, 7, in_chans=1, image_size=32)
    features = {}
    last = [m for m in model.modules() if isinstance(m, nn.Sequential)][-1]   # layer4
    last.register_forward_hook(lambda _m, _i, out: features.update(out=out))
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 7)
    assert features["out"].shape[-2:] == (4, 4)           # 32 / 8: only the stages downsample
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    big = create_model(name, 7, in_chans=1, image_size=224)   # ImageNet-sized images keep the library's stem
    assert next(m for m in big.modules() if isinstance(m, nn.Conv2d)).stride == (2, 2)
    assert any(isinstance(m, nn.MaxPool2d) for m in big.modules())


def test_adapt_small_stem_says_what_it_changed():
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    assert adapt_small_stem(net) == "conv1: stride (2, 2) -> (1, 1); maxpool: max-pool removed"
    assert isinstance(net.maxpool, nn.Identity) and net.conv1.stride == (1, 1) and net.layer2[0].conv1.stride == (2, 2)
    mobile = torchvision.models.mobilenet_v2(weights=None)
    assert adapt_small_stem(mobile) == "features.0.0: stride (2, 2) -> (1, 1)"


def test_a_torchvision_model_takes_grey_images():
    model = create_model("torchvision:mobilenet_v3_small", 3, in_chans=1, image_size=8)
    assert model.eval()(torch.rand(2, 1, 8, 8)).shape == (2, 3)


# ---- a tiny run: a timm and a torchvision student; a BatchNorm-less library teacher -----------


def _sets(extra):
    return sum((["--set", s] for s in TINY + extra), [])


@pytest.mark.slow
def test_a_timm_and_a_torchvision_student_train_in_a_tiny_run_and_record_their_stem(tmp_path):
    import timm
    import torchvision

    students = {"timm:resnet10t": timm.create_model("resnet10t", num_classes=10),
                "torchvision:mobilenet_v3_small": torchvision.models.mobilenet_v3_small(num_classes=10)}
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--no-progress", *_sets(["dataset.image_size=32", "students.epochs=1", "students.baselines=[]",
                                                                    f"students.archs=[{', '.join(students)}]"])]) == 0
    for arch, fresh in students.items():
        metrics = open_artifact(Layout(str(out)).student(arch, 0, "static")).read_manifest()["metrics"]
        assert 0 <= metrics["final_acc"] <= 1, arch
        stem = adapt_small_stem(fresh)  # what the 32 px student lost, found on a model built without the pipeline
        assert "stride (2, 2) -> (1, 1)" in stem and metrics["architecture"] == {"name": arch, "stem": stem}
    teacher = open_artifact(Layout(str(out)).teacher("resnet_tiny")).read_manifest()["metrics"]
    assert teacher["architecture"] == {"name": "resnet_tiny", "stem": ""}  # a CIFAR network already


def test_the_recorded_stem_is_the_registered_one_and_nothing_above_64_px():
    assert describe_architecture("resnet18", 10, 3, 32) == {"name": "resnet18", "stem": architectures.info("resnet18").small_stem}
    assert describe_architecture("torchvision:resnet18", 10, 3, 64)["stem"] == "conv1: stride (2, 2) -> (1, 1); maxpool: max-pool removed"
    assert describe_architecture("torchvision:resnet18", 10, 3, 65)["stem"] == describe_architecture("resnet18", 10, 3, 224)["stem"] == ""


def test_a_library_typo_is_refused_before_any_work(tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path / "run"), "--no-progress", *_sets(["students.archs=[timm:resnet10tt]"])])
    assert code == 2 and "students.archs: architecture 'timm:resnet10tt'" in capsys.readouterr().err
    assert not list((tmp_path / "run").rglob("manifest.json"))


def test_a_batchnorm_less_library_teacher_is_refused_with_the_reason(tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path / "run"), "--no-progress",
                 *_sets(["teachers.archs=[torchvision:vit_b_16]"])])
    err = capsys.readouterr().err
    assert code == 2 and "torchvision:vit_b_16" in err and "no BatchNorm2d layers" in err
    assert not list((tmp_path / "run").rglob("manifest.json"))
