"""INFER as a Kubeflow Pipelines v2 DAG, rendered from `infer_distill.dag.PLAN`: compile it, upload it,
submit it to a cluster, or run it here with KFP's local runner.

    resolve-config -> prepare-data -> train-teacher (ParallelFor over teachers) -> gather-teachers
                   -> select-subsets -> synthesize-ufc (ParallelFor over shards, GPU pods)
                   -> soft-label (Collected shards) -> evaluate-student (ParallelFor over student runs)
                   -> evaluate-baseline (ParallelFor over baseline runs, beside synthesis)
                   -> distill-method (ParallelFor over the peer methods) -> gather-methods
                   -> evaluate-method (ParallelFor over method scores) -> evaluate-full-data (ParallelFor over archs)
                   -> report (Markdown, HTML and Metrics in the Kubeflow UI)

A fan-out's artifacts that a later fan-out reads (the teachers, the peers' sets) are gathered into
one artifact laid out as a run root (KFP cannot pass a collected list into a ParallelFor); an
optional fan-out this config gives no items (the baselines, the methods' steps) is left out.

    python pipelines/infer_dag.py compile --image REGISTRY/infer-distill:TAG --config configs/cifar10-ipc10.yaml --output infer.yaml
    python pipelines/infer_dag.py upload  --image REGISTRY/infer-distill:TAG --host https://kfp.example.com --namespace team
    python pipelines/infer_dag.py submit  --image REGISTRY/infer-distill:TAG --host https://kfp.example.com --namespace team \\
        --pipeline-root s3://bucket/infer
    python pipelines/infer_dag.py run-local --config configs/quickstart.yaml --out runs/kfp-local
    python pipelines/infer_dag.py compile-components --image REGISTRY/infer-distill:TAG --output-dir components/

The pipeline's parameters are the config's sections (dataset, budget, teachers, synthesis, labels,
students: one JSON object each; device, the fast-path switches, seed), their defaults from the --config given here.
Cluster placement (image, GPUs, node selector, tolerations, retries, fan-out parallelism, the data
volume) is fixed at compile time by the options below.
"""

import argparse
import builtins
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from infer_distill import __version__, dag
from infer_distill.config.loading import load_config
from infer_distill.config.schema import Config
from infer_distill.errors import ConfigError, MissingExtra
from infer_distill.models import architectures
from infer_distill.runtime.accelerator import REQUIRE_CUDA
from infer_distill.storage import open_artifact

try:
    from kfp import compiler, dsl, kubernetes
    from kfp.dsl import Artifact
except ImportError as e:
    raise MissingExtra("the Kubeflow pipeline (pipelines/infer_dag.py, infer-distill run --engine kfp-local)", "kfp", e) from None

from infer_distill.engines.kfp.catalogue import write_catalogue
from infer_distill.engines.kfp.components import components
from infer_distill.engines.kfp.generate import gathered_outputs, output_name

# dsl.Collected of artifacts (soft-label and report collect the shards and students) reached the KFP
# backend in kubeflow/pipelines#11725, first released in 2.14.0: older backends reject the run.
MIN_BACKEND = (2, 14, 0)
# A pullable image names its registry: a host with a dot or a port, or localhost, before the first "/".
REGISTRY_QUALIFIED = re.compile(r"^(localhost|[^/]*[.:][^/]*)/[a-z0-9]+([._/-][a-z0-9]+)*(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?$")


class DagError(ConfigError):
    """A config or option the DAG cannot express; the message names the parameter."""


# ----------------------------------------------------------------------------------------
# Cluster placement, fixed at compile time
# ----------------------------------------------------------------------------------------


@dataclass
class ClusterOptions:
    image: str = ""                       # the project image, registry-qualified (it is pulled by every node)
    gpus: int = 1                         # per GPU pod (dag.Step.gpu); 0: a CPU-only cluster
    accelerator: str = "nvidia.com/gpu"
    gpu_toleration: bool = True           # GPU pods tolerate the accelerator's NoSchedule taint (as GPU node pools set)
    gpu_pod_cpu: str = "4"
    gpu_pod_memory: str = "16Gi"
    cpu_pod_cpu: str = "2"
    cpu_pod_memory: str = "8Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)   # {key, operator, value, effect}, on GPU pods
    parallelism: int = 0                  # pods of one GPU fan-out at once; 0: unlimited
    retries: int = dag.RETRY.limit       # on every step (dag.RETRY)
    retry_max_duration_s: int = dag.RETRY.max_duration_s
    data_pvc: str = ""                    # a PersistentVolumeClaim holding the dataset, mounted into the data step
    data_mount: str = "/data"


def check_image(image: str, option: str = "--image") -> None:
    if not image:
        raise DagError(f"{option} is required: the registry-qualified project image every pod pulls, e.g. "
                       f"{option} ghcr.io/acme/infer-distill:{__version__} (README, Containers: build, tag and push it)")
    if not REGISTRY_QUALIFIED.match(image):
        raise DagError(f"{option} {image}: name the registry the cluster pulls from, e.g. "
                       f"ghcr.io/acme/{image} or registry.example.com:5000/{image} (README, Containers: build, tag and push it)")


def check_expressible(cfg: Config, opts: ClusterOptions) -> None:
    """Reject, at compile time, what pods could not run as configured."""
    check_image(opts.image)
    for arch, source in cfg.teachers.pretrained.items():
        # published weights each pod downloads, or a file on S3 it reads with the run's credentials
        if not architectures.is_library_source(source) and not source.startswith("s3://"):
            raise DagError(f"teachers.pretrained.{arch}={source!r}: a local weight file cannot reach pipeline pods; "
                           "put it on S3 (s3://bucket/key), use 'torchvision' or 'timm' weights, train the teacher in the "
                           "pipeline, or bake the file into the image")
    if cfg.device == "cuda" and opts.gpus == 0:
        raise DagError("device='cuda' but the DAG is compiled with --gpus 0: pods would have no GPU; use device=auto or --gpus 1")
    if opts.parallelism < 0:
        raise DagError(f"--parallelism {opts.parallelism}: use 0 (unlimited) or a positive number of pods")
    if opts.gpus < 0 or opts.retries < 0:
        raise DagError("--gpus and --retries must be >= 0")
    if opts.data_pvc:
        mount = opts.data_mount.rstrip("/")
        if not mount.startswith("/"):
            raise DagError(f"--data-mount {opts.data_mount}: give an absolute path, e.g. /data")
        if cfg.dataset.root and not (cfg.dataset.root == mount or cfg.dataset.root.startswith(mount + "/")):
            raise DagError(f"dataset.root={cfg.dataset.root} is outside --data-mount {mount}, where the claim "
                           f"{opts.data_pvc} is mounted: set dataset.root under it, e.g. {mount}/tiny-imagenet-200")


def _place(task, opts: ClusterOptions, step: dag.Step | None = None):
    """Resources, scheduling, the shared retry policy and the data volume of one task."""
    retry = step.retry if step else dag.RETRY
    task.set_retry(num_retries=opts.retries, backoff_duration=f"{retry.backoff_s}s", backoff_factor=retry.factor,
                   backoff_max_duration=f"{opts.retry_max_duration_s}s")
    if step and step.reads_dataset and opts.data_pvc:
        kubernetes.mount_pvc(task, pvc_name=opts.data_pvc, mount_path=opts.data_mount)
    if not (step and step.gpu):
        return task.set_cpu_request(opts.cpu_pod_cpu).set_memory_request(opts.cpu_pod_memory)
    task.set_cpu_request(opts.gpu_pod_cpu).set_memory_request(opts.gpu_pod_memory)
    tolerations = list(opts.tolerations)
    if opts.gpus:
        task.set_accelerator_type(opts.accelerator).set_accelerator_limit(opts.gpus)
        # A pod holding a GPU must not fall back to training on its CPU (infer_distill.runtime.accelerator).
        task.set_env_variable(REQUIRE_CUDA, "1")
        taint = {"key": opts.accelerator, "operator": "Exists", "value": None, "effect": "NoSchedule"}
        if opts.gpu_toleration and taint not in tolerations:
            tolerations.insert(0, taint)
    for key, value in opts.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in tolerations:
        kubernetes.add_toleration(task, **toleration)
    return task


# ----------------------------------------------------------------------------------------
# The DAG: a walk over the plan
# ----------------------------------------------------------------------------------------



def build_pipeline(cfg: Config, opts: ClusterOptions, check: bool = True):
    """The pipeline function; its parameters are the config's sections, their defaults taken from `cfg`."""
    if check:
        check_expressible(cfg, opts)
    comps = components(opts.image)
    # KFP parameters cannot hold null: a None setting is left out, which is the same as its default.
    d = cfg.model_dump(mode="json", exclude_none=True)
    # A loop over an empty list cannot be collected downstream: a step this config does not run, or whose
    # (optional) fan-out it leaves empty, is left out, and resolve-config refuses a run whose config would need it.
    left_out = dag.omitted(cfg)

    @dsl.pipeline(name="infer-distill", description="INFER dataset distillation: teachers, UFCs, soft labels, students")
    def infer_pipeline(
        dataset: dict = d["dataset"], budget: dict = d["budget"], teachers: dict = d["teachers"],
        synthesis: dict = d["synthesis"], labels: dict = d["labels"], students: dict = d["students"],
        device: str = d["device"], precision: str = d["precision"], channels_last: str = str(d["channels_last"]).lower(),
        cudnn_benchmark: bool = d["cudnn_benchmark"], compile: bool = d["compile"], seed: int = d["seed"],
        tracking: dict = d["tracking"], methods: list = d["methods"], rded: dict = d["rded"], sre2l: dict = d["sre2l"],
    ) -> Artifact:
        config = _place(comps["resolve-config"](
            dataset=dataset, budget=budget, teachers=teachers, synthesis=synthesis, labels=labels, students=students,
            device=device, precision=precision, channels_last=channels_last, cudnn_benchmark=cudnn_benchmark,
            compile=compile, seed=seed, tracking=tracking, methods=methods, rded=rded, sre2l=sre2l,
            omitted_steps=left_out), opts).outputs["config"]
        tasks: dict[str, object] = {}      # step name -> its task (inside its loop for a fan-out)
        gathered: dict[str, object] = {}   # plan output -> the one artifact a fan-out's outputs were gathered into

        def argument(name: str) -> dict:
            producer = dag.PRODUCER[name]
            if name in gathered:
                return {dag.PRODUCER[name].gathered_as: gathered[name]}
            output = tasks[producer.name].outputs[output_name(producer)]
            # (a Collected channel serves one consumer, so each consumer gets its own)
            return {name: dsl.Collected(output) if producer.over else output}

        for step in dag.PLAN:
            if step.name in left_out:
                continue
            args = {"config": config}
            for name in step.inputs:
                if dag.PRODUCER[name].name in tasks:
                    args.update(argument(name))
            component = comps[step.name]
            if step.over is None:
                tasks[step.name] = _place(component(**args), opts, step)
                continue
            if step.over.source == "config":
                items = _place(comps["fanout-items"](config=config, fanout=step.over.name), opts).output
            else:
                items = tasks[step.over.source].outputs["Output"]
            with dsl.ParallelFor(items, parallelism=opts.parallelism if step.gpu else 0) as item:
                tasks[step.name] = _place(component(**args, **{k: getattr(item, k) for k in step.over.keys}), opts, step)
            if step.output in gathered_outputs():
                gather = comps[f"gather-{step.output}"](config=config, **{step.output: dsl.Collected(
                    tasks[step.name].outputs[output_name(step)])})
                gathered[step.output] = _place(gather, opts).outputs[step.gathered_as]
        last = dag.PLAN[-1]
        return tasks[last.name].outputs[output_name(last)]

    return infer_pipeline


# ----------------------------------------------------------------------------------------
# Compile, upload, submit, run locally
# ----------------------------------------------------------------------------------------


def compile_pipeline(cfg: Config, opts: ClusterOptions, output: str) -> float:
    started = time.perf_counter()
    compiler.Compiler().compile(build_pipeline(cfg, opts), output)
    return time.perf_counter() - started


def compile_components(image: str, out_dir: Path) -> list[Path]:
    """Every component as a reusable folder for `image` (engines.kfp.catalogue): its component.yaml, a README and
    metadata.yaml, and an index. Returns the component.yaml files."""
    check_image(image)
    built = components(image)
    written = write_catalogue(image, out_dir, lambda name, path: compiler.Compiler().compile(built[name], str(path)))
    return [p for p in written if p.name == "component.yaml"]


def backend_version_problem(tag_name: str) -> str | None:
    """Why a KFP backend of this version cannot run the pipeline, or None (also when the version is unknown)."""
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", tag_name or "")
    if match is None:
        return None  # "unknown", a development build: nothing to check against
    version = tuple(int(g) for g in match.groups())
    if version >= MIN_BACKEND:
        return None
    need = ".".join(map(str, MIN_BACKEND))
    return (f"the Kubeflow Pipelines backend is {tag_name}, but this pipeline collects artifacts from loops "
            f"(dsl.Collected), which backends before {need} reject: upgrade Kubeflow Pipelines to {need} or later")


def connect(host: str, namespace: str | None, token_file: str | None, ssl_ca_cert: str | None):
    """A client for the KFP API at `host`, checked against MIN_BACKEND.

    Credentials come from the environment, never from the command line: the token in --token-file
    (or $KFP_TOKEN), Kubeflow's session cookie in $KFP_COOKIES (e.g. "authservice_session=..."),
    or, inside a cluster, the service-account token KFP finds itself ($KF_PIPELINES_SA_TOKEN_PATH).
    """
    import kfp

    token = Path(token_file).read_text().strip() if token_file else os.environ.get("KFP_TOKEN") or None
    try:
        with warnings.catch_warnings():  # "only works with v2.0.0-beta.2 and later": MIN_BACKEND is checked below
            warnings.simplefilter("ignore", FutureWarning)
            client = kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token,
                                cookies=os.environ.get("KFP_COOKIES") or None, ssl_ca_cert=ssl_ca_cert)
        raw = client._healthz_api.healthz_service_get_healthz(_preload_content=False)  # the model drops tag_name
        tag_name = json.loads(raw.data).get("tag_name", "")
    except Exception as e:  # noqa: BLE001 - connection, TLS and auth errors all mean: no usable API
        raise DagError(f"cannot reach the Kubeflow Pipelines API at {host}: {e}") from None
    problem = backend_version_problem(tag_name)
    if problem:
        raise DagError(problem)
    return client


def find_pipeline(client, name: str, namespace: str | None) -> str | None:
    """The id of pipeline `name` in `namespace` (without one: the shared pipelines), or None.

    (kfp.Client.get_pipeline_id takes no namespace: the API then lists only the shared pipelines, so
    in multi-user Kubeflow a pipeline uploaded to a profile namespace is never found, and creating it
    again hits the API's unique (namespace, name) index.)
    """
    by_name = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found = client.list_pipelines(filter=by_name, namespace=namespace, page_size=2).pipelines or []
    if len(found) > 1:
        raise DagError(f"{len(found)} pipelines are named {name!r} in {f'namespace {namespace}' if namespace else 'the shared pipelines'}: "
                       "give --pipeline-name one of them alone has")
    return found[0].pipeline_id if found else None


def upload(cfg: Config, opts: ClusterOptions, client, name: str, version: str | None, namespace: str | None) -> str:
    """Upload the compiled pipeline as a new version of pipeline `name` in `namespace` (created if missing); returns a summary."""
    version = version or f"{__version__}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory() as tmp:
        package = f"{tmp}/{name}.yaml"
        compile_pipeline(cfg, opts, package)
        try:
            pipeline_id = find_pipeline(client, name, namespace)
            if pipeline_id is None:
                pipeline = client.upload_pipeline(package, pipeline_name=name, namespace=namespace,
                                                  description="INFER dataset distillation (infer-distill)")
                pipeline_id = pipeline.pipeline_id
            made = client.upload_pipeline_version(package, pipeline_version_name=version, pipeline_id=pipeline_id)
        except DagError:
            raise
        except Exception as e:  # noqa: BLE001 - API errors all mean: not uploaded
            raise DagError(f"could not upload pipeline {name!r} version {version!r}: {e}") from None
    return f"pipeline {name} ({pipeline_id}), version {version} ({made.pipeline_version_id})"


def submit(cfg: Config, opts: ClusterOptions, client, pipeline_root: str, experiment: str, caching: bool,
           namespace: str | None) -> str:
    if not pipeline_root.startswith(("s3://", "minio://", "gs://")):
        raise DagError(f"--pipeline-root {pipeline_root}: give the cluster's object store, e.g. s3://bucket/infer")
    try:
        run = client.create_run_from_pipeline_func(build_pipeline(cfg, opts), arguments={}, experiment_name=experiment,
                                                   namespace=namespace, pipeline_root=pipeline_root, enable_caching=caching)
    except DagError:
        raise
    except Exception as e:  # noqa: BLE001 - API errors all mean: not submitted
        raise DagError(f"could not submit the run: {e}") from None
    return run.run_id


def run_local(cfg: Config, out: str, image: str | None = None) -> str:
    """Run the DAG with KFP's local runner; returns the report's URI: `out`/report, where `infer-distill run --out`
    puts it (KFP's own copy stays among the tasks' outputs under `out`).

    Without `image`: SubprocessRunner (every task in this Python). With `image`: DockerRunner, every
    task in a container of that image from the local Docker daemon, on the host's network.
    """
    from kfp import local
    from kfp.local import logging_utils

    if "://" in out:
        raise DagError(f"--out {out}: kfp.local writes only to a local pipeline root; use a directory here, "
                       "or `submit --pipeline-root s3://...` to run on a cluster")
    if cfg.dataset.root and "://" not in cfg.dataset.root:  # task subprocesses may run in another directory
        cfg = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"root": str(Path(cfg.dataset.root).resolve())})})
    Path(out).mkdir(parents=True, exist_ok=True)
    if image:
        # DockerRunner passes each task's command as arguments, which would go to the image's
        # entry point (infer-distill): run them through env instead, as a pod's command would run.
        # Tasks run with this user's ids, so they can write the pipeline root mounted into them.
        runner = local.DockerRunner(entrypoint=["/usr/bin/env"], network_mode="host", user=f"{os.getuid()}:{os.getgid()}",
                                    environment={"HOME": "/tmp", "MPLCONFIGDIR": "/tmp/matplotlib"})
    else:
        runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=str(Path(out).resolve()), raise_on_error=True)
    # kfp.local indents its tasks' output by swapping builtins.print, and swaps the root logger's handlers for
    # one on the sys.stdout of the moment; its nested swaps can end out of order, leaving every later print
    # indented and a handler on a stream that may be closed by then: put the real ones back.
    real_print = builtins.print
    root_logger = logging.getLogger()
    root_handlers, root_level = root_logger.handlers[:], root_logger.level
    # kfp.local colours task names and statuses with escape codes whatever its output is: plain text in a log.
    colours = {name: value for name, value in vars(logging_utils.Color).items() if not name.startswith("_")}
    if not sys.stdout.isatty():
        for name in colours:
            setattr(logging_utils.Color, name, "")
    try:
        result = build_pipeline(cfg, ClusterOptions(image=image or "infer-distill:local", gpus=0, retries=0), check=False)()
    finally:
        builtins.print = real_print
        root_logger.handlers[:] = root_handlers
        root_logger.setLevel(root_level)
        for name, value in colours.items():
            setattr(logging_utils.Color, name, value)
    return publish_report(result.output.path, dag.location(dag.Layout(out), dag.final_step(), {}))


def publish_report(uri: str, to: str) -> str:
    """Copy the report artifact at `uri` (a task's output, deep in KFP's folders) to `to`, as a run root holds it;
    `to` may hold only an earlier report (`Artifact.write`). Returns `to`."""
    report = open_artifact(uri)
    manifest = report.read_manifest()
    files = {name: report.read_bytes(name) for name in manifest["files"]}
    open_artifact(to).write(files, {k: v for k, v in manifest.items() if k not in ("files", "schema_version")})
    return to


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def _options(args: argparse.Namespace) -> ClusterOptions:
    tolerations = []
    for spec in args.toleration:  # key=value:Effect or key:Effect (operator Exists)
        key_value, _, effect = spec.partition(":")
        key, eq, value = key_value.partition("=")
        tolerations.append({"key": key, "operator": "Equal" if eq else "Exists", "value": value or None, "effect": effect or None})
    selector = dict(item.split("=", 1) for item in args.node_selector)
    return ClusterOptions(image=args.image or "", gpus=args.gpus, accelerator=args.accelerator,
                          gpu_toleration=not args.no_gpu_toleration, node_selector=selector, tolerations=tolerations,
                          parallelism=args.parallelism, retries=args.retries,
                          retry_max_duration_s=args.retry_max_hours * 3600, data_pvc=args.data_pvc or "",
                          data_mount=args.data_mount)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    commands = {name: sub.add_parser(name) for name in ("compile", "upload", "submit", "run-local", "compile-components")}
    for name in ("compile", "upload", "submit", "run-local"):
        commands[name].add_argument("--config", help="config whose sections become the parameter defaults (default: quickstart)")
        commands[name].add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    for name in ("compile", "upload", "submit", "compile-components"):
        commands[name].add_argument("--image", default=os.environ.get("INFER_DISTILL_IMAGE"),
                                    help="the registry-qualified project image every step runs in, e.g. "
                                         "ghcr.io/acme/infer-distill:0.1.0-cuda (default: $INFER_DISTILL_IMAGE)")
    for name in ("compile", "upload", "submit"):
        sp = commands[name]
        sp.add_argument("--gpus", type=int, default=1, help="GPUs per GPU pod (0: CPU-only cluster)")
        sp.add_argument("--accelerator", default="nvidia.com/gpu")
        sp.add_argument("--no-gpu-toleration", action="store_true", help="do not tolerate the accelerator's NoSchedule taint")
        sp.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE", help="on GPU pods")
        sp.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT", help="on GPU pods")
        sp.add_argument("--parallelism", type=int, default=0, help="pods of one GPU fan-out at once (0: unlimited)")
        sp.add_argument("--retries", type=int, default=dag.RETRY.limit, help="retries of every step")
        sp.add_argument("--retry-max-hours", type=int, default=dag.RETRY.max_duration_s // 3600,
                        help="retries stop this long after a step's FIRST attempt started (cover the longest step)")
        sp.add_argument("--data-pvc", metavar="CLAIM", help="PersistentVolumeClaim with the dataset, mounted into prepare-data")
        sp.add_argument("--data-mount", default="/data", help="where --data-pvc is mounted (dataset.root lies under it)")
    for name in ("upload", "submit"):
        sp = commands[name]
        sp.add_argument("--host", required=True, help="the KFP API, e.g. https://kubeflow.example.com/pipeline")
        sp.add_argument("--namespace", help="the Kubeflow profile namespace (multi-user Kubeflow)")
        sp.add_argument("--token-file", help="a file holding a bearer token for the API (default: $KFP_TOKEN)")
        sp.add_argument("--ssl-ca-cert", help="CA bundle of the API's TLS certificate")
    commands["compile"].add_argument("--output", default="infer_dag.yaml")
    commands["upload"].add_argument("--pipeline-name", default="infer-distill")
    commands["upload"].add_argument("--version", help="version name (default: <package version>-<UTC time>)")
    commands["submit"].add_argument("--pipeline-root", required=True)
    commands["submit"].add_argument("--experiment", default="infer-distill")
    commands["submit"].add_argument("--no-cache", action="store_true", help="run every step even if a cached result exists")
    commands["run-local"].add_argument("--out", default="runs/kfp-local", help="local pipeline root")
    commands["run-local"].add_argument("--docker-image", help="run every task in this local image (kfp.local.DockerRunner)")
    commands["compile-components"].add_argument("--output-dir", default="components", type=Path)
    args = p.parse_args(argv)

    from infer_distill.errors import USER_ERRORS
    from infer_distill.outputs.report import print_summary
    from infer_distill.storage import open_artifact

    try:
        if args.command == "compile-components":
            for path in compile_components(args.image or "", args.output_dir):
                print(f"wrote {path.parent}/: component.yaml, README.md, metadata.yaml")
            return 0
        cfg = load_config(args.config, args.set)
        if args.command == "compile":
            seconds = compile_pipeline(cfg, _options(args), args.output)
            print(f"compiled {args.output} in {seconds:.2f}s")
        elif args.command == "run-local":
            print_summary(open_artifact(run_local(cfg, args.out, args.docker_image)).read_manifest())
        else:
            opts = _options(args)
            check_expressible(cfg, opts)  # before any connection
            if args.command == "submit" and not args.pipeline_root.startswith(("s3://", "minio://", "gs://")):
                raise DagError(f"--pipeline-root {args.pipeline_root}: give the cluster's object store, e.g. s3://bucket/infer")
            client = connect(args.host, args.namespace, args.token_file, args.ssl_ca_cert)
            if args.command == "upload":
                print(f"uploaded {upload(cfg, opts, client, args.pipeline_name, args.version, args.namespace)}")
            else:
                run_id = submit(cfg, opts, client, args.pipeline_root, args.experiment, not args.no_cache, args.namespace)
                print(f"submitted run {run_id}")
        return 0
    except USER_ERRORS as e:  # DagError is a ConfigError
        print(f"error: {e}", file=sys.stderr)
        return dag.EXIT_REFUSED
