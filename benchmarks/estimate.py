"""The GPU time of a benchmark command, from the per-step costs a GPU run measured.

    python -m benchmarks.run --profile cifar10-paper --variants ipc10-one-gpu --device cuda --jobs 8 --estimate

Every figure comes from a results file of an earlier GPU run (default: the first one,
benchmarks/results/gpu/cifar10-h100.json, which ran every step one at a time on one H100), and
is scaled to the command's config by the quantity its cost grows with:

- prepare-data, select-subsets, soft-label, report: the step's measured seconds, as they were;
- train-teacher: seconds per optimiser step of that architecture (the step's seconds over its
  epochs x ceil(training images / batch)), times the config's steps; set-up and the test pass
  are spread over the steps, so more epochs than measured are over-estimated (the first run's
  own steady-state step times put EfficientNet-B0's 20 epochs at 99 s where this gives 150 s);
- synthesize-ufc: seconds per iteration of the grouped shape measured (K subsets x M teachers in
  one call), times the config's iterations; other shapes were never measured and are refused;
- evaluate-student, evaluate-baseline: seconds per optimiser step of each label mode and baseline
  (mean over the measured seeds; evaluations every `eval_every` epochs spread over the steps, so
  only the same `eval_every` is accepted), times the config's steps.

An architecture, batch size or shape the run did not measure is refused, naming it: no cost is guessed.

Then the plan's items (dag.PLAN, as the executor walks it: a step starts once the steps it
reads from have finished, its items queue in order) are scheduled on `jobs` workers sharing one
GPU. How much sharing gains was never measured, so it is a parameter, the gain g: with k items
running, each advances at min(1, g / k) of its speed alone. g = 1 is a GPU that does no more
together than one item at a time (the sum of the work, an upper bound); g = jobs is sharing
that costs nothing (the critical path over the workers, a lower bound). The estimate gives both,
and the least gain at which the command fits its target: what the first run of the command
measures (its results record each stage's GPU busy fraction, from which the gain follows).
Not included: starting the worker processes (each imports torch and creates its CUDA context).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from infer_distill import dag
from infer_distill.config.schema import Config
from infer_distill.dag.artifact_settings import fingerprint
from infer_distill.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
MEASURED = REPO / "benchmarks" / "results" / "gpu" / "cifar10-h100.json"
FIXED_STAGES = ("prepare-data", "select-subsets", "soft-label", "report")


@dataclass(frozen=True)
class Costs:
    """Seconds of one item alone on the measuring GPU, per unit of what it scales with."""
    source: str                              # the results file
    gpu: str
    fixed_s: dict[str, float]                # stage -> seconds of its one item
    teacher_step_s: dict[str, float]         # arch -> seconds per optimiser step
    teacher_batch: int
    train_images: int
    synthesis_iter_s: float                  # one iteration of the grouped call
    synthesis_shape: tuple[int, int]         # (K subsets, M teachers) of that call
    student_step_s: dict[str, float]         # label mode or baseline -> seconds per optimiser step
    student_arch: str
    eval_every: int
    image_numel: int
    num_classes: int
    how: list[str] = field(default_factory=list)  # where each figure comes from


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def measured_costs(path: Path = MEASURED) -> Costs:
    """The per-step costs of the GPU run recorded in `path` (schema infer-distill-gpu-benchmark/1)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no measured GPU run to estimate from")
    run = json.loads(path.read_text())
    if run.get("schema") != "infer-distill-gpu-benchmark/1":
        raise ConfigError(f"{path}: schema {run.get('schema')!r}, not infer-distill-gpu-benchmark/1")
    (name, prof), = [(n, p) for n, p in run["profiles"].items() if p.get("accuracy")]
    proto, ds = prof["protocol"], prof["distilled_set"]
    ran = [s for s in run["times"]["steps"] if not s["skipped"] and s["scope"] in (name, *run["pools"])]
    rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    how = [f"{rel}: {run['machine']['gpu']}, every step one at a time ({name})"]

    fixed = {}
    for stage in FIXED_STAGES:
        seconds = [s["seconds"] for s in ran if s["stage"] == stage]
        fixed[stage] = seconds[-1]  # the report: the last one, over every run
        how.append(f"{stage}: {fixed[stage]:.2f} s, as measured")

    image_numel = ds["stored_bytes_by_tensor"]["natural"] // ds["num_natural"]  # uint8: bytes = pixels x channels
    train_images = ds["train_bytes"] // image_numel
    t = proto["teachers"]
    teacher_steps = t["epochs"] * math.ceil(train_images / t["batch_size"])
    teacher = {s["label"]: s["seconds"] / teacher_steps for s in ran if s["stage"] == "train-teacher"}
    how += [f"train-teacher {arch}: {teacher[arch] * teacher_steps:.2f} s / ({t['epochs']} epochs x "
            f"{math.ceil(train_images / t['batch_size'])} steps of {t['batch_size']}) = {1000 * teacher[arch]:.2f} ms per step"
            for arch in teacher]

    (synth,) = [s for s in ran if s["stage"] == "synthesize-ufc"]
    shape = tuple(prof["speed"]["pipeline_synthesis"][0]["ufc_shape"][:2])
    iters = proto["synthesis"]["iterations"]
    how.append(f"synthesize-ufc ({shape[0]} subsets x {shape[1]} teachers, one call): {synth['seconds']:.2f} s / "
               f"{iters} iterations = {1000 * synth['seconds'] / iters:.1f} ms per iteration")

    s_cfg = proto["students"]
    per_epoch = math.ceil(ds["num_instances"] / s_cfg["batch_size"])
    student = {}
    for mode, epochs in (("static", s_cfg["epochs"]), ("dynamic", s_cfg["epochs_dynamic"])):
        seconds = [s["seconds"] for s in ran if s["stage"] == "evaluate-student" and f" {mode} " in s["label"]]
        student[mode] = _mean(seconds) / (epochs * per_epoch)
        how.append(f"evaluate-student {mode}: mean of {', '.join(f'{x:.2f}' for x in seconds)} s / ({epochs} epochs x "
                   f"{per_epoch} steps) = {1000 * student[mode]:.2f} ms per step")
    for baseline in ("random_soft", "random_soft_steps"):
        seconds = [s["seconds"] for s in ran if s["stage"] == "evaluate-baseline" and s["label"].startswith(baseline + " ")]
        steps = prof["accuracy"][baseline]["steps"]
        student[baseline] = _mean(seconds) / steps
        how.append(f"evaluate-baseline {baseline}: mean of {', '.join(f'{x:.2f}' for x in seconds)} s / {steps} steps "
                   f"= {1000 * student[baseline]:.2f} ms per step")
    return Costs(str(rel), run["machine"]["gpu"], fixed, teacher, t["batch_size"], train_images, synth["seconds"] / iters,
                 shape, student, s_cfg["archs"][0], s_cfg["eval_every"], image_numel, prof["num_classes"], how)


# ----------------------------------------------------------------------------------------
# One item's seconds
# ----------------------------------------------------------------------------------------


def _refuse(what: str, costs: Costs) -> ConfigError:
    return ConfigError(f"{what}: no such cost was measured in {costs.source}; the estimate covers what that run measured")


def _teacher(costs: Costs, cfg: Config, item: dict) -> float:
    arch = item["arch"]
    if arch not in costs.teacher_step_s:
        raise _refuse(f"teacher {arch}", costs)
    if cfg.teachers.batch_size != costs.teacher_batch:
        raise _refuse(f"teachers.batch_size={cfg.teachers.batch_size} (measured: {costs.teacher_batch})", costs)
    return costs.teacher_step_s[arch] * cfg.teachers.epochs * math.ceil(costs.train_images / cfg.teachers.batch_size)


def _synthesis(costs: Costs, cfg: Config, item: dict) -> float:
    shape = (len(item["subset_ids"]), len(cfg.teachers.archs))
    if shape != costs.synthesis_shape:
        raise _refuse(f"synthesis of {shape[0]} subsets x {shape[1]} teachers in one call "
                      f"(measured: {costs.synthesis_shape[0]} x {costs.synthesis_shape[1]})", costs)
    return costs.synthesis_iter_s * cfg.synthesis.iterations


def _check_student(costs: Costs, cfg: Config, arch: str) -> None:
    if arch != costs.student_arch or cfg.students.eval_every != costs.eval_every:
        raise _refuse(f"student {arch} evaluated every {cfg.students.eval_every} epochs "
                      f"(measured: {costs.student_arch}, every {costs.eval_every})", costs)


def _student(costs: Costs, cfg: Config, item: dict) -> float:
    _check_student(costs, cfg, item["arch"])
    mode = item["label_mode"]
    per_epoch = cfg.infer_static_steps(costs.num_classes) // cfg.students.epochs
    return costs.student_step_s[mode] * cfg.students.epochs_for(mode) * per_epoch


def _baseline(costs: Costs, cfg: Config, item: dict) -> float:
    _check_student(costs, cfg, item["arch"])
    C = costs.num_classes
    examples = cfg.baseline_per_class(C, costs.image_numel) * C
    steps = cfg.baseline_epochs(item["baseline"], examples, C) * math.ceil(examples / cfg.students.batch_size)
    return costs.student_step_s[item["baseline"]] * steps


# What each stage's item costs grows with (the stages of FIXED_STAGES cost what they cost); a stage missing here was
# never measured.
SCALED = {"train-teacher": _teacher, "synthesize-ufc": _synthesis, "evaluate-student": _student, "evaluate-baseline": _baseline}


def item_seconds(costs: Costs, cfg: Config, stage: str, item: dict) -> float:
    """Seconds of one item of `stage` for `cfg`, alone on the measuring GPU."""
    if stage in costs.fixed_s:
        return costs.fixed_s[stage]
    if stage not in SCALED:
        raise _refuse(f"stage {stage}", costs)
    return SCALED[stage](costs, cfg, item)


# ----------------------------------------------------------------------------------------
# The plan on workers sharing one GPU
# ----------------------------------------------------------------------------------------


@dataclass
class _Item:
    stage: str
    work: float
    left: float
    waiters: list = field(default_factory=list)   # (walk index, step name)
    start: float | None = None
    end: float | None = None


def schedule(cfgs: list[Config], jobs: int, gain: float, costs: Costs) -> tuple[float, dict[str, _Item]]:
    """Walk every config's plan as the executor does, on `jobs` workers sharing the GPU with sharing gain `gain`;
    returns the wall seconds and every item (a pooled item that several configs share runs once)."""
    if jobs < 1 or gain < 1:
        raise ConfigError(f"jobs {jobs}, gain {gain}: both must be at least 1")
    items: dict[str, _Item] = {}
    queue: list[str] = []
    done: list[set[str]] = [set() for _ in cfgs]
    started: list[set[str]] = [set() for _ in cfgs]
    pending: list[dict[str, int]] = [{} for _ in cfgs]
    running: list[str] = []
    now = 0.0

    def finish_one(w: int, step: str) -> None:
        pending[w][step] -= 1
        if pending[w][step] == 0:
            done[w].add(step)

    def start_ready() -> None:
        progressed = True
        while progressed:
            progressed = False
            for w, cfg in enumerate(cfgs):
                for step in dag.PLAN:
                    if step.name in started[w] or not all(dag.PRODUCER[i].name in done[w] for i in step.inputs):
                        continue
                    started[w].add(step.name)
                    progressed = True
                    its = ([] if not step.runs(cfg) else [{}] if step.over is None
                           else step.over.items(cfg, costs.num_classes))
                    pending[w][step.name] = len(its)
                    if not its:
                        done[w].add(step.name)
                    for n, item in enumerate(its):
                        key = (f"{step.name}:{fingerprint(dag.settings(cfg, step.name, **item))}" if step.pooled
                               else f"{w}:{step.name}:{n}")
                        if key not in items:
                            work = item_seconds(costs, cfg, step.name, item)
                            items[key] = _Item(step.name, work, work)
                            queue.append(key)
                        if items[key].end is not None:
                            finish_one(w, step.name)
                        else:
                            items[key].waiters.append((w, step.name))

    while True:
        start_ready()
        while queue and len(running) < jobs:
            key = queue.pop(0)
            items[key].start = now
            running.append(key)
        if not running:
            break
        rate = min(1.0, gain / len(running))
        dt = min(items[k].left for k in running) / rate
        now += dt
        for key in list(running):
            item = items[key]
            item.left -= dt * rate
            if item.left <= 1e-9:
                item.end = now
                running.remove(key)
                for w, step in item.waiters:
                    finish_one(w, step)
    return now, items


def break_even_gain(cfgs: list[Config], jobs: int, costs: Costs, target_s: float) -> float | None:
    """The least sharing gain at which the walk takes at most `target_s`; None when even free sharing does not fit."""
    if schedule(cfgs, jobs, float(jobs), costs)[0] > target_s:
        return None
    lo, hi = 1.0, float(jobs)
    if schedule(cfgs, jobs, lo, costs)[0] <= target_s:
        return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if schedule(cfgs, jobs, mid, costs)[0] <= target_s else (mid, hi)
    return hi


def estimate(cfgs: list[Config], jobs: int, target_s: float | None, command: str, costs: Costs | None = None,
             gains: tuple[float, ...] = (2.0, 4.0)) -> dict:
    """The command's GPU time: per stage and in all, with no sharing gain, some, and free sharing; the break-even gain."""
    costs = costs or measured_costs()
    worst, items = schedule(cfgs, jobs, 1.0, costs)
    best, best_items = schedule(cfgs, jobs, float(jobs), costs)
    stages: dict[str, dict] = {}
    for key, item in items.items():
        s = stages.setdefault(item.stage, {"items": 0, "work_s": 0.0})
        s["items"] += 1
        s["work_s"] += item.work
    for key, item in best_items.items():  # when each stage runs if sharing were free
        s = stages[item.stage]
        s["start_s"] = min(s.get("start_s", math.inf), item.start)
        s["end_s"] = max(s.get("end_s", 0.0), item.end)
    walls = {"1": worst, **{f"{g:g}": schedule(cfgs, jobs, g, costs)[0] for g in gains if 1 < g < jobs}, f"{jobs}": best}
    return {
        "command": command, "jobs": jobs, "target_s": target_s, "measured_on": costs.gpu, "measured_in": costs.source,
        "how": costs.how, "work_s": round(sum(i.work for i in items.values()), 1),
        "stages": {k: {kk: round(v, 1) if isinstance(v, float) else v for kk, v in s.items()} for k, s in stages.items()},
        "wall_s_by_gain": {g: round(w, 1) for g, w in walls.items()},
        "break_even_gain": None if target_s is None or (g := break_even_gain(cfgs, jobs, costs, target_s)) is None else round(g, 2),
        "not_included": "starting the worker processes (each imports torch and creates its CUDA context)",
    }


def format_estimate(est: dict) -> str:
    """The estimate as text: where each figure comes from, the stages, the totals."""
    lines = [f"Estimated GPU time of: {est['command']}", f"from the per-step costs measured on {est['measured_on']}:"]
    lines += [f"  {h}" for h in est["how"]]
    lines += ["", f"{'stage':<20} {'items':>5} {'work s':>8} {'runs at s (free sharing)':>26}"]
    for stage, s in est["stages"].items():
        lines.append(f"{stage:<20} {s['items']:>5} {s['work_s']:>8.1f} {s['start_s']:>12.1f} .. {s['end_s']:<8.1f}")
    lines += ["", f"work, one item after another: {est['work_s']:.1f} s"]
    lines += [f"wall on {est['jobs']} workers sharing one GPU, sharing gain {g}: {w:.1f} s ({w / 60:.1f} min)"
              + (" (no gain: an upper bound)" if g == "1" else " (free sharing: a lower bound)" if g == str(est["jobs"]) else "")
              for g, w in est["wall_s_by_gain"].items()]
    g = est["break_even_gain"]
    if est["target_s"] is not None:
        lines.append(f"target {est['target_s']:.0f} s: " + ("not reached even with free sharing" if g is None
                     else f"reached from a sharing gain of {g:.2f}"))
    lines.append(f"not included: {est['not_included']}")
    return "\n".join(lines)
