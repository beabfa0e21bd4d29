"""The INFER DAG, written down once: every way of running it is derived from `PLAN`.

    prepare-data -> train-teacher (one per teacher) --+-> synthesize-ufc (one per shard) -> soft-label
                 -> select-subsets -------------------+      -> evaluate-student (one per student run) --+-> report
                                                      +-> evaluate-baseline (one per baseline run) -----+

- `run_in_process` walks it in one process: `infer-distill run`, and any script that wants the
  same resumable walk (it skips artifacts that are current and reports every step);
- pipelines/infer_dag.py renders it as the Kubeflow pipeline;
- pipelines/render.py renders it as the Argo WorkflowTemplate of the Helm chart (with hera) and as
  the docker compose files (one service per step and fan-out item).

A step is one stage of `infer_distill.stages`; the CLI runs it as `infer-distill stage <name>`.
Its inputs name the outputs of earlier steps (the stage function's arguments), so the edges of
the DAG follow from them. A fan-out step runs once per item; an item's keys are the stage's own
keys (`stages.is_current`, `Layout`) and, as `--key-name value`, its command-line flags.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import config
from .config import KNOWN_NUM_CLASSES, Config, ConfigError
from .lock import run_lock
from .metrics import DataMetrics
from .store import ArtifactError, open_artifact


# ----------------------------------------------------------------------------------------
# Exit codes and the retry policy every engine applies to every step
# ----------------------------------------------------------------------------------------

EXIT_REFUSED = 2      # the input was refused (config, data, an artifact made with other settings): a retry is refused again
EXIT_TRANSIENT = 75   # EX_TEMPFAIL: the object store stayed unreachable, throttled or failing after boto3's own retries
# Any other non-zero exit is a crash (or a pod killed by eviction or preemption): retried too.


@dataclass(frozen=True)
class RetryPolicy:
    limit: int = 3
    backoff_s: int = 60
    factor: int = 2
    # Argo (and KFP's backend, which compiles to Argo) count this from the START OF THE FIRST
    # attempt, not between attempts: it must cover every attempt of the longest GPU step, or a
    # step that fails after running longer than this is never retried.
    max_duration_s: int = 72 * 3600
    never_retried: tuple[int, ...] = (EXIT_REFUSED,)

    def argo_expression(self) -> str:
        return " && ".join(f"asInt(lastRetry.exitCode) != {code}" for code in self.never_retried)


RETRY = RetryPolicy()


# ----------------------------------------------------------------------------------------
# Fan-outs and steps
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FanOut:
    name: str
    keys: tuple[str, ...]                                  # item keys: stage keys and CLI flags (--label-mode)
    items: Callable[[Config, int | None], list[dict[str, Any]]]  # (config, number of classes) -> items, in run order
    label: Callable[[dict[str, Any]], str]
    # Where a workflow engine gets the items at run time: the config (resolve-config writes them),
    # or select-subsets, which writes the shard plan once it knows the number of classes.
    source: str = "config"
    # The config may give it no items. An engine that cannot iterate an empty list (a Kubeflow
    # loop collected downstream) leaves the step out when compiled for such a config, and
    # `check_omitted` refuses a run whose config would need it.
    optional: bool = False
    # The items of a walk that resumes under a run root, where they may depend on what is already
    # there (config, layout, number of classes); None: `items`.
    resumed_items: Callable[[Config, Layout, int], list[dict[str, Any]]] | None = None


TEACHERS = FanOut("teachers", ("arch",), lambda cfg, _: [{"arch": a} for a in cfg.teachers.archs], lambda i: i["arch"])
# Engines start each run afresh: the config's shard plan. A resumed walk reuses every finished shard,
# whatever grouping made it (plan_ufc_shards), so resharding recomputes nothing.
SHARDS = FanOut("shards", ("subset_ids",), lambda cfg, c: [{"subset_ids": ids} for ids in cfg.shard_plan(c)],
                lambda i: f"subsets {i['subset_ids'][0]}..{i['subset_ids'][-1]}", source="select-subsets",
                resumed_items=lambda cfg, layout, c: [{"subset_ids": ids} for ids, _ in plan_ufc_shards(cfg, layout, c)])
STUDENTS = FanOut("students", ("arch", "seed", "label_mode"), lambda cfg, _: cfg.student_runs(),
                  lambda i: f"{i['arch']} {i['label_mode']} seed {i['seed']}")
BASELINES = FanOut("baselines", ("arch", "seed", "baseline"), lambda cfg, _: cfg.baseline_runs(),
                   lambda i: f"{i['baseline']} {i['arch']} seed {i['seed']}", optional=True)
METHOD_SETS = FanOut("methods", ("method",), lambda cfg, _: [{"method": m} for m in cfg.peer_methods()],
                     lambda i: i["method"], optional=True)
METHOD_RUNS = FanOut("method_scores", ("method", "score", "protocol", "arch", "seed"), lambda cfg, _: cfg.method_runs(),
                     lambda i: f"{i['method']} {i['score']} labels, equal {i['protocol']}, {i['arch']} seed {i['seed']}", optional=True)
FULL_DATA = FanOut("references", ("arch",), lambda cfg, _: cfg.full_data_runs(), lambda i: f"full data {i['arch']}", optional=True)
FANOUTS = {f.name: f for f in (TEACHERS, SHARDS, STUDENTS, BASELINES, METHOD_SETS, METHOD_RUNS, FULL_DATA)}


@dataclass(frozen=True)
class Step:
    name: str                     # the stage: `infer-distill stage <name>`, `stages.<name_with_underscores>`
    output: str                   # what later steps receive its artifact(s) as (a stage argument, a CLI flag)
    location: str                 # the `Layout` attribute of its artifact (called with the item's keys)
    inputs: tuple[str, ...] = ()  # outputs of earlier steps it reads
    over: FanOut | None = None
    gpu: bool = False             # needs an accelerator on a cluster
    reads_dataset: bool = False   # reads the dataset source itself (on a cluster: the pod that mounts the data volume)
    always: bool = False          # rerun even when current (the report: cheap, and must reflect every artifact)
    # Runs only for configs where this holds (INFER's own steps: when `methods` has infer); every engine
    # leaves the step out otherwise, and its consumers get no such input (None, or [] from a fan-out).
    when: Callable[[Config], bool] | None = None
    retry: RetryPolicy = field(default=RETRY)
    # The settings its artifact depends on, from the config and the item's keys (config.*_settings):
    # equal settings mean interchangeable artifacts, so a current one is skipped.
    settings: Callable[..., dict] = field(kw_only=True)

    def runs(self, cfg: Config) -> bool:
        return self.when is None or self.when(cfg)

    @property
    def function(self) -> Callable[..., dict]:
        return getattr(_stages(), self.name.replace("-", "_"))


def _stages():
    """`infer_distill.stages`, imported when a step runs (it imports torch)."""
    from . import stages

    return stages


PLAN: tuple[Step, ...] = (
    Step("prepare-data", "data", "data", reads_dataset=True, settings=config.data_settings),
    Step("train-teacher", "teachers", "teacher", ("data",), over=TEACHERS, gpu=True, settings=config.teacher_settings),
    Step("select-subsets", "subsets", "subsets", ("data",), when=Config.runs_infer, settings=config.subset_settings),
    Step("synthesize-ufc", "ufc", "ufc", ("data", "subsets", "teachers"), over=SHARDS, gpu=True, when=Config.runs_infer,
         settings=config.ufc_settings),
    Step("soft-label", "distilled", "distilled", ("data", "subsets", "teachers", "ufc"), when=Config.runs_infer,
         settings=config.distilled_settings),
    Step("evaluate-student", "students", "student", ("data", "distilled", "teachers"), over=STUDENTS, gpu=True,
         when=Config.runs_infer, settings=config.student_settings),
    Step("evaluate-baseline", "baselines", "baseline", ("data", "subsets", "teachers"), over=BASELINES, gpu=True,
         when=Config.runs_infer, settings=config.baseline_settings),
    Step("distill-method", "methods", "method_set", ("data", "teachers"), over=METHOD_SETS, gpu=True,
         settings=config.method_set_settings),
    Step("evaluate-method", "method_scores", "method_score", ("data", "distilled", "methods"), over=METHOD_RUNS, gpu=True,
         settings=config.method_score_settings),
    Step("evaluate-full-data", "full_data", "full_data", ("data",), over=FULL_DATA, gpu=True, settings=config.full_data_settings),
    Step("report", "report", "report", ("data", "teachers", "ufc", "distilled", "students", "baselines", "method_scores",
                                        "full_data", "methods"), always=True, settings=config.report_settings),
)
STEPS = {s.name: s for s in PLAN}
STAGES = tuple(STEPS)  # `infer-distill stage NAME`'s names, in run order
PRODUCER = {s.output: s for s in PLAN}


def settings(cfg: Config, stage: str, **keys: Any) -> dict:
    """The settings an artifact of `stage` (with its item's keys) depends on; equal dicts mean interchangeable artifacts."""
    if stage not in STEPS:
        raise ConfigError(f"unknown stage {stage!r}: use one of {', '.join(STEPS)}")
    return STEPS[stage].settings(cfg, **keys)


def upstream(step: Step) -> set[str]:
    """Every step `step` depends on, directly or through another step."""
    direct = {PRODUCER[i].name for i in step.inputs}
    return direct.union(*(upstream(STEPS[d]) for d in direct))


def depends(step: Step) -> list[str]:
    """The steps `step` waits for, without those another of them already waits for (the DAG's edges)."""
    direct = [PRODUCER[i].name for i in step.inputs]
    implied = set().union(*(upstream(STEPS[d]) for d in direct))
    return [d for d in dict.fromkeys(direct) if d not in implied]


def omitted(cfg: Config) -> list[str]:
    """The steps this config leaves out: those it does not run (`Step.when`), and those of optional fan-outs it
    gives no items."""
    return [s.name for s in PLAN if not s.runs(cfg) or (s.over and s.over.optional and not s.over.items(cfg, None))]


def runs_file(step: Step) -> str:
    """The file `infer-distill plan --items-dir` writes whether the config runs conditional `step` to ("true"/"false"),
    for engines that skip a step at run time (Argo's `when`)."""
    return f"runs-{step.name}"


def optional_input(step: Step, name: str) -> bool:
    """Whether some config runs `step` without the step that makes its input `name` (the input is then absent,
    or an empty list)."""
    producer = PRODUCER[name]
    return bool(producer.over and producer.over.optional) or (producer.when is not None and producer.when is not step.when)


def check_omitted(cfg: Config, left_out: list[str]) -> None:
    """Refuse a config that needs a step the DAG was built without, or that leaves a built one empty."""
    for name in [s.name for s in PLAN if s.name in set(omitted(cfg)) ^ set(left_out)]:
        if name in left_out:
            problem = f"compiled without the {name} step (its config did not run it), but this run's config does"
        else:
            problem = f"compiled with the {name} step, but this run's config does not run it"
        raise ConfigError(f"this pipeline was {problem}: compile it again with this config")


def step_inputs(step: Step, cfg: Config, produced: dict[str, Any]) -> dict[str, Any]:
    """The stage arguments of `step` from `produced` (output name -> URI or URIs); the output of a step this config
    does not run is None (a fan-out's: [])."""
    return {name: produced[name] if PRODUCER[name].runs(cfg) else absent(PRODUCER[name]) for name in step.inputs}


def absent(producer: Step) -> Any:
    """What a stage receives for the output of `producer` where the config does not run it."""
    return [] if producer.over else None


def cli_value(value: Any) -> str:
    """An item value as its command-line flag takes it: subset ids as "0,1,2"."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def cli_args(item: dict[str, Any]) -> list[str]:
    return [part for key, value in item.items() for part in (f"--{key.replace('_', '-')}", cli_value(value))]


def location(layout: Layout, step: Step, item: dict[str, Any]) -> str:
    where = getattr(layout, step.location)
    return where(**item) if step.over else where


def fanout_items(cfg: Config, num_classes: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """The fan-outs' items as workflow engines iterate them (JSON values, subset ids as "0,1,2"): those
    the config decides, and with the number of classes also those select-subsets decides."""
    return {f.name: [{k: cli_value(v) if isinstance(v, list) else v for k, v in item.items()} for item in f.items(cfg, num_classes)]
            for f in FANOUTS.values() if f.source == "config" or num_classes is not None}


# ----------------------------------------------------------------------------------------
# Where each artifact lives under one root (the CLI's --out; the DAG passes URIs explicitly)
# ----------------------------------------------------------------------------------------


class Layout:
    def __init__(self, root: str):
        self.root = root.rstrip("/")

    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def data(self) -> str:
        return self._join("data")

    def teacher(self, arch: str) -> str:
        return self._join("teachers", arch)

    def teachers(self, cfg: Config) -> list[str]:
        return [self.teacher(a) for a in cfg.teachers.archs]

    @property
    def subsets(self) -> str:
        return self._join("subsets")

    @property
    def ufc_shards(self) -> str:
        """The folder every UFC shard artifact lives in."""
        return self._join("ufc")

    def ufc(self, subset_ids: list[int]) -> str:
        return f"{self.ufc_shards}/subsets-{min(subset_ids):04d}-{max(subset_ids):04d}"

    @property
    def distilled(self) -> str:
        return self._join("distilled")

    def student(self, arch: str, seed: int, label_mode: str) -> str:
        return self._join("students", f"{arch}-{label_mode}-seed{seed}")

    def students(self, cfg: Config) -> list[str]:
        return [self.student(r["arch"], r["seed"], r["label_mode"]) for r in cfg.student_runs()]

    def baseline(self, arch: str, seed: int, baseline: str) -> str:
        return self._join("baselines", f"{baseline}-{arch}-seed{seed}")

    def baselines(self, cfg: Config) -> list[str]:
        return [self.baseline(r["arch"], r["seed"], r["baseline"]) for r in cfg.baseline_runs()]

    def method_set(self, method: str) -> str:
        return self._join("methods", method)

    def method_sets(self, cfg: Config) -> list[str]:
        return [self.method_set(m) for m in cfg.peer_methods()]

    def method_score(self, method: str, score: str, protocol: str, arch: str, seed: int) -> str:
        return self._join("method-scores", f"{method}-{score}-{protocol}-{arch}-seed{seed}")

    def method_scores(self, cfg: Config) -> list[str]:
        return [self.method_score(**r) for r in cfg.method_runs()]

    def full_data(self, arch: str) -> str:
        return self._join("full-data", arch)

    def full_data_refs(self, cfg: Config) -> list[str]:
        return [self.full_data(**r) for r in cfg.full_data_runs()]

    @property
    def report(self) -> str:
        return self._join("report")


def plan_ufc_shards(cfg: Config, layout: Layout, num_classes: int) -> list[tuple[list[int], str]]:
    """The UFC shards a run under `layout` reads, as (subset ids, artifact URI), ordered by subset.

    Shard size is placement, not a setting (config.PLACEMENT): finished shards are reused
    whatever their grouping, and only subsets no current shard covers are synthesised, grouped
    as `cfg.shard_plan` groups them. Every walker asks this function, so changing
    `synthesis.subsets_per_shard` after a finished synthesis recomputes nothing.

    Current shards under `layout.ufc_shards` are taken greedily while they cover only subsets
    not yet covered: first those at the current plan's locations, then larger before smaller.
    A shard returned may not exist yet (or be stale): `is_current` says which to run.
    """
    planned = {layout.ufc(ids) for ids in cfg.shard_plan(num_classes)}
    inputs = {"data": layout.data, "subsets": layout.subsets, "teachers": layout.teachers(cfg)}
    finished = []
    for art in open_artifact(layout.ufc_shards).children():
        try:
            ids = art.read_manifest()["settings"]["subset_ids"]
        except (ArtifactError, KeyError, TypeError):
            continue  # not a readable shard: the location is rewritten if the plan needs it
        if _stages().is_current(art.uri, cfg, "synthesize-ufc", inputs, subset_ids=ids):
            finished.append((ids, art.uri))
    finished.sort(key=lambda shard: (shard[1] not in planned, -len(shard[0]), shard[0]))
    chosen: list[tuple[list[int], str]] = []
    covered: set[int] = set()
    for ids, uri in finished:
        if covered.isdisjoint(ids):
            chosen.append((ids, uri))
            covered.update(ids)
    for ids in cfg.shard_plan(num_classes):
        missing = [k for k in ids if k not in covered]
        if missing:
            chosen.append((missing, layout.ufc(missing)))
    return sorted(chosen)


# ----------------------------------------------------------------------------------------
# The in-process walk
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    stage: str
    label: str          # the fan-out item, e.g. "resnet18" or "subsets 0..2"; "" for single steps
    uri: str
    seconds: float      # 0.0 when skipped
    skipped: bool       # its artifact was current: not run again
    manifest: dict


def num_classes_of(data: str) -> int:
    """The number of classes a prepare-data artifact at `data` records."""
    return DataMetrics.from_manifest(open_artifact(data).read_manifest(), data).num_classes


def step_items(step: Step, cfg: Config, layout: Layout, num_classes: Callable[[], int]) -> list[dict[str, Any]]:
    """The items a walk under `layout` runs `step` for ([{}] for a single step); `num_classes` is asked only when needed."""
    if not step.runs(cfg):
        return []
    if step.over is None:
        return [{}]
    if step.over.resumed_items:
        return step.over.resumed_items(cfg, layout, num_classes())
    return step.over.items(cfg, num_classes() if step.over.source != "config" else None)


def run_item(cfg: Config, step: Step, item: dict[str, Any], inputs: dict[str, Any], uri: str,
             progress: bool = True) -> StepResult:
    """One item of one step: skipped when its artifact is current, else run into `uri`."""
    label = step.over.label(item) if step.over else ""
    # Current: same settings, intact files, made from the inputs now there (a remade input makes it stale).
    if not step.always and _stages().is_current(uri, cfg, step.name, inputs, **item):
        return StepResult(step.name, label, uri, 0.0, True, open_artifact(uri).read_manifest())
    # (only stages with long loops take progress)
    show = {"progress": progress} if "progress" in inspect.signature(step.function).parameters else {}
    started = time.perf_counter()
    manifest = step.function(cfg, **item, **inputs, **show, out=uri)
    return StepResult(step.name, label, uri, time.perf_counter() - started, False, manifest)


def run_in_process(cfg: Config, root: str, progress: bool = True,
                   on_step: Callable[[StepResult], None] | None = None, jobs: int = 1,
                   devices: tuple[str, ...] = (), force_unlock: bool = False) -> dict:
    """Run (or resume) every step of PLAN under `root`; returns the report's manifest.

    A step whose artifact is current (`stages.is_current`: same settings) is skipped, so a killed
    run picks up where it stopped. `on_step` is called after every step, run or skipped. With one
    job the steps run in this process in PLAN's order; with more, independent steps run side by
    side in worker processes (infer_distill.executor). The walk holds the root's lock
    (`lock.run_lock`: one run per root; `force_unlock` removes a stuck one), and refuses, before
    any work, a root where a location it would write holds something it did not write there.
    """
    from .executor import Walk, run_walks
    from .stages import preflight

    preflight(cfg, [root])
    layout = Layout(root)
    with run_lock(root, force_unlock):
        _check_replaceable(cfg, layout)
        run_walks([Walk("run", cfg, root)], jobs, devices, progress,
                  on_step=(lambda _walk, result: on_step(result)) if on_step else None)
        return open_artifact(layout.report).read_manifest()


def _check_replaceable(cfg: Config, layout: Layout) -> None:
    """Refuse a walk that would replace what it did not write, before its first step: every location whose
    items the config decides, and the shards too when the number of classes is known (a built-in
    dataset, or a readable data artifact); the write itself refuses any other (`Artifact.write`)."""
    known = KNOWN_NUM_CLASSES.get(cfg.dataset.name)
    if known is None:
        try:
            known = num_classes_of(layout.data)
        except ArtifactError:
            known = None
    for step in PLAN:
        if not step.runs(cfg) or (step.over is not None and step.over.source != "config" and known is None):
            continue
        for item in (step.over.items(cfg, known) if step.over else [{}]):
            open_artifact(location(layout, step, item)).check_replaceable(step.name)
