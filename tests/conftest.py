"""Shared fixtures and the test tiers.

S3 tests run against a real moto S3 server in a subprocess (real HTTP, real boto3 client, real
multipart uploads), not an in-process mock.

Tiers: `make test` runs everything; `make test-fast` (`pytest --fast`) runs only hermetic, quick
tests: it leaves out every test marked slow, s3, datasets, processes or containers, and makes
any remaining test that starts a process or opens a network connection fail, naming itself, so
a missing marker cannot go unnoticed. The s3 and datasets markers follow from the fixtures a
test uses (s3_server, datasets_dir); the others are written on the tests.
"""
from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch.nn.functional as F
from PIL import Image
from torch import nn

from benchmarks.common import moto_s3_server

NOT_FAST = ("slow", "s3", "datasets", "processes", "containers")

# `infer-distill run` chooses its workers from the machine's load (`--jobs auto`); the tests' runs take one job,
# so what they compute never depends on what else the machine is doing. Tests of the choice set it themselves.
os.environ["INFER_JOBS"] = "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true",
                     help=f"the quick hermetic tier: no test marked {', '.join(NOT_FAST)}; no processes, no network")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "s3_server" in item.fixturenames:
            item.add_marker("s3")
        if "datasets_dir" in item.fixturenames:
            item.add_marker("datasets")
    if config.getoption("--fast"):
        left_out = [item for item in items if any(item.get_closest_marker(m) for m in NOT_FAST)]
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]


@pytest.fixture(autouse=True)
def _hermetic(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the fast tier, starting a process or connecting a network socket fails the test."""
    if not request.config.getoption("--fast"):
        return
    test = request.node.nodeid

    def no_process(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{test} starts a process; the fast tier is hermetic: mark the test 'processes' (or s3, containers)")

    connect = socket.socket.connect

    def no_network(sock: socket.socket, address: object) -> None:
        if sock.family != socket.AF_UNIX:
            raise RuntimeError(f"{test} connects to {address}; the fast tier is hermetic: mark the test (s3, processes, ...)")
        connect(sock, address)

    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    monkeypatch.setattr(socket.socket, "connect", no_network)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_s3_server(tmp_path_factory.mktemp("moto") / "server.log") as env:
        yield env["AWS_ENDPOINT_URL"]


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    yield s3_server


@pytest.fixture
def s3_bucket(s3_env: str) -> Iterator[str]:
    import boto3

    name = f"test-{uuid.uuid4().hex[:16]}"
    boto3.session.Session().client("s3", endpoint_url=s3_env, region_name="us-east-1").create_bucket(Bucket=name)
    yield name


# ---- pipeline fixtures -------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]

# The quickstart at test size: every stage runs, in seconds. Two teacher epochs: after one, resnet_tiny scores
# chance on digits and train-teacher refuses it (teachers.min_accuracy_over_chance).
TINY = [
    "teachers.archs=[convnet_d2_w32, resnet_tiny]",
    "teachers.epochs=2",
    "synthesis.iterations=3",
    "students.epochs=2",
    "device=cpu",
]


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The folder holding cifar10/cifar10-train-jpeg.zip and cifar10-test-png.zip: $INFER_DATASETS, by default
    ../shared/datasets beside the repository."""
    path = Path(os.environ.get("INFER_DATASETS") or REPO.parent / "shared" / "datasets")
    missing = [z for z in ("cifar10-train-jpeg.zip", "cifar10-test-png.zip") if not (path / "cifar10" / z).is_file()]
    if missing:
        raise RuntimeError(f"CIFAR-10 archives {missing} not found under {path / 'cifar10'}; "
                           "set INFER_DATASETS to the folder that holds cifar10/ with them")
    return path


# ---- models ------------------------------------------------------------------------------


class OddBatchNorms(nn.Module):
    """A teacher whose BatchNorm layers do not each run once: `spare` never runs, or `bn` runs twice."""

    def __init__(self, num_classes: int = 5, in_chans: int = 3, image_size: int = 8, reuse: bool = False):
        super().__init__()
        self.reuse = reuse
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.spare = nn.BatchNorm2d(4)   # registered first: a zip by position would pair it with bn's input
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        if self.reuse:
            x = self.bn(x)
        return self.head(x.mean((2, 3)))


# ---- image folders -----------------------------------------------------------------------

COLOURS = {"apple": (255, 0, 0), "leaf": (0, 255, 0), "sky": (0, 0, 255)}  # one solid colour per class


def make_folder(root: Path, splits: dict[str, int] | None = None, size: int = 12, ext: str = ".png") -> Path:
    """<root>/<split>/<class>/<i><ext>: solid-coloured images, `splits` maps split -> images per class."""
    for split, count in (splits or {"train": 4, "test": 2}).items():
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (size, size), colour).save(root / split / name / f"{i:03d}{ext}")
    return root
