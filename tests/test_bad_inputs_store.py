"""Bad store inputs, as a table: each is refused with exit 2 and a message naming the field or file, before
any work, and leaves nothing behind (no --out folder, no data/ folder, no lock, the user's files intact).

Each row: the command (given the test's folder), the environment it runs with, a setup that puts
something in the folder first, and the fragment the message must hold. None needs an S3 server:
every S3 row is refused before the first request.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY

from infer_distill import DistilledSet
from infer_distill.cli import main
from infer_distill.dag.artifact_settings import fingerprint
from infer_distill.errors import ArtifactError
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


def manifest_text(text: str) -> Callable[[Path], None]:
    """An artifact at tmp/art whose manifest.json is `text`."""
    def setup(tmp: Path) -> None:
        open_artifact(tmp / "art").write({"x.bin": b"x"}, {"stage": "prepare-data"})
        (tmp / "art" / "manifest.json").write_text(text)
    return setup


def art_entry(name: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
    """An artifact at tmp/art (a distilled set) whose file `name` is replaced by what `make(path)` puts there."""
    def setup(tmp: Path) -> None:
        distilled_set()(tmp)
        (tmp / "art" / name).unlink()
        make(tmp / "art" / name)
    return setup


def report_with(data: bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        open_artifact(tmp / "art").write({"report.md": data}, {"stage": "report"})
    return setup


def distilled_set(tensors: Callable[[dict], None] | None = None, metrics: dict | None = None, settings: dict | None = None,
                  top: dict | None = None, entry: Callable[[dict], None] | None = None) -> Callable[[Path], None]:
    """A soft-label artifact at tmp/art, written by the store (checksums consistent) as a set of K=1, M=2, C=2 tiny images,
    with its tensors, metrics, settings or top-level keys changed as given (the settings' fingerprint recomputed, so
    only what the fingerprint does not cover can tell), and its manifest's entry for distilled.safetensors then
    altered by `entry`."""
    def setup(tmp: Path) -> None:
        t = {"natural": torch.zeros(1, 2, 3, 4, 4, dtype=torch.uint8), "ufc": torch.zeros(1, 2, 1, 3, 4, 4),
             "soft_labels": torch.zeros(6, 2)}
        s = {"teachers": [{"arch": "convnet_d2_w32"}, {"arch": "resnet_tiny"}], "labels": {"temperature": 30.0},
             "synthesis": {"classes_per_ufc": None}, "dataset": {"name": "digits"}, **(settings or {})}
        m = {"classes": ["a", "b"], "mean": [0.5] * 3, "std": [0.2] * 3, "crop_padding": 1, "hflip": False, "instance_order": "",
             "compute": {}, "budget": {"ipc": 2, "num_subsets": 1, "num_teachers": 2, "class_batches": 1, "num_classes": 2,
                                       "num_ufcs": 2, "num_instances": 6, "ufc_dtype": "float32", "label_dtype": "float32",
                                       "stored_bytes": 1, "train_bytes": 1, "compression_ratio": 1.0}, **(metrics or {})}
        if tensors:
            tensors(t)
        manifest = {"stage": "soft-label", "settings": s, "fingerprint": fingerprint(s), "metrics": m,
                    "inputs": {"data": str(tmp / "no-data"), "teachers": []}, **(top or {})}
        art = open_artifact(tmp / "art")
        art.write({"distilled.safetensors": t}, manifest)
        if entry:
            path = tmp / "art" / "manifest.json"
            written = json.loads(path.read_text())
            entry(written["files"])
            path.write_text(json.dumps(written))
    return setup


def nested(depth: int) -> str:
    return '{"schema_version": 1, "files": {}, "x": ' + "[" * depth + "]" * depth + "}"


def drop(*names: str) -> Callable[[dict], None]:
    return lambda t: [t.pop(n) for n in names]


def set_meta(tensor: str, **meta) -> Callable[[dict], None]:
    return lambda files: files["distilled.safetensors"]["tensors"][tensor].update(meta)


EXPORT = ("export", "{tmp}/art", "--format", "npz", "--out", "{tmp}/exp")
# Distilled sets refused by `export` (and by DistilledSet.open, the test below the table): (id, setup, fragment)
BAD_SETS = [
    ("set-without-ufc", distilled_set(drop("ufc")), "distilled.safetensors has no tensor ufc"),
    ("set-uint8-ufc-without-scale", distilled_set(lambda t: t.update(ufc=torch.zeros(1, 2, 1, 3, 4, 4, dtype=torch.uint8))),
     "has no tensor ufc_offset, ufc_scale"),
    ("set-mean-a-string", distilled_set(metrics={"mean": "0.5"}), "metrics.mean='0.5', where input should be a valid list"),
    ("set-classes-objects", distilled_set(metrics={"classes": [{"name": "a"}, {"name": "b"}]}),
     "'b'}}, where input should be a valid string"),  # braces doubled: fragments are format strings
    ("set-std-a-string", distilled_set(metrics={"std": ["0.2", "0.2", "0.2"]}), "metrics.std.0='0.2'"),
    ("set-crop-padding-a-string", distilled_set(metrics={"crop_padding": "4"}), "metrics.crop_padding='4'"),
    ("set-hflip-a-string", distilled_set(metrics={"hflip": "yes"}), "metrics.hflip='yes'"),
    ("set-budget-without-instances", distilled_set(metrics={"budget": {"ipc": 2}}), "a metrics.budget without num_subsets (int)"),
    ("set-budget-a-list", distilled_set(metrics={"budget": [1, 2]}), "a metrics.budget without ipc (int)"),
    ("set-teachers-a-string", distilled_set(settings={"teachers": "convnet_d2_w32"}), "settings.teachers that is not a list"),
    ("set-temperature-a-string", distilled_set(settings={"labels": {"temperature": "30"}}), "settings.labels without a temperature"),
    ("set-inputs-a-string", distilled_set(top={"inputs": "data"}), "inputs that are not the locations it was made from"),
    ("set-inputs-without-data", distilled_set(top={"inputs": {"teachers": []}}), "inputs that are not the locations"),
    ("set-synthesis-a-string", distilled_set(settings={"synthesis": "x"}), "settings.synthesis without a valid classes_per_ufc"),
    ("set-classes-per-ufc-0", distilled_set(settings={"synthesis": {"classes_per_ufc": 0}}), "without a valid classes_per_ufc"),
    ("set-dataset-without-name", distilled_set(settings={"dataset": {}}), "settings.dataset without a name"),
    ("set-settings-a-list", distilled_set(top={"settings": [1], "fingerprint": fingerprint([1])}), "settings.teachers that is not"),
    ("set-metrics-a-list", distilled_set(top={"metrics": [1]}), "records no budget, classes"),
    ("set-listing-a-missing-file", distilled_set(entry=lambda files: files.update(extra={"bytes": 1, "sha256": "0" * 64})),
     "file 'extra' listed in manifest.json is missing"),
    ("set-dtype-unlike-the-file", distilled_set(entry=set_meta("soft_labels", dtype="float16")),
     "'dtype': 'float16', 'shape': [6, 2]"),
    ("set-shape-unlike-the-file", distilled_set(entry=set_meta("natural", shape=[1, 2, 3, 8, 8])), "tensor 'natural' is"),
    ("set-tensor-not-in-the-file", distilled_set(entry=lambda f: f["distilled.safetensors"]["tensors"].update(
        extra={"dtype": "float32", "shape": [1]})), "tensor 'extra' is absent in the file"),
    ("set-file-links-to-urandom", art_entry("distilled.safetensors", lambda p: os.symlink("/dev/urandom", p)),
     "'distilled.safetensors' is a character device, not a file"),
    ("set-file-a-fifo", art_entry("distilled.safetensors", os.mkfifo), "'distilled.safetensors' is a FIFO (named pipe), not a file"),
    ("set-file-a-symlink-loop", art_entry("distilled.safetensors", lambda p: os.symlink(p.name, p)),
     "cannot read 'distilled.safetensors' (Too many levels of symbolic links)"),
    ("set-manifest-nested-200000-deep", manifest_text(nested(200_000)), "manifest.json nests deeper than 64 levels"),
    ("set-manifest-a-fifo", art_entry("manifest.json", os.mkfifo), "cannot read 'manifest.json' (a FIFO (named pipe), not a regular file)"),
    ("set-manifest-links-to-urandom", art_entry("manifest.json", lambda p: os.symlink("/dev/urandom", p)),
     "cannot read 'manifest.json' (a character device, not a regular file)"),
]


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
    # --- ... and bounded: a value far too large overflows a socket's timeout or the lock's heartbeat -----
    pytest.param(run(S3), {"INFER_S3_READ_TIMEOUT": "1e308"}, nothing, "INFER_S3_READ_TIMEOUT='1e308' is not a positive number "
                 "of seconds of at most 3600", id="read-timeout-1e308"),
    pytest.param(run(S3), {"INFER_S3_READ_TIMEOUT": "3601"}, nothing, "of at most 3600", id="read-timeout-3601"),
    pytest.param(run(S3), {"INFER_S3_CONNECT_TIMEOUT": "1e308"}, nothing, "INFER_S3_CONNECT_TIMEOUT='1e308'", id="connect-timeout-1e308"),
    pytest.param(run(S3), {"AWS_MAX_ATTEMPTS": "101"}, nothing, "AWS_MAX_ATTEMPTS='101' is not a positive whole number of attempts "
                 "of at most 100", id="max-attempts-101"),
    pytest.param(run(S3), {"AWS_MAX_ATTEMPTS": str(10**20)}, nothing, "of at most 100", id="max-attempts-1e20"),
    pytest.param(run(S3), {"INFER_S3_MULTIPART_THRESHOLD": str(6 * 1024**3)}, nothing, "of at most 5.36871e+09",
                 id="multipart-threshold-6GiB"),
    pytest.param(run("{tmp}/out"), {"INFER_LOCK_EXPIRY_S": "1e300"}, nothing, "INFER_LOCK_EXPIRY_S='1e300' is not a positive "
                 "number of seconds of at most 604800", id="lock-expiry-1e300"),
    pytest.param(run("{tmp}/out"), {"INFER_LOCK_EXPIRY_S": "inf"}, nothing, "INFER_LOCK_EXPIRY_S='inf'", id="lock-expiry-inf"),
    pytest.param(run("{tmp}/out"), {"INFER_LOCK_EXPIRY_S": "nan"}, nothing, "INFER_LOCK_EXPIRY_S='nan'", id="lock-expiry-nan"),
    pytest.param(run("{tmp}/out"), {"INFER_LOCK_EXPIRY_S": "-5"}, nothing, "INFER_LOCK_EXPIRY_S='-5'", id="lock-expiry-negative"),
    pytest.param(run("{tmp}/out"), {"INFER_LOCK_EXPIRY_S": "604801"}, nothing, "of at most 604800", id="lock-expiry-over-a-week"),
    # --- AWS_ENDPOINT_URL: checked before boto3 builds a client (it raises a bare ValueError), credentials masked ---
    pytest.param(run(S3), {"AWS_ENDPOINT_URL": "not a url"}, nothing, "AWS_ENDPOINT_URL='not a url' is not a URL: give http://host:port",
                 id="endpoint-not-a-url"),
    pytest.param(run(S3), {"AWS_ENDPOINT_URL": "http://"}, nothing, "AWS_ENDPOINT_URL='http://' has no host", id="endpoint-no-host"),
    pytest.param(run(S3), {"AWS_ENDPOINT_URL": "https://:9000"}, nothing, "has no host", id="endpoint-port-only"),
    pytest.param(run(S3), {"AWS_ENDPOINT_URL": "ftp://minio:9000"}, nothing, "'ftp://minio:9000' is not a URL", id="endpoint-ftp"),
    pytest.param(run(S3), {"AWS_ENDPOINT_URL": "minio:9000"}, nothing, "'minio:9000' is not a URL", id="endpoint-no-scheme"),
    pytest.param(run(S3), {"AWS_ENDPOINT_URL": "http://minio name:9000"}, nothing, "is not a URL", id="endpoint-space"),
    pytest.param(run(S3), {"AWS_ENDPOINT_URL": "http://minio:99999"}, nothing, "has no valid port: give a port from 1 to 65535",
                 id="endpoint-port-too-large"),
    pytest.param(run(S3), {"AWS_ENDPOINT_URL": "http://minio:0"}, nothing, "has no valid port", id="endpoint-port-0"),
    pytest.param(run(S3), {"AWS_ENDPOINT_URL": "http://[::1:9000"}, nothing, "is not a URL", id="endpoint-bad-ipv6"),
    pytest.param(run(S3), {"AWS_ENDPOINT_URL": "http://user:secret@minio:9000"}, nothing,
                 "AWS_ENDPOINT_URL='http://***@minio:9000' holds credentials", id="endpoint-with-credentials"),
    pytest.param(cmd("check-store", S3), {"AWS_ENDPOINT_URL": "http://"}, nothing, "has no host", id="check-store-endpoint"),
    # --- manifests altered by hand: no traceback, and (see below) a rerun remakes them ------
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry({"sha256": "0" * 64}), "entry for 'x.bin'", id="entry-no-bytes"),
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry({"bytes": 1}), "entry for 'x.bin'", id="entry-no-sha256"),
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry({"bytes": "1", "sha256": "0" * 64}), "entry for 'x.bin'",
                 id="entry-bytes-text"),
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry({"bytes": 1, "sha256": "xyz"}), "entry for 'x.bin'",
                 id="entry-sha256-not-hex"),
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry("x"), "entry for 'x.bin'", id="entry-not-a-table"),
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry({"bytes": 1, "sha256": "0" * 64, "tensors": [1]}),
                 "entry for 'x.bin'", id="entry-tensors-a-list"),
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry({"bytes": 1, "sha256": "0" * 64, "tensors": {
                 "w": {"dtype": "float32", "shape": [-1]}}}), "no valid 'tensors'", id="entry-tensor-shape-negative"),
    pytest.param(cmd("show", "{tmp}/art"), {}, artifact_with_entry({"bytes": 1, "sha256": "0" * 64, "tensors": {
                 "w": {"dtype": 32, "shape": [1]}}}), "no valid 'tensors'", id="entry-tensor-dtype-a-number"),
    # --- manifests too large, too deep, or not files: refused by name, never parsed or blocked on -----------
    pytest.param(cmd("show", "{tmp}/art"), {}, manifest_text(nested(200_000)), "manifest.json nests deeper than 64 levels",
                 id="show-manifest-nested-200000-deep"),
    pytest.param(cmd("show", "{tmp}/art", "--json"), {}, manifest_text(nested(65)), "manifest.json nests deeper than 64 levels",
                 id="show-manifest-nested-65-deep"),
    pytest.param(cmd("show", "{tmp}/art"), {}, manifest_text('{"pad": "' + "x" * (16 * 1024 * 1024) + '"}'),
                 "over the limit of 16,777,216", id="show-manifest-over-16MiB"),
    pytest.param(cmd("show", "{tmp}/art"), {}, art_entry("manifest.json", os.mkfifo), "a FIFO (named pipe), not a regular file",
                 id="show-manifest-a-fifo"),
    pytest.param(cmd("show", "{tmp}/art"), {}, art_entry("manifest.json", lambda p: os.symlink("/dev/urandom", p)),
                 "a character device, not a regular file", id="show-manifest-links-to-urandom"),
    pytest.param(cmd("show", "{tmp}/art"), {}, art_entry("manifest.json", os.mkdir), "cannot read 'manifest.json' (a directory",
                 id="show-manifest-a-folder"),
    pytest.param(cmd("show", "{tmp}/art"), {}, art_entry("manifest.json", lambda p: os.symlink(p.name, p)),
                 "Too many levels of symbolic links", id="show-manifest-a-symlink-loop"),
    pytest.param(cmd("show", "{tmp}/art"), {}, report_with(b"# r\xe9sultats\n"), "file 'report.md' is not UTF-8 text",
                 id="show-report-not-utf8"),
    pytest.param(cmd("show", "{tmp}/fifo"), {}, lambda tmp: os.mkfifo(tmp / "fifo"), "no artifact at", id="show-a-fifo"),
    pytest.param(cmd("export", "{tmp}/fifo", "--format", "npz", "--out", "{tmp}/exp"), {}, lambda tmp: os.mkfifo(tmp / "fifo"),
                 "no artifact at", id="export-a-fifo"),
    pytest.param(cmd("check-store", "{tmp}/fifo/run"), {}, lambda tmp: os.mkfifo(tmp / "fifo"), "fifo/run is not writable",
                 id="check-store-below-a-fifo"),
    pytest.param(run("{tmp}/fifo/run"), {}, lambda tmp: os.mkfifo(tmp / "fifo"), "fifo/run is not writable", id="out-below-a-fifo"),
    pytest.param(cmd("export", "{tmp}/art", "--format", "npz", "--out", "{tmp}/fifo"), {},
                 lambda tmp: (distilled_set()(tmp), os.mkfifo(tmp / "fifo")), "already exists and is not an empty directory",
                 id="export-out-a-fifo"),
    # --- distilled sets altered by hand, or whose files are not files: refused by export (and DistilledSet.open) ---
    *(pytest.param(cmd(*EXPORT), {}, setup, fragment, id=f"export-{id}") for id, setup, fragment in BAD_SETS),
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
    pytest.param(run("{tmp}/out"), {}, lambda tmp: (tmp / "out" / "subsets").mkdir(parents=True) or
                 os.mkfifo(tmp / "out" / "subsets" / "manifest.json"), "cannot read 'manifest.json' (a FIFO (named pipe)",
                 id="fifo-manifest-at-subsets"),
    pytest.param(run("{tmp}/out"), {}, lambda tmp: (tmp / "out" / "subsets").mkdir(parents=True) or
                 (tmp / "out" / "subsets" / "manifest.json").write_text("[" * 200_000), "that location holds a manifest.json "
                 "that is not an infer-distill manifest", id="deep-manifest-at-subsets"),
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
                 "INFER_LOCK_EXPIRY_S", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    setup(tmp_path)
    before = _snapshot(tmp_path)
    assert main(argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert fragment.format(tmp=tmp_path) in err and "Traceback" not in err, err
    assert "secret" not in err  # credentials in AWS_ENDPOINT_URL are masked
    assert _snapshot(tmp_path) == before


def test_the_tables_are_large_and_their_ids_distinct() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) >= 90 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("setup, fragment", [pytest.param(setup, fragment, id=id) for id, setup, fragment in BAD_SETS])
def test_distilled_set_open_refuses_what_export_refuses(tmp_path: Path, setup, fragment) -> None:
    setup(tmp_path)
    with pytest.raises(ArtifactError) as refused:
        DistilledSet.open(tmp_path / "art")
    assert fragment.format(tmp=tmp_path) in str(refused.value)


def test_the_unaltered_tiny_set_opens(tmp_path: Path) -> None:
    """The sets of the table differ from this one in the one thing each names: it opens, and exports."""
    distilled_set()(tmp_path)
    assert len(DistilledSet.open(tmp_path / "art")) == 6
    assert main(["export", str(tmp_path / "art"), "--format", "npz", "--out", str(tmp_path / "exp")]) == 0


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


@pytest.mark.parametrize("text, fragment", [
    pytest.param(nested(200_000), "manifest.json nests deeper than 64 levels", id="nested-200000-deep"),
    pytest.param('{"pad": "' + "x" * (16 * 1024 * 1024) + '"}', "over the limit of 16,777,216 bytes", id="over-16MiB"),
])
def test_an_s3_manifest_too_deep_or_too_large_is_refused(s3_bucket: str, text: str, fragment: str) -> None:
    """On S3 as on disk: no more than the limit is read, and nothing deeper than the limit is parsed."""
    import boto3

    art = open_artifact(f"s3://{s3_bucket}/art")
    art.write({"x.bin": b"x"}, {"stage": "prepare-data"})
    client = boto3.session.Session().client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.put_object(Bucket=s3_bucket, Key="art/manifest.json", Body=text.encode())
    with pytest.raises(ArtifactError, match=fragment):
        art.read_manifest()
