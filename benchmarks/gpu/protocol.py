"""The benchmark's protocol: the paper configs of configs/, the few keys the benchmark sets, and the toy size.

Each profile is the repository's configs/<profile>.yaml (the paper's setting: four teachers
ResNet-18, MobileNetV2, EfficientNet-B0, ShuffleNetV2; a ResNet-18 student; 400 epochs with
static labels and 80 with dynamic ones; three seeds) with these benchmark keys on top:

- teachers are trained from scratch here with our fast recipe (`TEACHER_RECIPE`: SGD with
  Nesterov momentum, one-cycle learning rate, batch 512, peak lr 0.2, the config's label
  smoothing); the paper's code loads teachers trained elsewhere for 200 epochs;
- both baselines (random real images with the same ensemble labels, for the same epochs and for
  the same optimiser steps), so every INFER number has a fair reference beside it;
- test accuracy every 50 epochs and after the last (the curve, and best-over-epochs, come from
  these evaluations);
- all K subsets in one synthesis call (`synthesis.subsets_per_shard: 0`): placement only, the
  UFCs are the same;
- CIFAR-10 from an ImageFolder copy on disk (`--datasets`), CIFAR-100 from torchvision.

Every difference between the config file and what ran is listed in the results under
"deviations", with the reason (`deviations`).
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infer_distill.config import Config, fingerprint, validate_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
PROFILES = ("cifar10-ipc10", "cifar10-ipc50", "cifar100-ipc10", "cifar100-ipc50")

# Ours, not the paper's: its code loads teachers trained elsewhere.
TEACHER_RECIPE = {"batch_size": 512, "lr": 0.2}
TEACHER_RECIPE_TEXT = ("SGD with Nesterov momentum {momentum}, weight decay {weight_decay}, one-cycle learning rate "
                       "(peak {lr}, 20% warm-up, linear), batch {batch_size}, label smoothing {label_smoothing}, "
                       "crop and flip; trained from scratch")
BENCHMARK_KEYS = {
    "students.baselines": ["random_soft", "random_soft_steps"],
    "students.eval_every": 50,
    "synthesis.subsets_per_shard": 0,
}
WHY = {
    "teachers.epochs": "teachers are trained here; the epochs are what the time allows (the config's value is the cap)",
    "teachers.batch_size": "our fast teacher recipe (the paper's code loads teachers trained elsewhere)",
    "teachers.lr": "our fast teacher recipe (the paper's code loads teachers trained elsewhere)",
    "students.baselines": "the benchmark reports both baselines beside INFER (same labels and recipe on random real images)",
    "students.eval_every": "test accuracy every 50 epochs and after the last keeps evaluation cheap; "
                           "best-over-epochs is the best of these evaluations",
    "synthesis.subsets_per_shard": "placement only: all K subsets in one grouped synthesis call (the same UFCs)",
    "device": "placement only: --device",
    "dataset": "CIFAR-10 is read from the ImageFolder copy under --datasets (training images JPEG quality 75, "
               "test images lossless PNG; normalisation statistics computed from the training images)",
}

# The toy size (--toy): the whole path on a CPU in seconds; its numbers mean nothing.
TOY_TEACHERS = ["convnet_d2_w32", "convnet_d3_w32", "convnet_d2_w64", "resnet_tiny"]
TOY_STUDENT = "convnet_d3_w32"
TOY_TRAIN_PER_CLASS = 60   # enough for ipc 50, and the same for every profile, so the toy profiles share their pool
TOY_TEST_PER_CLASS = 10
TOY = {
    "teachers.archs": TOY_TEACHERS, "teachers.epochs": 1, "teachers.batch_size": 64, "teachers.lr": 0.05,
    "students.archs": [TOY_STUDENT], "students.seeds": [0], "students.epochs": 2, "students.epochs_dynamic": 1,
    "students.eval_every": 1, "synthesis.iterations": 3,
}
TOY_WHY = "--toy: a test of the whole path at toy size (tiny networks, a few images per class, a few steps); its numbers mean nothing"


@dataclass
class ProfileSpec:
    """One profile: the config file as written, the benchmark's config before the time plan, and what to compare with."""

    name: str
    config_path: Path
    official: Config                 # configs/<name>.yaml as written (defaults filled in)
    raw: dict                        # the benchmark's config (benchmark keys, data, toy) as a dict, before planning
    paper: dict[str, float | None]   # the paper's best-over-epochs accuracy (%) by label mode, from the config's header
    reasons: dict[str, list[str]] = field(default_factory=dict)   # config key -> why it differs from the file
    protocol: Config | None = None   # the full protocol: the file with the benchmark's keys (no --toy, --seeds or plan)

    @property
    def ipc(self) -> int:
        return self.official.budget.ipc

    def why(self, key: str, reason: str, replace: bool = False) -> None:
        """Record why `key` differs from the config file (`replace`: this reason overrides the earlier ones)."""
        if replace:
            self.reasons[key] = []
        if reason not in self.reasons.setdefault(key, []):
            self.reasons[key].append(reason)

    def config(self, **changes: Any) -> Config:
        """The benchmark's config with `changes` ({"students.seeds": [0], ...}) applied."""
        raw = copy.deepcopy(self.raw)
        for key, value in changes.items():
            set_key(raw, key, value)
        return validate_config(raw, source=f"benchmark profile {self.name}")

    def pool_key(self) -> str:
        """Profiles with equal keys share their data and teachers (teacher epochs are set later, the same for all)."""
        cfg = self.config()
        return fingerprint({"dataset": cfg.dataset.model_dump(mode="json"), "seed": cfg.seed,
                            "teachers": cfg.teachers.model_dump(mode="json", exclude={"epochs"})})


def set_key(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = copy.deepcopy(value)


def paper_figures(text: str) -> dict[str, float | None]:
    """The paper's numbers as the config's header quotes them: 'Paper (best-over-epochs): INFER 32.0, INFER+Dyn 30.7.'"""
    m = re.search(r"Paper[^:]*:\s*INFER\s+(\d+(?:\.\d+)?),\s*INFER\+Dyn\s+(\d+(?:\.\d+)?)", text)
    return {"static": float(m.group(1)), "dynamic": float(m.group(2))} if m else {"static": None, "dynamic": None}


def default_datasets() -> Path:
    return Path(os.environ.get("INFER_DATASETS") or REPO.parent / "shared" / "datasets")


def _has_splits(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def cifar10_root(datasets: Path, cache: Path) -> Path:
    """The CIFAR-10 ImageFolder root: <datasets>/cifar10 (train/ and test/ folders, or zips of them),
    or its .tar.gz archives extracted once into `cache`."""
    folder = datasets / "cifar10"
    if _has_splits(folder) or list(folder.glob("*.zip")):
        return folder
    tars = sorted(folder.glob("*.tar.gz")) if folder.is_dir() else []
    if not tars:
        raise SystemExit(f"no CIFAR-10 under {folder}: expected train/ and test/ folders (<split>/<class>/<image>), "
                         "zips of them, or their .tar.gz archives; point --datasets at the folder holding cifar10/")
    done = cache / ".extracted"
    if not done.is_file():
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        for t in tars:
            with tarfile.open(t) as tar:
                tar.extractall(cache, filter="data")
        done.write_text("\n".join(t.name for t in tars))
    return cache


def dataset_section(dataset: str, datasets: Path, cache: Path) -> dict:
    if dataset == "cifar10":
        return {"name": "imagefolder", "root": str(cifar10_root(datasets, cache / "cifar10"))}
    folder = datasets / "cifar100"
    if _has_splits(folder) or (folder.is_dir() and list(folder.glob("*.zip"))):
        return {"name": "imagefolder", "root": str(folder)}
    return {"name": "cifar100", "root": str(folder), "download": True}


def load_profile(name: str, datasets: Path, cache: Path, device: str, toy: bool = False,
                 seeds: list[int] | None = None) -> ProfileSpec:
    if name not in PROFILES:
        raise SystemExit(f"unknown profile {name!r}; profiles: {', '.join(PROFILES)}")
    path = CONFIGS / f"{name}.yaml"
    text = path.read_text()
    file_raw = yaml.safe_load(text)
    official = validate_config(file_raw, source=str(path))
    spec = ProfileSpec(name, path, official, copy.deepcopy(file_raw), paper_figures(text))
    raw = spec.raw
    data = dataset_section(official.dataset.name, datasets, cache)
    raw["dataset"] = data
    if data["name"] != official.dataset.name:
        spec.why("dataset", WHY["dataset"])
    for key, value in {**{f"teachers.{k}": v for k, v in TEACHER_RECIPE.items()}, **BENCHMARK_KEYS, "device": device}.items():
        set_key(raw, key, value)
        spec.why(key, WHY[key])
    spec.protocol = validate_config(copy.deepcopy(raw), source=f"benchmark profile {name}")
    if toy:
        raw["dataset"].update({"train_per_class": TOY_TRAIN_PER_CLASS, "test_per_class": TOY_TEST_PER_CLASS})
        for key, value in TOY.items():
            set_key(raw, key, value)
        for key in [*TOY, "dataset.train_per_class", "dataset.test_per_class", "speed.iterations"]:
            spec.why(key, TOY_WHY, replace=True)
    if seeds is not None:
        set_key(raw, "students.seeds", list(seeds))
        spec.why("students.seeds", "--seeds", replace=True)
    spec.config()  # valid before anything runs
    return spec


def teacher_recipe(cfg: Config) -> dict:
    t = cfg.teachers
    values = {"momentum": t.momentum, "weight_decay": t.weight_decay, "lr": t.lr, "batch_size": t.batch_size,
              "label_smoothing": t.label_smoothing}
    return {"text": TEACHER_RECIPE_TEXT.format(**values), "optimizer": "SGD (Nesterov)", "schedule": "one-cycle, 20% warm-up, linear",
            **values, "epochs": t.epochs, "archs": list(t.archs)}


# ----------------------------------------------------------------------------------------
# Deviations: every key where what ran differs from the config file
# ----------------------------------------------------------------------------------------


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def deviations(spec: ProfileSpec, used: Config) -> list[dict]:
    """One entry per config key whose value used differs from configs/<profile>.yaml or from the benchmark's full
    protocol (the file with the benchmark's keys): the file's value, the protocol's, the value used, and why."""
    official = flatten(spec.official.model_dump(mode="json"))
    full = flatten((spec.protocol or spec.official).model_dump(mode="json"))
    ours = flatten(used.model_dump(mode="json"))
    out = []
    for key in sorted(set(official) | set(full) | set(ours)):
        a, p, b = official.get(key, "<absent>"), full.get(key, "<absent>"), ours.get(key, "<absent>")
        if a == b and p == b:
            continue
        reasons = spec.reasons.get(key) or spec.reasons.get(key.split(".")[0]) or []
        out.append({"profile": spec.name, "key": key, "config": a, "protocol": p, "used": b,
                    "why": "; ".join(reasons) or "benchmark setting"})
    return out


def full_protocol(devs: list[dict]) -> bool:
    """Whether what ran is the benchmark's full protocol: every deviation from the file is one of the benchmark's own keys."""
    return all(d["used"] == d["protocol"] for d in devs)
