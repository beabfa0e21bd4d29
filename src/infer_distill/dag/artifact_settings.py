"""Which settings each artifact depends on (cumulative over its inputs): one function per
artifact kind, named by its plan step.
"""
from __future__ import annotations

import hashlib
import json

from infer_distill.config.schema import Config
from infer_distill.models import architectures

# ----------------------------------------------------------------------------------------
# Which settings each stage depends on (cumulative over its inputs)
# ----------------------------------------------------------------------------------------

# Placement: where and how the work is spread, never what it computes. None of these is part of
# any artifact's settings, so changing one reuses finished work (`device` and the fast-path keys
# `precision`, `channels_last`, `cudnn_benchmark`, `compile` and `tracking`, which only reports
# what was computed, are not either: no settings function reads them; a subset's UFCs do not depend on which subsets share its shard,
# nor on how a shard's UFC groups are chunked through a teacher, each chunk holding whole groups: the same UFCs up to
# floating-point rounding, docs/method.md section 4).
PLACEMENT = {"synthesis": {"subsets_per_shard", "max_images_per_forward"}}
# How the methods are scored: which runs exist, not how any one of them trains
METHOD_SCORING = {"scores", "protocols", "full_data_reference", "full_data_epochs"}


# One function per artifact kind: `dag.Step.settings` names it, so a step and its settings are
# declared together; `dag.settings(cfg, stage, **item)` is how every caller asks.


def data_settings(cfg: Config) -> dict:
    return {"dataset": cfg.dataset.model_dump(mode="json")}


def _teacher(cfg: Config, arch: str) -> dict:
    norm = cfg.teachers.normalization.get(arch)
    # The stem imported weights load into is a different network; a teacher trained here has one stem only, and
    # min_accuracy_over_chance checks the result without changing it.
    stem = "small_image" if cfg.teachers.small_image_stem(arch) else "stock"
    imported_stem = arch in cfg.teachers.pretrained and architectures.has_small_stem(arch)
    return {"arch": arch, **cfg.teachers.model_dump(mode="json", exclude={"archs", "pretrained", "normalization",
                                                                          "pretrained_stem", "min_accuracy_over_chance"}),
            "pretrained": cfg.teachers.pretrained.get(arch), **({"normalization": norm.model_dump(mode="json")} if norm else {}),
            **({"stem": stem} if imported_stem else {})}


def teacher_settings(cfg: Config, arch: str) -> dict:
    return {**data_settings(cfg), "teacher": _teacher(cfg, arch), "seed": cfg.seed}


def subset_settings(cfg: Config) -> dict:
    return {**data_settings(cfg), "budget": cfg.budget.model_dump(mode="json"), "num_teachers": len(cfg.teachers.archs),
            "classes_per_ufc": cfg.synthesis.classes_per_ufc, "seed": cfg.seed}


def _teachers(cfg: Config) -> list[dict]:
    return [_teacher(cfg, a) for a in cfg.teachers.archs]


def _synthesis(cfg: Config) -> dict:
    # ufc_dtype is how soft-label stores the UFCs: it does not change the optimised UFCs
    return {**subset_settings(cfg), "teachers": _teachers(cfg),
            "synthesis": cfg.synthesis.model_dump(mode="json", exclude=PLACEMENT["synthesis"] | {"ufc_dtype"})}


def ufc_settings(cfg: Config, subset_ids: list[int]) -> dict:
    return {**_synthesis(cfg), "subset_ids": list(subset_ids)}


def _label_recipe(cfg: Config) -> dict:
    return {"temperature": cfg.labels.temperature, "dtype": cfg.labels.dtype}


def distilled_settings(cfg: Config) -> dict:
    return {**_synthesis(cfg), "ufc_dtype": cfg.synthesis.ufc_dtype, "labels": _label_recipe(cfg)}


def _student_recipe(cfg: Config) -> dict:
    return cfg.students.model_dump(mode="json", exclude={"archs", "seeds", "baselines", *METHOD_SCORING})


def student_settings(cfg: Config, arch: str, seed: int, label_mode: str) -> dict:
    return {**distilled_settings(cfg), "student": {"arch": arch, "seed": seed, "label_mode": label_mode, **_student_recipe(cfg)}}


def baseline_settings(cfg: Config, arch: str, seed: int, baseline: str) -> dict:
    # the budget (ipc, and INFER's instance count for equal steps) comes with subset_settings
    return {**subset_settings(cfg), "teachers": _teachers(cfg), "labels": _label_recipe(cfg),
            "student": {"arch": arch, "seed": seed, "baseline": baseline, **_student_recipe(cfg)}}


def method_set_settings(cfg: Config, method: str) -> dict:
    # a peer's set: INFER's budget (subset_settings), its teachers' labels, and the method's own settings
    own = {"rded": cfg.rded, "sre2l": cfg.sre2l}.get(method)
    return {**subset_settings(cfg), "teachers": _teachers(cfg), "labels": _label_recipe(cfg), "method": method,
            **({method: own.model_dump(mode="json")} if own else {})}


def method_score_settings(cfg: Config, method: str, score: str, protocol: str, arch: str, seed: int) -> dict:
    made = distilled_settings(cfg) if method == "infer" else method_set_settings(cfg, method)
    return {**made, "student": {"method": method, "score": score, "protocol": protocol, "arch": arch, "seed": seed,
                                **_student_recipe(cfg)}}


def full_data_settings(cfg: Config, arch: str) -> dict:
    return {**data_settings(cfg), "student": {"arch": arch, "seed": cfg.seed, "labels": "hard", **_student_recipe(cfg),
                                              "epochs": cfg.students.full_data_epochs or cfg.students.epochs}}


def report_settings(cfg: Config) -> dict:
    return {**distilled_settings(cfg), "students": cfg.students.model_dump(mode="json"), "label_modes": cfg.labels.modes,
            **({"methods": cfg.methods} if cfg.methods != ["infer"] else {})}


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def diff_settings(expected: dict, found: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two settings dicts (dag.artifact_settings) (first few)."""
    out: list[str] = []
    for key in sorted(set(expected) | set(found)):
        path = f"{prefix}{key}"
        a, b = expected.get(key, "<absent>"), found.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_settings(a, b, path + ".")
        elif a != b:
            out.append(f"{path}: artifact has {b!r}, config has {a!r}")
    return out
