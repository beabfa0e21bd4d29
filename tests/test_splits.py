"""The data artifact's row format (data.splits) and the store's streaming writes and ranged reads under it:
round trips on disk and on the S3 server, the bytes a read of some rows fetches, corruption found in the block
that holds it, parts sent while the rows stream, interrupted writes that leave nothing, and old data artifacts
that are remade, never read as the new format."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import boto3
import pytest
import torch
from conftest import TINY
from sklearn.datasets import load_digits

from infer_distill.cli import main
from infer_distill.config.loading import load_config
from infer_distill.data import splits
from infer_distill.data.splits import SplitWriter, open_split
from infer_distill.errors import ArtifactError, DataError
from infer_distill.stages.artifacts import is_current
from infer_distill.storage import open_artifact
from infer_distill.storage.artifact import Artifact
from infer_distill.storage.local import LocalArtifact
from infer_distill.storage.s3 import _s3_client

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits as 32 px RGB uint8 images (3,072 bytes a row: 22 rows a block)."""
    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None]                       # [N, 1, 8, 8], 0..16
    x = torch.nn.functional.interpolate(x, size=32, mode="nearest")
    x = torch.cat([x * 15, 255 - x * 15, x.flip(-1) * 15], 1).to(torch.uint8)      # three distinct channels
    return x, torch.as_tensor(d.target, dtype=torch.int64)


def batched(x: torch.Tensor, y: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(x), size):
        yield x[i:i + size], y[i:i + size]


def write_split(art: Artifact, x: torch.Tensor, y: torch.Tensor, batch: int, **kwargs) -> SplitWriter:
    writer = SplitWriter("train", batched(x, y, batch), 10, **kwargs)
    art.write(writer.files(), {"stage": "prepare-data"},
              finish=lambda: {"metrics": {"splits": {"train": writer.description()}}})
    return writer


DEFAULT_BLOCK_BYTES = splits.BLOCK_BYTES


@pytest.fixture(autouse=True)
def blocks_of_22_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The arithmetic below is written for blocks of 64 KiB: 22 of the digits' 3,072-byte rows (BLOCK_BYTES is
    recorded per split when it is written, as block_rows)."""
    monkeypatch.setattr(splits, "BLOCK_BYTES", 64 * 1024)


def test_the_default_block_is_a_few_rows_of_small_images_and_one_of_large_ones(monkeypatch):
    monkeypatch.setattr(splits, "BLOCK_BYTES", DEFAULT_BLOCK_BYTES)
    assert [splits.block_rows((3, side, side)) for side in (8, 32, 64, 224)] == [22, 2, 1, 1]


@pytest.fixture
def blockwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read by blocks whatever the file's size (the digits' 5.5 MB would be read whole), 4 blocks a read at most."""
    monkeypatch.setattr(splits, "WHOLE_FILE_BYTES", 0)
    monkeypatch.setattr(splits, "SMALL_FILE_BYTES", 0)
    monkeypatch.setattr(splits, "READ_BYTES", 4 * 22 * 3072)


ROWS = [1796, 0, 5, 5, 500, 21, 22, 1796, 44, 23, 1000, 0]  # any order, repeats, both ends, a block's edges


# ----------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 23, 500, 1797])
@pytest.mark.parametrize("by_blocks", [False, True])
def test_round_trip_on_disk(tmp_path, digits, monkeypatch, batch, by_blocks):
    if by_blocks:
        monkeypatch.setattr(splits, "WHOLE_FILE_BYTES", 0)
        monkeypatch.setattr(splits, "SMALL_FILE_BYTES", 0)
    x, y = digits
    seen = []
    writer = write_split(open_artifact(tmp_path / "data"), x, y, batch, on_batch=lambda bx, by: seen.append(len(bx)))
    assert (writer.count, writer.shape, seen) == (1797, (3, 32, 32), [len(b) for b, _ in batched(x, y, batch)])
    assert torch.equal(writer.class_counts, torch.bincount(y, minlength=10))
    manifest = open_artifact(tmp_path / "data").read_manifest()
    assert manifest["metrics"]["splits"]["train"] == {"rows": 1797, "shape": [3, 32, 32], "dtype": "uint8", "block_rows": 22,
                                                     "encoding": "raw"}
    assert sorted(manifest["files"]) == ["train.images", "train.images.sha256", "train.labels.safetensors"]
    assert (tmp_path / "data" / "train.images").read_bytes() == x.numpy().tobytes()  # raw rows, no header
    digests = (tmp_path / "data" / "train.images.sha256").read_bytes()
    assert len(digests) == 32 * 82 and digests[:32] == hashlib.sha256(x[:22].numpy().tobytes()).digest()

    split = open_split(open_artifact(tmp_path / "data"), "train")
    assert (len(split), split.shape, split.nbytes) == (1797, (3, 32, 32), 1797 * 3072)
    assert torch.equal(split.labels, y)
    assert torch.equal(split.read(ROWS), x[ROWS])
    assert torch.equal(split.read(torch.tensor([], dtype=torch.int64)), x[:0])
    assert torch.equal(split.read_all(), x)
    split.read_all()[:] = 0  # the caller's copy
    assert torch.equal(split.read(ROWS), x[ROWS]) and torch.equal(split.read_all(), x)
    got = list(split.batches(400))
    assert [len(b) for b, _ in got] == [400, 400, 400, 400, 197]
    assert torch.equal(torch.cat([b for b, _ in got]), x) and torch.equal(torch.cat([c for _, c in got]), y)
    with pytest.raises(IndexError, match="row 1797 of the train split"):
        split.read([0, 1797])


@pytest.mark.parametrize("batch", [64, 1797])
def test_round_trip_on_the_s3_server_streams_parts_as_the_rows_come(s3_bucket, digits, monkeypatch, blockwise, batch):
    monkeypatch.setenv("INFER_S3_MULTIPART_THRESHOLD", str(5 * MiB))  # the digits' 5.5 MB images go in 2 parts
    x, y = digits
    art = open_artifact(f"s3://{s3_bucket}/data")
    write_split(art, x, y, batch)
    client = boto3.session.Session().client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    assert client.head_object(Bucket=s3_bucket, Key="data/train.images")["ETag"].strip('"').endswith("-2")
    assert "-" not in client.head_object(Bucket=s3_bucket, Key="data/train.labels.safetensors")["ETag"]  # one PUT
    split = open_split(open_artifact(art.uri), "train")
    assert torch.equal(split.labels, y) and torch.equal(split.read(ROWS), x[ROWS]) and torch.equal(split.read_all(), x)


# ----------------------------------------------------------------------------------------
# What a read fetches
# ----------------------------------------------------------------------------------------


def _needed_blocks(rows: list[int]) -> set[int]:
    return {r // 22 for r in rows}


def test_a_read_fetches_only_the_blocks_of_its_rows_on_disk(tmp_path, digits, monkeypatch, blockwise):
    x, y = digits
    write_split(open_artifact(tmp_path / "data"), x, y, 100)
    fetched: list[tuple[str, int, int]] = []
    ranged = LocalArtifact._read_range

    def counted(self, name, start, length):
        fetched.append((name, start, length))
        return ranged(self, name, start, length)

    monkeypatch.setattr(LocalArtifact, "_read_range", counted)
    split = open_split(open_artifact(tmp_path / "data"), "train")
    assert torch.equal(split.read(ROWS), x[ROWS])
    blocks = _needed_blocks(ROWS)   # {81, 0, 22, 1, 2, 45}: 0-2 adjacent, one read
    assert sum(n for name, _, n in fetched) == sum(min(22, 1797 - 22 * b) * 3072 for b in blocks)
    assert len(fetched) == 4 and {name for name, _, _ in fetched} == {"train.images"}
    fetched.clear()
    split.read(range(0, 22 * 10))    # ten adjacent blocks: reads of at most four
    assert [n // (22 * 3072) for _, _, n in fetched] == [4, 4, 2]


def test_a_read_fetches_only_the_blocks_of_its_rows_from_s3(s3_bucket, digits, blockwise):
    x, y = digits
    art = open_artifact(f"s3://{s3_bucket}/data")
    write_split(art, x, y, 300)
    requests: list[list] = []
    client = _s3_client()  # the client the store uses (one per environment)

    def asked(params, context, **_):  # a request's context follows it: the reads run concurrently
        context["logged"] = [params["Key"], params.get("Range")]
        requests.append(context["logged"])

    def answered(parsed, context, **_):
        context["logged"].append(parsed.get("ContentLength"))

    client.meta.events.register("before-parameter-build.s3.GetObject", asked)
    client.meta.events.register("after-call.s3.GetObject", answered)
    try:
        split = open_split(open_artifact(art.uri), "train")
        assert len(split) == 1797 and not requests[1:]  # the manifest alone
        requests.clear()
        assert torch.equal(split.labels, y)
        assert all(not key.endswith(".images") for key, _, _ in requests)  # labels read no image byte
        requests.clear()
        assert torch.equal(split.read(ROWS), x[ROWS])
    finally:
        client.meta.events.unregister("before-parameter-build.s3.GetObject", asked)
        client.meta.events.unregister("after-call.s3.GetObject", answered)
    images = [(rng, n) for key, rng, n in requests if key == "data/train.images"]
    blocks = _needed_blocks(ROWS)
    assert sum(n for _, n in images) == sum(min(22, 1797 - 22 * b) * 3072 for b in blocks)
    assert len(images) == 4 and all(rng.startswith("bytes=") for rng, _ in images)
    assert [key for key, _, _ in requests if key != "data/train.images"] == ["data/manifest.json", "data/train.images.sha256"]


# ----------------------------------------------------------------------------------------
# Corruption
# ----------------------------------------------------------------------------------------


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def test_a_flipped_byte_is_refused_when_its_block_is_read(tmp_path, digits, monkeypatch):
    x, y = digits
    write_split(open_artifact(tmp_path / "data"), x, y, 500)
    path = tmp_path / "data" / "train.images"
    path.write_bytes(_flip(path.read_bytes(), 30 * 3072 + 7))   # row 30: block 1 (rows 22-43)
    cfg = load_config(None, TINY)
    assert not is_current(str(tmp_path / "data"), cfg, "prepare-data")

    monkeypatch.setattr(splits, "WHOLE_FILE_BYTES", 0)
    monkeypatch.setattr(splits, "SMALL_FILE_BYTES", 0)
    split = open_split(open_artifact(tmp_path / "data"), "train")
    assert torch.equal(split.read([0, 21, 44, 1796]), x[[0, 21, 44, 1796]])  # blocks 0, 2, 81: intact
    with pytest.raises(ArtifactError, match=r"'train.images', block 1 \(rows 22-43\), does not match its sha256 in "
                                            r"'train.images.sha256' \(corrupted\): re-run stage prepare-data"):
        split.read([40])
    monkeypatch.setattr(splits, "SMALL_FILE_BYTES", 64 * MiB)  # read whole: the file's own sha256 refuses it
    with pytest.raises(ArtifactError, match="'train.images' does not match its sha256 in manifest.json"):
        open_split(open_artifact(tmp_path / "data"), "train").read([0])


def test_a_few_rows_are_read_by_their_blocks_and_half_the_file_or_more_whole(tmp_path, digits, monkeypatch):
    """The digits' 5.5 MB rows: over SMALL_FILE_BYTES, within WHOLE_FILE_BYTES."""
    x, y = digits
    write_split(open_artifact(tmp_path / "data"), x, y, 1797)
    fetched: list[int] = []
    read_range, read_bytes = Artifact.read_range, Artifact.read_bytes

    def ranged(self, name, start, length):
        fetched.append(length)
        return read_range(self, name, start, length)

    def whole(self, name):
        if name.endswith(".images"):
            fetched.append(-1)
        return read_bytes(self, name)

    monkeypatch.setattr(Artifact, "read_range", ranged)
    monkeypatch.setattr(Artifact, "read_bytes", whole)
    split = open_split(open_artifact(tmp_path / "data"), "train")
    assert torch.equal(split.read([3, 1000]), x[[3, 1000]])
    assert fetched == [22 * 3072, 22 * 3072]            # two blocks of 22 rows, nothing else of the images
    fetched.clear()
    half = torch.arange(0, 1797, 2)                      # every block: the file whole, once, then kept
    assert torch.equal(split.read(half), x[half]) and torch.equal(split.read([5]), x[[5]])
    assert fetched == [-1]


def test_a_flipped_byte_on_s3_is_refused_when_its_block_is_read(s3_bucket, digits, blockwise):
    x, y = digits
    write_split(open_artifact(f"s3://{s3_bucket}/data"), x, y, 1797)
    client = boto3.session.Session().client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    stored = client.get_object(Bucket=s3_bucket, Key="data/train.images")["Body"].read()
    client.put_object(Bucket=s3_bucket, Key="data/train.images", Body=_flip(stored, 1796 * 3072))  # the last row
    split = open_split(open_artifact(f"s3://{s3_bucket}/data"), "train")
    assert torch.equal(split.read([0, 1000]), x[[0, 1000]])
    with pytest.raises(ArtifactError, match=r"block 81 \(rows 1782-1796\)"):
        split.read([1795])


def test_a_truncated_images_file_and_a_fifo_in_its_place_are_refused(tmp_path, digits, monkeypatch):
    x, y = digits
    write_split(open_artifact(tmp_path / "data"), x, y, 1797)
    monkeypatch.setattr(splits, "WHOLE_FILE_BYTES", 0)
    monkeypatch.setattr(splits, "SMALL_FILE_BYTES", 0)
    path = tmp_path / "data" / "train.images"
    path.write_bytes(path.read_bytes()[:1000 * 3072])
    split = open_split(open_artifact(tmp_path / "data"), "train")
    assert torch.equal(split.read([5]), x[[5]])
    with pytest.raises(ArtifactError, match="'train.images' ends before byte"):
        split.read([1500])
    path.unlink()
    os.mkfifo(path)  # never opened for a read that would wait on a writer
    with pytest.raises(ArtifactError, match=r"cannot read 'train.images' \(.*FIFO"):
        split.read([100])  # a block not kept from the read before


# ----------------------------------------------------------------------------------------
# Streaming writes: parts as they fill, nothing left by a failure
# ----------------------------------------------------------------------------------------


def test_a_streamed_s3_file_is_sent_in_parts_while_it_is_produced(s3_bucket, monkeypatch):
    monkeypatch.setenv("INFER_S3_MULTIPART_THRESHOLD", str(5 * MiB))
    client = _s3_client()
    parts: list[int] = []

    def sent(params, **_):
        parts.append(params["PartNumber"])

    buffered = []  # at each chunk produced: the bytes produced and not yet sent in a part

    def produce() -> Iterator[bytes]:
        for i in range(12):
            buffered.append(i * MiB - len(parts) * 5 * MiB)
            yield bytes([i]) * MiB

    client.meta.events.register("before-parameter-build.s3.UploadPart", sent)
    try:
        art = open_artifact(f"s3://{s3_bucket}/stream")
        manifest = art.write({"rows.bin": produce(), "count.txt": lambda: str(len(parts)).encode()}, {"stage": "x"},
                             finish=lambda: {"metrics": {"parts": len(parts)}})
    finally:
        client.meta.events.unregister("before-parameter-build.s3.UploadPart", sent)
    assert parts == [1, 2, 3]                       # 5 + 5 + 2 MiB
    assert max(buffered) < 5 * MiB                  # never more than a part held back
    assert manifest["metrics"] == {"parts": 3}      # finish() ran once the last part was sent
    assert art.read_text("count.txt") == "3"        # a callable file ran after the files before it were stored
    assert art.read_bytes("rows.bin") == b"".join(bytes([i]) * MiB for i in range(12))
    assert manifest["files"]["rows.bin"]["bytes"] == 12 * MiB


@pytest.mark.parametrize("store", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_an_interrupted_streaming_write_leaves_no_artifact_and_no_upload(tmp_path, request, monkeypatch, store):
    if store == "s3":
        monkeypatch.setenv("INFER_S3_MULTIPART_THRESHOLD", str(5 * MiB))
        bucket = request.getfixturevalue("s3_bucket")
        uri = f"s3://{bucket}/broken"
    else:
        uri = str(tmp_path / "broken")

    def produce() -> Iterator[bytes]:
        for i in range(8):
            yield os.urandom(MiB)
        raise DataError("image 8192 of the source cannot be decoded")

    art, stored_parts = open_artifact(uri), []

    def stored(parsed, **_):
        stored_parts.append(parsed["ETag"])

    events = _s3_client().meta.events if store == "s3" else None
    if events:
        events.register("after-call.s3.UploadPart", stored)
    try:
        with pytest.raises(DataError, match="cannot be decoded"):  # the producer's own error, as it raised it
            art.write({"first.bin": b"done", "rows.bin": produce()}, {"stage": "x"})
    finally:
        if events:
            events.unregister("after-call.s3.UploadPart", stored)
    assert not art.exists()
    if store == "s3":
        assert len(stored_parts) == 1  # a part was stored before the producer failed: its upload was aborted
        client = boto3.session.Session().client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert "broken/rows.bin" not in [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    else:
        assert os.listdir(tmp_path) == []  # no staging folder left
    art.write({"rows.bin": iter([b"a", b"b"])}, {"stage": "x"})  # the next write of the stage goes through
    assert art.read_bytes("rows.bin") == b"ab"


def test_a_batch_of_another_shape_stops_the_write(tmp_path, digits):
    x, y = digits
    batches = [(x[:10], y[:10]), (x[10:20, :, :16], y[10:20])]
    with pytest.raises(DataError, match=r"the train split, batch 1: images of shape \[3, 16, 32\], the batches before "
                                        r"were \[3, 32, 32\]"):
        open_artifact(tmp_path / "data").write(SplitWriter("train", batches).files(), {"stage": "prepare-data"})
    with pytest.raises(DataError, match=r"batch 0: labels are int32 \[10\], not int64"):
        open_artifact(tmp_path / "data").write(SplitWriter("train", [(x[:10], y[:10].int())]).files(), {})
    with pytest.raises(DataError, match="batch 0: label 10 is not a class index from 0 to 9"):
        open_artifact(tmp_path / "data").write(SplitWriter("train", [(x[:2], torch.tensor([3, 10]))], 10).files(), {})
    assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------------------
# A data artifact of the earlier format
# ----------------------------------------------------------------------------------------


def test_a_data_artifact_of_the_earlier_format_is_not_current_and_is_remade(tmp_path):
    root, sets = tmp_path / "r", sum((["--set", s] for s in TINY), [])
    assert main(["stage", "prepare-data", "--root", str(root), *sets]) == 0
    art = open_artifact(root / "data")
    manifest = art.read_manifest()
    new = {s: open_split(art, s) for s in ("train", "test")}
    # what an earlier version wrote: one safetensors file per split, no "splits" in the metrics
    old = {k: v for k, v in manifest.items() if k not in ("files", "schema_version")}
    old["metrics"] = {k: v for k, v in manifest["metrics"].items() if k != "splits"}
    art.write({f"{s}.safetensors": {"x": new[s].read_all(), "y": new[s].labels} for s in new}, old)
    cfg = load_config(None, TINY)
    assert not is_current(str(root / "data"), cfg, "prepare-data")
    with pytest.raises(ArtifactError, match="records no splits in its metrics .*an earlier version.*re-run stage "
                                            "prepare-data"):
        open_split(open_artifact(root / "data"), "train")
    assert main(["stage", "prepare-data", "--root", str(root), *sets]) == 0
    assert is_current(str(root / "data"), cfg, "prepare-data")
    assert torch.equal(open_split(open_artifact(root / "data"), "train").read_all(), new["train"].read_all())


def test_reads_class_after_class_fetch_each_block_once(tmp_path, digits, monkeypatch):
    """A stage reading the rows of one class, then the next (herding, RDED), asks twice for the block where one class
    ends and the next begins: the last read is kept, and that block is not fetched again."""
    x, y = digits
    write_split(open_artifact(tmp_path / "data"), x, y, 1797)
    monkeypatch.setattr(splits, "SMALL_FILE_BYTES", 0)
    monkeypatch.setattr(splits, "WHOLE_FILE_BYTES", 0)
    fetched: list[tuple[int, int]] = []
    read_range = Artifact.read_range

    def ranged(self, name, start, length):
        fetched.append((start, length))
        return read_range(self, name, start, length)

    monkeypatch.setattr(Artifact, "read_range", ranged)
    split = open_split(open_artifact(tmp_path / "data"), "train")
    for first in range(0, 1797, 5):                       # 5 rows at a time: blocks of 22 rows are asked for 4-5 times
        rows = torch.arange(first, min(first + 5, 1797))
        assert torch.equal(split.read(rows), x[rows])
    spans = sorted(fetched)
    assert sum(length for _, length in spans) == 1797 * 3072                          # the file once
    assert all(a + la <= b for (a, la), (b, _) in zip(spans, spans[1:]))              # no byte twice

