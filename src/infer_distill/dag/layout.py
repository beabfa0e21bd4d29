"""Where each artifact lives under one run root (the CLI's --out; the Kubeflow DAG passes URIs
explicitly).
"""
from __future__ import annotations

from infer_distill.config.schema import Config


class Layout:
    def __init__(self, root: str):
        self.root = root.rstrip("/")

    def folder(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def data(self) -> str:
        return self.folder("data")

    def teacher(self, arch: str) -> str:
        return self.folder("teachers", arch)

    def teachers(self, cfg: Config) -> list[str]:
        return [self.teacher(a) for a in cfg.teachers.archs]

    @property
    def subsets(self) -> str:
        return self.folder("subsets")

    @property
    def ufc_shards(self) -> str:
        """The folder every UFC shard artifact lives in."""
        return self.folder("ufc")

    def ufc(self, subset_ids: list[int]) -> str:
        return f"{self.ufc_shards}/subsets-{min(subset_ids):04d}-{max(subset_ids):04d}"

    @property
    def distilled(self) -> str:
        return self.folder("distilled")

    def student(self, arch: str, seed: int, label_mode: str) -> str:
        return self.folder("students", f"{arch}-{label_mode}-seed{seed}")

    def students(self, cfg: Config) -> list[str]:
        return [self.student(r["arch"], r["seed"], r["label_mode"]) for r in cfg.student_runs()]

    def baseline(self, arch: str, seed: int, baseline: str) -> str:
        return self.folder("baselines", f"{baseline}-{arch}-seed{seed}")

    def baselines(self, cfg: Config) -> list[str]:
        return [self.baseline(r["arch"], r["seed"], r["baseline"]) for r in cfg.baseline_runs()]

    def method_set(self, method: str) -> str:
        return self.folder("methods", method)

    def method_score(self, method: str, score: str, protocol: str, arch: str, seed: int) -> str:
        return self.folder("method-scores", f"{method}-{score}-{protocol}-{arch}-seed{seed}")

    def full_data(self, arch: str) -> str:
        return self.folder("full-data", arch)

    @property
    def report(self) -> str:
        return self.folder("report")
