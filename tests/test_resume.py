"""What a resumed run may skip: an artifact with these settings, intact files, made from the inputs there now."""
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_folder
from PIL import Image

from infer_distill import stages
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.engines import walk
from infer_distill.stages.artifacts import is_current
from infer_distill.storage import open_artifact


def test_is_current_checks_settings_files_and_inputs(tmp_path):
    cfg = load_config(None, TINY)
    lay = Layout(str(tmp_path / "run"))
    stages.prepare_data(cfg, lay.data)
    stages.select_subsets(cfg, lay.data, lay.subsets)
    made_from = {"data": lay.data}
    assert is_current(lay.subsets, cfg, "select-subsets", made_from)
    assert is_current(lay.subsets, cfg, "select-subsets")  # None: the inputs the artifact records
    assert is_current(lay.subsets, cfg, "select-subsets", {**made_from, "teachers": [lay.data]})  # more than it used
    assert not is_current(lay.subsets, cfg, "select-subsets", {})  # an input it was made from is not named
    assert not is_current(lay.subsets, load_config(None, TINY + ["seed=1"]), "select-subsets", made_from)  # settings
    assert not is_current(lay.report, cfg, "report", {})  # nothing there

    # remaking the data (identical bytes, a new manifest) makes everything made from it stale
    stages.prepare_data(cfg, lay.data)
    assert is_current(lay.data, cfg, "prepare-data", {})
    assert not is_current(lay.subsets, cfg, "select-subsets", made_from)
    stages.select_subsets(cfg, lay.data, lay.subsets)
    assert is_current(lay.subsets, cfg, "select-subsets", made_from)

    # a flipped byte in any file
    path = Path(lay.subsets) / "subsets.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    assert not is_current(lay.subsets, cfg, "select-subsets", made_from)

    manifest = open_artifact(lay.subsets).read_manifest()
    assert manifest["inputs"] == made_from and set(manifest["input_digests"]) == {"data"}


# ---- content, not paths: a changed source remakes what was made from it ------------------------

FAST = TINY + ["students.baselines=[]", "students.epochs=1"]


def _walk(root: Path, overrides: list[str]) -> dict[str, bool]:
    """Run (or resume) under `root` with a freshly loaded config, as the CLI does; {"stage item": skipped}."""
    steps: dict[str, bool] = {}
    walk.run_in_process(load_config(None, FAST + overrides), str(root), progress=False,
                        on_step=lambda r: steps.__setitem__(f"{r.stage} {r.label}".strip(), r.skipped))
    return steps


def _remade(steps: dict[str, bool]) -> set[str]:
    return {name for name, skipped in steps.items() if not skipped and name != "report"}  # the report always runs


def _save_teacher(path: Path, seed: int) -> None:
    from safetensors.torch import save_file

    from infer_distill.models.networks import create_model

    torch.manual_seed(seed)
    save_file(create_model("convnet_d2_w32", num_classes=10, in_chans=1, image_size=8).state_dict(), path)


@pytest.mark.slow
def test_a_pretrained_file_overwritten_in_place_remakes_its_teacher_and_everything_downstream(tmp_path):
    weights, root = tmp_path / "teacher.safetensors", tmp_path / "run"
    # untrained weights (what is checked is which teacher is remade): about chance, accepted
    pretrained = [f"teachers.pretrained={{convnet_d2_w32: {weights}}}", "teachers.min_accuracy_over_chance=null"]
    _save_teacher(weights, seed=1)
    everything = _walk(root, pretrained)
    assert not _remade(_walk(root, pretrained))  # unchanged: all skipped
    manifest = open_artifact(root / "teachers" / "convnet_d2_w32").read_manifest()
    assert manifest["sources"] == {"pretrained_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}

    _save_teacher(weights, seed=2)  # same path, other weights
    downstream = {"train-teacher convnet_d2_w32", "synthesize-ufc subsets 0..7", "soft-label",
                  "evaluate-student convnet_d3_w32 static seed 0"}
    assert _remade(_walk(root, pretrained)) == downstream
    assert set(everything) - downstream - {"report"} == {"prepare-data", "train-teacher resnet_tiny", "select-subsets"}
    assert not _remade(_walk(root, pretrained))


@pytest.mark.slow
def test_a_dataset_whose_content_changed_remakes_the_data_and_everything_downstream(tmp_path):
    data, root = make_folder(tmp_path / "images", {"train": 4, "test": 2}), tmp_path / "run"
    # 12 training images: teachers about as good as chance, accepted (what is checked is what is remade)
    folder = ["dataset.name=imagefolder", f"dataset.root={data}", "budget.ipc=2", "teachers.min_accuracy_over_chance=null"]
    everything = set(_walk(root, folder)) - {"report"}
    assert not _remade(_walk(root, folder))  # unchanged: all skipped

    # a file replaced by another of the same name
    Image.new("RGB", (12, 12), (9, 9, 9)).save(data / "train" / "sky" / "000.png")
    assert _remade(_walk(root, folder)) == everything
    assert not _remade(_walk(root, folder))

    # a class added
    for split, count in (("train", 4), ("test", 2)):
        (data / split / "moon").mkdir()
        for i in range(count):
            Image.new("RGB", (12, 12), (90, 90, 90)).save(data / split / "moon" / f"{i}.png")
    assert _remade(_walk(root, folder)) == everything
    assert open_artifact(root / "data").read_manifest()["metrics"]["classes"] == ["apple", "leaf", "moon", "sky"]
    assert not _remade(_walk(root, folder))


def test_the_dataset_digest_follows_what_the_loader_reads(tmp_path):
    from infer_distill.config.schema import DatasetConfig
    from infer_distill.data.sources import source_digest

    data = make_folder(tmp_path / "images")
    cfg = DatasetConfig(name="imagefolder", root=str(data))
    first = source_digest(cfg)
    assert first["files"] == 18 and source_digest(cfg) == first
    (data / "README.md").write_text("not read by the loader")
    assert source_digest(cfg) == first
    (data / "train" / "sky" / "extra.png").write_bytes((data / "train" / "sky" / "000.png").read_bytes())
    assert source_digest(cfg)["files"] == 19
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("train/a/0.png", b"x")
    zipped = source_digest(DatasetConfig(name="imagefolder", root=str(archive)))
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("train/a/1.png", b"y")
    assert source_digest(DatasetConfig(name="imagefolder", root=str(archive))) != zipped
    assert source_digest(DatasetConfig(name="digits")) is None  # scikit-learn's constant data
    cifar = source_digest(DatasetConfig(name="cifar10", root=str(tmp_path)))  # the files torchvision reads, missing here
    assert cifar["files"] == 7


def test_a_safetensors_file_with_a_matching_sha256_but_an_unreadable_header_is_not_current(tmp_path):
    cfg = load_config(None, TINY)
    lay = Layout(str(tmp_path / "run"))
    stages.prepare_data(cfg, lay.data)
    stages.select_subsets(cfg, lay.data, lay.subsets)
    assert is_current(lay.subsets, cfg, "select-subsets")
    # the header claims more bytes than the file has; the manifest is rewritten to match (sha256 and size)
    path = Path(lay.subsets) / "subsets.safetensors"
    broken = (10**6).to_bytes(8, "little") + path.read_bytes()[8:]
    path.write_bytes(broken)
    manifest_path = Path(lay.subsets) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["subsets.safetensors"].update(sha256=hashlib.sha256(broken).hexdigest(), bytes=len(broken))
    manifest_path.write_text(json.dumps(manifest))
    assert not is_current(lay.subsets, cfg, "select-subsets")
    stages.select_subsets(cfg, lay.data, lay.subsets)  # remade, and readable again
    assert is_current(lay.subsets, cfg, "select-subsets")
