"""The paper's ImageNet setting as the shipped config writes it, end to end on a small real 224 px ImageFolder
(three CIFAR-10 classes, upsampled), with the three torchvision teachers' weights written by the test where
torchvision keeps its downloads."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from infer_distill.cli import main
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.storage import open_artifact

CLASSES = ["airplane", "cat", "ship"]
TEACHERS = {"torchvision:resnet18": "resnet18", "torchvision:mobilenet_v2": "mobilenet_v2",
            "torchvision:efficientnet_b0": "efficientnet_b0"}


def _imagefolder_224(zips: Path, root: Path, per_split: dict[str, tuple[str, int]]) -> None:
    """root/<split>/<class>/<n>.png: the first images of CLASSES from the CIFAR-10 archives, upsampled to 224 px."""
    for split, (archive, count) in per_split.items():
        with zipfile.ZipFile(zips / archive) as z:
            for name in CLASSES:
                members = sorted(m for m in z.namelist() if m.split("/")[-2:-1] == [name] and not m.endswith("/"))[:count]
                for i, member in enumerate(members):
                    image = Image.open(io.BytesIO(z.read(member))).convert("RGB").resize((224, 224), Image.BICUBIC)
                    (root / split / name).mkdir(parents=True, exist_ok=True)
                    image.save(root / split / name / f"{i:03d}.png")


@pytest.mark.slow
def test_the_imagenet_config_runs_end_to_end_on_a_small_224px_folder(tmp_path, datasets_dir, monkeypatch):
    root = tmp_path / "imagenet"
    _imagefolder_224(datasets_dir / "cifar10", root, {"train": ("cifar10-train-jpeg.zip", 20), "val": ("cifar10-test-png.zip", 3)})
    published = {}
    torch.manual_seed(0)
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    for arch, name in TEACHERS.items():   # "their published weights", for these three classes
        weights = torchvision.models.get_model_weights(name).DEFAULT
        published[arch] = torchvision.models.get_model(name, weights=None, num_classes=len(CLASSES)).state_dict()
        torch.save(published[arch], tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    cut = [f"dataset.root={root}", "synthesis.iterations=2", "students.epochs=1", "students.epochs_dynamic=1",
           "students.seeds=[0]", "device=cpu",
           "teachers.min_accuracy_over_chance=null"]  # the "published" weights are untrained: about chance
    cfg = load_config("imagenet-ipc10", cut)
    assert cfg.teachers.archs == list(TEACHERS) and set(cfg.teachers.pretrained.values()) == {"torchvision"}
    assert (cfg.synthesis.iterations, cfg.synthesis.lr, cfg.synthesis.r_bn, cfg.synthesis.random_resized_crop) == (2, 0.25, 0.01, True)
    assert load_config("imagenet-ipc10").synthesis.iterations == 2000 and cfg.students.archs == ["resnet18"]
    out = tmp_path / "run"
    assert main(["run", "--config", "imagenet-ipc10", "--out", str(out), "--no-progress",
                 *sum((["--set", s] for s in cut), [])]) == 0

    layout = Layout(str(out))
    dm = open_artifact(layout.data).read_manifest()["metrics"]
    assert (dm["image_size"], dm["classes"], dm["num_train"]) == (224, CLASSES, 60)
    for arch in TEACHERS:
        art = open_artifact(layout.teacher(arch))
        assert art.read_manifest()["metrics"]["imported_from"] == "torchvision"
        weights = art.read_tensors("weights.safetensors")
        assert torch.allclose(weights["0.mean"].flatten(), torch.tensor([0.485, 0.456, 0.406]))   # the weights' own
        assert torch.allclose(weights["0.std"].flatten(), torch.tensor([0.229, 0.224, 0.225]))
        assert all(torch.equal(weights[f"1.{k}"], v) for k, v in published[arch].items())
    distilled = open_artifact(layout.distilled).read_manifest()["metrics"]["budget"]
    assert distilled["num_teachers"] == 3 and distilled["num_subsets"] == 5        # floor(10 / (1 + 3 * 1 / 3))
    report = open_artifact(layout.report).read_manifest()
    assert {s["label_mode"] for s in report["metrics"]["report"]["student_summary"]} == {"static", "dynamic"}
