"""Hugging Face datasets both ways: `export --format hf` and `dataset.name: hf` (save_to_disk folders and
imagefolder-builder folders), with the real `datasets` library."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infer_distill import DistilledSet
from infer_distill.cli import main
from infer_distill.config.schema import DatasetConfig
from infer_distill.data.sources import load_dataset
from infer_distill.errors import MissingExtra
from infer_distill.outputs.distilled import to_uint8

datasets = pytest.importorskip("datasets")

from test_distilled_set import run  # noqa: E402,F401 - the tiny digits run (module-scoped fixture)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """The builders' arrow cache in the test's folder, not the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.mark.slow
def test_export_hf_round_trip_with_the_test_split(run, tmp_path):
    _, layout = run
    out = tmp_path / "hf"
    assert main(["export", layout.distilled, "--format", "hf", "--out", str(out), "--include-test"]) == 0
    ds = DistilledSet.open(layout.distilled)
    dd = datasets.load_from_disk(str(out))
    assert sorted(dd) == ["test", "train"]
    train = dd["train"]
    assert train.features["label"].names == ds.classes and len(train) == len(ds)
    pixels = torch.from_numpy(np.stack([np.array(im) for im in train["image"]])).unsqueeze(1)   # grey [N, 1, 8, 8]
    assert torch.equal(pixels, to_uint8(ds.images))                                              # 8-bit, in instance order
    assert (pixels.float() / 255 - ds.images).abs().max() <= 0.5 / 255 + 1e-6
    soft = np.array(train["soft_label"], dtype=np.float32)
    assert np.array_equal(soft, ds.soft_labels.numpy())                                          # identical, in order
    assert train["label"] == ds.labels.tolist() and train["subset"] == ds.subsets.tolist()
    assert train["teacher"] == [ds.teacher_name(i) for i in range(len(ds))]
    test_x, test_y = ds.read_test_split()
    assert dd["test"]["label"] == test_y.tolist()
    assert torch.equal(torch.from_numpy(np.stack([np.array(im) for im in dd["test"]["image"]])).unsqueeze(1), test_x)

    card = (out / "README.md").read_text()
    header, _, body = card.removeprefix("---\n").partition("---\n")
    assert "task_categories:\n- image-classification" in header and "size_categories:\n- n<1K" in header
    assert body.strip() == (out / "DATASHEET.md").read_text().strip() and "split `test` (image, label)" in body

    # and back in: dataset.name=hf reads the export for ordinary training (images as RGB, like every folder reader)
    data = load_dataset(DatasetConfig(name="hf", root=str(out)))
    assert data.classes == ds.classes and torch.equal(data.train_x[:, :1], pixels) and torch.equal(data.train_y, ds.labels)
    assert torch.equal(data.test_x[:, :1], test_x) and torch.equal(data.test_y, test_y)


@pytest.mark.slow
def test_the_imagefolder_export_keeps_its_columns_in_the_imagefolder_builder(run, tmp_path):
    """train/metadata.jsonl: load_dataset("imagefolder") on the export gives every soft label, subset and teacher."""
    _, layout = run
    out = tmp_path / "folder"
    assert main(["export", layout.distilled, "--format", "imagefolder", "--out", str(out)]) == 0
    ds = DistilledSet.open(layout.distilled, dtype=torch.uint8)
    train = datasets.load_dataset("imagefolder", data_dir=str(out))["train"]
    assert set(train.features) == {"image", "label", "soft_label", "subset", "teacher"} and len(train) == len(ds)
    by_origin = {(int(ds.subsets[i]), ds.teacher_name(i), int(ds.labels[i])): i for i in range(len(ds))}
    for row in train:
        i = by_origin[(row["subset"], row["teacher"], row["label"])]
        assert np.array_equal(np.array(row["image"]), ds.images[i, 0].numpy())
        assert np.array_equal(np.float32(row["soft_label"]), ds.soft_labels[i].numpy())


def _png(path: Path, value: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_an_imagefolder_builder_folder_reads_as_the_folder_reader_reads_it(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c, name in enumerate(["cat", "dog"]):
            for i in range(n):
                _png(tmp_path / "data" / split / name / f"{i}.png", 40 * c + i)
    hf = load_dataset(DatasetConfig(name="hf", root=str(tmp_path / "data")))
    folder = load_dataset(DatasetConfig(name="imagefolder", root=str(tmp_path / "data")))
    assert hf.classes == folder.classes == ["cat", "dog"]
    order = lambda x: torch.argsort(x[:, 0, 0, 0])   # noqa: E731 - the builder may list files in another order
    for a, b in ((hf.train_x, folder.train_x), (hf.test_x, folder.test_x)):
        assert torch.equal(a[order(a)], b[order(b)])
    assert torch.equal(hf.train_y[order(hf.train_x)], folder.train_y[order(folder.train_x)])
    assert hf.mean == pytest.approx(folder.mean) and hf.std == pytest.approx(folder.std)


def test_a_saved_dataset_with_other_columns_and_splits(tmp_path):
    images = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 20, 30, 40)]
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["a", "b"])})
    split = datasets.Dataset.from_dict({"img": images, "fine": [0, 1, 0, 1]}, features=features)
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(str(tmp_path / "saved"))
    cfg = dict(name="hf", root=str(tmp_path / "saved"), test_split="validation")
    with pytest.raises(Exception, match="dataset.image_column='image': the dataset's columns are \\['img', 'fine'\\]"):
        load_dataset(DatasetConfig(**cfg))
    data = load_dataset(DatasetConfig(**cfg, image_column="img", label_column="fine", image_size=16))
    assert data.classes == ["a", "b"] and data.train_x.shape == (4, 3, 16, 16) and data.train_y.tolist() == [0, 1, 0, 1]
    with pytest.raises(Exception, match="dataset.test_split='test': dataset.root=.* has the splits \\['train', 'validation'\\]"):
        load_dataset(DatasetConfig(name="hf", root=str(tmp_path / "saved"), image_column="img", label_column="fine"))


def test_without_the_extra_the_error_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)    # what `import datasets` meets where it is not installed
    with pytest.raises(MissingExtra, match="pip install 'infer-distill\\[hf\\]'"):
        load_dataset(DatasetConfig(name="hf", root=str(tmp_path)))
    code = main(["stage", "prepare-data", "--root", str(tmp_path / "run"), "--set", "dataset.name=hf",
                 "--set", f"dataset.root={tmp_path}", "--set", "device=cpu"])
    assert code == 2 and "dataset.name=hf needs the 'hf' extra" in capsys.readouterr().err


@pytest.mark.slow
def test_the_card_of_a_set_made_from_a_hub_style_source_is_titled_by_that_source(tmp_path):
    """dataset.name=hf says how the data was read, not which data it is: the card names the source by its root."""
    from conftest import TINY

    from infer_distill.config.loading import load_config
    from infer_distill.dag.layout import Layout
    from infer_distill.engines.walk import run_in_process

    for split, n in (("train", 6), ("test", 2)):
        for c, name in enumerate(["cat", "dog"]):
            for i in range(n):
                _png(tmp_path / "pets" / split / name / f"{i}.png", 40 * c + 5 * i)
    cfg = load_config(None, TINY + ["dataset.name=hf", f"dataset.root={tmp_path / 'pets'}", "students.baselines=[]",
                                    "teachers.min_accuracy_over_chance=null"])  # 12 training images: a teacher at chance
    root = str(tmp_path / "run")
    run_in_process(cfg, root, progress=False)
    out = tmp_path / "export"
    assert main(["export", Layout(root).distilled, "--format", "hf", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    header, _, body = card.removeprefix("---\n").partition("---\n")
    assert 'pretty_name: "Distilled set: pets (hf)"' in header.splitlines()
    assert body.lstrip().startswith("# Distilled set: pets (hf), ")
