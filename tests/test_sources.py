"""Sources as streams: `open_source(cfg).split(name).batches(n)` gives the bytes and order `load_dataset` gives, a
folder is decoded a few batches at a time, and the WebDataset source reads tar shards (local, brace-expanded, on
S3) into the same images as the same files in an ImageFolder, refusing broken shards by shard and member."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from infer_distill.config.schema import DatasetConfig
from infer_distill.data import folders
from infer_distill.data.sources import load_dataset, open_source, source_digest
from infer_distill.data.stream import ChannelStats
from infer_distill.data.webdataset import expand_braces
from infer_distill.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Real images: scikit-learn's digits, 8 train and 3 test per class (uint8 [N, 1, 8, 8]), as (train, test)."""
    data = load_dataset(DatasetConfig(name="digits", train_per_class=8, test_per_class=3))
    return (data.train_x, data.train_y), (data.test_x, data.test_y)


def png(image: torch.Tensor) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image[0].numpy(), "L").save(out, "PNG")
    return out.getvalue()


def ordered(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The images class by class, each class in its order: the order an ImageFolder lists `<class>/<i>.png`."""
    order = torch.cat([torch.nonzero(y == c).flatten() for c in range(10)])
    return x[order], y[order]


def write_folder(root: Path, digits) -> Path:
    """<root>/<split>/<digit>/<i>.png of the digits (grayscale PNGs, which decode to three equal channels)."""
    for split, (x, y) in zip(("train", "test"), digits):
        for i, (image, label) in enumerate(zip(x, y.tolist())):
            path = root / split / str(label) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png(image))
    return root


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def wds_members(x: torch.Tensor, y: torch.Tensor, start: int = 0) -> list[tuple[str, bytes]]:
    """WebDataset members of the images in the order given: <key>.png and <key>.cls, with a metadata member that is
    no part of the sample between them."""
    members = []
    for i, (image, label) in enumerate(zip(x, y.tolist()), start):
        key = f"d{label}/{i:05d}"
        members += [(f"{key}.png", png(image)), (f"{key}.json", json.dumps({"i": i}).encode()),
                    (f"{key}.cls", f"{label}\n".encode())]
    return members


def write_shards(root: Path, digits, shards: int = 3) -> dict[str, bytes]:
    """train-{0..shards-1}.tar and test-0.tar under root, classes.txt naming the classes as the folder does; the
    files as {name: bytes}."""
    files = {"classes.txt": "".join(f"{c}\n" for c in range(10)).encode()}
    (train_x, train_y), (test_x, test_y) = (ordered(*s) for s in digits)
    cuts = torch.linspace(0, len(train_y), shards + 1).long().tolist()
    for s, (a, b) in enumerate(zip(cuts, cuts[1:])):
        files[f"train-{s}.tar"] = tar_bytes(wds_members(train_x[a:b], train_y[a:b], a))
    files["test-0.tar"] = tar_bytes(wds_members(test_x, test_y))
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def wds_config(root, shards: int = 3, **kw) -> DatasetConfig:
    return DatasetConfig(name="webdataset", root=str(root), train_shards=f"train-{{0..{shards - 1}}}.tar",
                         test_shards="test-0.tar", **kw)


def streamed(cfg: DatasetConfig, batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    with open_source(cfg) as source:
        out = {}
        for name in ("train", "test"):
            batches = list(source.split(name).batches(batch_size, progress=False))
            assert all(len(y) <= batch_size for _, y in batches)
            out[name] = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
        return out


def assert_same(cfg: DatasetConfig, batch_size: int = 7):
    """Batches of `batch_size` concatenated equal load_dataset's tensors; returns load_dataset's data."""
    data = load_dataset(cfg, progress=False)
    parts = streamed(cfg, batch_size)
    for name, (x, y) in (("train", (data.train_x, data.train_y)), ("test", (data.test_x, data.test_y))):
        assert torch.equal(parts[name][0], x) and torch.equal(parts[name][1], y), name
    return data


# ----------------------------------------------------------------------------------------
# Streams: the same bytes as load_dataset
# ----------------------------------------------------------------------------------------


def test_digits_stream_equals_load_dataset_with_limits_and_resize():
    data = assert_same(DatasetConfig(name="digits", train_per_class=5, image_size=12))
    assert data.train_x.shape == (50, 1, 12, 12) and data.train_y.bincount().tolist() == [5] * 10
    with open_source(DatasetConfig(name="digits", train_per_class=5)) as source:
        assert source.split("train").class_counts.tolist() == [5] * 10 and source.split("train").count == 50


def test_folder_and_zip_streams_equal_load_dataset_and_the_images(tmp_path, digits):
    root = write_folder(tmp_path / "folder", digits)
    archive = tmp_path / "zipped" / "digits.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*.png")):
            zf.write(path, path.relative_to(root).as_posix())
    expected = [ordered(*s) for s in digits]
    for cfg in (DatasetConfig(name="imagefolder", root=str(root)), DatasetConfig(name="imagefolder", root=str(archive))):
        data = assert_same(cfg)
        for (x, y), (ex, ey) in zip(((data.train_x, data.train_y), (data.test_x, data.test_y)), expected):
            assert torch.equal(x, ex.expand(-1, 3, -1, -1)) and torch.equal(y, ey)  # PNG is lossless: the digits' bytes
        assert data.classes == [str(c) for c in range(10)]
    with open_source(DatasetConfig(name="imagefolder", root=str(root), train_per_class=3)) as source:
        assert source.split("train").count == 30 and source.split("test").class_counts.tolist() == [3] * 10
        assert source.stats is None


def test_channel_stats_do_not_depend_on_batching(digits):
    x = digits[0][0].expand(-1, 3, -1, -1)
    whole, pieces = ChannelStats(), ChannelStats()
    whole.add(x)
    for part in x.split(13):
        pieces.add(part)
    assert whole.result() == pieces.result()
    mean, std = whole.result()
    pixels = x.double() / 255
    assert mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(pixels.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)


def test_a_folder_is_decoded_a_few_batches_at_a_time(tmp_path, monkeypatch):
    """300 images in batches of 10: at every batch handed over, at most AHEAD + 1 batches were decoded beyond those
    handed over before it, and opening the source decodes nothing."""
    root = tmp_path / "many"
    for split, count in (("train", 100), ("test", 2)):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (16, 16), (i % 256, c * 80, 7)).save(root / split / f"c{c}" / f"{i:03d}.png")
    decoded = []
    real = folders._decode
    monkeypatch.setattr(folders, "_decode", lambda *a: decoded.append(1) or real(*a))
    with open_source(DatasetConfig(name="imagefolder", root=str(root))) as source:
        split = source.split("train")
        assert split.count == 300 and not decoded
        handed = 0
        for x, _ in split.batches(10, progress=False):
            handed += len(x)
            assert len(decoded) - handed <= (folders.AHEAD + 1) * 10 + 1  # + 1: the first image, for the size
        assert handed == 300


# ----------------------------------------------------------------------------------------
# WebDataset
# ----------------------------------------------------------------------------------------


def test_brace_patterns():
    assert expand_braces("train-{000000..000002}.tar", "f") == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert expand_braces("{a,b}-{8..10}.tar", "f") == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]
    assert expand_braces("s{x,y{1..2}}", "f") == ["sx", "sy1", "sy2"]
    assert expand_braces("plain.tar", "f") == ["plain.tar"]
    for bad, says in (("a-{0..3.tar", "without its '}'"), ("a-0..3}.tar", "without its '{'"),
                      ("a-{x..y}.tar", "neither a list"), ("{0..99999999999}", "over 1,000,000")):
        with pytest.raises(ConfigError, match="dataset.train_shards") as e:
            expand_braces(bad, "dataset.train_shards")
        assert says in str(e.value)


def test_webdataset_gives_the_images_of_the_same_imagefolder(tmp_path, digits):
    write_shards(tmp_path / "wds", digits)
    folder = write_folder(tmp_path / "folder", digits)
    for limits in ({}, {"train_per_class": 3, "test_per_class": 2}, {"image_size": 16}):
        data = assert_same(wds_config(tmp_path / "wds", **limits), batch_size=5)
        same = load_dataset(DatasetConfig(name="imagefolder", root=str(folder), **limits), progress=False)
        for a, b in ((data.train_x, same.train_x), (data.train_y, same.train_y), (data.test_x, same.test_x),
                     (data.test_y, same.test_y)):
            assert torch.equal(a, b), limits
        assert data.classes == same.classes and (data.mean, data.std) == (same.mean, same.std)


def test_webdataset_reads_gzipped_shards_and_stops_once_every_class_is_full(tmp_path, digits):
    files = write_shards(tmp_path, digits)
    for name in ("train-0.tar", "train-1.tar", "train-2.tar", "test-0.tar"):
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(files[name]))
    plain = load_dataset(wds_config(tmp_path), progress=False)
    zipped = load_dataset(DatasetConfig(name="webdataset", root=str(tmp_path), train_shards="train-{0..2}.tar.gz",
                                        test_shards="test-0.tar.gz"), progress=False)
    assert torch.equal(plain.train_x, zipped.train_x) and torch.equal(plain.test_y, zipped.test_y)
    # a fourth shard after the three: read only while a class still lacks images
    (tmp_path / "train-3.tar").write_bytes(b"never read" * 100)
    limited = load_dataset(wds_config(tmp_path, shards=4, train_per_class=1), progress=False)
    assert limited.train_y.tolist() == list(range(10))
    with pytest.raises(DataError, match="train-3.tar is not a readable tar archive"):
        load_dataset(wds_config(tmp_path, shards=4, train_per_class=9), progress=False)


def test_a_webdataset_is_read_a_few_batches_ahead(tmp_path, digits, monkeypatch):
    """Samples are read from the shards only as far as AHEAD + 1 batches beyond those handed over."""
    from infer_distill.data import webdataset

    write_shards(tmp_path, digits)
    read = []
    real = webdataset._shard_samples
    monkeypatch.setattr(webdataset, "_shard_samples", lambda *a: (read.append(1) or s for s in real(*a)))
    with open_source(wds_config(tmp_path, image_size=8)) as source:
        handed = 0
        for x, _ in source.split("train").batches(4, progress=False):
            handed += len(x)
            assert len(read) - handed <= (folders.AHEAD + 1) * 4
        assert handed == 80 and len(read) == 80


def test_webdataset_class_names_from_num_classes(tmp_path, digits):
    write_shards(tmp_path, digits)
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DataError, match="has no classes.txt: add one .* or set dataset.num_classes"):
        open_source(wds_config(tmp_path))
    with open_source(wds_config(tmp_path, num_classes=10)) as source:
        assert source.classes == [str(c) for c in range(10)] and source.split("train").count is None


def test_webdataset_on_s3_reads_as_locally(tmp_path, digits, s3_bucket):
    import boto3

    files = write_shards(tmp_path / "local", digits)
    client = boto3.session.Session().client("s3")
    for name, data in files.items():
        client.put_object(Bucket=s3_bucket, Key=f"sets/digits/{name}", Body=data)
    remote = wds_config(f"s3://{s3_bucket}/sets/digits")
    data = assert_same(remote, batch_size=9)
    local = load_dataset(wds_config(tmp_path / "local"), progress=False)
    assert torch.equal(data.train_x, local.train_x) and torch.equal(data.test_y, local.test_y)
    assert data.classes == local.classes
    # the digest: keys, sizes and ETags; a shard replaced changes it
    before = source_digest(remote)
    assert before["files"] == 5 and source_digest(remote) == before
    client.put_object(Bucket=s3_bucket, Key="sets/digits/train-1.tar", Body=files["train-2.tar"])
    assert source_digest(remote) != before
    client.delete_object(Bucket=s3_bucket, Key="sets/digits/train-2.tar")
    with pytest.raises(DataError, match=f"shard s3://{s3_bucket}/sets/digits/train-2.tar does not exist"):
        load_dataset(remote, progress=False)
    with pytest.raises(DataError, match="bucket 'no-such-bucket' does not exist"):
        load_dataset(wds_config("s3://no-such-bucket/x"), progress=False)


def test_webdataset_local_digest_follows_the_shards(tmp_path, digits):
    write_shards(tmp_path, digits)
    cfg = wds_config(tmp_path)
    before = source_digest(cfg)
    assert before["files"] == 5
    (tmp_path / "test-0.tar").write_bytes((tmp_path / "train-0.tar").read_bytes())
    assert source_digest(cfg) != before


def _broken(tmp_path: Path, digits, members: list[tuple[str, bytes]] | bytes) -> DatasetConfig:
    """The shards of write_shards with train-1.tar replaced by `members` (or raw bytes)."""
    write_shards(tmp_path, digits)
    (tmp_path / "train-1.tar").write_bytes(members if isinstance(members, bytes) else tar_bytes(members))
    return wds_config(tmp_path)


@pytest.mark.parametrize("members, says", [
    ([("a/1.png", b"x"), ("a/1.cls", b"3"), ("a/2.cls", b"4")], "sample 'a/2' lacks an image (.bmp, .jpeg"),
    ([("a/1.cls", b"3"), ("a/1.png", None), ("a/2.png", None)], "sample 'a/2' lacks a .cls label"),
    ([("a/1.png", None), ("a/1.cls", b"10")], "member 'a/1.cls' holds the label 10, outside 0..9"),
    ([("a/1.png", None), ("a/1.cls", b"-1")], "member 'a/1.cls' holds the label -1, outside 0..9"),
    ([("a/1.png", None), ("a/1.cls", b"three")], "member 'a/1.cls' holds 'three', not a class index"),
    ([("a/1.png", None), ("a/1.jpg", None), ("a/1.cls", b"1")], "sample 'a/1' has two images, 'a/1.png' and 'a/1.jpg'"),
    ([("a/1.png", None), ("a/1.cls", b"1"), ("a/1.CLS", b"2")], "sample 'a/1' has two labels; member 'a/1.CLS'"),
    ([("a/1.png", b"not an image"), ("a/1.cls", b"1")], "cannot decode image"),
])
def test_webdataset_refuses_bad_samples_naming_shard_and_member(tmp_path, digits, members, says):
    image = png(digits[0][0][0])
    cfg = _broken(tmp_path, digits, [(n, image if d is None else d) for n, d in members])
    with pytest.raises(DataError) as e:
        load_dataset(cfg, progress=False)
    assert says in str(e.value) and str(tmp_path / "train-1.tar") in str(e.value)


def test_webdataset_refuses_unreadable_and_missing_shards(tmp_path, digits):
    cfg = _broken(tmp_path, digits, b"this is no tar archive at all" * 40)
    with pytest.raises(DataError, match="train-1.tar is not a readable tar archive .*replace it"):
        load_dataset(cfg, progress=False)
    whole = tar_bytes(wds_members(*ordered(*digits[0])))
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        cut = tar.getmembers()[30]  # a .png member: the shard ends inside its data
        header = tar.getmembers()[31]  # the .json member after it: the shard ends inside its header
    cfg = _broken(tmp_path / "cut", digits, whole[: cut.offset_data + 10])
    with pytest.raises(DataError, match=f"train-1.tar is not a readable tar archive \\(after member '{cut.name}'"):
        load_dataset(cfg, progress=False)
    for end in (header.offset + 100, header.offset):  # inside a header; at a member's end, without the end blocks
        cfg = _broken(tmp_path / f"cut-{end}", digits, whole[:end])
        with pytest.raises(DataError, match=f"train-1.tar is not a readable tar archive \\(after member '{cut.name}': "
                                            "it ends without the end-of-archive block"):
            load_dataset(cfg, progress=False)
    (tmp_path / "train-2.tar").unlink()
    with pytest.raises(DataError, match="train-2.tar does not exist \\(1 of the 3 shards dataset.train_shards="):
        open_source(wds_config(tmp_path)).split("train")


def test_an_s3_shard_cut_off_mid_read_is_resumed_where_it_broke(tmp_path, digits, s3_bucket, s3_env, monkeypatch):
    """Through a proxy resetting each connection after 100 kB of answers: the GET reading a shard's body breaks off,
    and the rest is read from the byte reached (never the same bytes twice, never a restart of the shard)."""
    import boto3
    from test_s3_faults import FaultProxy

    from infer_distill.storage import s3

    files = write_shards(tmp_path, digits, shards=1)  # one train shard of 80 samples: over 100 kB
    client = boto3.session.Session().client("s3")
    for name, data in files.items():
        client.put_object(Bucket=s3_bucket, Key=f"wds/{name}", Body=data)
    cfg = wds_config(f"s3://{s3_bucket}/wds", shards=1, image_size=8)  # the size given: no GET for the first image
    expected = load_dataset(cfg, progress=False)
    proxy = FaultProxy(s3_env)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        ranges = []
        through_proxy = s3._s3_client()
        get_object = through_proxy.get_object
        monkeypatch.setattr(through_proxy, "get_object", lambda **kw: ranges.append(kw.get("Range")) or get_object(**kw))
        # every connection breaks after 100 kB of answers: the shard (over 200 kB) is read in pieces
        proxy.schedule = [("reset_response", 100_000)] * 40
        data = load_dataset(cfg, progress=False)
    finally:
        proxy.close()
    assert torch.equal(data.train_x, expected.train_x) and torch.equal(data.train_y, expected.train_y)
    # each GET from the start (None) is followed by the GETs resuming it, each from further on
    runs = "|".join(r or "" for r in ranges).split("||")
    resumed = [[int(r.removeprefix("bytes=").rstrip("-")) for r in run.split("|") if r] for run in runs]
    assert sum(map(len, resumed)) >= 3 and all(run == sorted(set(run)) and 0 not in run for run in resumed), ranges
