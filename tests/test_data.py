"""Dataset loading (digits, image folders, zips, Tiny-ImageNet layout, CIFAR-10 as one zip per split) and augmentation."""
from __future__ import annotations

import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import COLOURS, make_folder
from PIL import Image

from infer_distill.config.schema import DatasetConfig
from infer_distill.data.augment import augmentation, dataset_defaults, random_crop_flip
from infer_distill.data.sources import load_dataset
from infer_distill.errors import DataError


def label_colours(x: torch.Tensor) -> list[tuple[int, ...]]:
    """The (nearest class) colour of each image's centre pixel, to compare with its label."""
    names = list(COLOURS)
    out = []
    for pixel in x[:, :, x.shape[2] // 2, x.shape[3] // 2].tolist():
        dist = [sum((a - b) ** 2 for a, b in zip(pixel, COLOURS[n])) for n in names]
        out.append(COLOURS[names[dist.index(min(dist))]])
    return out


def zip_folder(folder: Path, archive: Path, wrapper: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, wrapper + path.relative_to(folder).as_posix())
    return archive


# ----------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------

def test_digits_split_and_scale():
    data = load_dataset(DatasetConfig(name="digits"))
    assert data.train_x.shape[1:] == (1, 8, 8) and data.test_x.shape[1:] == (1, 8, 8)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert (data.num_classes, data.in_chans, data.image_size) == (10, 1, 8)
    assert len(data.train_y) + len(data.test_y) == 1797
    assert int(data.train_x.max()) == 255 and int(data.train_x.min()) == 0
    # First 80% of each class train, the rest test: counts per class are fixed.
    train_counts = torch.bincount(data.train_y, minlength=10)
    total_counts = train_counts + torch.bincount(data.test_y, minlength=10)
    assert torch.equal(train_counts, (total_counts * 0.8).long())
    assert 0 < data.mean[0] < 1 and 0 < data.std[0] < 1

    small = load_dataset(DatasetConfig(name="digits", train_per_class=3, test_per_class=2, image_size=16))
    assert small.train_x.shape == (30, 1, 16, 16) and small.test_x.shape == (20, 1, 16, 16)
    assert torch.bincount(small.train_y).tolist() == [3] * 10 and torch.bincount(small.test_y).tolist() == [2] * 10
    assert small.train_x.max() > 200  # resized, still on the 0..255 scale


def test_augmentation_defaults_and_overrides():
    assert dataset_defaults("digits") == {"hflip": False, "crop_padding": 1}
    assert dataset_defaults("cifar10") == {"hflip": True, "crop_padding": 4}
    assert dataset_defaults("tiny-imagenet") == {"hflip": True, "crop_padding": 8}
    assert dataset_defaults("imagenet") == {"hflip": True, "crop_padding": 28}
    assert augmentation(DatasetConfig(name="imagefolder"), 64) == (8, True)
    assert augmentation(DatasetConfig(name="cifar10", crop_padding=0, hflip=False), 32) == (0, False)
    with pytest.raises(DataError, match="dataset.name"):
        dataset_defaults("mnist")


# ----------------------------------------------------------------------------------------
# imagefolder: directory, zip, zip with a wrapping folder
# ----------------------------------------------------------------------------------------

@pytest.fixture(params=["dir", "zip", "wrapped-zip"])
def folder_root(request, tmp_path) -> Path:
    folder = make_folder(tmp_path / "data")
    if request.param == "dir":
        return folder
    return zip_folder(folder, tmp_path / "data.zip", wrapper="data/" if request.param == "wrapped-zip" else "")


def test_imagefolder_loads_labels_limits_and_resize(folder_root):
    data = load_dataset(DatasetConfig(name="imagefolder", root=str(folder_root)))
    assert data.classes == sorted(COLOURS)
    assert data.train_x.shape == (12, 3, 12, 12) and data.test_x.shape == (6, 3, 12, 12)
    assert data.train_x.dtype == torch.uint8
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert label_colours(x) == [COLOURS[data.classes[i]] for i in y.tolist()]
    assert data.mean == pytest.approx((1 / 3, 1 / 3, 1 / 3)) and data.std[0] == pytest.approx((2 / 9) ** 0.5)

    small = load_dataset(DatasetConfig(name="imagefolder", root=str(folder_root), train_per_class=2, test_per_class=1,
                                       image_size=8))
    assert small.train_x.shape == (6, 3, 8, 8) and small.test_x.shape == (3, 3, 8, 8)
    assert torch.bincount(small.train_y).tolist() == [2, 2, 2]
    assert label_colours(small.train_x) == [COLOURS[small.classes[i]] for i in small.train_y.tolist()]
    assert augmentation(DatasetConfig(name="imagefolder"), small.image_size) == (1, True)


def test_imagefolder_wrong_layout(tmp_path):
    root = make_folder(tmp_path / "data", {"training": 1, "test": 1})
    with pytest.raises(DataError, match=r"train/<class>/<file>") as err:
        load_dataset(DatasetConfig(name="imagefolder", root=str(root)))
    assert "training/" in str(err.value)  # shows what was found
    archive = zip_folder(root, tmp_path / "data.zip")
    with pytest.raises(DataError, match=r"train/<class>/<file>"):
        load_dataset(DatasetConfig(name="imagefolder", root=str(archive)))


def test_imagefolder_missing_or_bad_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DatasetConfig(name="imagefolder", root=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="dataset.root must be set"):
        load_dataset(DatasetConfig(name="imagefolder"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="neither a directory nor a zip"):
        load_dataset(DatasetConfig(name="imagefolder", root=str(tmp_path / "notes.txt")))


def test_imagefolder_class_mismatch_and_empty_class(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "test" / "moon").mkdir()
    Image.new("RGB", (12, 12)).save(root / "test" / "moon" / "0.png")
    with pytest.raises(DataError, match=r"only in 'test': \['moon'\]"):
        load_dataset(DatasetConfig(name="imagefolder", root=str(root)))
    (root / "train" / "moon").mkdir()
    (root / "train" / "moon" / "README.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"without images.*\['moon'\]"):
        load_dataset(DatasetConfig(name="imagefolder", root=str(root)))


def test_imagefolder_split_without_classes_and_broken_image(tmp_path):
    root = make_folder(tmp_path / "data")
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()
    (empty / "train" / "README.txt").write_text("a loose file is no class")
    with pytest.raises(DataError, match=r"'train' has no class folders"):
        load_dataset(DatasetConfig(name="imagefolder", root=str(empty)))
    (root / "test" / "sky" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.png"):
        load_dataset(DatasetConfig(name="imagefolder", root=str(root)))


def test_imagefolder_mixed_sizes_need_image_size(tmp_path):
    root = make_folder(tmp_path / "data")
    Image.new("RGB", (16, 10), COLOURS["sky"]).save(root / "train" / "sky" / "999.png")
    with pytest.raises(DataError, match="dataset.image_size"):
        load_dataset(DatasetConfig(name="imagefolder", root=str(root)))
    data = load_dataset(DatasetConfig(name="imagefolder", root=str(root), image_size=10))
    assert data.train_x.shape == (13, 3, 10, 10)
    assert label_colours(data.train_x) == [COLOURS[data.classes[i]] for i in data.train_y.tolist()]

    oblong = tmp_path / "oblong"
    for split in ("train", "test"):
        (oblong / split / "sky").mkdir(parents=True)
        Image.new("RGB", (12, 9), COLOURS["sky"]).save(oblong / split / "sky" / "0.png")
    with pytest.raises(DataError, match="not square.*dataset.image_size"):
        load_dataset(DatasetConfig(name="imagefolder", root=str(oblong)))
    assert load_dataset(DatasetConfig(name="imagefolder", root=str(oblong), image_size=8)).train_x.shape == (1, 3, 8, 8)


# ----------------------------------------------------------------------------------------
# CIFAR-10 as one zip per split in one directory ($INFER_DATASETS/cifar10, see conftest.datasets_dir)
# ----------------------------------------------------------------------------------------

def test_real_cifar10_zips(datasets_dir):
    root = datasets_dir / "cifar10"
    data = load_dataset(DatasetConfig(name="imagefolder", root=str(root), train_per_class=3, test_per_class=2))
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert data.train_x.shape == (30, 3, 32, 32) and data.test_x.shape == (20, 3, 32, 32)
    assert torch.bincount(data.train_y).tolist() == [3] * 10 and torch.bincount(data.test_y).tolist() == [2] * 10
    assert 0.2 < min(data.mean) and max(data.mean) < 0.8 and data.train_x.float().std() > 20


# ----------------------------------------------------------------------------------------
# Tiny-ImageNet layout, CIFAR via torchvision
# ----------------------------------------------------------------------------------------

def test_tiny_imagenet_layout(tmp_path):
    wnids = {"n01443537": COLOURS["apple"], "n01629819": COLOURS["sky"]}
    for wnid, colour in wnids.items():
        (tmp_path / "train" / wnid / "images").mkdir(parents=True)
        (tmp_path / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(3):
            Image.new("RGB", (16, 16), colour).save(tmp_path / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
    (tmp_path / "val" / "images").mkdir(parents=True)
    val_labels = ["n01629819", "n01443537", "n01629819"]
    for i, wnid in enumerate(val_labels):
        Image.new("RGB", (16, 16), wnids[wnid]).save(tmp_path / "val" / "images" / f"val_{i}.JPEG")
    (tmp_path / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{i}.JPEG\t{w}\t0\t0\t15\t15\n" for i, w in enumerate(val_labels)))

    data = load_dataset(DatasetConfig(name="tiny-imagenet", root=str(tmp_path)))
    assert data.classes == sorted(wnids)
    assert data.train_x.shape == (6, 3, 16, 16) and data.test_x.shape == (3, 3, 16, 16)
    assert data.test_y.tolist() == [0, 1, 1]  # grouped by class: val_1 is n01443537, val_0 and val_2 n01629819
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert label_colours(x) == [wnids[data.classes[i]] for i in y.tolist()]
    assert data.mean == pytest.approx((0.485, 0.456, 0.406))


def test_imagenet_layout_resizes_to_image_size(tmp_path):
    make_folder(tmp_path, {"train": 2, "val": 1}, size=20, ext=".JPEG")
    Image.new("RGB", (30, 20), COLOURS["leaf"]).save(tmp_path / "train" / "leaf" / "900.JPEG")  # not square
    data = load_dataset(DatasetConfig(name="imagenet", root=str(tmp_path), image_size=16))
    assert data.train_x.shape == (7, 3, 16, 16) and data.test_x.shape == (3, 3, 16, 16)  # val is the test split
    assert label_colours(data.train_x) == [COLOURS[data.classes[i]] for i in data.train_y.tolist()]
    assert data.mean == pytest.approx((0.485, 0.456, 0.406))


def test_cifar_without_files_or_download(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="dataset.download=true"):
        load_dataset(DatasetConfig(name="cifar10", root=str(tmp_path)))
    with pytest.raises(DataError, match="dataset.root"):
        load_dataset(DatasetConfig(name="cifar100"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", offline)
    with pytest.raises(DataError, match="downloading CIFAR-10 .* failed.*no route to host"):
        load_dataset(DatasetConfig(name="cifar10", root=str(tmp_path), download=True))


# ----------------------------------------------------------------------------------------
# random_crop_flip
# ----------------------------------------------------------------------------------------

def test_random_crop_flip_identity_shapes_and_seed():
    x = torch.randint(0, 256, (5, 3, 7, 7), dtype=torch.uint8)
    assert torch.equal(random_crop_flip(x, 0, False), x)
    for inp in (x, x.float() / 255):
        out = random_crop_flip(inp, 2, True, torch.Generator().manual_seed(1))
        assert out.shape == inp.shape and out.dtype == inp.dtype
        assert torch.equal(out, random_crop_flip(inp, 2, True, torch.Generator().manual_seed(1)))
    big = torch.randn(64, 3, 8, 8)
    assert not torch.equal(random_crop_flip(big, 2, True, torch.Generator().manual_seed(1)),
                           random_crop_flip(big, 2, True, torch.Generator().manual_seed(2)))


def test_random_crop_flip_is_a_shifted_crop():
    p, h, w = 2, 5, 6
    x = torch.randn(40, 2, h, w)
    out = random_crop_flip(x, p, True, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    found = []
    for b in range(len(x)):
        matches = [(dy, dx, f) for dy in range(2 * p + 1) for dx in range(2 * p + 1) for f in (False, True)
                   if torch.equal(out[b], (lambda c: c.flip(-1) if f else c)(padded[b, :, dy:dy + h, dx:dx + w]))]
        assert matches, f"sample {b} is no shifted (flipped) crop of the padded input"
        found.append(matches[0])
    # Every shift occurs in both directions, and both flipped and unflipped samples.
    assert {dy for dy, _, _ in found} == {dx for _, dx, _ in found} == set(range(2 * p + 1))
    assert any(dy != dx for dy, dx, _ in found)  # drawn independently
    assert 5 < sum(f for _, _, f in found) < 35
    no_flip = random_crop_flip(x, 0, False)
    assert torch.equal(no_flip, x)
    shifted_only = random_crop_flip(x, 1, False, torch.Generator().manual_seed(0))
    padded1 = torch.nn.functional.pad(x[0], (1, 1, 1, 1))
    assert any(torch.equal(shifted_only[0], padded1[:, dy:dy + h, dx:dx + w]) for dy in range(3) for dx in range(3))
