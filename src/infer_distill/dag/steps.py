"""The INFER DAG, written down once: every way of running it is derived from `PLAN`.

    prepare-data -> train-teacher (one per teacher) --+-> synthesize-ufc (one per shard) -> soft-label
                 -> select-subsets -------------------+      -> evaluate-student (one per student run) --+-> report
                                                      +-> evaluate-baseline (one per baseline run) -----+
    (and the peer methods: distill-method -> evaluate-method; the full-data reference: evaluate-full-data)

Every engine reads it (infer_distill.engines): the walks in this process or in N workers
(`infer-distill run`), the `stage` command that Argo and compose pods call, and the Kubeflow
pipeline; engines.argo and engines.compose render it for Argo and docker compose (`infer-distill render`).

A step is one stage function (`Step.module`, named after the step); the CLI runs it as
`infer-distill stage <name>`. Its inputs name the outputs of earlier steps (the stage function's
arguments), so the edges of the DAG follow from them. A fan-out step runs once per item; an
item's keys are the stage's own keys and, as `--key-name value`, its command-line flags.
Whatever an engine does differently for one step is a field of that step here, never a test of
its name elsewhere.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import infer_distill.dag.artifact_settings as artifact_settings  # (not `from infer_distill.dag import`: the package imports this module)
from infer_distill.config.schema import Config
from infer_distill.dag.layout import Layout
from infer_distill.errors import ConfigError

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
    # A walk that resumes under a run root reuses every finished artifact of this fan-out, whatever
    # grouping made it (engines.runner.plan_ufc_shards), instead of the config's items.
    reuses_finished: bool = False


TEACHERS = FanOut("teachers", ("arch",), lambda cfg, _: [{"arch": a} for a in cfg.teachers.archs], lambda i: i["arch"])
# Engines start each run afresh: the config's shard plan. A resumed walk reuses every finished shard,
# whatever grouping made it, so resharding recomputes nothing.
SHARDS = FanOut("shards", ("subset_ids",), lambda cfg, c: [{"subset_ids": ids} for ids in cfg.shard_plan(c)],
                lambda i: f"subsets {i['subset_ids'][0]}..{i['subset_ids'][-1]}", source="select-subsets",
                reuses_finished=True)
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
    name: str                     # the stage: `infer-distill stage <name>`, the function <name_with_underscores>
    output: str                   # what later steps receive its artifact(s) as (a stage argument, a CLI flag)
    location: str                 # the `Layout` attribute of its artifact (called with the item's keys)
    inputs: tuple[str, ...] = ()  # outputs of earlier steps it reads
    over: FanOut | None = None
    gpu: bool = False             # needs an accelerator on a cluster
    reads_dataset: bool = False   # reads the dataset source itself (on a cluster: the pod that mounts the data volume)
    always: bool = False          # rerun even when current (the report: cheap, and must reflect every artifact)
    # Reads nothing but the dataset and its own settings: walks of several configs (a benchmark's variants)
    # share one artifact per setting in a pool.
    pooled: bool = False
    # Its manifest is the run's result: a walk returns it (the report).
    final: bool = False
    # Runs only for configs where this holds (INFER's own steps: when `methods` has infer); every engine
    # leaves the step out otherwise, and its consumers get no such input (None, or [] from a fan-out).
    when: Callable[[Config], bool] | None = None
    retry: RetryPolicy = field(default=RETRY)
    # Kubeflow: the artifact type of its output (the UI shows datasets and models as such); the name of the
    # one artifact its fan-out's outputs are gathered into where a later fan-out reads them (KFP cannot pass a
    # collected list into a ParallelFor); the pages of its artifact the UI shows (output name: (type, file)).
    artifact_type: str = "Artifact"
    gathered_as: str | None = None
    ui_pages: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Where its stage function lives (the function is named after the step): imported only when it runs.
    module: str = "infer_distill.stages"
    # The settings its artifact depends on, from the config and the item's keys (dag.artifact_settings): equal
    # settings mean interchangeable artifacts, so a current one is skipped.
    settings: Callable[..., dict] = field(kw_only=True)

    def runs(self, cfg: Config) -> bool:
        return self.when is None or self.when(cfg)

    @property
    def function_name(self) -> str:
        return self.name.replace("-", "_")


s = artifact_settings
PLAN: list[Step] = [
    Step("prepare-data", "data", "data", reads_dataset=True, pooled=True, artifact_type="Dataset", settings=s.data_settings),
    Step("train-teacher", "teachers", "teacher", ("data",), over=TEACHERS, gpu=True, pooled=True, artifact_type="Model",
         gathered_as="teacher_set", settings=s.teacher_settings),
    Step("select-subsets", "subsets", "subsets", ("data",), when=Config.runs_infer, settings=s.subset_settings),
    Step("synthesize-ufc", "ufc", "ufc", ("data", "subsets", "teachers"), over=SHARDS, gpu=True, when=Config.runs_infer,
         settings=s.ufc_settings),
    Step("soft-label", "distilled", "distilled", ("data", "subsets", "teachers", "ufc"), when=Config.runs_infer,
         artifact_type="Dataset", settings=s.distilled_settings),
    Step("evaluate-student", "students", "student", ("data", "distilled", "teachers"), over=STUDENTS, gpu=True,
         when=Config.runs_infer, artifact_type="Model", settings=s.student_settings),
    Step("evaluate-baseline", "baselines", "baseline", ("data", "subsets", "teachers"), over=BASELINES, gpu=True,
         when=Config.runs_infer, artifact_type="Model", settings=s.baseline_settings),
    Step("distill-method", "methods", "method_set", ("data", "teachers"), over=METHOD_SETS, gpu=True, artifact_type="Dataset",
         gathered_as="method_sets", settings=s.method_set_settings),
    Step("evaluate-method", "method_scores", "method_score", ("data", "distilled", "methods"), over=METHOD_RUNS, gpu=True,
         settings=s.method_score_settings),
    Step("evaluate-full-data", "full_data", "full_data", ("data",), over=FULL_DATA, gpu=True, settings=s.full_data_settings),
    Step("report", "report", "report", ("data", "teachers", "ufc", "distilled", "students", "baselines", "method_scores",
                                        "full_data", "methods"), always=True, final=True,
         ui_pages={"summary": ("Markdown", "report.md"), "page": ("HTML", "report.html")}, settings=s.report_settings),
]
del s
# Indexes of the plan, kept in step with it by add_step and remove_step (every engine reads them when it runs).
STEPS: dict[str, Step] = {s.name: s for s in PLAN}
STAGES: list[str] = list(STEPS)  # `infer-distill stage NAME`'s names, in run order
PRODUCER: dict[str, Step] = {s.output: s for s in PLAN}


def add_step(step: Step, after: str) -> None:
    """Add `step` to the plan, after the step named `after`. Every engine reads the plan when it runs, so this is
    all a new step needs beyond its stage function (`step.module`), its settings function and its metrics class
    (a `dag.metrics.StageMetrics` subclass with `kind = step.name`): the CLI's `stage` command, the walks,
    the Kubeflow components (`engines.kfp.generate`) and the Argo and compose renderings pick it up. A single
    step's artifact is the folder `step.location` under a run root unless `Layout` names it otherwise."""
    if step.name in STEPS or step.output in PRODUCER:
        raise ValueError(f"the plan already has a step named {step.name!r} or producing {step.output!r}")
    missing = [i for i in step.inputs if i not in PRODUCER]
    if missing or after not in STEPS:
        raise ValueError(f"step {step.name}: no step produces {', '.join(missing)}" if missing else f"no step named {after!r}")
    at = PLAN.index(STEPS[after]) + 1
    if any(PLAN.index(PRODUCER[i]) >= at for i in step.inputs):
        raise ValueError(f"step {step.name} must come after the steps producing its inputs {', '.join(step.inputs)}")
    PLAN.insert(at, step)
    _reindex()


def remove_step(name: str) -> None:
    """Take the step `name` out of the plan again (one that `add_step` added; no other step may read its output)."""
    readers = [s.name for s in PLAN if STEPS[name].output in s.inputs]
    if readers:
        raise ValueError(f"steps {', '.join(readers)} read the output of {name}")
    PLAN.remove(STEPS[name])
    _reindex()


def _reindex() -> None:
    STEPS.clear()
    STEPS.update((s.name, s) for s in PLAN)
    STAGES[:] = list(STEPS)
    PRODUCER.clear()
    PRODUCER.update((s.output, s) for s in PLAN)


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
    """Where the artifact of `step` for `item` lives under `layout`: its `Layout` attribute, called with the item's
    keys for a fan-out; a single step `Layout` does not name keeps its artifact in the folder `step.location`."""
    if not hasattr(layout, step.location) and not step.over:
        return layout.folder(step.location)
    where = getattr(layout, step.location)
    return where(**item) if step.over else where


def artifact_folders(layout: Layout) -> list[str]:
    """The folders of a run root that hold its artifacts: the root (each single step's artifact) and the folder of each
    fan-out step's items, whatever items a config gives it (found from the step's `Layout` location, called with an
    item of placeholder values of the types it declares)."""
    placeholder = {"int": 0, "str": "item", "list[int]": [0]}
    folders = [layout.root]
    for step in PLAN:
        if step.over:
            parameters = inspect.signature(getattr(layout, step.location)).parameters
            item = {k: placeholder[str(parameters[k].annotation)] for k in step.over.keys}
            folders.append(location(layout, step, item).rpartition("/")[0])
    return list(dict.fromkeys(folders))


def fed_fanouts(step: Step) -> list[FanOut]:
    """The fan-outs whose items `step` decides (select-subsets: the shards), which engines that fan out at run
    time read from it."""
    return [f for f in FANOUTS.values() if f.source == step.name]


def final_step() -> Step:
    """The step whose manifest is a run's result (the report)."""
    return next(s for s in PLAN if s.final)


def fanout_items(cfg: Config, num_classes: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """The fan-outs' items as workflow engines iterate them (JSON values, subset ids as "0,1,2"): those
    the config decides, and with the number of classes also those select-subsets decides."""
    return {f.name: [{k: cli_value(v) if isinstance(v, list) else v for k, v in item.items()} for item in f.items(cfg, num_classes)]
            for f in FANOUTS.values() if f.source == "config" or num_classes is not None}


def parallel_width(cfg: Config, num_classes: int | None = None) -> int:
    """The most items of the plan that can run at once: steps grouped by how many steps lie before them on the
    longest chain, and the widest group's items counted. A fan-out whose items depend on the number of classes
    (the UFC shards) counts as one item while that number is unknown. What `infer-distill run` sizes its workers by.
    """
    depth: dict[str, int] = {}
    items: dict[int, int] = {}
    for step in PLAN:  # in the plan's order: every producer before its consumers
        if not step.runs(cfg):
            continue
        depth[step.name] = 1 + max((depth.get(PRODUCER[i].name, 0) for i in step.inputs), default=0)
        count = 1
        if step.over is not None and (step.over.source == "config" or num_classes is not None):
            count = len(step.over.items(cfg, num_classes))
        items[depth[step.name]] = items.get(depth[step.name], 0) + count
    return max(items.values(), default=1)
