"""The DAG, written once: steps, fan-outs, the run root's layout, each artifact's settings and metrics.

Torch-free and execution-free: nothing here imports a stage, an engine, storage or torch
(tests/test_layout.py checks it). `from infer_distill import dag` gives the plan's vocabulary:
`dag.PLAN`, `dag.STEPS`, `dag.Layout`, `dag.settings(cfg, stage, **item)`, ...
"""
from infer_distill.dag.layout import Layout
from infer_distill.dag.steps import (
           BASELINES,
           EXIT_REFUSED,
           EXIT_TRANSIENT,
           FANOUTS,
           FULL_DATA,
           METHOD_RUNS,
           METHOD_SETS,
           PLAN,
           PRODUCER,
           RETRY,
           SHARDS,
           STAGES,
           STEPS,
           STUDENTS,
           TEACHERS,
           FanOut,
           RetryPolicy,
           Step,
           absent,
           add_step,
           artifact_folders,
           check_omitted,
           cli_args,
           cli_value,
           depends,
           fanout_items,
           fed_fanouts,
           final_step,
           location,
           omitted,
           optional_input,
           parallel_width,
           remove_step,
           runs_file,
           settings,
           step_inputs,
           upstream,
)

__all__ = ["BASELINES", "EXIT_REFUSED", "EXIT_TRANSIENT", "FANOUTS", "FULL_DATA", "METHOD_RUNS", "METHOD_SETS", "PLAN",
           "PRODUCER", "RETRY", "SHARDS", "STAGES", "STEPS", "STUDENTS", "TEACHERS", "FanOut", "Layout", "RetryPolicy",
           "Step", "absent", "add_step", "artifact_folders", "check_omitted", "cli_args", "cli_value", "depends", "fanout_items", "fed_fanouts",
           "final_step", "location", "omitted", "optional_input", "parallel_width", "remove_step", "runs_file", "settings", "step_inputs", "upstream"]
