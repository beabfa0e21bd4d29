"""Bad store inputs, as a table: each is refused with exit 2 and a message naming the field or file, before
any work, and leaves nothing behind (no --out folder, no data/ folder, no lock, the user's files intact).

Each row: the command (given the test's folder), the environment it runs with, a setup that puts
something in the folder first, and the fragment the message must hold. None needs an S3 server:
every S3 row is refused before the first request.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY

from infer_distill.cli import main
from infer_distill.storage import open_artifact

SETS = sum((["--set", s] for s in TINY), [])


def run(out: str, *more: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["run", "--out", out.format(tmp=tmp), "--no-progress", *SETS, *more]


def cmd(*argv: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [a.format(tmp=tmp) for a in argv]


def artifact_with_entry(entry: object) -> Callable[[Path], None]:
    """An artifact at tmp/art whose manifest entry for x.bin is `entry` (altered by hand)."""
    def setup(tmp: Path) -> None:
        open_artifact(tmp / "art").write({"x.bin": b"x"}, {"stage": "prepare-data"})
        path = tmp / "art" / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["files"]["x.bin"] = entry
        path.write_text(json.dumps(manifest))
    return setup


def user_file(relative: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp / relative).write_text("the user's own\n")
    return setup


def nothing(tmp: Path) -> None:
    pass


S3 = "s3://some-bucket/run"
CASES = [
    # --- malformed S3 URIs ------------------------------------------------------------------
    pytest.param(run("s3:///prefix"), {}, nothing, "'s3:///prefix' has no bucket", id="s3-no-bucket"),
    pytest.param(cmd("check-store", "s3:///prefix/x"), {}, nothing, "has no bucket", id="check-store-no-bucket"),
    pytest.param(run("s3://My_Bucket/run"), {}, nothing, "'My_Bucket' is not a valid S3 bucket name", id="s3-bucket-case"),
    pytest.param(run("s3://ab/run"), {}, nothing, "'ab' is not a valid S3 bucket name", id="s3-bucket-short"),
    pytest.param(run("s3://" + "b" * 64 + "/run"), {}, nothing, "is not a valid S3 bucket name", id="s3-bucket-long"),
    pytest.param(run("s3://my..bucket/run"), {}, nothing, "'my..bucket' is not a valid S3 bucket name", id="s3-bucket-dots"),
    pytest.param(run("s3://-bucket/run"), {}, nothing, "'-bucket' is not a valid S3 bucket name", id="s3-bucket-dash"),
    pytest.param(run("s3://10.0.0.1/run"), {}, nothing, "'10.0.0.1' is not a valid S3 bucket name", id="s3-bucket-ip"),
    pytest.param(run("s3://my-bucket/a//b"), {}, nothing, "empty path segment", id="s3-empty-segment"),
    pytest.param(run("gs://my-bucket/run"), {}, nothing, "unsupported artifact URI 'gs://my-bucket/run'", id="other-scheme"),
    pytest.param(run("file://"), {}, nothing, "empty artifact URI", id="empty-file-uri"),
    # --- S3 settings from the environment: refused in the preflight, before any request ----
    pytest.param(run(S3), {"INFER_S3_MULTIPART_THRESHOLD": "64MB"}, nothing, "INFER_S3_MULTIPART_THRESHOLD='64MB'",
                 id="multipart-threshold-units"),
    pytest.param(run(S3), {"INFER_S3_MULTIPART_THRESHOLD": "0"}, nothing, "INFER_S3_MULTIPART_THRESHOLD='0'",
                 id="multipart-threshold-zero"),
    pytest.param(cmd("check-store", S3), {"INFER_S3_MULTIPART_THRESHOLD": "-5"}, nothing, "INFER_S3_MULTIPART_THRESHOLD",
                 id="check-store-multipart-threshold"),
    pytest.param(run(S3), {"AWS_MAX_ATTEMPTS": "zero"}, nothing, "AWS_MAX_ATTEMPTS='zero'", id="max-attempts-word"),
    pytest.param(run(S3), {"AWS_MAX_ATTEMPTS": "0"}, nothing, "AWS_MAX_ATTEMPTS='0'", id="max-attempts-zero"),
    pytest.param(run(S3), {"INFER_S3_READ_TIMEOUT": "-1"}, nothing, "INFER_S3_READ_TIMEOUT='-1'", id="read-timeout-negative"),
    pytest.param(run(S3), {"INFER_S3_READ_TIMEOUT": "nan"}, nothing, "INFER_S3_READ_TIMEOUT='nan'", id="read-timeout-nan"),
    pytest.param(run(S3), {"INFER_S3_CONNECT_TIMEOUT": "inf"}, nothing, "INFER_S3_CONNECT_TIMEOUT='inf'", id="connect-timeout-inf"),
    pytest.param(run("{tmp}/out"), {"INFER_LOCK_EXPIRY_S": "ten"}, nothing, "INFER_LOCK_EXPIRY_S='ten'", id="lock-expiry-word"),
    pytest.param(run("{tmp}/out"), {"INFER_LOCK_EXPIRY_S": "0"}, nothing, "INFER_LOCK_EXPIRY_S='0'", id="lock-expiry-zero"),
    # --- manifests altered by hand: no traceback, and (see below) a rerun remakes them ------
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry({"sha256": "0" * 64}), "entry for 'x.bin'", id="entry-no-bytes"),
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry({"bytes": 1}), "entry for 'x.bin'", id="entry-no-sha256"),
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry({"bytes": "1", "sha256": "0" * 64}), "entry for 'x.bin'",
                 id="entry-bytes-text"),
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry({"bytes": 1, "sha256": "xyz"}), "entry for 'x.bin'",
                 id="entry-sha256-not-hex"),
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry("x"), "entry for 'x.bin'", id="entry-not-a-table"),
    # --- refused runs leave no folders: the writability check removes what it made ----------
    pytest.param(run("{tmp}/new/out", "--set", "budget.ipc=1"), {}, nothing, "budget.ipc=1", id="refused-config-no-out"),
    pytest.param(cmd("stage", "prepare-data", "--out", "{tmp}/new/data", "--set", "dataset.name=imagefolder",
                     "--set", "dataset.root={tmp}/no-such-images"), {}, nothing, "no-such-images", id="refused-data-no-data-dir"),
    pytest.param(run("{tmp}/a-file/out"), {}, user_file("a-file"), "a-file/out is not writable", id="out-under-a-file"),
    # --- locations holding what the pipeline did not write ----------------------------------
    pytest.param(run("{tmp}/out"), {}, user_file("out/subsets/mine.txt"), "out/subsets: that location holds a folder without",
                 id="user-folder-at-subsets"),
    pytest.param(run("{tmp}/out"), {}, user_file("out/teachers/resnet_tiny"), "out/teachers/resnet_tiny: that location holds a file",
                 id="user-file-at-teacher"),
    pytest.param(run("{tmp}/out"), {}, user_file("out/students/convnet_d3_w32-static-seed0/manifest.json"),
                 "not an infer-distill manifest", id="foreign-manifest-at-student"),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("argv, env, setup, fragment", CASES)
def test_bad_store_input_is_refused_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys,
                                                       argv, env, setup, fragment) -> None:
    for name in ("AWS_MAX_ATTEMPTS", "INFER_S3_READ_TIMEOUT", "INFER_S3_CONNECT_TIMEOUT", "INFER_S3_MULTIPART_THRESHOLD",
                 "INFER_LOCK_EXPIRY_S"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    setup(tmp_path)
    before = _snapshot(tmp_path)
    assert main(argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert fragment.format(tmp=tmp_path) in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_manifest_entry_without_bytes_is_remade_by_a_rerun(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--no-progress", *SETS]
    assert main(args) == 0
    path = out / "subsets" / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["files"].values():
        del entry["bytes"]
    path.write_text(json.dumps(manifest))
    assert main(args) == 0  # not current: remade, not a KeyError on every rerun
    assert all("bytes" in e for e in open_artifact(out / "subsets").read_manifest()["files"].values())
