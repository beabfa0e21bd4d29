"""One KFP component per step of infer_distill.dag.PLAN, and one per gathered fan-out output. Generated: python -m infer_distill.engines.kfp.generate; do not edit."""
# flake8: noqa: E501

from typing import List

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def prepare_data(config: Input[Artifact], data: Output[Dataset], metrics: Output[Metrics]):
    """Materialise the train/test split once (data.splits), so later stages never touch the source."""
    from infer_distill.engines.kfp.run import run_step

    run_step("prepare-data", config.path, {}, {}, {}, data.path, metrics)


def train_teacher(config: Input[Artifact], arch: str, data: Input[Dataset], teacher: Output[Model], metrics: Output[Metrics]):
    """Train one teacher architecture on the real training set (or import given weights); record its test accuracy."""
    from infer_distill.engines.kfp.run import run_step

    run_step("train-teacher", config.path, {"arch": arch}, {"data": data.path}, {}, teacher.path, metrics)


def select_subsets(config: Input[Artifact], data: Input[Dataset], subsets: Output[Artifact], metrics: Output[Metrics]) -> list:
    """K disjoint seeded subsets, each one real training image per class: indices [K, C]."""
    from infer_distill.engines.kfp.run import run_step

    return run_step("select-subsets", config.path, {}, {"data": data.path}, {}, subsets.path, metrics)


def synthesize_ufc(config: Input[Artifact], subset_ids: str, data: Input[Dataset], subsets: Input[Artifact], teacher_set: Input[Model], ufc: Output[Artifact], metrics: Output[Metrics]):
    """Optimise the UFCs of the given subsets against every teacher, grouped into one batch per teacher."""
    from infer_distill.engines.kfp.run import run_step

    run_step("synthesize-ufc", config.path, {"subset_ids": subset_ids}, {"data": data.path, "subsets": subsets.path}, {"teachers": teacher_set.path}, ufc.path, metrics)


def soft_label(config: Input[Artifact], data: Input[Dataset], subsets: Input[Artifact], teacher_set: Input[Model], ufc: Input[List[Artifact]], distilled: Output[Dataset], metrics: Output[Metrics]):
    """Collect every UFC shard; static labels = the teachers' mean logits on every (un-augmented) instance."""
    from infer_distill.engines.kfp.run import run_step

    run_step("soft-label", config.path, {}, {"data": data.path, "subsets": subsets.path, "ufc": [a.path for a in ufc]}, {"teachers": teacher_set.path}, distilled.path, metrics)


def evaluate_student(config: Input[Artifact], arch: str, seed: int, label_mode: str, data: Input[Dataset], distilled: Input[Dataset], teacher_set: Input[Model], student: Output[Model], metrics: Output[Metrics]):
    """Train a fresh student on the distilled set (MixUp + KL at temperature T) and test it on the real test set."""
    from infer_distill.engines.kfp.run import run_step

    run_step("evaluate-student", config.path, {"arch": arch, "seed": seed, "label_mode": label_mode}, {"data": data.path, "distilled": distilled.path}, {"teachers": teacher_set.path}, student.path, metrics)


def evaluate_baseline(config: Input[Artifact], arch: str, seed: int, baseline: str, data: Input[Dataset], subsets: Input[Artifact], teacher_set: Input[Model], baseline_model: Output[Model], metrics: Output[Metrics]):
    """Train the same student on ipc random real images per class, with the same ensemble labels and training as INFER's."""
    from infer_distill.engines.kfp.run import run_step

    run_step("evaluate-baseline", config.path, {"arch": arch, "seed": seed, "baseline": baseline}, {"data": data.path, "subsets": subsets.path}, {"teachers": teacher_set.path}, baseline_model.path, metrics)


def distill_method(config: Input[Artifact], method: str, data: Input[Dataset], teacher_set: Input[Model], method_set: Output[Dataset], metrics: Output[Metrics]):
    """A peer's distilled set at INFER's stored bytes: its images as uint8, labelled by the same teachers as INFER's."""
    from infer_distill.engines.kfp.run import run_step

    run_step("distill-method", config.path, {"method": method}, {"data": data.path}, {"teachers": teacher_set.path}, method_set.path, metrics)


def evaluate_method(config: Input[Artifact], method: str, score: str, protocol: str, arch: str, seed: int, data: Input[Dataset], method_score: Output[Artifact], metrics: Output[Metrics], distilled: Input[Dataset] = None, method_sets: Input[Dataset] = None):
    """Train the student of evaluate-student on a method's set and test it: the soft-label score (MixUp + KL on the"""
    from infer_distill.engines.kfp.run import run_step

    run_step("evaluate-method", config.path, {"method": method, "score": score, "protocol": protocol, "arch": arch, "seed": seed}, {"data": data.path, "distilled": distilled.path if distilled is not None else None}, {"methods": method_sets.path if method_sets is not None else None}, method_score.path, metrics)


def evaluate_full_data(config: Input[Artifact], arch: str, data: Input[Dataset], full_data: Output[Artifact], metrics: Output[Metrics]):
    """The hard-label reference of HLR: the student trained with cross-entropy on the whole real training set,"""
    from infer_distill.engines.kfp.run import run_step

    run_step("evaluate-full-data", config.path, {"arch": arch}, {"data": data.path}, {}, full_data.path, metrics)


def report(config: Input[Artifact], data: Input[Dataset], teacher_set: Input[Model], report: Output[Artifact], summary: Output[Markdown], page: Output[HTML], metrics: Output[Metrics], ufc: Input[List[Artifact]] = None, distilled: Input[Dataset] = None, students: Input[List[Model]] = None, baselines: Input[List[Model]] = None, method_scores: Input[List[Artifact]] = None, full_data: Input[List[Artifact]] = None, method_sets: Input[Dataset] = None):
    """report.json, report.md and plots from every upstream manifest (timings summed per stage); without INFER's"""
    from infer_distill.engines.kfp.run import run_step

    run_step("report", config.path, {}, {"data": data.path, "ufc": [a.path for a in ufc or []], "distilled": distilled.path if distilled is not None else None, "students": [a.path for a in students or []], "baselines": [a.path for a in baselines or []], "method_scores": [a.path for a in method_scores or []], "full_data": [a.path for a in full_data or []]}, {"teachers": teacher_set.path, "methods": method_sets.path if method_sets is not None else None}, report.path, metrics, {"summary": summary.path, "page": page.path})


def gather_teachers(config: Input[Artifact], teachers: Input[List[Model]], teacher_set: Output[Model]):
    """Fan-in: every train-teacher artifact in one, at <teacher_set>/teachers/<arch> (a run root's layout)."""
    from infer_distill.engines.kfp.run import gather

    gather("teachers", config.path, [a.path for a in teachers], teacher_set.path)


def gather_methods(config: Input[Artifact], methods: Input[List[Dataset]], method_sets: Output[Dataset]):
    """Fan-in: every distill-method artifact in one, at <method_sets>/methods/<method> (a run root's layout)."""
    from infer_distill.engines.kfp.run import gather

    gather("methods", config.path, [a.path for a in methods], method_sets.path)


STEP_FUNCTIONS = (prepare_data, train_teacher, select_subsets, synthesize_ufc, soft_label, evaluate_student, evaluate_baseline, distill_method, evaluate_method, evaluate_full_data, report,)
GATHER_FUNCTIONS = (gather_teachers, gather_methods,)
