"""Benchmark profiles: every size and setting of one benchmark run, in one frozen record.

A profile turns into the library's own `Config` (one per ipc budget and teacher set) with
`profile.config(...)`, so every stage runs with a validated config and every artifact records
the settings it depends on. Two profiles that agree on the dataset and teacher settings share
teacher artifacts (config.stage_config('train-teacher') depends on nothing else).

Profiles here:
- `cpu`: the CPU benchmark of `make bench` (2 cores, < 45 min from nothing, < 15 min with teachers reused).
- `quick`: `make bench ARGS=--quick` (< 10 min): the same protocol, smaller everywhere.
The GPU profile (paper scale) lives in benchmarks/gpu/paper_cifar10.py; tests build tiny ones.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from infer_distill.config import Config, validate_config

# Method ids, in the order they run and appear in tables.
METHODS: dict[str, str] = {
    "infer": "INFER (static labels)",
    "infer_dyn": "INFER+Dyn (dynamic labels)",
    "no_ufc": "INFER without UFCs (K natural subsets only)",
    "random_soft": "random real + ensemble soft labels, MixUp, KL (fair baseline)",
    "random_hard": "random real + hard labels, plain CE (paper's 'random')",
    "infer_m1": "INFER with M = 1 teacher (static labels)",
}


def default_dataset_root() -> str:
    """CIFAR-10 archives: $INFER_DATASETS/cifar10, else ../shared/datasets/cifar10 (beside the checkout)."""
    base = os.environ.get("INFER_DATASETS")
    return str(Path(base) / "cifar10") if base else "../shared/datasets/cifar10"


@dataclass(frozen=True)
class Profile:
    name: str                                   # results file: benchmarks/results/<name>.json
    title: str
    command: str                                # the command that reproduces the whole results file
    row_command: str                            # ... and one row ({method}, {ipc} filled in)
    dataset: dict                               # the library's `dataset:` section
    teachers: tuple[str, ...]
    teacher_epochs: int
    student: str
    student_epochs: int                         # static labels (and every baseline)
    student_epochs_dynamic: int
    eval_every: int
    synthesis_iterations: int
    seeds: tuple[int, ...] = (0, 1, 2)
    ipcs: tuple[int, ...] = (10,)
    methods: tuple[str, ...] = tuple(METHODS)
    m1_teacher: str | None = None               # the teacher of the M = 1 ablation (None: the first)
    teacher_batch_size: int = 128
    teacher_lr: float = 0.05
    student_batch_size: int = 64
    synthesis_jitter: int = 4                   # official CIFAR value
    speed_iterations: int = 5                   # iterations of the grouped vs one-at-a-time synthesis timing
    speed_subsets: int | None = None            # subsets in that timing (None: all K of the first ipc)
    device: str = "cpu"
    seed: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)  # choices and deviations, printed in BENCHMARKS.md

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
        if self.m1_teacher is not None and self.m1_teacher not in self.teachers:
            raise ValueError(f"m1_teacher {self.m1_teacher!r} is not one of the teachers {self.teachers}")

    @property
    def m1(self) -> str:
        return self.m1_teacher or self.teachers[0]

    def replace(self, **changes) -> "Profile":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def config(self, ipc: int, teachers: tuple[str, ...] | list[str] | None = None) -> Config:
        """The library config of one INFER run of this profile (labels: static and dynamic)."""
        raw = {
            "dataset": dict(self.dataset),
            "budget": {"ipc": ipc},
            "teachers": {"archs": list(teachers or self.teachers), "epochs": self.teacher_epochs,
                         "batch_size": self.teacher_batch_size, "lr": self.teacher_lr},
            "synthesis": {"iterations": self.synthesis_iterations, "jitter": self.synthesis_jitter, "subsets_per_shard": 0},
            "labels": {"modes": ["static", "dynamic"], "temperature": 30.0},
            "students": {"archs": [self.student], "seeds": list(self.seeds), "epochs": self.student_epochs,
                         "epochs_dynamic": self.student_epochs_dynamic, "batch_size": self.student_batch_size,
                         "eval_every": self.eval_every},
            "device": self.device,
            "seed": self.seed,
        }
        return validate_config(raw, source=f"benchmark profile {self.name!r}")


def cifar10(root: str | None = None, **limits) -> dict:
    return {"name": "imagefolder", "root": root or default_dataset_root(), **limits}


# Sized from pieces measured on the 2-core development machine while it was otherwise idle
# (min of 2 runs; the real code paths, benchmarks' sizing notes below). Teachers train on the full
# 50,000-image training set; every test accuracy is on the full 10,000-image lossless PNG test set.
CPU = Profile(
    name="cifar10-cpu",
    title="CIFAR-10, CPU (2 cores), small BatchNorm teachers and student",
    command="make bench",
    row_command='make bench ARGS="--methods {method} --ipc {ipc}"',
    dataset=cifar10(),
    teachers=("convnet_d3_w32", "resnet_tiny", "convnet_d2_w64"),
    teacher_epochs=5,
    student="convnet_d3_w32",
    student_epochs=100,
    student_epochs_dynamic=40,
    eval_every=20,
    synthesis_iterations=1000,
    speed_iterations=10,
    notes=(
        "Teachers (M = 3): the library's ConvNet depth 3 width 32, ResNet-tiny and ConvNet depth 2 width 64: three "
        "BatchNorm networks that differ in depth, width and topology, the cheapest that do (one 50,000-image epoch took "
        "32-53 s, 42-49 s and 66-100 s on the idle 2-core machine, up to 2x that while other jobs ran). 5 epochs each on "
        "all 50,000 training images (SGD + Nesterov, one-cycle, peak lr 0.05, batch 128, label smoothing 0.1): "
        "10-17 min for the three on the idle machine.",
        "Student: ConvNet depth 3 width 32 (the cheapest BatchNorm network here: 2,500 images/s with static labels, "
        "1,000/s with dynamic ones, 2.6 s per 10,000-image test pass); it is also a teacher, as ResNet-18 is in the paper.",
        "Synthesis: the official 1000 iterations, lr 0.25, r_bn 1, jitter 4: 0.18-0.23 s per iteration for all K = 7 "
        "subsets and M = 3 teachers grouped (about 3-4 min), 0.04 s for the M = 1 ablation (K = 9, one teacher).",
        "Students: 100 epochs with static labels and for every baseline (official: 400); 40 with dynamic labels "
        "(official: 80 beside 400: that 5:1 ratio would leave 100 optimiser steps here, and the quick run's static "
        "students still gained until about 150 steps); AdamW 1e-3, weight decay 0.01, cosine, batch 64, "
        "MixUp Beta(0.8, 0.8), T = 30.",
        "Test accuracy every 20 epochs on all 10,000 test images (a test pass costs as much as 25 training epochs of "
        "INFER's 280 instances here): best-over-epochs is the best of those evaluations.",
        "Expected wall time on the idle machine: about 10-17 min of teachers plus about 10 min for everything after "
        "them (synthesis about 4 min, 18 student runs about 6 min).",
        "ipc 50 does not fit the CPU budget (K = 38: about 5x the synthesis and student cost of ipc 10); "
        "`make bench ARGS=\"--ipc 10 50\"` runs it anyway, and the GPU script runs it at paper scale.",
    ),
)

QUICK = CPU.replace(
    name="cifar10-cpu-quick",
    title="CIFAR-10, CPU (2 cores), quick variant",
    command="make bench ARGS=--quick",
    row_command='make bench ARGS="--quick --methods {method} --ipc {ipc}"',
    dataset=cifar10(train_per_class=1000, test_per_class=200),
    teacher_epochs=3,
    student_epochs=40,
    student_epochs_dynamic=8,
    eval_every=10,
    synthesis_iterations=200,
    speed_iterations=5,
    notes=(
        "The whole protocol at a smaller size, to check it end to end in minutes: teachers as in `cifar10-cpu` but "
        "3 epochs on the first 1,000 training images per class (10,000); test accuracy on the first 200 test images "
        "per class (2,000).",
        "Synthesis 200 iterations (official: 1000); students 40 epochs (dynamic 8), tested every 10 epochs.",
        "Far from converged: use `make bench` for the numbers.",
    ),
)

PROFILES = {"cpu": CPU, "quick": QUICK}
