"""INFER as a Kubeflow Pipelines v2 DAG: compile it, run it locally, or submit it to a cluster.

    resolve-config -> prepare-data -> train-teacher (ParallelFor over architectures) -> gather-teachers
                   -> select-subsets -> synthesize-ufc (ParallelFor over subset groups, GPU pods)
                   -> soft-label (Collected shards) -> evaluate-student (ParallelFor over arch x seed x labels)
                   -> report (Markdown, HTML and Metrics in the Kubeflow UI)

    python pipelines/infer_dag.py compile --config configs/cifar10-ipc10.yaml --output infer.yaml
    python pipelines/infer_dag.py run-local --config configs/quickstart.yaml --out runs/kfp-local
    python pipelines/infer_dag.py submit --host https://kfp.example.com --pipeline-root s3://bucket/infer
    python pipelines/infer_dag.py compile-components

Pipeline parameters mirror the config (config.PIPELINE_PARAMETERS); their defaults come from
the --config given when compiling. Cluster placement (GPUs, node selector, tolerations,
retries, fan-out parallelism) is fixed at compile time by the options below.
"""

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `components` lives beside this folder

from kfp import compiler, dsl, kubernetes  # noqa: E402
from kfp.dsl import Artifact  # noqa: E402

from infer_distill.config import Config, ConfigError, load_config, pipeline_defaults  # noqa: E402


class DagError(ConfigError):
    """A config or option the DAG cannot express; the message names the parameter."""


# ----------------------------------------------------------------------------------------
# Cluster placement, fixed at compile time
# ----------------------------------------------------------------------------------------


@dataclass
class ClusterOptions:
    gpus: int = 1                         # per GPU pod (train-teacher, synthesize-ufc, evaluate-student); 0: CPU only
    accelerator: str = "nvidia.com/gpu"
    gpu_pod_cpu: str = "4"
    gpu_pod_memory: str = "16Gi"
    cpu_pod_cpu: str = "2"
    cpu_pod_memory: str = "8Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)   # {key, operator, value, effect}
    parallelism: int = 0                  # synthesis pods at once; 0: unlimited
    retries: int = 2                      # on the GPU stages (preemption, node loss)


def check_expressible(cfg: Config, opts: ClusterOptions) -> None:
    """Reject, at compile time, what pods could not run as configured."""
    for arch, source in cfg.teachers.pretrained.items():
        if source != "torchvision":
            raise DagError(f"teachers.pretrained.{arch}={source!r}: a local weight file cannot reach pipeline pods; "
                           "use 'torchvision', train the teacher in the pipeline, or bake the file into the image")
    if cfg.device == "cuda" and opts.gpus == 0:
        raise DagError("device='cuda' but the DAG is compiled with --gpus 0: pods would have no GPU; use device=auto or --gpus 1")
    if opts.parallelism < 0:
        raise DagError(f"--parallelism {opts.parallelism}: use 0 (unlimited) or a positive number of synthesis pods")
    if opts.gpus < 0 or opts.retries < 0:
        raise DagError("--gpus and --retries must be >= 0")


def _cpu_pod(task, opts: ClusterOptions):
    return task.set_cpu_request(opts.cpu_pod_cpu).set_memory_request(opts.cpu_pod_memory)


def _gpu_pod(task, opts: ClusterOptions):
    task.set_cpu_request(opts.gpu_pod_cpu).set_memory_request(opts.gpu_pod_memory)
    if opts.gpus:
        task.set_accelerator_type(opts.accelerator).set_accelerator_limit(opts.gpus)
    for key, value in opts.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in opts.tolerations:
        kubernetes.add_toleration(task, **toleration)
    if opts.retries:
        task.set_retry(num_retries=opts.retries, backoff_duration="60s", backoff_factor=2.0)
    return task


# ----------------------------------------------------------------------------------------
# The DAG
# ----------------------------------------------------------------------------------------


def build_pipeline(cfg: Config, opts: ClusterOptions):
    """The pipeline function, its parameter defaults taken from `cfg`."""
    check_expressible(cfg, opts)
    from components import infer_components as c

    d = pipeline_defaults(cfg)

    @dsl.pipeline(name="infer-distill", description="INFER dataset distillation: teachers, UFCs, soft labels, students")
    def infer_pipeline(
        config_yaml: str = cfg.model_dump_json(),  # one line: KFP copies defaults into YAML comments
        dataset: str = d["dataset"],
        dataset_root: str = d["dataset_root"],
        ipc: int = d["ipc"],
        teacher_archs: list = d["teacher_archs"],
        teacher_epochs: int = d["teacher_epochs"],
        synthesis_iterations: int = d["synthesis_iterations"],
        synthesis_lr: float = d["synthesis_lr"],
        r_bn: float = d["r_bn"],
        subsets_per_pod: int = d["subsets_per_pod"],
        label_modes: list = d["label_modes"],
        student_archs: list = d["student_archs"],
        student_epochs: int = d["student_epochs"],
        seeds: list = d["seeds"],
        seed: int = d["seed"],
        device: str = d["device"],
    ) -> Artifact:
        resolved = _cpu_pod(c.resolve_config(
            config_yaml=config_yaml, dataset=dataset, dataset_root=dataset_root, ipc=ipc, teacher_archs=teacher_archs,
            teacher_epochs=teacher_epochs, synthesis_iterations=synthesis_iterations, synthesis_lr=synthesis_lr, r_bn=r_bn,
            subsets_per_pod=subsets_per_pod, label_modes=label_modes, student_archs=student_archs,
            student_epochs=student_epochs, seeds=seeds, seed=seed, device=device), opts)
        config = resolved.outputs["config"]
        data = _cpu_pod(c.prepare_data(config=config), opts).outputs["data"]

        with dsl.ParallelFor(teacher_archs) as arch:
            teacher = _gpu_pod(c.train_teacher(config=config, arch=arch, data=data), opts)
        teacher_set = _cpu_pod(c.gather_teachers(config=config, teachers=dsl.Collected(teacher.outputs["teacher"])),
                               opts).outputs["teacher_set"]

        subsets = _cpu_pod(c.select_subsets(config=config, data=data), opts)
        with dsl.ParallelFor(subsets.outputs["Output"], parallelism=opts.parallelism) as ids:
            shard = _gpu_pod(c.synthesize_ufc(config=config, subset_ids=ids, data=data, subsets=subsets.outputs["subsets"],
                                              teacher_set=teacher_set), opts)
        # (a Collected channel serves one consumer, so each fan-in gets its own)
        distilled = _cpu_pod(c.soft_label(config=config, data=data, subsets=subsets.outputs["subsets"], teacher_set=teacher_set,
                                          ufc=dsl.Collected(shard.outputs["ufc"])), opts).outputs["distilled"]

        with dsl.ParallelFor(resolved.outputs["Output"]) as run:
            student = _gpu_pod(c.evaluate_student(config=config, arch=run.arch, seed=run.seed, label_mode=run.label_mode,
                                                  data=data, distilled=distilled, teacher_set=teacher_set), opts)
        report = _cpu_pod(c.report(config=config, data=data, teacher_set=teacher_set, ufc=dsl.Collected(shard.outputs["ufc"]),
                                   distilled=distilled,
                                   students=dsl.Collected(student.outputs["student"])), opts)
        return report.outputs["report"]

    return infer_pipeline


# ----------------------------------------------------------------------------------------
# Compile, run locally, submit
# ----------------------------------------------------------------------------------------


def compile_pipeline(cfg: Config, opts: ClusterOptions, output: str) -> float:
    started = time.perf_counter()
    compiler.Compiler().compile(build_pipeline(cfg, opts), output)
    return time.perf_counter() - started


def compile_components(out_dir: Path = REPO / "components") -> list[Path]:
    from components.infer_components import ALL_COMPONENTS

    paths = []
    for name, comp in ALL_COMPONENTS.items():
        path = out_dir / name / "component.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(comp, str(path))
        paths.append(path)
    return paths


def run_local(cfg: Config, out: str) -> str:
    """Run the DAG with kfp.local's SubprocessRunner (this Python, no per-task venvs); returns the report URI."""
    from kfp import local

    if "://" in out:
        raise DagError(f"--out {out}: kfp.local writes only to a local pipeline root; use a directory here, "
                       "or `submit --pipeline-root s3://...` to run on a cluster")
    if cfg.dataset.root and "://" not in cfg.dataset.root:  # task subprocesses may run in another directory
        cfg = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"root": str(Path(cfg.dataset.root).resolve())})})
    Path(out).mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path(out).resolve()), raise_on_error=True)
    result = build_pipeline(cfg, ClusterOptions(gpus=0, retries=0))()
    return result.output.path


def submit(cfg: Config, opts: ClusterOptions, host: str, pipeline_root: str, experiment: str, caching: bool) -> str:
    import kfp

    if not pipeline_root.startswith(("s3://", "minio://", "gs://")):
        raise DagError(f"--pipeline-root {pipeline_root}: give the cluster's object store, e.g. s3://bucket/infer")
    try:
        client = kfp.Client(host=host)
        run = client.create_run_from_pipeline_func(build_pipeline(cfg, opts), arguments={}, experiment_name=experiment,
                                                   pipeline_root=pipeline_root, enable_caching=caching)
    except DagError:
        raise
    except Exception as e:  # noqa: BLE001 - connection and API errors all mean: not submitted
        raise DagError(f"could not submit to Kubeflow Pipelines at {host}: {e}") from None
    return run.run_id


def _options(args: argparse.Namespace) -> ClusterOptions:
    tolerations = []
    for spec in args.toleration:  # key=value:Effect or key:Effect (operator Exists)
        key_value, _, effect = spec.partition(":")
        key, eq, value = key_value.partition("=")
        tolerations.append({"key": key, "operator": "Equal" if eq else "Exists", "value": value or None, "effect": effect or None})
    selector = dict(item.split("=", 1) for item in args.node_selector)
    return ClusterOptions(gpus=args.gpus, accelerator=args.accelerator, node_selector=selector, tolerations=tolerations,
                          parallelism=args.parallelism, retries=args.retries)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    commands = {name: sub.add_parser(name) for name in ("compile", "run-local", "submit", "compile-components")}
    for name in ("compile", "run-local", "submit"):
        commands[name].add_argument("--config", help="config whose values become the parameter defaults (default: quickstart)")
        commands[name].add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    for name in ("compile", "submit"):
        sp = commands[name]
        sp.add_argument("--image", help="project image for every step (default: $INFER_DISTILL_IMAGE or infer-distill:0.1.0)")
        sp.add_argument("--gpus", type=int, default=1, help="GPUs per GPU pod (0: CPU-only cluster)")
        sp.add_argument("--accelerator", default="nvidia.com/gpu")
        sp.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE")
        sp.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT")
        sp.add_argument("--parallelism", type=int, default=0, help="synthesis pods at once (0: unlimited)")
        sp.add_argument("--retries", type=int, default=2)
    commands["compile"].add_argument("--output", default="infer_dag.yaml")
    commands["run-local"].add_argument("--out", default="runs/kfp-local", help="local pipeline root")
    commands["submit"].add_argument("--host", required=True)
    commands["submit"].add_argument("--pipeline-root", required=True)
    commands["submit"].add_argument("--experiment", default="infer-distill")
    commands["submit"].add_argument("--no-cache", action="store_true", help="run every step even if a cached result exists")
    args = p.parse_args(argv)

    from infer_distill.cli import USER_ERRORS, print_summary
    from infer_distill.store import open_artifact

    try:
        if getattr(args, "image", None):
            os.environ["INFER_DISTILL_IMAGE"] = args.image
        if args.command == "compile-components":
            for path in compile_components():
                print(f"wrote {path.relative_to(REPO)}")
            return 0
        cfg = load_config(args.config, args.set)
        if args.command == "compile":
            seconds = compile_pipeline(cfg, _options(args), args.output)
            print(f"compiled {args.output} in {seconds:.2f}s")
        elif args.command == "run-local":
            print_summary(open_artifact(run_local(cfg, args.out)).read_manifest())
        else:
            print(f"submitted run {submit(cfg, _options(args), args.host, args.pipeline_root, args.experiment, not args.no_cache)}")
        return 0
    except USER_ERRORS as e:  # DagError is a ConfigError
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
