"""Pretrained teachers: .pth/.pt and .safetensors files, torchvision's and timm's published weights (from weight
files the tests write where the libraries keep their downloads), each with the normalisation its weights expect."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from conftest import TINY
from safetensors.torch import save_file
from torch import nn

from infer_distill import stages
from infer_distill.cli import main
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.errors import ConfigError, StageError
from infer_distill.models.networks import Normalize, create_model, read_pth
from infer_distill.stages import preflight
from infer_distill.stages.artifacts import is_current
from infer_distill.stages.inputs import _import_weights, build_model
from infer_distill.storage import open_artifact

ARCH = "convnet_d2_w32"
# The source networks here are untrained (what is checked is that their weights arrive): they score about chance
UNTRAINED = "teachers.min_accuracy_over_chance=null"


def _source_net() -> nn.Module:
    torch.manual_seed(7)
    return create_model(ARCH, 10, in_chans=1, image_size=8).eval()


def _write(path: Path, state: dict, how: str) -> Path:
    """The checkpoint layouts training scripts write."""
    if how == "safetensors":
        save_file(state, path)
        return path
    wrapped = {
        "plain": state,
        "module.": {f"module.{k}": v for k, v in state.items()},                   # nn.DataParallel
        "nested state_dict": {"state_dict": state, "epoch": 90, "best_acc1": 0.7},   # the ImageNet example's checkpoint
        "model / module.": {"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {"lr": 0.1}},
        "net": {"net": state},
    }[how]
    torch.save(wrapped, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = load_config(None, TINY)
    uri = str(tmp_path_factory.mktemp("pretrained") / "data")
    stages.prepare_data(cfg, uri)
    return uri


@pytest.mark.parametrize("how", ["plain", "module.", "nested state_dict", "model / module.", "net", "safetensors"])
def test_a_weight_file_imports_and_gives_the_logits_of_the_model_it_was_saved_from(data, tmp_path, how):
    net = _source_net()
    path = _write(tmp_path / ("w.safetensors" if how == "safetensors" else "w.pth"), net.state_dict(), how)
    cfg = load_config(None, TINY + [f"teachers.archs=[{ARCH}]", f"teachers.pretrained={{{ARCH}: {path}}}", UNTRAINED])
    out = str(tmp_path / "teacher")
    stages.train_teacher(cfg, ARCH, data, out, progress=False)
    art = open_artifact(out)
    manifest = art.read_manifest()
    assert manifest["sources"] == {"pretrained_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert manifest["metrics"]["train_losses"] == [] and manifest["metrics"]["imported_from"] == str(path)

    dm = open_artifact(data).read_manifest()
    teacher = build_model(ARCH, dm)
    teacher.load_state_dict(art.read_tensors("weights.safetensors"))
    x = torch.rand(16, 1, 8, 8)
    mean, std = torch.tensor(dm["metrics"]["mean"]).view(1, -1, 1, 1), torch.tensor(dm["metrics"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(teacher.eval()(x), net((x - mean) / std), atol=1e-6)


class _Planted:
    """Unpickling this would create a file: the test checks that nothing ever constructs it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_object_is_refused_without_being_unpickled(tmp_path, capsys):
    marker = tmp_path / "unpickled"
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": _source_net().state_dict(), "hook": _Planted(marker)}, path)
    with pytest.raises(ValueError, match="cannot be read with torch.load\\(weights_only=True\\).*Unsupported global"):
        read_pth(path)
    code = main(["run", "--out", str(tmp_path / "run"), "--no-progress",
                 *sum((["--set", s] for s in TINY + [f"teachers.pretrained={{{ARCH}: {path}}}"]), [])])
    assert code == 2 and f"teachers.pretrained.{ARCH}: {path} cannot be read" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_file_that_does_not_fit_names_the_first_missing_and_unexpected_keys(data, tmp_path):
    state = _source_net().state_dict()
    state["extra.weight"] = state.pop("classifier.weight")
    path = _write(tmp_path / "w.pt", state, "module.")
    cfg = load_config(None, TINY + [f"teachers.archs=[{ARCH}]", f"teachers.pretrained={{{ARCH}: {path}}}"])
    with pytest.raises(ConfigError, match=r"1 tensors missing \['classifier.weight'\], 1 unexpected \['extra.weight'\]"):
        preflight.check_pretrained(cfg, ARCH)


def test_teachers_normalization_is_what_the_imported_teacher_applies(data, tmp_path):
    path = _write(tmp_path / "w.pth", _source_net().state_dict(), "plain")
    norm = "{mean: [0.25], std: [0.5]}"
    cfg = load_config(None, TINY + [f"teachers.archs=[{ARCH}]", f"teachers.pretrained={{{ARCH}: {path}}}",
                                    f"teachers.normalization={{{ARCH}: {norm}}}", UNTRAINED])
    out = str(tmp_path / "teacher")
    stages.train_teacher(cfg, ARCH, data, out, progress=False)
    weights = open_artifact(out).read_tensors("weights.safetensors")
    assert weights["0.mean"].flatten().tolist() == [0.25] and weights["0.std"].flatten().tolist() == [0.5]
    assert open_artifact(out).read_manifest()["settings"]["teacher"]["normalization"] == {"mean": [0.25], "std": [0.5]}


# ---- published weights, from the libraries' own download caches --------------------------------


def _imagenet_teacher(arch: str) -> nn.Module:
    """What build_model makes for an ImageNet data artifact, with a dataset normalisation the weights must replace."""
    return nn.Sequential(Normalize([0.5] * 3, [0.25] * 3), create_model(arch, 1000, in_chans=3, image_size=224))


@pytest.mark.parametrize(("arch", "source", "builder", "cached"), [
    ("resnet18", "torchvision", "resnet18", "resnet18-f37072fd.pth"),
    ("torchvision:mobilenet_v2", "torchvision:IMAGENET1K_V1", "mobilenet_v2", "mobilenet_v2-b0353104.pth"),
    ("torchvision:mobilenet_v2", "torchvision", "mobilenet_v2", "mobilenet_v2-7ebf99e0.pth"),   # DEFAULT = IMAGENET1K_V2
])
def test_torchvision_weights_import_with_their_own_normalisation(tmp_path, monkeypatch, arch, source, builder, cached):
    import torchvision

    torch.manual_seed(3)
    published = torchvision.models.get_model(builder, weights=None).eval()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(published.state_dict(), tmp_path / "hub" / "checkpoints" / cached)   # torchvision's download, already made
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    teacher = _imagenet_teacher(arch)
    assert _import_weights(teacher, arch, source) == {}      # nothing read that the config does not name
    assert teacher[0].mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert teacher[0].std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(teacher.eval()(x), published((x - teacher[0].mean) / teacher[0].std), atol=1e-5)


def _hf_cache(monkeypatch, root: Path, repo: str, state: dict) -> None:
    """A Hugging Face hub cache holding `timm/<repo>`'s model.safetensors, and the hub offline: nothing is downloaded."""
    import huggingface_hub.constants as hub

    folder = root / f"models--timm--{repo}"
    revision = "0" * 40
    (folder / "snapshots" / revision).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    save_file(state, folder / "snapshots" / revision / "model.safetensors")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)


def test_timm_weights_import_from_the_hub_cache_with_their_normalisation(tmp_path, monkeypatch):
    import timm

    torch.manual_seed(4)
    published = timm.create_model("efficientnet_b0", pretrained=False).eval()
    _hf_cache(monkeypatch, tmp_path, "efficientnet_b0.ra_in1k", published.state_dict())
    teacher = _imagenet_teacher("efficientnet_b0")
    _import_weights(teacher, "efficientnet_b0", "timm:ra_in1k")
    assert teacher[0].mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(teacher.eval()(x), published((x - teacher[0].mean) / teacher[0].std), atol=1e-5)


def test_published_weights_that_cannot_be_had_are_a_stage_error(tmp_path, monkeypatch):
    _hf_cache(monkeypatch, tmp_path, "resnet10t.c3_in1k", {})
    (tmp_path / "models--timm--resnet10t.c3_in1k" / "snapshots" / ("0" * 40) / "model.safetensors").unlink()
    with pytest.raises(StageError, match="timm:resnet10t=timm: could not get timm's published weights"):
        _import_weights(_imagenet_teacher("timm:resnet10t"), "timm:resnet10t", "timm")


def test_a_run_imports_a_pth_teacher(tmp_path):
    """The whole pipeline with one teacher from a .pth file (module.-prefixed, as DataParallel saves it)."""
    path = _write(tmp_path / "teacher.pth", _source_net().state_dict(), "module.")
    out = tmp_path / "run"
    sets = TINY + ["students.epochs=1", "students.baselines=[]", f"teachers.pretrained={{{ARCH}: {path}}}", UNTRAINED]
    assert main(["run", "--out", str(out), "--no-progress", *sum((["--set", s] for s in sets), [])]) == 0
    metrics = open_artifact(Layout(str(out)).teacher(ARCH)).read_manifest()["metrics"]
    assert metrics["imported_from"] == str(path) and metrics["train_losses"] == []


# ---- weights on S3 ---------------------------------------------------------------------------------


def _upload(bucket: str, key: str, path: Path) -> str:
    import boto3

    boto3.session.Session().client("s3", region_name="us-east-1").put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    return f"s3://{bucket}/{key}"


@pytest.mark.parametrize("how", ["plain", "safetensors"])
def test_weights_on_s3_import_with_their_sha256(data, tmp_path, s3_bucket, how):
    net = _source_net()
    path = _write(tmp_path / ("w.safetensors" if how == "safetensors" else "w.pth"), net.state_dict(), how)
    uri = _upload(s3_bucket, f"teachers/{path.name}", path)
    cfg = load_config(None, TINY + [f"teachers.archs=[{ARCH}]", f"teachers.pretrained={{{ARCH}: '{uri}'}}", UNTRAINED])
    out = str(tmp_path / "teacher")
    stages.train_teacher(cfg, ARCH, data, out, progress=False)
    manifest = open_artifact(out).read_manifest()
    assert manifest["sources"] == {"pretrained_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert manifest["metrics"]["imported_from"] == uri
    assert is_current(out, cfg, "train-teacher", {"data": data}, arch=ARCH)
    teacher = build_model(ARCH, open_artifact(data).read_manifest())
    teacher.load_state_dict(open_artifact(out).read_tensors("weights.safetensors"))
    assert torch.equal(teacher[1].classifier.weight, net.classifier.weight)
    # another object at the same key: the teacher is no longer current, so a resumed run imports it again
    state = net.state_dict()
    state["classifier.bias"] = state["classifier.bias"] + 1
    _upload(s3_bucket, f"teachers/{path.name}", _write(tmp_path / f"changed-{path.name}", state, how))
    assert not is_current(out, cfg, "train-teacher", {"data": data}, arch=ARCH)


def test_a_pickled_object_on_s3_is_refused_without_being_unpickled(tmp_path, s3_bucket):
    marker = tmp_path / "unpickled"
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": _source_net().state_dict(), "hook": _Planted(marker)}, path)
    uri = _upload(s3_bucket, "teacher.pth", path)
    cfg = load_config(None, TINY + [f"teachers.archs=[{ARCH}]", f"teachers.pretrained={{{ARCH}: '{uri}'}}"])
    with pytest.raises(ConfigError, match=f"teachers.pretrained.{ARCH}: {uri} cannot be read with torch.load"):
        preflight.check_pretrained(cfg, ARCH)
    assert not marker.exists()
    missing = load_config(None, TINY + [f"teachers.archs=[{ARCH}]", f"teachers.pretrained={{{ARCH}: 's3://{s3_bucket}/none.pth'}}"])
    with pytest.raises(ConfigError, match=f"s3://{s3_bucket}/none.pth is not a file"):
        preflight.check_pretrained(missing, ARCH)
