"""KFP v2 components: one per step of `infer_distill.plan.PLAN` (a thin call into `infer_distill.stages`),
plus three that only the Kubeflow DAG needs:

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
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

# ----------------------------------------------------------------------------------------
# Config and fan-outs
# ----------------------------------------------------------------------------------------


def resolve_config(dataset: dict, budget: dict, teachers: dict, synthesis: dict, labels: dict, students: dict, device: str,
                   precision: str, channels_last: str, cudnn_benchmark: bool, compile: bool,
                   seed: int, methods: list, rded: dict, sre2l: dict, omitted_fanouts: list, config: Output[Artifact]):
    """Validate the config sections given as pipeline parameters (and that the DAG has the steps they need); write the run's config."""
    from infer_distill import plan
    from infer_distill.config import validate_config

    sections = {"dataset": dataset, "budget": budget, "teachers": teachers, "synthesis": synthesis, "labels": labels,
                "students": students, "device": device, "precision": precision, "channels_last": channels_last,
                "cudnn_benchmark": cudnn_benchmark, "compile": compile, "seed": seed, "methods": methods, "rded": rded,
                "sre2l": sre2l}
    cfg = validate_config(sections, source="pipeline parameters")
    plan.check_omitted(cfg, omitted_fanouts)
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
    from infer_distill.stages import Layout
    from infer_distill.store import open_artifact

    cfg = load_config(config.path)
    by_arch = {open_artifact(t.path).read_manifest()["metrics"]["arch"]: t.path for t in teachers}
    missing = sorted(set(cfg.teachers.archs) - set(by_arch))
    if missing:
        raise RuntimeError(f"teachers {missing} are missing from the collected teacher artifacts")
    for arch in cfg.teachers.archs:
        shutil.copytree(by_arch[arch], Layout(teacher_set.path).teacher(arch))


# ----------------------------------------------------------------------------------------
# The steps of the plan
# ----------------------------------------------------------------------------------------


def prepare_data(config: Input[Artifact], data: Output[Dataset]):
    """Materialise the train/test split as uint8 tensors."""
    from infer_distill import stages
    from infer_distill.config import load_config

    stages.prepare_data(load_config(config.path), data.path)


def train_teacher(config: Input[Artifact], arch: str, data: Input[Dataset], teacher: Output[Model], metrics: Output[Metrics]):
    """Train (or import) one teacher; its test accuracy goes to the KFP metrics."""
    from infer_distill import stages
    from infer_distill.config import load_config

    manifest = stages.train_teacher(load_config(config.path), arch, data.path, teacher.path)
    metrics.log_metric(f"teacher_{arch}_test_acc", manifest["metrics"]["test_acc"])


def select_subsets(config: Input[Artifact], data: Input[Dataset], subsets: Output[Artifact]) -> list:
    """K disjoint subsets; returns the shard items (`plan.SHARDS`) synthesis fans out over."""
    from infer_distill import plan, stages
    from infer_distill.config import load_config

    cfg = load_config(config.path)
    manifest = stages.select_subsets(cfg, data.path, subsets.path)
    return plan.fanout_items(cfg, manifest["metrics"]["num_classes"])[plan.SHARDS.name]


def synthesize_ufc(config: Input[Artifact], subset_ids: str, data: Input[Dataset], subsets: Input[Artifact],
                   teacher_set: Input[Model], ufc: Output[Artifact]):
    """Optimise the UFCs of one shard of subsets against every teacher (one GPU pod)."""
    from infer_distill import stages
    from infer_distill.config import load_config
    from infer_distill.stages import Layout

    cfg = load_config(config.path)
    ids = [int(i) for i in subset_ids.split(",")]
    stages.synthesize_ufc(cfg, ids, data.path, subsets.path, Layout(teacher_set.path).teachers(cfg), ufc.path)


def soft_label(config: Input[Artifact], data: Input[Dataset], subsets: Input[Artifact], teacher_set: Input[Model],
               ufc: Input[List[Artifact]], distilled: Output[Dataset]):
    """Fan-in of every UFC shard: static ensemble labels and the distilled-set manifest."""
    from infer_distill import stages
    from infer_distill.config import load_config
    from infer_distill.stages import Layout

    cfg = load_config(config.path)
    stages.soft_label(cfg, data.path, subsets.path, Layout(teacher_set.path).teachers(cfg), [u.path for u in ufc], distilled.path)


def evaluate_student(config: Input[Artifact], arch: str, seed: int, label_mode: str, data: Input[Dataset], distilled: Input[Dataset],
                     teacher_set: Input[Model], student: Output[Model], metrics: Output[Metrics]):
    """Train and test one student (architecture x seed x label mode)."""
    from infer_distill import stages
    from infer_distill.config import load_config
    from infer_distill.stages import Layout

    cfg = load_config(config.path)
    manifest = stages.evaluate_student(cfg, arch, seed, label_mode, data.path, distilled.path,
                                       Layout(teacher_set.path).teachers(cfg), student.path)
    for key in ("final_acc", "best_acc"):
        metrics.log_metric(f"{arch}_{label_mode}_seed{seed}_{key}", manifest["metrics"][key])


def evaluate_baseline(config: Input[Artifact], arch: str, seed: int, baseline: str, data: Input[Dataset], subsets: Input[Artifact],
                      teacher_set: Input[Model], student: Output[Model], metrics: Output[Metrics]):
    """Train and test the same student on random real images with the same labels and training (one baseline run)."""
    from infer_distill import stages
    from infer_distill.config import load_config
    from infer_distill.stages import Layout

    cfg = load_config(config.path)
    manifest = stages.evaluate_baseline(cfg, arch, seed, baseline, data.path, subsets.path, Layout(teacher_set.path).teachers(cfg),
                                        student.path)
    for key in ("final_acc", "best_acc"):
        metrics.log_metric(f"{baseline}_{arch}_seed{seed}_{key}", manifest["metrics"][key])


def report(config: Input[Artifact], data: Input[Dataset], teacher_set: Input[Model], ufc: Input[List[Artifact]],
           distilled: Input[Dataset], students: Input[List[Model]], report: Output[Artifact], summary: Output[Markdown],
           page: Output[HTML], metrics: Output[Metrics], baselines: Input[List[Model]] = None):
    """report.json/md/html and plots; the Kubeflow UI shows the Markdown, HTML and Metrics outputs."""
    import shutil

    from infer_distill import stages
    from infer_distill.config import load_config
    from infer_distill.stages import Layout

    cfg = load_config(config.path)
    manifest = stages.report(cfg, data.path, Layout(teacher_set.path).teachers(cfg), [u.path for u in ufc], distilled.path,
                             [s.path for s in students], report.path, [b.path for b in baselines or []])
    shutil.copyfile(f"{report.path}/report.md", summary.path)
    shutil.copyfile(f"{report.path}/report.html", page.path)
    for row in manifest["metrics"]["report"]["student_summary"]:
        metrics.log_metric(f"{row['arch']}_{row['label_mode']}_final_acc_mean", row["final_acc_mean"])
    for row in manifest["metrics"]["report"]["teachers"]:
        metrics.log_metric(f"teacher_{row['arch']}_test_acc", row["test_acc"])


FUNCTIONS = {f.__name__.replace("_", "-"): f for f in (
    resolve_config, fanout_items, gather_teachers,
    prepare_data, train_teacher, select_subsets, synthesize_ufc, soft_label, evaluate_student, evaluate_baseline, report,
)}


def components(image: str) -> dict:
    """Every component, by name, running in `image` (which holds infer-distill and kfp)."""
    return {name: dsl.component(f, base_image=image, install_kfp_package=False) for name, f in FUNCTIONS.items()}
