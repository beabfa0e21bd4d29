from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest
import torch

from infer_distill.errors import ArtifactError, StoreUnavailable
from infer_distill.storage import open_artifact, s3
from infer_distill.storage.artifact import SCHEMA_VERSION, Artifact, sha256_bytes
from infer_distill.storage.local import LocalArtifact
from infer_distill.storage.s3 import S3Artifact


def _s3(endpoint: str):
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty location to write artifacts under, on each backend."""
    if request.param == "local":
        return str(tmp_path / "runs")
    return f"s3://{request.getfixturevalue('s3_bucket')}/runs/r1"


def _overwrite_file(art: Artifact, name: str, data: bytes) -> None:
    """Tamper with a stored file behind the store's back."""
    if isinstance(art, LocalArtifact):
        (art.path / name).write_bytes(data)
    else:
        bucket, _, prefix = art.uri[len("s3://"):].partition("/")
        _s3(os.environ["AWS_ENDPOINT_URL"]).put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)


def _tensors() -> dict[str, torch.Tensor]:
    return {
        "w": torch.randn(3, 4),
        "wt": torch.randn(4, 3).t(),  # non-contiguous: must be packed, not rejected
        "idx": torch.arange(5, dtype=torch.int64),
        "h": torch.randn(2, 2).to(torch.bfloat16),
    }


def test_round_trip(root: str) -> None:
    art = open_artifact(f"{root}/teacher")
    assert not art.exists()
    tensors = _tensors()
    written = art.write({"model.safetensors": tensors, "notes.txt": b"hello"}, {"stage": "teacher", "acc": 0.5})
    assert art.exists()

    manifest = art.read_manifest()
    assert manifest == written
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["stage"] == "teacher" and manifest["acc"] == 0.5
    assert manifest["files"]["notes.txt"] == {"sha256": sha256_bytes(b"hello"), "bytes": 5}
    assert manifest["files"]["model.safetensors"]["tensors"] == {
        "w": {"dtype": "float32", "shape": [3, 4]},
        "wt": {"dtype": "float32", "shape": [3, 4]},
        "idx": {"dtype": "int64", "shape": [5]},
        "h": {"dtype": "bfloat16", "shape": [2, 2]},
    }

    assert art.read_bytes("notes.txt") == b"hello"
    assert art.read_text("notes.txt") == "hello"
    loaded = art.read_tensors("model.safetensors")
    assert loaded.keys() == tensors.keys()
    for key, t in tensors.items():
        assert loaded[key].dtype == t.dtype and torch.equal(loaded[key], t)


def test_manifest_written_last_and_sorted(tmp_path: Path) -> None:
    art = open_artifact(f"file://{tmp_path}/a")
    art.write({"x.bin": b"1"}, {"b": 1, "a": 2})
    text = (tmp_path / "a" / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True)


def test_overwrite_replaces(root: str) -> None:
    art = open_artifact(f"{root}/stage")
    art.write({"a.bin": b"old-a", "b.bin": b"old-b"}, {"version": 1})
    art.write({"a.bin": b"new-a"}, {"version": 2})
    manifest = art.read_manifest()
    assert manifest["version"] == 2 and set(manifest["files"]) == {"a.bin"}
    assert art.read_bytes("a.bin") == b"new-a"
    with pytest.raises(ArtifactError, match="no file 'b.bin'"):
        art.read_bytes("b.bin")
    if isinstance(art, LocalArtifact):
        assert sorted(os.listdir(art.path)) == ["a.bin", "manifest.json"]
        assert os.listdir(art.path.parent) == ["stage"]  # no temp or old dirs left behind


@pytest.mark.parametrize("tamper", ["truncated", "altered"])
def test_corruption_detected(root: str, tamper: str) -> None:
    art = open_artifact(f"{root}/stage")
    payload = bytes(range(256)) * 4
    art.write({"data.bin": payload, "t.safetensors": _tensors()}, {})
    bad = payload[:-10] if tamper == "truncated" else payload[:100] + bytes([payload[100] ^ 1]) + payload[101:]
    _overwrite_file(art, "data.bin", bad)
    with pytest.raises(ArtifactError) as info:
        art.read_bytes("data.bin")
    assert art.uri in str(info.value) and "'data.bin'" in str(info.value)
    assert ("truncated" if tamper == "truncated" else "sha256") in str(info.value)

    raw = art.read_bytes("t.safetensors")
    _overwrite_file(art, "t.safetensors", raw[:-4] if tamper == "truncated" else raw[:-1] + b"\0")
    with pytest.raises(ArtifactError, match="t.safetensors"):
        art.read_tensors("t.safetensors")


def test_missing_artifact(root: str) -> None:
    art = open_artifact(f"{root}/never-written")
    assert not art.exists()
    for read in (art.read_manifest, lambda: art.read_bytes("x"), lambda: art.read_tensors("x")):
        with pytest.raises(ArtifactError, match="manifest.json missing") as info:
            read()
        assert art.uri in str(info.value)


def test_children_are_the_artifacts_one_level_down(root: str) -> None:
    for name in ("b", "a", "c/deeper"):
        open_artifact(f"{root}/{name}").write({"x.bin": b"x"}, {})
    assert [a.uri for a in open_artifact(root).children()] == [f"{root}/a", f"{root}/b"]  # c holds no manifest itself
    assert [a.uri for a in open_artifact(f"{root}/c").children()] == [f"{root}/c/deeper"]
    assert open_artifact(f"{root}/a").children() == [] and open_artifact(f"{root}/nothing").children() == []
    art = open_artifact(root)
    if isinstance(art, LocalArtifact):  # a write's staging directory (a crash left it) is no artifact
        (art.path / ".a.tmp-1234").mkdir()
        (art.path / ".a.tmp-1234" / "manifest.json").write_text("{}")
        assert [a.uri for a in art.children()] == [f"{root}/a", f"{root}/b"]


def test_missing_data_file(root: str) -> None:
    art = open_artifact(f"{root}/stage")
    art.write({"a.bin": b"a"}, {})
    if isinstance(art, LocalArtifact):
        (art.path / "a.bin").unlink()
    else:
        bucket, _, prefix = art.uri[len("s3://"):].partition("/")
        _s3(os.environ["AWS_ENDPOINT_URL"]).delete_object(Bucket=bucket, Key=f"{prefix}/a.bin")
    with pytest.raises(ArtifactError, match="'a.bin' listed in manifest.json is missing"):
        art.read_bytes("a.bin")


def test_bad_manifest(tmp_path: Path) -> None:
    art = open_artifact(tmp_path / "a")
    art.write({}, {})
    manifest_path = tmp_path / "a" / "manifest.json"
    manifest_path.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        art.read_manifest()
    manifest_path.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "files": {}}))
    with pytest.raises(ArtifactError, match=f"schema_version {SCHEMA_VERSION + 1}"):
        art.read_manifest()


@pytest.mark.parametrize("name", ["manifest.json", "a/b", "..", ""])
def test_invalid_file_names_rejected(tmp_path: Path, name: str) -> None:
    art = open_artifact(tmp_path / "a")
    with pytest.raises(ArtifactError, match="invalid file name"):
        art.write({name: b"x"}, {})
    assert not art.exists()


def test_failed_local_write_leaves_nothing(tmp_path: Path) -> None:
    art = open_artifact(tmp_path / "a")
    # The bad value comes after a good one, so the failure happens mid-write.
    with pytest.raises(ArtifactError, match="'bad'.*must be bytes"):
        art.write({"good.bin": b"x" * 1000, "bad": 42}, {})  # type: ignore[dict-item]
    assert not art.exists()
    assert os.listdir(tmp_path) == []

    art.write({"good.bin": b"v1"}, {"version": 1})
    with pytest.raises(ArtifactError):
        art.write({"good.bin": b"v2", "bad": [1, 2]}, {"version": 2})  # type: ignore[dict-item]
    assert art.read_manifest()["version"] == 1 and art.read_bytes("good.bin") == b"v1"
    assert os.listdir(tmp_path) == ["a"]


def test_failed_s3_rewrite_is_not_valid(s3_bucket: str) -> None:
    art = open_artifact(f"s3://{s3_bucket}/stage")
    art.write({"good.bin": b"v1"}, {"version": 1})
    with pytest.raises(ArtifactError):
        art.write({"good.bin": b"v2", "bad": 42}, {"version": 2})  # type: ignore[dict-item]
    assert not art.exists()  # half-rewritten: the old manifest is gone, the new one never came


def test_s3_multipart_upload(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFER_S3_MULTIPART_THRESHOLD", str(5 * 1024 * 1024))
    art = open_artifact(f"s3://{s3_bucket}/big")
    payload = os.urandom(11 * 1024 * 1024)
    art.write({"big.bin": payload, "small.bin": b"s"}, {})
    client = _s3(os.environ["AWS_ENDPOINT_URL"])
    assert client.head_object(Bucket=s3_bucket, Key="big/big.bin")["ETag"].strip('"').endswith("-3")
    assert "-" not in client.head_object(Bucket=s3_bucket, Key="big/small.bin")["ETag"]
    assert art.read_bytes("big.bin") == payload


def test_s3_bad_multipart_threshold(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFER_S3_MULTIPART_THRESHOLD", "64MB")
    with pytest.raises(ArtifactError, match="INFER_S3_MULTIPART_THRESHOLD"):
        open_artifact(f"s3://{s3_bucket}/a").write({"a": b"a"}, {})


def test_s3_check_writable_passes_and_leaves_the_bucket_as_it_was(s3_bucket: str, s3_env: str) -> None:
    import boto3

    client = boto3.session.Session().client("s3", endpoint_url=s3_env, region_name="us-east-1")
    client.put_object(Bucket=s3_bucket, Key="out/theirs.txt", Body=b"not ours")
    open_artifact(f"s3://{s3_bucket}/out").check_writable()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert keys == ["out/theirs.txt"]  # a check writes, moves and deletes nothing
    art = open_artifact(f"s3://{s3_bucket}/out/new")  # and what it passed can be written
    art.write({"a": b"a"}, {})
    assert art.read_bytes("a") == b"a"


def test_s3_check_writable_missing_bucket(s3_env: str) -> None:
    with pytest.raises(ArtifactError) as info:
        open_artifact("s3://no-such-bucket-xyz/out").check_writable()
    msg = str(info.value)
    assert "S3 bucket 'no-such-bucket-xyz' does not exist at endpoint " + s3_env in msg
    assert "aws s3 mb s3://no-such-bucket-xyz" in msg


def test_s3_check_writable_no_credentials(s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "nope-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "nope-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # don't wait on an instance-metadata lookup
    with pytest.raises(ArtifactError, match="no valid S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        open_artifact(f"s3://{s3_bucket}/out").check_writable()


def test_s3_unreachable_endpoint_is_an_outage_after_botos_retries(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens: connection refused
    attempts = []
    client = s3._s3_client()
    client.meta.events.register("before-send.s3", lambda **_: attempts.append(1))
    with pytest.raises(StoreUnavailable, match=r"endpoint http://127\.0\.0\.1:1 is unreachable \(EndpointConnectionError, after 6 attempts"):
        open_artifact("s3://bkt/out").check_writable()
    assert len(attempts) == 6  # boto3's standard retry mode: the first try and five retries, then it gave up
    assert not issubclass(StoreUnavailable, ArtifactError)  # an outage never reads as a missing or invalid artifact


@pytest.mark.parametrize("code, status, outage", [
    ("SlowDown", 503, True), ("InternalError", 500, True), ("ServiceUnavailable", 503, True), ("Throttling", 400, True),
    ("RequestTimeout", 400, True), ("AccessDenied", 403, False), ("NoSuchBucket", 404, False), ("InvalidRequest", 400, False),
])
def test_s3_error_answers_are_outages_or_refusals(s3_env: str, code: str, status: int, outage: bool) -> None:
    from botocore.exceptions import ClientError

    answer = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    with pytest.raises(StoreUnavailable if outage else ArtifactError):
        with open_artifact("s3://bkt/out")._errors("write") as _:
            raise answer


def test_local_check_writable(tmp_path: Path) -> None:
    art = open_artifact(tmp_path / "deep" / "out")
    art.check_writable()
    assert os.listdir(tmp_path) == []  # the folders it made to find out, and its probe, removed again
    (tmp_path / "deep").mkdir()
    art.check_writable()
    assert os.listdir(tmp_path) == ["deep"] and os.listdir(tmp_path / "deep") == []  # what was there stays

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # A path under a regular file cannot be created, even by root (which ignores chmod).
    with pytest.raises(ArtifactError, match=r"output location .*a-file/sub is not writable: .*; choose another --out"):
        open_artifact(blocker / "sub").check_writable()


def test_open_artifact_uris(tmp_path: Path) -> None:
    local = open_artifact(f"file://{tmp_path}/x/")
    assert isinstance(local, LocalArtifact) and local.uri == f"file://{tmp_path}/x" and local.path == tmp_path / "x"
    assert open_artifact(tmp_path / "x" / ".." / "y").path == tmp_path / "y"
    s3 = open_artifact("s3://bucket/a/b/")
    assert isinstance(s3, S3Artifact) and (s3.uri, s3.bucket, s3.prefix) == ("s3://bucket/a/b", "bucket", "a/b")
    assert (open_artifact("s3://bucket").prefix, open_artifact("s3://bucket/").uri) == ("", "s3://bucket")
    for bad in ("gs://bucket/x", "s3://", ""):
        with pytest.raises(ArtifactError):
            open_artifact(bad)


@pytest.mark.parametrize("seed", range(40))
def test_tensor_files_are_written_as_the_bytes_safetensors_saves_without_a_second_copy(seed: int) -> None:
    """safetensors_chunks: the header, then views of the tensors' own memory, joined equal to safetensors' save()."""
    import random

    from safetensors.torch import save

    from infer_distill.storage.artifact import safetensors_chunks

    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    dtypes = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16, torch.float32,
              torch.float64, torch.bool]
    tensors = {f"{rng.choice(['y', 'ufc', 'natural', 'x_1', 'Z', 'é'])}{i}":
               (torch.rand([rng.randint(0, 4) for _ in range(rng.randint(0, 3))], generator=gen) * 100).to(rng.choice(dtypes))
               for i in range(rng.randint(1, 6))}
    chunks = safetensors_chunks(tensors)
    assert b"".join(bytes(c) for c in chunks) == save(tensors)
    big = {"x": torch.arange(1 << 16, dtype=torch.float32)}
    (header, view) = safetensors_chunks(big)
    assert view.obj is not None and torch.from_numpy(view.obj).data_ptr() == big["x"].data_ptr()  # no copy
