"""KFP v2 components: one per INFER stage, each a thin call into `infer_distill.stages`.

Every component runs in the project image (one setting: `INFER_DISTILL_IMAGE`) and receives
the run's resolved config as a small JSON artifact (kfp.local resolves upstream parameter
outputs inside ParallelFor iterations to the loop item, so the config travels as an artifact). Artifacts are KFP artifacts whose `.path` is a
local directory (KFP moves them to and from the pipeline root, e.g. S3/MinIO); each stage
writes its usual self-describing artifact there (safetensors + manifest.json).

Lightweight components are serialised by source, so every import lives inside its function.
`python pipelines/infer_dag.py compile-components` writes `components/<stage>/component.yaml`.
"""

import os
from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

IMAGE = os.environ.get("INFER_DISTILL_IMAGE", "infer-distill:0.1.0")

component = dsl.component(base_image=IMAGE, install_kfp_package=False)  # the image holds infer-distill and kfp


# ----------------------------------------------------------------------------------------
# Config and data
# ----------------------------------------------------------------------------------------


@component
def resolve_config(config_yaml: str, dataset: str, dataset_root: str, ipc: int, teacher_archs: list, teacher_epochs: int,
                   synthesis_iterations: int, synthesis_lr: float, r_bn: float, subsets_per_pod: int, label_modes: list,
                   student_archs: list, student_epochs: int, seeds: list, seed: int, device: str,
                   config: Output[Artifact]) -> list:
    """Validate base config + pipeline parameters; output the config JSON and the student runs to fan out."""
    params = {k: v for k, v in locals().items() if k not in ("config_yaml", "config")}
    from infer_distill.config import apply_pipeline_parameters

    cfg = apply_pipeline_parameters(config_yaml, params)
    with open(config.path, "w") as f:
        f.write(cfg.model_dump_json(indent=2))
    return [{"arch": a, "seed": s, "label_mode": m} for m in cfg.labels.modes for a in cfg.students.archs for s in cfg.students.seeds]


@component
def prepare_data(config: Input[Artifact], data: Output[Dataset]):
    """Materialise the train/test split as uint8 tensors."""
    from infer_distill import stages
    from infer_distill.config import load_config

    stages.prepare_data(load_config(config.path), data.path)


# ----------------------------------------------------------------------------------------
# Teachers
# ----------------------------------------------------------------------------------------


@component
def train_teacher(config: Input[Artifact], arch: str, data: Input[Dataset], teacher: Output[Model], metrics: Output[Metrics]):
    """Train (or import) one teacher; its test accuracy goes to the KFP metrics."""
    from infer_distill import stages
    from infer_distill.config import load_config

    manifest = stages.train_teacher(load_config(config.path), arch, data.path, teacher.path)
    metrics.log_metric(f"teacher_{arch}_test_acc", manifest["metrics"]["test_acc"])


@component
def gather_teachers(config: Input[Artifact], teachers: Input[List[Model]], teacher_set: Output[Model]):
    """Fan-in: one artifact holding every teacher at <teacher_set>/teachers/<arch> (a run root's layout).

    KFP cannot pass a collected list into another ParallelFor, and synthesis fans out after the
    teachers, so the shards read this one artifact.
    """
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
# Distillation
# ----------------------------------------------------------------------------------------


@component
def select_subsets(config: Input[Artifact], data: Input[Dataset], subsets: Output[Artifact]) -> list:
    """K disjoint subsets; returns the shard plan (comma-joined subset ids) to fan synthesis out over."""
    from infer_distill import stages
    from infer_distill.config import load_config

    manifest = stages.select_subsets(load_config(config.path), data.path, subsets.path)
    return [",".join(map(str, ids)) for ids in manifest["metrics"]["shards"]]


@component
def synthesize_ufc(config: Input[Artifact], subset_ids: str, data: Input[Dataset], subsets: Input[Artifact],
                   teacher_set: Input[Model], ufc: Output[Artifact]):
    """Optimise the UFCs of one shard of subsets against every teacher (one GPU pod)."""
    from infer_distill import stages
    from infer_distill.config import load_config
    from infer_distill.stages import Layout

    cfg = load_config(config.path)
    ids = [int(i) for i in subset_ids.split(",")]
    stages.synthesize_ufc(cfg, ids, data.path, subsets.path, Layout(teacher_set.path).teachers(cfg), ufc.path)


@component
def soft_label(config: Input[Artifact], data: Input[Dataset], subsets: Input[Artifact], teacher_set: Input[Model],
               ufc: Input[List[Artifact]], distilled: Output[Dataset]):
    """Fan-in of every UFC shard: static ensemble labels and the distilled-set manifest."""
    from infer_distill import stages
    from infer_distill.config import load_config
    from infer_distill.stages import Layout

    cfg = load_config(config.path)
    stages.soft_label(cfg, data.path, subsets.path, Layout(teacher_set.path).teachers(cfg), [u.path for u in ufc], distilled.path)


@component
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


@component
def report(config: Input[Artifact], data: Input[Dataset], teacher_set: Input[Model], ufc: Input[List[Artifact]],
           distilled: Input[Dataset], students: Input[List[Model]], report: Output[Artifact],
           summary: Output[Markdown], page: Output[HTML], metrics: Output[Metrics]):
    """report.json/md/html and plots; the Kubeflow UI shows the Markdown, HTML and Metrics outputs."""
    import shutil

    from infer_distill import stages
    from infer_distill.config import load_config
    from infer_distill.stages import Layout

    cfg = load_config(config.path)
    manifest = stages.report(cfg, data.path, Layout(teacher_set.path).teachers(cfg), [u.path for u in ufc], distilled.path,
                             [s.path for s in students], report.path)
    shutil.copyfile(f"{report.path}/report.md", summary.path)
    shutil.copyfile(f"{report.path}/report.html", page.path)
    for row in manifest["metrics"]["report"]["student_summary"]:
        metrics.log_metric(f"{row['arch']}_{row['label_mode']}_final_acc_mean", row["final_acc_mean"])
    for row in manifest["metrics"]["report"]["teachers"]:
        metrics.log_metric(f"teacher_{row['arch']}_test_acc", row["test_acc"])


ALL_COMPONENTS = {
    "resolve-config": resolve_config, "prepare-data": prepare_data, "train-teacher": train_teacher,
    "gather-teachers": gather_teachers, "select-subsets": select_subsets, "synthesize-ufc": synthesize_ufc,
    "soft-label": soft_label, "evaluate-student": evaluate_student, "report": report,
}
