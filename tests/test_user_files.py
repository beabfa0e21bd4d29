"""A run never deletes what it did not write: a user's folder at an artifact's path is refused, intact."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from conftest import TINY

from infer_distill.cli import main
from infer_distill.errors import ArtifactError
from infer_distill.storage import open_artifact

SETS = sum((["--set", s] for s in TINY), [])


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (names, bytes) and every subfolder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("where", ["data", "report"])
def test_a_user_folder_at_an_artifact_path_is_refused_before_any_work(tmp_path: Path, capsys, where: str) -> None:
    out = tmp_path / "run"
    mine = out / where
    (mine / "nested").mkdir(parents=True)
    (mine / "notes.md").write_text("my notes\n")
    (mine / "nested" / "images.bin").write_bytes(os.urandom(1000))
    before = _snapshot(out)

    assert main(["run", "--out", str(out), "--no-progress", *SETS]) == 2
    err = capsys.readouterr().err
    assert f"{mine}" in err and "move it away" in err and "choose another --out" in err
    assert _snapshot(out) == before  # byte for byte, and nothing else made (no other artifact, no lock)


def test_another_stages_artifact_and_unlisted_files_are_refused(tmp_path: Path) -> None:
    art = open_artifact(tmp_path / "a")
    art.write({"x.bin": b"x"}, {"stage": "select-subsets"})
    with pytest.raises(ArtifactError, match=r"holds a 'select-subsets' artifact.*move it away"):
        art.write({"x.bin": b"y"}, {"stage": "report"})
    (tmp_path / "a" / "mine.txt").write_text("mine")
    with pytest.raises(ArtifactError, match=r"files its manifest.json does not list \('mine.txt'\)"):
        art.write({"x.bin": b"y"}, {"stage": "select-subsets"})
    assert (tmp_path / "a" / "mine.txt").read_text() == "mine" and art.read_bytes("x.bin") == b"x"
    (tmp_path / "a" / "mine.txt").unlink()
    art.write({"x.bin": b"y"}, {"stage": "select-subsets"})  # its own artifact: replaced
    assert art.read_bytes("x.bin") == b"y"

    (tmp_path / "f").write_text("a file")
    with pytest.raises(ArtifactError, match="holds a file"):
        open_artifact(tmp_path / "f").write({}, {"stage": "report"})
    (tmp_path / "empty").mkdir()
    open_artifact(tmp_path / "empty").write({}, {"stage": "report"})  # an empty folder holds nothing to lose


def test_s3_prefix_with_foreign_keys_is_refused(s3_bucket: str) -> None:
    import boto3

    client = boto3.session.Session().client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.put_object(Bucket=s3_bucket, Key="run/data/mine.csv", Body=b"1,2,3")
    with pytest.raises(ArtifactError, match=r"objects without a manifest.json \(e.g. 'run/data/mine.csv'\)"):
        open_artifact(f"s3://{s3_bucket}/run/data").write({"mine.csv": b"x"}, {"stage": "prepare-data"})
    assert client.get_object(Bucket=s3_bucket, Key="run/data/mine.csv")["Body"].read() == b"1,2,3"

    other = open_artifact(f"s3://{s3_bucket}/run/teachers/a")
    other.write({"w.bin": b"w"}, {"stage": "train-teacher"})
    with pytest.raises(ArtifactError, match="holds a 'train-teacher' artifact"):
        other.check_replaceable("report")
    other.check_replaceable("train-teacher")
    open_artifact(f"s3://{s3_bucket}/run/nothing-here").check_replaceable("report")


def test_s3_interrupted_rewrite_is_the_pipelines_own(s3_bucket: str) -> None:
    """Keys without a manifest that a killed write of the same stage left are replaced, not refused."""
    art = open_artifact(f"s3://{s3_bucket}/run/subsets")
    art.write({"s.bin": b"v1"}, {"stage": "select-subsets"})
    with pytest.raises(ArtifactError):  # fails after the old manifest went away and the first file was written
        art.write({"s.bin": b"v2", "bad": 42}, {"stage": "select-subsets"})  # type: ignore[dict-item]
    assert not art.exists()
    art.write({"s.bin": b"v3"}, {"stage": "select-subsets"})
    assert art.read_bytes("s.bin") == b"v3"
    with pytest.raises(ArtifactError, match="holds a 'select-subsets' artifact"):
        art.check_replaceable("report")


def test_staging_folders_a_crash_left_are_removed_by_the_next_write(tmp_path: Path) -> None:
    art = open_artifact(tmp_path / "teacher")
    art.write({"w.bin": b"old"}, {"stage": "train-teacher"})
    # What a write killed between its steps leaves beside the artifact: a half-filled staging
    # folder, the previous version moved aside, a probe file.
    tmp = tmp_path / f".teacher.tmp-{'a' * 32}"
    old = tmp_path / f".teacher.old-{'b' * 32}"
    probe = tmp_path / f".teacher.probe-{'c' * 32}"
    tmp.mkdir()
    (tmp / "w.bin").write_bytes(b"half")
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    probe.write_bytes(b"")
    neighbour = tmp_path / f".other.tmp-{'d' * 32}"  # another artifact's staging: not this write's to remove
    neighbour.mkdir()
    user = tmp_path / ".teacher.tmp-mine"  # not a name the store makes
    user.mkdir()

    art.write({"w.bin": b"new"}, {"stage": "train-teacher"})
    assert sorted(os.listdir(tmp_path)) == sorted(["teacher", neighbour.name, user.name])
    assert art.read_bytes("w.bin") == b"new"


def test_a_link_to_an_artifact_is_replaced_and_its_target_kept(tmp_path: Path) -> None:
    pooled = open_artifact(tmp_path / "pool" / "data")
    pooled.write({"x.bin": b"pooled"}, {"stage": "prepare-data"})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "data").symlink_to(tmp_path / "pool" / "data", target_is_directory=True)
    open_artifact(tmp_path / "run" / "data").write({"x.bin": b"own"}, {"stage": "prepare-data"})
    assert not (tmp_path / "run" / "data").is_symlink() and os.listdir(tmp_path / "run") == ["data"]
    assert pooled.read_bytes("x.bin") == b"pooled"
    (tmp_path / "run" / "other").symlink_to(tmp_path / "pool" / "data", target_is_directory=True)
    with pytest.raises(ArtifactError, match="holds a 'prepare-data' artifact"):
        open_artifact(tmp_path / "run" / "other").write({}, {"stage": "report"})
