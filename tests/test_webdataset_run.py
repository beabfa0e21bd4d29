"""The whole pipeline from WebDataset tar shards on an S3 server: the run reads the shards (several per split,
a brace pattern), its data artifact holds the same rows as a run over the same images as an ImageFolder, and
so the same subsets, labels and students follow, seed for seed."""
from __future__ import annotations

import boto3
import torch
from conftest import TINY
from test_sources import write_folder, write_shards

from infer_distill.cli import main
from infer_distill.config.schema import DatasetConfig
from infer_distill.dag.layout import Layout
from infer_distill.data.sources import load_dataset
from infer_distill.data.splits import open_split
from infer_distill.storage import open_artifact


def _sets(sets: list[str]) -> list[str]:
    return sum((["--set", s] for s in sets), [])


def test_a_run_from_webdataset_shards_on_s3_equals_the_same_images_as_a_folder(tmp_path, s3_bucket):
    data = load_dataset(DatasetConfig(name="digits", train_per_class=14, test_per_class=4), progress=False)
    digits = ((data.train_x, data.train_y), (data.test_x, data.test_y))
    files = write_shards(tmp_path / "shards", digits, shards=4)
    client = boto3.session.Session().client("s3")
    for name, body in files.items():
        client.put_object(Bucket=s3_bucket, Key=f"digits-wds/{name}", Body=body)
    folder = write_folder(tmp_path / "folder", digits)
    common = [*TINY, "budget.ipc=2", "students.baselines=[]", "dataset.image_size=8", "teachers.min_accuracy_over_chance=null"]
    wds = ["dataset.name=webdataset", f"dataset.root=s3://{s3_bucket}/digits-wds", "dataset.train_shards=train-{0..3}.tar",
           "dataset.test_shards=test-0.tar"]
    roots = {"wds": tmp_path / "wds", "folder": tmp_path / "folder-run"}
    assert main(["run", "--out", str(roots["wds"]), "--no-progress", *_sets([*common, *wds])]) == 0
    assert main(["run", "--out", str(roots["folder"]), "--no-progress",
                 *_sets([*common, "dataset.name=imagefolder", f"dataset.root={folder}"])]) == 0

    layouts = {name: Layout(str(root)) for name, root in roots.items()}
    arts = {name: open_artifact(layout.data) for name, layout in layouts.items()}
    manifests = {name: art.read_manifest() for name, art in arts.items()}
    assert manifests["wds"]["metrics"]["num_train"] == 140 and manifests["wds"]["sources"]["dataset"]["files"] == 6  # 5 shards + classes.txt
    for split in ("train", "test"):
        a, b = (open_split(arts[name], split) for name in ("wds", "folder"))
        assert torch.equal(a.read_all(), b.read_all()) and torch.equal(a.labels, b.labels)
    assert manifests["wds"]["metrics"]["mean"] == manifests["folder"]["metrics"]["mean"]
    subsets = {n: open_artifact(lay.subsets).read_tensors("subsets.safetensors")["indices"] for n, lay in layouts.items()}
    assert torch.equal(subsets["wds"], subsets["folder"])
    reports = {n: open_artifact(lay.report).read_manifest()["metrics"]["report"] for n, lay in layouts.items()}
    assert [s["final_acc"] for s in reports["wds"]["students"]] == [s["final_acc"] for s in reports["folder"]["students"]]
