"""Imported weights load into the network they were trained in (teachers.pretrained_stem), and a teacher that scores
about chance fails its step (teachers.min_accuracy_over_chance)."""
from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import TINY
from torch import nn

from infer_distill import stages
from infer_distill.cli import main
from infer_distill.config.loading import load_config
from infer_distill.dag.artifact_settings import teacher_settings
from infer_distill.errors import ConfigError
from infer_distill.models.networks import create_model
from infer_distill.stages import preflight
from infer_distill.data.splits import open_split
from infer_distill.storage import open_artifact

TV = "torchvision:resnet18"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("stem") / "data")
    stages.prepare_data(load_config(None, TINY), uri)
    return uri


def _digits(data: str, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images in [0, 1], labels, and the dataset's mean and std, as the data artifact holds them."""
    art = open_artifact(data)
    rows, m = open_split(art, split), art.read_manifest()["metrics"]
    return rows.read_all().float() / 255, rows.labels, torch.tensor(m["mean"]).view(1, -1, 1, 1), torch.tensor(m["std"]).view(1, -1, 1, 1)


@pytest.fixture(scope="module")
def stock(data, tmp_path_factory):
    """A user's stock torchvision ResNet-18 for 10 classes (its first conv taking grayscale), trained a few steps on
    the digits normalised with the dataset's statistics, saved as a .pth state dict; and its test accuracy."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    x, y, mean, std = _digits(data, "train")
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(60):
        batch = torch.randint(len(y), (128,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net((x[batch] - mean) / std), y[batch]).backward()
        opt.step()
    tx, ty, _, _ = _digits(data, "test")
    with torch.no_grad():
        acc = (net.eval()((tx - mean) / std).argmax(1) == ty).sum().item() / len(ty)
    path = tmp_path_factory.mktemp("stock") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    return path, acc


def _cfg(path, *extra: str):
    return load_config(None, TINY + [f"teachers.archs=[{TV}]", f"teachers.pretrained={{{TV}: {path}}}", *extra])


def test_a_stock_torchvision_model_imports_as_itself_and_scores_what_it_scored(data, stock, tmp_path):
    path, acc = stock
    assert acc > 0.5   # a real teacher: the recorded score below could not be its own by chance
    out = str(tmp_path / "teacher")
    stages.train_teacher(_cfg(path), TV, data, out, progress=False)
    metrics = open_artifact(out).read_manifest()["metrics"]
    assert metrics["test_acc"] == pytest.approx(acc, abs=1e-9)
    assert metrics["architecture"] == {"name": TV, "stem": ""}   # nothing adapted


def test_the_small_image_stem_is_another_network_and_a_setting_of_the_teacher(data, stock, tmp_path):
    path, acc = stock
    cfg = _cfg(path, f"teachers.pretrained_stem={{{TV}: small_image}}", "teachers.min_accuracy_over_chance=null")
    out = str(tmp_path / "teacher")
    stages.train_teacher(cfg, TV, data, out, progress=False)
    manifest = open_artifact(out).read_manifest()
    assert manifest["metrics"]["architecture"]["stem"] == "conv1: stride (2, 2) -> (1, 1); maxpool: max-pool removed"
    assert manifest["metrics"]["test_acc"] != pytest.approx(acc, abs=1e-9)   # the same weights, another network
    assert manifest["settings"]["teacher"]["stem"] == "small_image"
    assert teacher_settings(_cfg(path), TV)["teacher"]["stem"] == "stock"
    # a teacher trained here has one stem: its settings, and so the fingerprints of its artifacts, do not name it
    assert "stem" not in teacher_settings(load_config(None, TINY), "resnet_tiny")["teacher"]


def test_weights_of_the_other_stem_are_refused_naming_both_choices(tmp_path):
    """The registered resnet18's stems differ in shape (a 3x3 or a 7x7 first conv), so the mismatch is found before work."""
    torch.manual_seed(1)
    path = tmp_path / "cifar_stem.pth"
    torch.save(create_model("resnet18", 10, in_chans=1, image_size=8).state_dict(), path)   # as trained here
    sets = TINY + ["teachers.archs=[resnet18]", f"teachers.pretrained={{resnet18: {path}}}"]
    with pytest.raises(ConfigError, match=r"teachers.pretrained_stem.resnet18: the weights in .* fit resnet18 with the "
                                          r"small_image stem, not the stock one .*set teachers.pretrained_stem.resnet18="
                                          r"small_image .*stock: the library's own network; small_image: the stride-1"):
        preflight.check_pretrained(load_config(None, sets), "resnet18")
    preflight.check_pretrained(load_config(None, sets + ["teachers.pretrained_stem={resnet18: small_image}"]), "resnet18")


def test_a_stem_for_a_teacher_trained_here_is_refused():
    with pytest.raises(ConfigError, match="pretrained_stem names 'resnet_tiny', which imports no weights"):
        load_config(None, TINY + ["teachers.pretrained_stem={resnet_tiny: stock}"])


def test_a_chance_level_teacher_fails_its_step_unless_allowed(data, tmp_path, capsys):
    """All logits equal: the teacher answers class 0 for every image, which is chance on digits' balanced classes."""
    arch = "convnet_d2_w32"
    torch.manual_seed(2)
    state = create_model(arch, 10, in_chans=1, image_size=8).state_dict()
    state["classifier.weight"].zero_()
    state["classifier.bias"].zero_()
    path = tmp_path / "chance.pth"
    torch.save(state, path)
    root = str(tmp_path / "run")
    sets = TINY + [f"teachers.archs=[{arch}]", f"teachers.pretrained={{{arch}: {path}}}"]
    args = ["--root", root, *sum((["--set", s] for s in sets), [])]
    assert main(["stage", "prepare-data", *args]) == 0
    capsys.readouterr()
    assert main(["stage", "train-teacher", "--arch", arch, *args]) == 2
    err = capsys.readouterr().err
    assert f"teacher {arch}: test accuracy" in err and "above chance (10.0% for 10 classes)" in err
    assert "teachers.min_accuracy_over_chance=null accepts it" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "teachers" / arch).exists()
    assert main(["stage", "train-teacher", "--arch", arch, *args, "--set", "teachers.min_accuracy_over_chance=null"]) == 0
    acc = open_artifact(f"{root}/teachers/{arch}").read_manifest()["metrics"]["test_acc"]
    _, ty, _, _ = _digits(data, "test")
    assert acc == (ty == 0).sum().item() / len(ty)
