"""KFP v2 components: one per step of `infer_distill.plan.PLAN` (generated from the plan into steps.py,
each a call of `run.run_step`), plus three that only the Kubeflow DAG needs:

- resolve-config: the run's config from the pipeline parameters (one per config section), validated
  once before anything runs, passed on as a small JSON artifact (kfp.local resolves upstream
  parameter outputs inside ParallelFor iterations to the loop item, so it cannot be a parameter);
- fanout-items: one fan-out's items (`plan.fanout_items`), the list a ParallelFor iterates;
- gather-teachers: every teacher in one artifact, laid out as a run root's teachers/<arch>: KFP
  cannot pass a collected list into another ParallelFor, and synthesis and the students fan out.

Artifacts are KFP artifacts whose `.path` is a local directory (KFP moves them to and from the
pipeline root, e.g. S3/MinIO); each stage writes its usual self-describing artifact there. Each
component's arguments follow the plan: the config, the fan-out item's keys, then the step's inputs
(the teachers as `teacher_set`), and its artifact is the output named after `Step.location`
(evaluate-baseline's is `student`: its item already has a key named baseline).

Lightweight components are serialised by source, so every import lives inside its function.
`components(image)` builds them all for the project image every step runs in.
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from .steps import STEP_FUNCTIONS

# ----------------------------------------------------------------------------------------
# Config and fan-outs
# ----------------------------------------------------------------------------------------


def resolve_config(dataset: dict, budget: dict, teachers: dict, synthesis: dict, labels: dict, students: dict, device: str,
                   precision: str, channels_last: str, cudnn_benchmark: bool, compile: bool,
                   seed: int, tracking: dict, methods: list, rded: dict, sre2l: dict, omitted_steps: list, config: Output[Artifact]):
    """Validate the config sections given as pipeline parameters (and that the DAG has the steps they need); write the run's config."""
    from infer_distill import plan
    from infer_distill.config import validate_config

    sections = {"dataset": dataset, "budget": budget, "teachers": teachers, "synthesis": synthesis, "labels": labels,
                "students": students, "device": device, "precision": precision, "channels_last": channels_last,
                "cudnn_benchmark": cudnn_benchmark, "compile": compile, "seed": seed, "tracking": tracking, "methods": methods,
                "rded": rded, "sre2l": sre2l}
    cfg = validate_config(sections, source="pipeline parameters")
    plan.check_omitted(cfg, omitted_steps)
    with open(config.path, "w") as f:
        f.write(cfg.model_dump_json(indent=2))


def fanout_items(config: Input[Artifact], fanout: str) -> list:
    """The items of one fan-out the config decides (teachers, student runs), in run order."""
    from infer_distill import plan
    from infer_distill.config import load_config

    return plan.fanout_items(load_config(config.path))[fanout]


def gather_teachers(config: Input[Artifact], teachers: Input[List[Model]], teacher_set: Output[Model]):
    """Fan-in: one artifact holding every teacher at <teacher_set>/teachers/<arch> (a run root's layout)."""
    import shutil

    from infer_distill.config import load_config
    from infer_distill.plan import Layout
    from infer_distill.store import open_artifact

    cfg = load_config(config.path)
    by_arch = {open_artifact(t.path).read_manifest()["metrics"]["arch"]: t.path for t in teachers}
    missing = sorted(set(cfg.teachers.archs) - set(by_arch))
    if missing:
        raise RuntimeError(f"teachers {missing} are missing from the collected teacher artifacts")
    for arch in cfg.teachers.archs:
        shutil.copytree(by_arch[arch], Layout(teacher_set.path).teacher(arch))


FUNCTIONS = {f.__name__.replace("_", "-"): f for f in (resolve_config, fanout_items, gather_teachers, *STEP_FUNCTIONS)}


def components(image: str) -> dict:
    """Every component, by name, running in `image` (which holds infer-distill and kfp)."""
    return {name: dsl.component(f, base_image=image, install_kfp_package=False) for name, f in FUNCTIONS.items()}
