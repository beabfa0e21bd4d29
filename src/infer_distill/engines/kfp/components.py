"""KFP v2 components: one per step of `infer_distill.dag.PLAN` and one per gathered output (generated
from the plan into steps.py: each step a call of `run.run_step`, each gather one of `run.gather`), plus
two that only the Kubeflow DAG needs:

- resolve-config: the run's config from the pipeline parameters (one per config section), validated
  once before anything runs, passed on as a small JSON artifact (kfp.local resolves upstream
  parameter outputs inside ParallelFor iterations to the loop item, so it cannot be a parameter);
- fanout-items: one fan-out's items (`dag.fanout_items`), the list a ParallelFor iterates.

The gathers: KFP cannot pass a collected list into another ParallelFor, so a fan-out's artifacts
that a later fan-out reads are gathered into one artifact laid out as a run root (gather-teachers:
teachers/<arch>, read by synthesis, the students and the methods; gather-methods: methods/<method>,
the peers' sets, read by evaluate-method and the report), each artifact identified by its manifest.

Artifacts are KFP artifacts whose `.path` is a local directory (KFP moves them to and from the
pipeline root, e.g. S3/MinIO); each stage writes its usual self-describing artifact there. Each
component's arguments follow the plan: the config, the fan-out item's keys, then the step's inputs
(a gathered output as its one artifact, e.g. the teachers as `teacher_set`), and its artifact is
the output named after `Step.location` (evaluate-baseline's is `student`: its item already has a
key named baseline).

Lightweight components are serialised by source, so every import lives inside its function.
`components(image)` builds them all for the project image every step runs in.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from infer_distill.engines.kfp.steps import GATHER_FUNCTIONS, STEP_FUNCTIONS

# ----------------------------------------------------------------------------------------
# Config and fan-outs
# ----------------------------------------------------------------------------------------


def resolve_config(dataset: dict, budget: dict, teachers: dict, synthesis: dict, labels: dict, students: dict, device: str,
                   precision: str, channels_last: str, cudnn_benchmark: bool, compile: bool,
                   seed: int, tracking: dict, methods: list, rded: dict, sre2l: dict, omitted_steps: list, config: Output[Artifact]):
    """Validate the config sections given as pipeline parameters (and that the DAG has the steps they need); write the run's config."""
    from infer_distill import dag
    from infer_distill.config.loading import validate_config

    sections = {"dataset": dataset, "budget": budget, "teachers": teachers, "synthesis": synthesis, "labels": labels,
                "students": students, "device": device, "precision": precision, "channels_last": channels_last,
                "cudnn_benchmark": cudnn_benchmark, "compile": compile, "seed": seed, "tracking": tracking, "methods": methods,
                "rded": rded, "sre2l": sre2l}
    cfg = validate_config(sections, source="pipeline parameters")
    dag.check_omitted(cfg, omitted_steps)
    with open(config.path, "w") as f:
        f.write(cfg.model_dump_json(indent=2))


def fanout_items(config: Input[Artifact], fanout: str) -> list:
    """The items of one fan-out the config decides (teachers, student runs), in run order."""
    from infer_distill import dag
    from infer_distill.config.loading import load_config

    return dag.fanout_items(load_config(config.path))[fanout]


FUNCTIONS = {f.__name__.replace("_", "-"): f for f in (resolve_config, fanout_items, *STEP_FUNCTIONS, *GATHER_FUNCTIONS)}


def components(image: str) -> dict:
    """Every component, by name, running in `image` (which holds infer-distill and kfp)."""
    return {name: dsl.component(f, base_image=image, install_kfp_package=False) for name, f in FUNCTIONS.items()}
