"""A data artifact that stores the source's image files as they are (dataset.storage=encoded): the same rows, and so
the same run, as decoded storage; a UFC shard on S3 fetching little beyond its rows' files; corrupted rows, bad
image files and sources without image files refused by name; concurrent ranged reads giving what sequential ones
give."""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY
from PIL import Image
from test_sources import wds_config, write_folder, write_shards

from infer_distill import stages
from infer_distill.cli import main
from infer_distill.config.loading import load_config
from infer_distill.config.schema import DatasetConfig
from infer_distill.dag.layout import Layout
from infer_distill.data import splits
from infer_distill.data.sources import encoded_storage, load_dataset, open_source
from infer_distill.data.splits import EncodedSplitWriter, SplitWriter, open_split
from infer_distill.errors import ArtifactError, ConfigError, DataError
from infer_distill.storage import open_artifact
from infer_distill.storage.s3 import _s3_client


def _sets(sets: list[str]) -> list[str]:
    return sum((["--set", s] for s in sets), [])


def _cifar(datasets_dir: Path, train: int = 12, test: int = 4) -> list[str]:
    """CIFAR-10 as an ImageFolder of its archives (JPEG training files, PNG test files), resized from 32 to 24 px."""
    return ["dataset.name=imagefolder", f"dataset.root={datasets_dir / 'cifar10'}", f"dataset.train_per_class={train}",
            f"dataset.test_per_class={test}", "dataset.image_size=24"]


@pytest.fixture(scope="module")
def digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    data = load_dataset(DatasetConfig(name="digits", train_per_class=6, test_per_class=2), progress=False)
    return (data.train_x, data.train_y), (data.test_x, data.test_y)


# ----------------------------------------------------------------------------------------
# The same run either way
# ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_on_encoded_storage_equals_the_run_on_decoded_storage(tmp_path, datasets_dir):
    common = [*TINY, *_cifar(datasets_dir), "budget.ipc=2", "students.baselines=[]",
              "teachers.min_accuracy_over_chance=null"]
    roots = {s: tmp_path / s for s in ("decoded", "encoded")}
    for storage, root in roots.items():
        assert main(["run", "--out", str(root), "--no-progress", *_sets([*common, f"dataset.storage={storage}"])]) == 0
    layouts = {s: Layout(str(root)) for s, root in roots.items()}
    arts = {s: open_artifact(lay.data) for s, lay in layouts.items()}
    metrics = {s: art.read_manifest()["metrics"] for s, art in arts.items()}
    assert {metrics[s]["splits"]["train"]["encoding"] for s in arts} == {"raw", "source"}
    assert metrics["encoded"]["splits"]["train"]["encoding"] == "source"
    assert metrics["encoded"]["mean"] == metrics["decoded"]["mean"]  # computed from the same pixels
    for split in ("train", "test"):
        a, b = (open_split(arts[s], split) for s in ("decoded", "encoded"))
        assert a.nbytes == b.nbytes == a.stored_bytes != b.stored_bytes  # held decoded either way; stored as it is
        assert torch.equal(a.read_all(), b.read_all()) and torch.equal(a.labels, b.labels)
    subsets = {s: open_artifact(lay.subsets).read_tensors("subsets.safetensors")["indices"] for s, lay in layouts.items()}
    assert torch.equal(subsets["decoded"], subsets["encoded"])
    ufcs = {s: sorted(p.name for p in Path(lay.ufc_shards).iterdir()) for s, lay in layouts.items()}
    assert ufcs["decoded"] == ufcs["encoded"] and ufcs["decoded"]
    for shard in ufcs["decoded"]:
        a, b = (open_artifact(f"{layouts[s].ufc_shards}/{shard}").read_tensors("ufc.safetensors")["ufc"]
                for s in ("decoded", "encoded"))
        assert torch.equal(a, b)
    labels = {s: open_artifact(lay.distilled).read_tensors("distilled.safetensors")["soft_labels"]
              for s, lay in layouts.items()}
    assert torch.equal(labels["decoded"], labels["encoded"])
    reports = {s: open_artifact(lay.report).read_manifest()["metrics"]["report"] for s, lay in layouts.items()}
    assert [s["final_acc"] for s in reports["decoded"]["students"]] == [s["final_acc"] for s in reports["encoded"]["students"]]


# ----------------------------------------------------------------------------------------
# What a UFC shard fetches from S3
# ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_ufc_shard_on_s3_fetches_at_most_1_2x_its_rows_image_files(s3_bucket, datasets_dir, monkeypatch):
    # An ImageNet-size images file is never read whole (SMALL_FILE_BYTES, WHOLE_FILE_BYTES): this one is small
    monkeypatch.setattr(splits, "SMALL_FILE_BYTES", 0)
    monkeypatch.setattr(splits, "WHOLE_FILE_BYTES", 0)
    cfg = load_config(None, [*TINY, *_cifar(datasets_dir, train=20), "dataset.storage=encoded", "budget.ipc=2",
                             "teachers.epochs=0", "teachers.min_accuracy_over_chance=null"])
    layout = Layout(f"s3://{s3_bucket}/run")
    stages.prepare_data(cfg, layout.data, progress=False)
    for arch in cfg.teachers.archs:
        stages.train_teacher(cfg, arch, layout.data, layout.teacher(arch), progress=False)
    stages.select_subsets(cfg, layout.data, layout.subsets)
    indices = open_artifact(layout.subsets).read_tensors("subsets.safetensors")["indices"]
    fetched: dict[str, int] = {}
    client = _s3_client()

    def answered(parsed, context, **_):
        key = context["key"]
        fetched[key] = fetched.get(key, 0) + parsed.get("ContentLength", 0)

    def asked(params, context, **_):
        context["key"] = params["Key"].removeprefix("run/data/")

    client.meta.events.register("before-parameter-build.s3.GetObject", asked)
    client.meta.events.register("after-call.s3.GetObject", answered)
    try:
        stages.synthesize_ufc(cfg, [0], layout.data, layout.subsets, layout.teachers(cfg), layout.ufc([0]), progress=False)
    finally:
        client.meta.events.unregister("before-parameter-build.s3.GetObject", asked)
        client.meta.events.unregister("after-call.s3.GetObject", answered)
    offsets = open_artifact(layout.data).read_tensors("train.offsets.safetensors")["offsets"]
    rows = indices[0].flatten()
    rows_bytes = int((offsets[rows + 1] - offsets[rows]).sum())
    entries = open_artifact(layout.data).read_manifest()["files"]
    index_bytes = entries["train.offsets.safetensors"]["bytes"] + entries["train.images.sha256"]["bytes"]
    assert fetched["train.images"] == rows_bytes                      # the files of its rows, nothing else
    read = sum(fetched.get(name, 0) for name in ("train.images", "train.offsets.safetensors", "train.images.sha256"))
    assert read <= 1.2 * rows_bytes + index_bytes
    assert "test.images" not in fetched


# ----------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------


def _encoded_split(root: Path, art_uri: str, image_size: int | None = 16, split: str = "train") -> EncodedSplitWriter:
    """The `split` of the ImageFolder at `root`, written to `art_uri` as image files."""
    cfg = DatasetConfig(name="imagefolder", root=str(root), image_size=image_size, storage="encoded")
    with open_source(cfg) as source:
        writer = EncodedSplitWriter(split, source.split(split).encoded(7, progress=False), encoded_storage(cfg, source), 10)
        open_artifact(art_uri).write(writer.files(), {"stage": "prepare-data"},
                                     finish=lambda: {"metrics": {"splits": {split: writer.description()}}})
    return writer


def test_a_corrupted_image_file_is_refused_naming_its_row(tmp_path, digits, monkeypatch):
    monkeypatch.setattr(splits, "SMALL_FILE_BYTES", 0)
    monkeypatch.setattr(splits, "WHOLE_FILE_BYTES", 0)
    _encoded_split(write_folder(tmp_path / "folder", digits), str(tmp_path / "data"))
    art = open_artifact(tmp_path / "data")
    offsets = art.read_tensors("train.offsets.safetensors")["offsets"]
    images = tmp_path / "data" / "train.images"
    data = bytearray(images.read_bytes())
    data[int(offsets[17]) + 20] ^= 0xFF
    images.write_bytes(bytes(data))
    split = open_split(open_artifact(tmp_path / "data"), "train")
    assert split.read([16, 18]).shape == (2, 3, 16, 16)  # its neighbours are intact
    with pytest.raises(ArtifactError, match=r"block 17 \(row 17\), does not match its sha256 .*re-run stage prepare-data"):
        split.read([3, 17])


def _png16() -> bytes:
    out = io.BytesIO()
    Image.new("I;16", (8, 8), 40000).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("content, refusal", [
    (b"not an image at all", "cannot decode image .*bad.png"),
    (_png16(), "image .*bad.png has (16|32)-bit samples"),
])
def test_a_bad_image_file_is_refused_when_stored_naming_the_file(tmp_path, digits, content, refusal):
    root = write_folder(tmp_path / "folder", digits)
    (root / "test" / "3" / "bad.png").write_bytes(content)  # the test split: no pixel of it is decoded for statistics
    cfg = load_config(None, [*TINY, "dataset.name=imagefolder", f"dataset.root={root}", "dataset.storage=encoded",
                             "budget.ipc=2"])
    with pytest.raises(DataError, match=refusal):
        stages.prepare_data(cfg, str(tmp_path / "data"), progress=False)
    assert not (tmp_path / "data" / "manifest.json").exists()


def test_an_image_file_that_decodes_no_more_is_refused_when_read_naming_artifact_split_and_row(tmp_path, digits):
    """A file whose header is sound but whose pixels are cut short passes the header check, and is refused where
    its row is decoded."""
    root = write_folder(tmp_path / "folder", digits)
    image = Image.fromarray(digits[0][0][0][0].numpy(), "L").resize((64, 64))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    cut = out.getvalue()[:len(out.getvalue()) // 2]
    (root / "test" / "0" / "0000.png").write_bytes(cut)  # named .png, a JPEG within: PIL reads what is there
    _encoded_split(root, str(tmp_path / "data"), image_size=16, split="test")
    split = open_split(open_artifact(tmp_path / "data"), "test")
    assert split.read([1]).shape == (1, 3, 16, 16)
    with pytest.raises(DataError, match=rf"artifact {tmp_path / 'data'}: row 0 of the test split cannot be decoded .*"
                                        "re-run stage prepare-data"):
        split.read([1, 0])


def test_encoded_storage_of_a_source_without_image_files_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"dataset.storage='encoded' but dataset.name=digits .*set dataset.storage"):
        load_config(None, ["dataset.storage=encoded"])


def test_auto_stores_image_files_of_96_px_and_more_and_decoded_rows_otherwise(tmp_path, digits):
    root = write_folder(tmp_path / "folder", digits)   # 8 px PNG files
    for name, image_size, stored in [("digits", None, False), ("imagefolder", None, False), ("imagefolder", 95, False),
                                     ("imagefolder", 96, True)]:
        cfg = DatasetConfig(name=name, root=str(root) if name != "digits" else None, image_size=image_size)
        with open_source(cfg) as source:
            settings = encoded_storage(cfg, source)
        assert (settings is not None) == stored, (name, image_size)
        if stored:
            assert settings == (96, (96, 96))
    cfg = DatasetConfig(name="imagefolder", root=str(root), storage="encoded")  # asked for, at any size
    with open_source(cfg) as source:
        assert encoded_storage(cfg, source) == (None, (8, 8))


# ----------------------------------------------------------------------------------------
# Concurrent ranged reads
# ----------------------------------------------------------------------------------------


def test_concurrent_ranged_reads_on_s3_return_what_sequential_ones_do(s3_bucket, tmp_path, digits, monkeypatch):
    """Scattered rows of an encoded split and of a raw one, read in many ranged reads: up to FETCHES at once, the same
    rows as one at a time, and as the decoded rows of the same files."""
    monkeypatch.setattr(splits, "SMALL_FILE_BYTES", 0)
    monkeypatch.setattr(splits, "WHOLE_FILE_BYTES", 0)
    monkeypatch.setattr(splits, "READ_BYTES", 1)  # one ranged read per run of one row (or block)
    root = write_folder(tmp_path / "folder", digits)
    encoded = f"s3://{s3_bucket}/encoded"
    _encoded_split(root, encoded)
    cfg = DatasetConfig(name="imagefolder", root=str(root), image_size=16)
    with open_source(cfg) as source:
        raw = SplitWriter("train", source.split("train").batches(7, progress=False), 10)
        open_artifact(f"s3://{s3_bucket}/raw").write(raw.files(), {"stage": "prepare-data"},
                                                    finish=lambda: {"metrics": {"splits": {"train": raw.description()}}})
    in_flight, most = [0], [0]
    lock = threading.Lock()
    client = _s3_client()

    def asked(params, context, **_):
        context["ranged"] = bool(params.get("Range"))
        if context["ranged"]:
            with lock:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
            time.sleep(0.02)  # a store's latency, which the concurrent reads overlap

    def answered(context, **_):
        if context.get("ranged"):
            with lock:
                in_flight[0] -= 1

    client.meta.events.register("before-parameter-build.s3.GetObject", asked)
    client.meta.events.register("after-call.s3.GetObject", answered)
    rows = torch.tensor([59, 2, 40, 11, 2, 33, 25, 47, 8, 52, 19, 0])
    got = {}
    try:
        for fetches in (8, 1):
            monkeypatch.setattr(splits, "FETCHES", fetches)
            most[0] = 0
            got[fetches] = [open_split(open_artifact(f"s3://{s3_bucket}/{name}"), "train").read(rows)
                            for name in ("encoded", "raw")]
            assert (most[0] > 1) == (fetches > 1)  # several requests in flight at once, or one at a time
    finally:
        client.meta.events.unregister("before-parameter-build.s3.GetObject", asked)
        client.meta.events.unregister("after-call.s3.GetObject", answered)
    for a, b in zip(got[8], got[1]):
        assert torch.equal(a, b)
    assert torch.equal(got[1][0], got[1][1])  # the image files decode to the rows decoded storage holds


@pytest.mark.parametrize("image_size", [None, 12])
@pytest.mark.parametrize("source", ["imagefolder", "webdataset"])
def test_each_image_file_source_stores_files_that_read_as_its_decoded_rows(tmp_path, digits, source, image_size):
    cfg = (DatasetConfig(name="imagefolder", root=str(write_folder(tmp_path / "folder", digits)), image_size=image_size)
           if source == "imagefolder" else wds_config(tmp_path / "shards", image_size=image_size))
    if source == "webdataset":
        write_shards(tmp_path / "shards", digits)
    for split in ("train", "test"):
        with open_source(cfg) as opened:
            settings = opened.decode_settings()
            raw = SplitWriter(split, opened.split(split).batches(5, progress=False), 10)
            files = EncodedSplitWriter(split, opened.split(split).encoded(5, progress=False), settings, 10)
            for name, writer in (("raw", raw), ("files", files)):
                open_artifact(tmp_path / name).write(writer.files(), {"stage": "prepare-data"},
                                                     finish=lambda w=writer: {"metrics": {"splits": {split: w.description()}}})
        a, b = (open_split(open_artifact(tmp_path / name), split) for name in ("raw", "files"))
        assert b.encoding == "source" and a.encoding == "raw"
        assert torch.equal(a.read_all(), b.read_all()) and torch.equal(a.labels, b.labels)
        rows = [len(a) - 1, 0, 3, 3]
        assert torch.equal(a.read(rows), b.read(rows))
