"""One KFP component per step of infer_distill.plan.PLAN. Generated: python -m infer_distill.kfp.generate; do not edit."""
# flake8: noqa: E501

from typing import List

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def prepare_data(config: Input[Artifact], data: Output[Dataset], metrics: Output[Metrics]):
    """Materialise the train/test split once, as uint8 tensors, so later stages never touch the source."""
    from infer_distill.kfp.run import run_step

    run_step("prepare-data", config.path, {}, {}, {}, data.path, metrics)


def train_teacher(config: Input[Artifact], arch: str, data: Input[Dataset], teacher: Output[Model], metrics: Output[Metrics]):
    """Train one teacher architecture on the real training set (or import given weights); record its test accuracy."""
    from infer_distill.kfp.run import run_step

    run_step("train-teacher", config.path, {"arch": arch}, {"data": data.path}, {}, teacher.path, metrics)


def select_subsets(config: Input[Artifact], data: Input[Dataset], subsets: Output[Artifact], metrics: Output[Metrics]) -> list:
    """K disjoint seeded subsets, each one real training image per class: indices [K, C]."""
    from infer_distill.kfp.run import run_step

    return run_step("select-subsets", config.path, {}, {"data": data.path}, {}, subsets.path, metrics)


def synthesize_ufc(config: Input[Artifact], subset_ids: str, data: Input[Dataset], subsets: Input[Artifact], teacher_set: Input[Model], ufc: Output[Artifact], metrics: Output[Metrics]):
    """Optimise the UFCs of the given subsets against every teacher, grouped into one batch per teacher."""
    from infer_distill.kfp.run import run_step

    run_step("synthesize-ufc", config.path, {"subset_ids": subset_ids}, {"data": data.path, "subsets": subsets.path}, {"teachers": teacher_set.path}, ufc.path, metrics)


def soft_label(config: Input[Artifact], data: Input[Dataset], subsets: Input[Artifact], teacher_set: Input[Model], ufc: Input[List[Artifact]], distilled: Output[Dataset], metrics: Output[Metrics]):
    """Collect every UFC shard; static labels = the teachers' mean logits on every (un-augmented) instance."""
    from infer_distill.kfp.run import run_step

    run_step("soft-label", config.path, {}, {"data": data.path, "subsets": subsets.path, "ufc": [a.path for a in ufc]}, {"teachers": teacher_set.path}, distilled.path, metrics)


def evaluate_student(config: Input[Artifact], arch: str, seed: int, label_mode: str, data: Input[Dataset], distilled: Input[Dataset], teacher_set: Input[Model], student: Output[Model], metrics: Output[Metrics]):
    """Train a fresh student on the distilled set (MixUp + KL at temperature T) and test it on the real test set."""
    from infer_distill.kfp.run import run_step

    run_step("evaluate-student", config.path, {"arch": arch, "seed": seed, "label_mode": label_mode}, {"data": data.path, "distilled": distilled.path}, {"teachers": teacher_set.path}, student.path, metrics)


def evaluate_baseline(config: Input[Artifact], arch: str, seed: int, baseline: str, data: Input[Dataset], subsets: Input[Artifact], teacher_set: Input[Model], student: Output[Model], metrics: Output[Metrics]):
    """Train the same student on ipc random real images per class, with the same ensemble labels and training as INFER's."""
    from infer_distill.kfp.run import run_step

    run_step("evaluate-baseline", config.path, {"arch": arch, "seed": seed, "baseline": baseline}, {"data": data.path, "subsets": subsets.path}, {"teachers": teacher_set.path}, student.path, metrics)


def report(config: Input[Artifact], data: Input[Dataset], teacher_set: Input[Model], ufc: Input[List[Artifact]], distilled: Input[Dataset], students: Input[List[Model]], report: Output[Artifact], summary: Output[Markdown], page: Output[HTML], metrics: Output[Metrics], baselines: Input[List[Model]] = None):
    """report.json, report.md and plots from every upstream manifest (timings summed per stage)."""
    from infer_distill.kfp.run import run_step

    run_step("report", config.path, {}, {"data": data.path, "ufc": [a.path for a in ufc], "distilled": distilled.path, "students": [a.path for a in students], "baselines": [a.path for a in baselines or []]}, {"teachers": teacher_set.path}, report.path, metrics, {"summary": summary.path, "page": page.path})


STEP_FUNCTIONS = (prepare_data, train_teacher, select_subsets, synthesize_ufc, soft_label, evaluate_student, evaluate_baseline, report,)
