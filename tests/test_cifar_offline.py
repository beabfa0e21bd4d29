"""CIFAR without the internet: a failed download says how to read the files from disk and leaves no folder behind,
and the CIFAR-10 config runs on the CIFAR-10 ImageFolder archives as the README says."""
from __future__ import annotations

import urllib.request

import pytest

from infer_distill.cli import main
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.data.sources import load_dataset
from infer_distill.errors import DataError
from infer_distill.storage import open_artifact


@pytest.fixture(autouse=True)
def _own_url_opener(monkeypatch):
    """urllib's global opener keeps the (dead) proxy it is first built with: let these tests' downloads build their own."""
    monkeypatch.setattr(urllib.request, "_opener", None)


@pytest.mark.processes
def test_a_failed_download_names_the_imagefolder_way_and_removes_the_folders_it_made(tmp_path, monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")    # refused at once: the download fails without the internet
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    root = tmp_path / "data" / "cifar10"
    cfg = load_config("cifar10-ipc10", [f"dataset.root={root}"]).dataset
    with pytest.raises(DataError) as info:
        load_dataset(cfg)
    message = str(info.value)
    assert "downloading CIFAR-10 into dataset.root=" in message and "check the internet connection" in message
    assert "--set dataset.name=imagefolder --set dataset.root=" in message
    assert not (tmp_path / "data").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.processes
def test_a_failed_download_leaves_a_folder_that_was_there_and_its_files(tmp_path, monkeypatch):
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="downloading CIFAR-10"):
        load_dataset(load_config("cifar10-ipc10", [f"dataset.root={root}"]).dataset)
    assert (root / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_the_cifar10_config_runs_offline_on_the_imagefolder_archives(tmp_path, datasets_dir):
    """The README's offline command, with the budget cut down to a CPU test (the archives hold all 60,000 images)."""
    small = ["dataset.train_per_class=12", "dataset.test_per_class=5", "budget.ipc=3", "teachers.archs=[resnet18]",
             "teachers.epochs=1", "synthesis.iterations=2", "students.epochs=1", "students.seeds=[0]",
             "students.baselines=[]", "labels.modes=[static]", "device=cpu",
             "teachers.min_accuracy_over_chance=null"]  # one epoch on 120 images: a teacher about as good as chance
    sets = ["dataset.name=imagefolder", f"dataset.root={datasets_dir / 'cifar10'}", "dataset.download=false", *small]
    out = tmp_path / "c10"
    assert main(["run", "--config", "cifar10-ipc10", "--out", str(out), "--no-progress",
                 *sum((["--set", s] for s in sets), [])]) == 0
    dm = open_artifact(Layout(str(out)).data).read_manifest()["metrics"]
    assert dm["classes"][:2] == ["airplane", "automobile"] and (dm["num_train"], dm["image_size"]) == (120, 32)
    assert open_artifact(Layout(str(out)).report).read_manifest()["stage"] == "report"
