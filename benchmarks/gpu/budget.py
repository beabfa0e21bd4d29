"""Sizing a run to a wall-time budget from costs measured on the machine (calibrate.py).

Every part's time is predicted from seconds per step measured on this device (a training step of
each teacher and of the student, an evaluation, a synthesis iteration grouped and one UFC at a
time) times the number of steps the protocol implies. With a budget, the planner keeps the full
protocol where it can and gives the teachers every epoch the rest leaves (up to the config's
epochs). Only if that leaves them fewer than `MIN_TEACHER_EPOCHS` does it give things up, one at
a time, in this order, until the teachers get them:

 1. the speed measurement times 100 synthesis iterations, not all of them (the speed-up is a
    ratio of per-iteration times, extrapolated linearly to the full count);
 2. seeds, one at a time, of the profile whose seed costs most (ipc 50 before ipc 10), down to
    one seed; then the next profile;
 3. the students with dynamic labels (INFER+Dyn), costliest profile first;
 4. the equal-steps baseline (random_soft_steps), costliest profile first;
 5. student epochs halved (400 / 80 -> 200 / 40);
 6. synthesis iterations halved (1000 -> 500);
 7. student epochs a quarter of the config's (100 / 20);
 8. synthesis iterations a quarter (250);
 9. the speed measurement at 20 iterations;
10. teachers under the minimum: whatever fits, at least one epoch.

Once the teachers get their minimum, what was given up before the last step is given back,
most valuable first (the reverse order), wherever it still leaves the teachers their minimum.

Predictions include a safety factor (`SAFETY`); every reduction is recorded with its reason.
The runner checks the clock between steps with these predictions, corrected by what the
finished steps actually took, and skips (and records) a step that cannot finish in time.

This module is plain arithmetic (no torch), so its tests run anywhere.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

SAFETY = 1.15
MIN_TEACHER_EPOCHS = 8
SPEED_WARMUP_ITERATIONS = 3
SPEED_ITERATIONS_REDUCED = (100, 20)


@dataclass(frozen=True)
class PoolShape:
    """A data and teacher pool: what one teacher epoch and the teachers' evaluation involve."""

    name: str
    archs: tuple[str, ...]
    num_train: int
    num_test: int
    teacher_batch: int
    max_epochs: int          # the config's teacher epochs: the cap


@dataclass(frozen=True)
class ProfileShape:
    """What a profile's steps involve: K subsets, M teachers, C classes, the student's batches."""

    name: str
    pool: str
    K: int
    M: int
    C: int
    baseline_per_class: int
    student_batch: int
    eval_every: int
    num_test: int

    @property
    def instances(self) -> int:
        return self.K * (self.M + 1) * self.C


@dataclass
class Settings:
    """The knobs the planner turns for one profile."""

    seeds: list[int]
    dynamic: bool
    baselines: list[str]
    epochs: int
    epochs_dynamic: int
    iterations: int
    speed_iterations: int = 0   # 0: no speed measurement
    speed_sample: int = 4


# The config key behind each knob (speed.iterations is the benchmark's own: no config key).
CONFIG_KEYS = {"seeds": "students.seeds", "dynamic": "labels.modes", "baselines": "students.baselines",
               "epochs": "students.epochs", "epochs_dynamic": "students.epochs_dynamic", "iterations": "synthesis.iterations",
               "speed_iterations": "speed.iterations"}


@dataclass
class Costs:
    """Seconds measured on the machine (calibrate.py), keyed by pool or profile name."""

    teacher_step_s: dict[str, dict[str, float]]            # pool -> arch -> one training step at the teacher batch
    teacher_eval_s_per_image: dict[str, dict[str, float]]  # pool -> arch
    student_step_s: dict[str, dict[str, float]]            # pool -> static / dynamic (fast path) / plain (baselines)
    student_eval_s_per_image: dict[str, float]             # pool
    label_s_per_image: dict[str, float]                    # pool: the teachers' ensemble, one image
    step_overhead_s: dict[str, float]                      # pool: reading the data, loading models, writing, per step
    synthesis_iter_s: dict[str, float]                     # profile: one grouped iteration (K subsets x M teachers)
    synthesis_call_s: dict[str, float]                     # profile: set-up of one synthesis call
    single_iter_s: dict[str, dict[str, float]]             # profile -> arch: one iteration of one UFC (one subset, one teacher)
    pass_overhead_s: float = 2.0                           # one walk of the plan: re-checking finished artifacts, the report

    @classmethod
    def from_dict(cls, d: dict) -> Costs:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def evaluations(epochs: int, every: int) -> int:
    return epochs // every + (1 if epochs % every else 0)


class CostModel:
    """Predicted seconds of every part, without the safety factor."""

    def __init__(self, costs: Costs, pools: dict[str, PoolShape], profiles: dict[str, ProfileShape]):
        self.c, self.pools, self.profiles = costs, pools, profiles

    # ---- teachers ----------------------------------------------------------------------------
    def teacher_epoch(self, pool: str, arch: str) -> float:
        p = self.pools[pool]
        return math.ceil(p.num_train / p.teacher_batch) * self.c.teacher_step_s[pool][arch]

    def teacher(self, pool: str, arch: str, epochs: int) -> float:
        p = self.pools[pool]
        return epochs * self.teacher_epoch(pool, arch) + p.num_test * self.c.teacher_eval_s_per_image[pool][arch] \
            + self.c.step_overhead_s[pool]

    def teachers(self, pool: str, epochs: int) -> float:
        return sum(self.teacher(pool, a, epochs) for a in self.pools[pool].archs)

    # ---- one profile's steps -----------------------------------------------------------------
    def subsets(self, name: str) -> float:
        return self.c.step_overhead_s[self.profiles[name].pool]

    def synthesis(self, name: str, iterations: int) -> float:
        pool = self.profiles[name].pool
        return iterations * self.c.synthesis_iter_s[name] + self.c.synthesis_call_s[name] + self.c.step_overhead_s[pool]

    def labels(self, name: str) -> float:
        p = self.profiles[name]
        return p.instances * self.c.label_s_per_image[p.pool] + self.c.step_overhead_s[p.pool]

    def _train(self, p: ProfileShape, kind: str, epochs: int, images: int) -> float:
        steps = epochs * math.ceil(images / p.student_batch)
        evals = evaluations(epochs, p.eval_every) * p.num_test * self.c.student_eval_s_per_image[p.pool]
        return steps * self.c.student_step_s[p.pool][kind] + evals + self.c.step_overhead_s[p.pool]

    def student(self, name: str, mode: str, s: Settings) -> float:
        p = self.profiles[name]
        return self._train(p, mode, s.epochs_dynamic if mode == "dynamic" else s.epochs, p.instances)

    def baseline(self, name: str, baseline: str, s: Settings) -> float:
        p = self.profiles[name]
        images = p.baseline_per_class * p.C
        epochs = s.epochs
        if baseline == "random_soft_steps":  # as many optimiser steps as INFER's static student
            epochs = max(1, round(s.epochs * math.ceil(p.instances / p.student_batch) / math.ceil(images / p.student_batch)))
        return self._train(p, "plain", epochs, images) + images * self.c.label_s_per_image[p.pool]

    def report(self, name: str) -> float:
        return self.c.pass_overhead_s

    def speed(self, name: str, s: Settings) -> float:
        if not s.speed_iterations:
            return 0.0
        p = self.profiles[name]
        singles = self.c.single_iter_s[name]
        mean_single = sum(singles.values()) / len(singles)
        call = self.c.synthesis_call_s[name]
        warm = SPEED_WARMUP_ITERATIONS * (self.c.synthesis_iter_s[name] + sum(singles.values())) + (1 + p.M) * call
        return warm + s.speed_iterations * (self.c.synthesis_iter_s[name] + s.speed_sample * mean_single) \
            + (1 + s.speed_sample) * call + self.c.step_overhead_s[p.pool]

    # ---- passes ------------------------------------------------------------------------------
    def seed(self, name: str, s: Settings) -> float:
        """All runs of one seed: the static student, the dynamic one, the baselines."""
        return self.student(name, "static", s) + (self.student(name, "dynamic", s) if s.dynamic else 0.0) \
            + sum(self.baseline(name, b, s) for b in s.baselines)

    def core(self, name: str, s: Settings) -> float:
        """The first walk: subsets, synthesis, labels, the first seed's runs, the report."""
        return self.subsets(name) + self.synthesis(name, s.iterations) + self.labels(name) + self.seed(name, s) + self.report(name)

    def profile(self, name: str, s: Settings) -> float:
        return self.core(name, s) + (len(s.seeds) - 1) * (self.seed(name, s) + self.report(name)) + self.speed(name, s)

    def breakdown(self, settings: dict[str, Settings], epochs: int) -> dict:
        out: dict = {"teachers": {pool: {a: round(self.teacher(pool, a, epochs), 2) for a in shape.archs}
                                  for pool, shape in self.pools.items()}, "profiles": {}}
        for name, s in settings.items():
            out["profiles"][name] = {
                "subsets": round(self.subsets(name), 2), "synthesis": round(self.synthesis(name, s.iterations), 2),
                "labels": round(self.labels(name), 2),
                "student_static_per_seed": round(self.student(name, "static", s), 2),
                "student_dynamic_per_seed": round(self.student(name, "dynamic", s), 2) if s.dynamic else 0.0,
                "baselines_per_seed": {b: round(self.baseline(name, b, s), 2) for b in s.baselines},
                "report_per_walk": round(self.report(name), 2), "seeds": len(s.seeds),
                "speed": round(self.speed(name, s), 2), "total": round(self.profile(name, s), 2)}
        out["total"] = round(self.total(settings, epochs), 2)
        return out

    def total(self, settings: dict[str, Settings], epochs: int) -> float:
        return sum(self.teachers(pool, epochs) for pool in self.pools) + sum(self.profile(n, s) for n, s in settings.items())


# ----------------------------------------------------------------------------------------
# The planner
# ----------------------------------------------------------------------------------------


@dataclass
class Plan:
    teacher_epochs: int
    settings: dict[str, Settings]
    predicted: dict                          # CostModel.breakdown (seconds, no safety factor)
    predicted_total_s: float                 # with the safety factor
    time_left_s: float | None                # what the plan had to fit in (None: no budget)
    reductions: list[dict] = field(default_factory=list)   # what was given up, in order
    fits: bool = True

    def config_changes(self, name: str) -> dict:
        """The config keys this plan sets for profile `name` (all its seeds, label modes and baselines)."""
        s = self.settings[name]
        return {"teachers.epochs": self.teacher_epochs, "students.seeds": list(s.seeds),
                "labels.modes": ["static", "dynamic"] if s.dynamic else ["static"], "students.baselines": list(s.baselines),
                "students.epochs": s.epochs, "students.epochs_dynamic": s.epochs_dynamic, "synthesis.iterations": s.iterations}

    def reasons(self, budget_s: float, cap: int) -> list[tuple[str, str, str]]:
        """(profile, config key, why) for everything this plan changed from what was asked for."""
        out = [(c["profile"], CONFIG_KEYS[c["key"]], f"--budget-s {budget_s:g}: {r['what']} (reduction {r['step']} of the plan)")
               for r in self.reductions for c in r["changes"]]
        if self.teacher_epochs < cap:
            out += [(name, "teachers.epochs", f"--budget-s {budget_s:g}: as many teacher epochs as fit beside the rest "
                                              f"(predicted {self.predicted['total']:.0f}s in all, safety factor {SAFETY})")
                    for name in self.settings]
        return out

    def as_dict(self) -> dict:
        return {"teacher_epochs": self.teacher_epochs, "settings": {k: asdict(v) for k, v in self.settings.items()},
                "predicted_s": self.predicted, "predicted_total_with_safety_s": round(self.predicted_total_s, 1),
                "safety_factor": SAFETY, "min_teacher_epochs": MIN_TEACHER_EPOCHS, "time_left_at_plan_s":
                None if self.time_left_s is None else round(self.time_left_s, 1), "reductions": self.reductions,
                "fits": self.fits}


def _ladder(model: CostModel, settings: dict[str, Settings]):
    """The reductions, in priority order: each yields (description, [(profile, key, old, new)]) after applying itself."""
    by_cost = sorted(settings, key=lambda n: -model.seed(n, settings[n]))

    def each(key: str, fn):
        changes = []
        for name, s in settings.items():
            old = getattr(s, key)
            new = fn(name, s)
            if new != old:
                setattr(s, key, new)
                changes.append((name, key, old, new))
        return changes

    yield "speed measurement over 100 iterations (extrapolated to the full count)", \
        each("speed_iterations", lambda n, s: min(s.speed_iterations, SPEED_ITERATIONS_REDUCED[0]))
    for name in by_cost:
        s = settings[name]
        while len(s.seeds) > 1:
            old = list(s.seeds)
            s.seeds = s.seeds[:-1]
            yield f"{name}: one seed fewer", [(name, "seeds", old, list(s.seeds))]
    for name in by_cost:
        if settings[name].dynamic:
            settings[name].dynamic = False
            yield f"{name}: no students with dynamic labels", [(name, "dynamic", True, False)]
    for name in by_cost:
        s = settings[name]
        if "random_soft_steps" in s.baselines:
            old = list(s.baselines)
            s.baselines = [b for b in s.baselines if b != "random_soft_steps"]
            yield f"{name}: no equal-steps baseline", [(name, "baselines", old, list(s.baselines))]
    originals = {n: (s.epochs, s.epochs_dynamic, s.iterations) for n, s in settings.items()}
    for fraction in (2, 4):
        yield f"student epochs 1/{fraction} of the config's", \
            each("epochs", lambda n, s, f=fraction: min(s.epochs, max(1, originals[n][0] // f))) + \
            each("epochs_dynamic", lambda n, s, f=fraction: min(s.epochs_dynamic, max(1, originals[n][1] // f)))
        yield f"synthesis iterations 1/{fraction} of the config's", \
            each("iterations", lambda n, s, f=fraction: min(s.iterations, max(1, originals[n][2] // f)))
    yield "speed measurement over 20 iterations", \
        each("speed_iterations", lambda n, s: min(s.speed_iterations, SPEED_ITERATIONS_REDUCED[1]))


def plan_run(model: CostModel, requested: dict[str, Settings], time_left_s: float | None,
             min_teacher_epochs: int = MIN_TEACHER_EPOCHS) -> Plan:
    """The plan for `time_left_s` seconds (None: the full protocol, teachers at the config's epochs)."""
    settings = copy.deepcopy(requested)
    cap = min(p.max_epochs for p in model.pools.values())
    if time_left_s is None:
        return Plan(cap, settings, model.breakdown(settings, cap), SAFETY * model.total(settings, cap), None)

    epoch = sum(model.teachers(pool, 1) - model.teachers(pool, 0) for pool in model.pools)
    fixed = sum(model.teachers(pool, 0) for pool in model.pools)

    def fit() -> int:
        rest = sum(model.profile(n, s) for n, s in settings.items())
        return math.floor((time_left_s / SAFETY - rest - fixed) / max(epoch, 1e-9))

    need = min(min_teacher_epochs, cap)
    reductions: list[dict] = []
    epochs = fit()
    if epochs < need:
        for description, changes in _ladder(model, settings):
            if not changes:
                continue
            epochs = fit()
            reductions.append({"step": len(reductions) + 1, "what": description,
                               "changes": [{"profile": n, "key": k, "from": a, "to": b} for n, k, a, b in changes],
                               "teacher_epochs_that_fit": epochs})
            if epochs >= need:
                break
        # Give back, most valuable first, what the ladder dropped before its last step, if the teachers keep their minimum.
        for r in reversed(reductions[:-1]):
            undo = [c for c in r["changes"] if getattr(settings[c["profile"]], c["key"]) == c["to"]]
            if not undo:
                continue
            for c in undo:
                setattr(settings[c["profile"]], c["key"], copy.deepcopy(c["from"]))
            if fit() >= need:
                r["given_back"] = True
            else:
                for c in undo:
                    setattr(settings[c["profile"]], c["key"], copy.deepcopy(c["to"]))
        epochs = fit()
        reductions = [r for r in reductions if not r.get("given_back")]
    fits = epochs >= 1
    epochs = max(1, min(cap, epochs))
    return Plan(epochs, settings, model.breakdown(settings, epochs), SAFETY * model.total(settings, epochs), time_left_s,
                reductions, fits)
