"""One function per plan step, named after it: read verified inputs, compute, write one artifact.

    stages.artifacts   the protocol every stage follows (begin, read inputs, write, is_current)
    stages.inputs      what stages read: data splits, models, teachers, imported weights, the device
    stages.preflight   checks that run before any expensive work
    stages.infer       prepare-data, train-teacher, select-subsets, synthesize-ufc, soft-label,
                       evaluate-student, evaluate-baseline
    stages.peers       distill-method, evaluate-method, evaluate-full-data
    stages.report      report

The engines look each step's function up here by name (`dag.Step.module`, engines.runner.stage_function).
"""
from infer_distill.stages.infer import (
                                        evaluate_baseline,
                                        evaluate_student,
                                        prepare_data,
                                        select_subsets,
                                        soft_label,
                                        synthesize_ufc,
                                        train_teacher,
)
from infer_distill.stages.peers import distill_method, evaluate_full_data, evaluate_method
from infer_distill.stages.report import report

__all__ = ["distill_method", "evaluate_baseline", "evaluate_full_data", "evaluate_method", "evaluate_student", "prepare_data",
           "report", "select_subsets", "soft_label", "synthesize_ufc", "train_teacher"]
