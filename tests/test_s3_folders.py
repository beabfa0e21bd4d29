"""The folder sources (imagefolder, tiny-imagenet, imagenet) on an S3 prefix, a real S3 server (moto): the same layout
uploaded to `s3://bucket/prefix` loads into exactly what the folder on disk loads into; its digest follows the
objects; a listing of several pages; and the refusals: a missing split, zips, an object over the size limit (before
its GET), an odd key, no credentials, no server."""
from __future__ import annotations

import logging
from pathlib import Path

import boto3
import pytest
import torch
from test_sources import assert_same, png, write_folder

from infer_distill.config.schema import DatasetConfig
from infer_distill.data import folders
from infer_distill.data.sources import load_dataset, open_source, source_digest
from infer_distill.errors import ArtifactError, DataError, StoreUnavailable

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Real images: scikit-learn's digits, 6 train and 2 test per class, as (train, test)."""
    data = load_dataset(DatasetConfig(name="digits", train_per_class=6, test_per_class=2), progress=False)
    return (data.train_x, data.train_y), (data.test_x, data.test_y)


def upload(folder: Path, bucket: str, prefix: str) -> None:
    """Every file under `folder` to s3://bucket/prefix/<its path relative to folder>."""
    client = boto3.session.Session().client("s3")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())


def test_an_imagefolder_on_s3_loads_as_the_same_folder_on_disk(tmp_path, digits, s3_bucket):
    folder = write_folder(tmp_path / "folder", digits)
    upload(folder, s3_bucket, "sets/digits")
    local = load_dataset(DatasetConfig(name="imagefolder", root=str(folder)), progress=False)
    for root in (f"s3://{s3_bucket}/sets/digits", f"s3://{s3_bucket}/sets/digits/"):
        remote = assert_same(DatasetConfig(name="imagefolder", root=root), batch_size=7)
        for field in ("train_x", "train_y", "test_x", "test_y"):
            assert torch.equal(getattr(remote, field), getattr(local, field)), field
        assert remote.classes == local.classes == [str(c) for c in range(10)]
        assert (remote.mean, remote.std) == (local.mean, local.std)
    with open_source(DatasetConfig(name="imagefolder", root=f"s3://{s3_bucket}/sets/digits", train_per_class=4)) as source:
        assert source.split("train").count == 40 and source.split("test").class_counts.tolist() == [2] * 10


def test_a_bucket_root_and_resizing_read_as_on_disk(tmp_path, digits, s3_bucket):
    """The layout at the top of the bucket (keys train/... and test/...), resized as on disk."""
    folder = write_folder(tmp_path / "folder", digits)
    client = boto3.session.Session().client("s3")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.put_object(Bucket=s3_bucket, Key=path.relative_to(folder).as_posix(), Body=path.read_bytes())
    remote = load_dataset(DatasetConfig(name="imagefolder", root=f"s3://{s3_bucket}", image_size=12), progress=False)
    local = load_dataset(DatasetConfig(name="imagefolder", root=str(folder), image_size=12), progress=False)
    assert remote.train_x.shape == (60, 3, 12, 12)
    assert torch.equal(remote.train_x, local.train_x) and torch.equal(remote.test_y, local.test_y)


def test_tiny_imagenet_on_s3_reads_its_annotations_as_on_disk(tmp_path, digits, s3_bucket):
    (train_x, train_y), (test_x, test_y) = digits
    root = tmp_path / "tiny"
    for i, (image, label) in enumerate(zip(train_x, train_y.tolist())):
        path = root / "train" / f"n{label:08d}" / "images" / f"n{label:08d}_{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(image))  # PNG bytes under a .JPEG name: PIL reads the content
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, (image, label) in enumerate(zip(test_x, test_y.tolist())):
        (root / "val" / "images" / f"val_{i}.JPEG").write_bytes(png(image))
        lines.append(f"val_{i}.JPEG\tn{label:08d}\t0\t0\t8\t8\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    upload(root, s3_bucket, "tiny-imagenet-200")
    local = load_dataset(DatasetConfig(name="tiny-imagenet", root=str(root)), progress=False)
    remote = load_dataset(DatasetConfig(name="tiny-imagenet", root=f"s3://{s3_bucket}/tiny-imagenet-200"), progress=False)
    assert len(remote.test_y) == len(test_y) and remote.classes == local.classes
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(remote, field), getattr(local, field)), field


def test_the_digest_follows_keys_sizes_and_etags_without_a_get(tmp_path, digits, s3_bucket, monkeypatch):
    from infer_distill.storage import s3

    folder = write_folder(tmp_path / "folder", digits)
    upload(folder, s3_bucket, "d")
    cfg = DatasetConfig(name="imagefolder", root=f"s3://{s3_bucket}/d")
    client = s3._s3_client()
    gets = []
    get_object = client.get_object
    monkeypatch.setattr(client, "get_object", lambda **kw: gets.append(kw["Key"]) or get_object(**kw))
    before = source_digest(cfg)
    assert before["files"] == 80 and source_digest(cfg) == before and gets == []
    raw = boto3.session.Session().client("s3")
    first, second = sorted((folder / "train" / "3").iterdir())[:2]
    a, b = (f"d/train/3/{p.name}" for p in (first, second))
    raw.put_object(Bucket=s3_bucket, Key=a, Body=second.read_bytes())  # another image under the same key
    assert source_digest(cfg) != before
    raw.put_object(Bucket=s3_bucket, Key=a, Body=first.read_bytes())  # the same bytes back: the same ETag
    assert source_digest(cfg) == before
    raw.delete_object(Bucket=s3_bucket, Key=b)
    assert source_digest(cfg)["files"] == 79
    raw.put_object(Bucket=s3_bucket, Key="d/elsewhere/x.png", Body=b"not read by a load")  # outside the splits
    assert source_digest(cfg)["files"] == 79 and gets == []


def test_a_listing_of_several_pages_is_read_whole_with_progress(tmp_path, digits, s3_bucket, capsys, monkeypatch):
    monkeypatch.setenv("INFER_PROGRESS_INTERVAL", "0")
    image = png(digits[0][0][0])
    client = boto3.session.Session().client("s3")
    for c in range(2):  # 1,001 training images of class 0: two pages of the listing
        for i in range(1001 if c == 0 else 3):
            client.put_object(Bucket=s3_bucket, Key=f"big/train/{c}/{i:05d}.png", Body=image)
        client.put_object(Bucket=s3_bucket, Key=f"big/test/{c}/0.png", Body=image)
    cfg = DatasetConfig(name="imagefolder", root=f"s3://{s3_bucket}/big")
    with open_source(cfg) as source:
        assert source.split("train").class_counts.tolist() == [1001, 3]
    err = capsys.readouterr().err
    assert f"listing s3://{s3_bucket}/big/train/ (1,000 keys a page): step 2" in err and "keys=1,004" in err
    assert "big/test/" not in err  # a listing of one page shows nothing
    assert source_digest(cfg)["files"] == 1006


def test_each_image_is_fetched_with_one_get_on_the_decoding_threads_without_pool_warnings(
        tmp_path, digits, s3_bucket, monkeypatch, caplog):
    """More decoding threads than botocore's default 10 connections: the client's pool holds one per thread."""
    import threading

    from infer_distill.storage import s3

    folder = write_folder(tmp_path / "folder", digits)
    upload(folder, s3_bucket, "p")
    monkeypatch.setattr(folders, "usable_cpus", lambda: 16)
    client = s3._s3_client()
    gets: list[tuple[str, str]] = []
    get_object = client.get_object
    monkeypatch.setattr(client, "get_object",
                        lambda **kw: gets.append((kw["Key"], threading.current_thread().name)) or get_object(**kw))
    with caplog.at_level(logging.WARNING):
        load_dataset(DatasetConfig(name="imagefolder", root=f"s3://{s3_bucket}/p", image_size=8), progress=False)
    keys = [k for k, _ in gets]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 80  # the size given: no GET for a first image
    assert all(name != threading.main_thread().name for _, name in gets)
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


def test_refusals_name_dataset_root_and_the_fix(tmp_path, digits, s3_bucket, monkeypatch):
    from infer_distill.storage import s3

    folder = write_folder(tmp_path / "folder", digits)
    client = boto3.session.Session().client("s3")
    uri = f"s3://{s3_bucket}"
    # nothing under the prefix
    with pytest.raises(DataError, match=f"dataset.root {uri}/none has no 'train' split; expected the layout "
                                        r"train/<class>/<file> under the prefix; found top-level entries: \(none"):
        open_source(DatasetConfig(name="imagefolder", root=f"{uri}/none"))
    # a test split missing: what is there is named
    upload(folder / "train", s3_bucket, "half/train")
    client.put_object(Bucket=s3_bucket, Key="half/README.txt", Body=b"x")
    with pytest.raises(DataError, match=f"dataset.root {uri}/half has no 'test' split.*found top-level entries: "
                                        "README.txt, train/"):
        open_source(DatasetConfig(name="imagefolder", root=f"{uri}/half"))
    # zips: one per split under the prefix, or the root naming a zip
    client.put_object(Bucket=s3_bucket, Key="zips/train.zip", Body=b"PK")
    client.put_object(Bucket=s3_bucket, Key="zips/test.zip", Body=b"PK")
    client.put_object(Bucket=s3_bucket, Key="one/data.zip", Body=b"PK")
    for root, names in ((f"{uri}/zips", "test.zip, train.zip"), (f"{uri}/one/data.zip", f"{uri}/one/data.zip")):
        with pytest.raises(DataError, match=f"dataset.root {root} has no 'train' folder but zip archives \\({names}\\), "
                                            "and zips are not read from S3: unzip them to the prefix"):
            open_source(DatasetConfig(name="imagefolder", root=root))
    with pytest.raises(DataError, match=f"dataset.root {uri}/half/README.txt is an object, not a prefix"):
        open_source(DatasetConfig(name="imagefolder", root=f"{uri}/half/README.txt"))
    # a key no folder could hold
    upload(folder, s3_bucket, "odd")
    client.put_object(Bucket=s3_bucket, Key="odd/train/3//x.png", Body=b"x")
    with pytest.raises(DataError, match=f"the key '{uri}/odd/train/3//x.png' has an empty, '.' or '..' path segment"):
        open_source(DatasetConfig(name="imagefolder", root=f"{uri}/odd"))
    # an object over the size limit: refused from the listing's size, before its GET
    upload(folder, s3_bucket, "big")
    key = "big/train/0/zzzz.png"
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(2000))  # the digits' PNGs: some 130 bytes each
    monkeypatch.setattr(folders, "IMAGE_MAX_BYTES", 1000)
    gets = []
    raw = s3._s3_client()
    get_object = raw.get_object
    monkeypatch.setattr(raw, "get_object", lambda **kw: gets.append(kw["Key"]) or get_object(**kw))
    with pytest.raises(DataError, match=f"cannot read image s3://{s3_bucket}/{key} \\(2,000 bytes, over the limit of "
                                        "1,000\\); remove or replace it"):
        load_dataset(DatasetConfig(name="imagefolder", root=f"{uri}/big", image_size=8), progress=False)
    assert gets and key not in gets
    # an S3 root where the source reads local files
    with pytest.raises(ValueError, match="dataset.name=cifar10 reads local files, not an S3 prefix"):
        DatasetConfig(name="cifar10", root=f"{uri}/cifar")


def test_no_bucket_no_credentials_and_no_server_are_one_line_naming_dataset_root(s3_env, monkeypatch):
    with pytest.raises(DataError, match="dataset.root s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist at "
                                        "http://127.0.0.1:.*: fix dataset.root \\(or AWS_ENDPOINT_URL\\)"):
        open_source(DatasetConfig(name="imagefolder", root="s3://no-such-bucket/x"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ArtifactError) as e:
        open_source(DatasetConfig(name="imagefolder", root="s3://some-bucket/x"))
    assert str(e.value).startswith("cannot list dataset.root s3://some-bucket/x: no valid S3 credentials: set "
                                   "AWS_ACCESS_KEY_ID") and "\n" not in str(e.value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StoreUnavailable) as e:
        open_source(DatasetConfig(name="imagefolder", root="s3://some-bucket/x"))
    assert str(e.value).startswith("cannot list dataset.root s3://some-bucket/x: S3 endpoint http://127.0.0.1:9 is "
                                   "unreachable") and "check AWS_ENDPOINT_URL" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_a_run_from_an_imagefolder_on_s3_and_its_resume(tmp_path, s3_bucket):
    """`infer-distill run` with dataset.root=s3://...: the data artifact holds the rows of the same folder on disk, its
    manifest the digest of the objects; a resume skips every step, and an object replaced remakes them all."""
    from conftest import TINY
    from test_resume import _remade, _walk

    from infer_distill.cli import main
    from infer_distill.dag.layout import Layout
    from infer_distill.data.splits import open_split
    from infer_distill.storage import open_artifact

    data = load_dataset(DatasetConfig(name="digits", train_per_class=14, test_per_class=4), progress=False)
    folder = write_folder(tmp_path / "folder", ((data.train_x, data.train_y), (data.test_x, data.test_y)))
    upload(folder, s3_bucket, "digits")
    overrides = ["budget.ipc=2", "dataset.image_size=8", "teachers.min_accuracy_over_chance=null",
                 "dataset.name=imagefolder", f"dataset.root=s3://{s3_bucket}/digits"]
    root = tmp_path / "run"
    sets = [*TINY, "students.baselines=[]", "students.epochs=1", *overrides]  # test_resume's walks: the same config
    assert main(["run", "--out", str(root), "--no-progress", *sum((["--set", s] for s in sets), [])]) == 0

    art = open_artifact(Layout(str(root)).data)
    manifest = art.read_manifest()
    assert manifest["metrics"]["num_train"] == 140 and manifest["sources"]["dataset"]["files"] == 180
    local = load_dataset(DatasetConfig(name="imagefolder", root=str(folder), image_size=8), progress=False)
    for split, (x, y) in (("train", (local.train_x, local.train_y)), ("test", (local.test_x, local.test_y))):
        rows = open_split(art, split)
        assert torch.equal(rows.read_all(), x) and torch.equal(rows.labels, y), split

    steps = _walk(root, overrides)
    assert not _remade(steps)  # the objects unchanged: every step the CLI ran is skipped
    everything = set(steps) - {"report"}
    assert "prepare-data" in everything
    first, second = sorted((folder / "train" / "7").iterdir())[:2]
    boto3.session.Session().client("s3").put_object(Bucket=s3_bucket, Key=f"digits/train/7/{first.name}",
                                                    Body=second.read_bytes())
    assert _remade(_walk(root, overrides)) == everything
    assert not _remade(_walk(root, overrides))


def test_gets_in_flight_outnumber_the_cores_so_network_waits_overlap(tmp_path, digits, s3_bucket, monkeypatch):
    """One usable core, each GET held 20 ms as a distant store would: the reads still overlap, up to S3_THREADS."""
    import threading
    import time

    from infer_distill.storage import s3

    folder = write_folder(tmp_path / "folder", digits)
    upload(folder, s3_bucket, "p")
    monkeypatch.setattr(folders, "usable_cpus", lambda: 1)
    client = s3._s3_client()
    lock, in_flight, most = threading.Lock(), [0], [0]
    get_object = client.get_object

    def slow_get(**kw):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            time.sleep(0.02)
            return get_object(**kw)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(client, "get_object", slow_get)
    cfg = DatasetConfig(name="imagefolder", root=f"s3://{s3_bucket}/p", image_size=8)
    assert torch.equal(load_dataset(cfg, progress=False).train_x, load_dataset(DatasetConfig(
        name="imagefolder", root=str(folder), image_size=8), progress=False).train_x)
    assert 1 < most[0] <= folders.S3_THREADS
