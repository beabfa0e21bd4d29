"""The benchmark run: data and teachers once per pool, calibration, the plan, walks of the pipeline, speed.

Order of work (each profile has its own run root under --out; profiles whose data and teacher
settings agree share one pool of data and teachers, linked into their roots):

1. the data of every pool (prepare-data), then the calibration (calibrate.py) and the plan
   (budget.py);
2. the teachers of every pool, at the planned epochs;
3. per profile, the first walk of the pipeline (`plan.run_in_process`): subsets, synthesis,
   labels, the first seed's students and baselines, the report; then its speed measurement;
4. the further seeds, one walk per seed, taking the profiles in turn;
5. with a budget, while time is left: what the plan gave up (dynamic labels, the equal-steps
   baseline, seeds), if its measured cost still fits.

Every walk reuses what earlier walks made (same settings: the step is current) and ends with a
report of everything so far; the results are written after every walk. With a budget the clock
is checked before each walk and after each step: a step whose predicted time (corrected by how
long the finished steps took against their predictions) does not fit before the deadline, less
the time reserved for the speed measurements still to come, is not started. It and the rest of
its walk are recorded as skipped, and the last complete report stands.
"""
from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from infer_distill import plan as pipeline
from infer_distill import stages
from infer_distill.config import Config
from infer_distill.plan import StepResult
from infer_distill.stages import Layout
from infer_distill.store import open_artifact

from ..common import machine_info, pooled_inputs
from . import budget as bud
from . import protocol, summary
from .calibrate import calibrate_pool, calibrate_synthesis
from .speed import measure_speed

SCHEMA = "infer-distill-gpu-benchmark/1"
METHODS = ("infer_static", "infer_dynamic", "random_soft", "random_soft_steps")
CHECK_MARGIN = 1.05     # deadline checks: corrected prediction times this


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Deadline(Exception):
    """The next step of a walk does not fit before the deadline."""


@dataclass
class Expected:
    stage: str
    label: str
    kind: str
    predicted: float


@dataclass
class Target:
    """What a walk covers: seeds, label modes and baselines (epochs and iterations are the plan's)."""

    seeds: list[int]
    dynamic: bool
    baselines: list[str]

    def modes(self) -> list[str]:
        return ["static", "dynamic"] if self.dynamic else ["static"]


@dataclass
class State:
    spec: protocol.ProfileSpec
    root: str
    pool: str
    settings: bud.Settings                 # the plan's
    requested: bud.Settings                # the full protocol's (the config's, with --seeds)
    done: set = field(default_factory=set)           # (stage, label) of every finished step
    reported: Target | None = None
    report: dict | None = None
    speed: dict | None = None
    speed_pending: bool = False
    unreported: list = field(default_factory=list)
    status: str = "not run"


class Benchmark:
    def __init__(self, args: Any, argv: list[str], t0: float):
        self.args, self.argv, self.t0 = args, argv, t0
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.budget = args.budget_s
        reserve = min(20.0, 3.0 + 0.02 * self.budget) if self.budget else 0.0
        self.deadline = t0 + self.budget - reserve if self.budget else None
        self.steps: list[dict] = []
        self.phases: list[dict] = []
        self.skipped: list[dict] = []
        self.extras_not_run: list[dict] = []      # what the plan gave up and the time left did not give back
        self.observed: dict[str, list[float]] = {}      # kind -> [actual s, predicted s]
        self.states: dict[str, State] = {}
        self.model: bud.CostModel | None = None
        self.plan: bud.Plan | None = None
        self.calibration: dict = {}
        self.pools: dict[str, list[str]] = {}
        self.error: str | None = None
        self.created_at = now_iso()
        self.device = "cpu"
        self.machine: dict = {}
        self.plan_at = 0.0

    # ---- output ------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {msg}", flush=True)

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.perf_counter()

    def save(self) -> None:
        t = time.perf_counter()
        results = self.results()
        _atomic(self.out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
        _atomic(self.out / "summary.md", summary.markdown(results).encode())
        png = summary.curves_png(results)
        if png:
            _atomic(self.out / "student_curves.png", png)
        self.phase("results", time.perf_counter() - t)

    def phase(self, name: str, seconds: float, scope: str = "", predicted: float | None = None) -> None:
        self.phases.append({"phase": name, "scope": scope, "seconds": round(seconds, 3),
                            "predicted_s": None if predicted is None else round(predicted, 3)})

    # ---- predictions corrected by what finished steps took ------------------------------------
    def observe(self, kind: str, actual: float, predicted: float) -> None:
        a = self.observed.setdefault(kind, [0.0, 0.0])
        a[0] += actual
        a[1] += predicted

    def corrected(self, kind: str, predicted: float) -> float:
        a, p = self.observed.get(kind, (0.0, 0.0))
        if p <= 0:
            a, p = sum(v[0] for v in self.observed.values()), sum(v[1] for v in self.observed.values())
        ratio = a / p if p > 0 else 1.0
        return predicted * min(3.0, max(0.5, ratio))

    def reserved(self, but: str | None = None) -> float:
        """Seconds kept for the speed measurements still to come."""
        return sum(self.corrected("speed", self.model.speed(n, s.settings)) for n, s in self.states.items()
                   if s.speed_pending and n != but)

    def fits(self, need: float, but: str | None = None) -> bool:
        left = self.left()
        return left is None or need * CHECK_MARGIN + self.reserved(but) <= left

    # ---- the run -----------------------------------------------------------------------------
    def run(self) -> None:
        args = self.args
        self.device = resolve_device(args.device)
        self.machine = machine_info(self.device)
        self.log(f"device {self.device}" + (f" ({self.machine.get('gpu')})" if self.device == "cuda" else "")
                 + f", torch {torch.__version__}; budget " + (f"{self.budget:.0f}s" if self.budget else "none (full protocol)"))
        datasets = Path(args.datasets).resolve()
        specs = [protocol.load_profile(name, datasets, self.out / "cache", self.device, args.toy, args.seeds)
                 for name in dict.fromkeys(args.profile)]
        pool_of_key: dict[str, str] = {}
        for spec in specs:
            key = spec.pool_key()
            if key not in pool_of_key:
                base = f"pool-{spec.official.dataset.name}"
                pool_of_key[key] = base if base not in self.pools else f"{base}-{len(self.pools)}"
                self.pools[pool_of_key[key]] = []
            self.pools[pool_of_key[key]].append(spec.name)
            self.states[spec.name] = State(spec, str(self.out / spec.name), pool_of_key[key], None, None)  # type: ignore[arg-type]
        speed = args.speed if args.speed is not None else (self.device == "cuda" or args.toy)

        # 1. data, calibration, plan
        data_manifests = {}
        for pool, members in self.pools.items():
            cfg = self.states[members[0]].spec.config()
            uri = Layout(str(self.out / pool)).data
            data_manifests[pool] = self.pool_data(pool, cfg, uri)
        costs, pool_shapes, profile_shapes = self.calibrate(data_manifests)
        self.model = bud.CostModel(costs, pool_shapes, profile_shapes)
        requested = {}
        for name, st in self.states.items():
            cfg = st.spec.config()
            it = cfg.synthesis.iterations
            requested[name] = bud.Settings(
                seeds=list(cfg.students.seeds), dynamic="dynamic" in cfg.labels.modes, baselines=list(cfg.students.baselines),
                epochs=cfg.students.epochs, epochs_dynamic=cfg.students.epochs_for("dynamic"), iterations=it,
                speed_iterations=it if speed else 0, speed_sample=args.speed_sample)
        t = time.perf_counter()
        left = self.left()
        self.plan = bud.plan_run(self.model, requested, left, 1 if args.toy else bud.MIN_TEACHER_EPOCHS)
        self.plan_at = self.elapsed()
        self.phase("planning", time.perf_counter() - t)
        for name, st in self.states.items():
            st.requested, st.settings = requested[name], self.plan.settings[name]
            st.speed_pending = bool(st.settings.speed_iterations)
        self.note_plan()
        self.save()

        # 2. teachers
        for pool, members in self.pools.items():
            for name in members:
                st = self.states[name]
                self.log(f"{pool}: teachers ({self.plan.teacher_epochs} epoch{'s' if self.plan.teacher_epochs != 1 else ''}) for {name}")

                def on_step(r: StepResult, pool: str = pool) -> None:
                    predicted = self.model.teacher(pool, r.label, self.plan.teacher_epochs) if r.stage == "train-teacher" else None
                    self.record(r, pool, "teachers", predicted, "teacher" if r.stage == "train-teacher" else "data")

                pooled_inputs(self.config(st, Target(st.settings.seeds[:1], False, [])), self.out / pool, st.root,
                              progress=not args.toy, on_step=on_step)
        self.save()

        # 3. each profile's first walk, then its speed measurement
        for name, st in self.states.items():
            s = st.settings
            self.walk(st, Target(s.seeds[:1], s.dynamic, list(s.baselines)), "seed 1", core=True)
            if st.speed_pending:
                self.speed(st)
            self.save()
        # 4. further seeds, profiles in turn
        for k in range(2, max(len(st.settings.seeds) for st in self.states.values()) + 1):
            for st in self.states.values():
                if len(st.settings.seeds) >= k and st.reported is not None:
                    self.walk(st, replace(st.reported, seeds=st.settings.seeds[:k]), f"seed {k}")
                    self.save()
        # 5. what the plan gave up, while time is left
        if self.budget:
            for st in self.states.values():
                for target, what in self.extras(st):
                    if self.walk(st, target, what, extra=True):
                        self.save()

    def pool_data(self, pool: str, cfg: Config, uri: str) -> dict:
        if stages.is_current(uri, cfg, "prepare-data", {}):
            r = StepResult("prepare-data", "", uri, 0.0, True, open_artifact(uri).read_manifest())
        else:
            self.log(f"{pool}: prepare-data ({cfg.dataset.name} {cfg.dataset.root})")
            t = time.perf_counter()
            manifest = stages.prepare_data(cfg, out=uri)
            r = StepResult("prepare-data", "", uri, time.perf_counter() - t, False, manifest)
        self.record(r, pool, "data", None, "data")
        return r.manifest

    def calibrate(self, data_manifests: dict) -> tuple[bud.Costs, dict, dict]:
        t = time.perf_counter()
        self.log("calibration: timing a few steps of every part on this device")
        c: dict[str, dict] = {k: {} for k in ("teacher_step_s", "teacher_eval_s_per_image", "student_step_s", "student_eval_s_per_image",
                                              "label_s_per_image", "step_overhead_s", "synthesis_iter_s", "synthesis_call_s",
                                              "single_iter_s")}
        pool_shapes, profile_shapes = {}, {}
        for pool, members in self.pools.items():
            dm = data_manifests[pool]
            cfg = self.states[members[0]].spec.config()
            measured = calibrate_pool(cfg, Layout(str(self.out / pool)).data, dm, self.args.toy, self.log)
            cal = measured["calibration"]
            for k in ("teacher_step_s", "teacher_eval_s_per_image", "student_step_s", "student_eval_s_per_image",
                      "label_s_per_image", "step_overhead_s"):
                c[k][pool] = cal[k]
            self.calibration[pool] = cal
            m = dm["metrics"]
            pool_shapes[pool] = bud.PoolShape(pool, tuple(cfg.teachers.archs), m["num_train"], m["num_test"], cfg.teachers.batch_size,
                                              cfg.teachers.epochs)
            for name in members:
                pcfg = self.states[name].spec.config()
                C = m["num_classes"]
                K = pcfg.num_subsets(C)
                syn = calibrate_synthesis(pcfg, dm, measured["teachers"], K, self.args.toy, self.log, name)
                for k in ("synthesis_iter_s", "synthesis_call_s", "single_iter_s"):
                    c[k][name] = syn[k]
                self.calibration[name] = syn
                profile_shapes[name] = bud.ProfileShape(
                    name, pool, K, len(pcfg.teachers.archs), C, pcfg.baseline_per_class(C, m["in_chans"] * m["image_size"] ** 2),
                    pcfg.students.batch_size, pcfg.students.eval_every, m["num_test"])
            del measured
        c["pass_overhead_s"] = 2 * max(c["step_overhead_s"].values()) + (0.5 if self.args.toy else 2.0)
        self.calibration["pass_overhead_s"] = c["pass_overhead_s"]
        self.phase("calibration", time.perf_counter() - t)
        self.log(f"calibration done in {time.perf_counter() - t:.1f}s")
        return bud.Costs.from_dict(c), pool_shapes, profile_shapes

    def note_plan(self) -> None:
        p = self.plan
        if self.budget:
            cap = min(st.spec.config().teachers.epochs for st in self.states.values())
            for name, key, why in p.reasons(self.budget, cap):
                self.states[name].spec.why(key, why)
        epochs = f"{p.teacher_epochs} epoch{'s' if p.teacher_epochs != 1 else ''}"
        self.log(f"plan: teachers {epochs}; predicted {p.predicted_total_s:.0f}s with the safety factor"
                 + (f", {p.time_left_s:.0f}s left" if p.time_left_s is not None else "")
                 + (f"; reductions: {'; '.join(r['what'] for r in p.reductions)}" if p.reductions else "; full protocol"))
        for name, s in p.settings.items():
            self.log(f"  {name}: seeds {s.seeds}, dynamic {s.dynamic}, baselines {s.baselines}, epochs {s.epochs}/{s.epochs_dynamic}, "
                     f"synthesis {s.iterations} iterations, speed {s.speed_iterations or 'off'}; "
                     f"predicted {p.predicted['profiles'][name]['total']:.0f}s")
        if not p.fits:
            self.log("  the plan does not fit even at its smallest; steps that cannot finish in time will be skipped")

    # ---- configs and walks ---------------------------------------------------------------------
    def config(self, st: State, target: Target) -> Config:
        """The plan's config for this profile, covering `target`'s seeds, label modes and baselines."""
        return st.spec.config(**{**self.plan.config_changes(st.spec.name), "students.seeds": list(target.seeds),
                                 "labels.modes": target.modes(), "students.baselines": list(target.baselines)})

    def expected(self, st: State, target: Target, cfg: Config) -> list[Expected]:
        """The steps a walk of `target` will run (not done yet), in the plan's order, with predicted seconds."""
        m, name, s = self.model, st.spec.name, st.settings
        K = m.profiles[name].K
        items: list[Expected] = [
            Expected("select-subsets", "", "subsets", m.subsets(name)),
            *[Expected("synthesize-ufc", pipeline.SHARDS.label({"subset_ids": ids}), "synthesis",
                       m.synthesis(name, s.iterations) * len(ids) / K) for ids in cfg.shard_plan(m.profiles[name].C)],
            Expected("soft-label", "", "labels", m.labels(name)),
            *[Expected("evaluate-student", pipeline.STUDENTS.label(r), f"student-{r['label_mode']}",
                       m.student(name, r["label_mode"], s)) for r in cfg.student_runs()],
            *[Expected("evaluate-baseline", pipeline.BASELINES.label(r), "baseline", m.baseline(name, r["baseline"], s))
              for r in cfg.baseline_runs()],
        ]
        items = [e for e in items if (e.stage, e.label) not in st.done]
        return items + [Expected("report", "", "report", m.report(name))]

    def walk(self, st: State, target: Target, what: str, core: bool = False, extra: bool = False) -> bool:
        """One walk of the pipeline for `target`; True if it ended with a report."""
        name = st.spec.name
        cfg = self.config(st, target)
        queue = self.expected(st, target, cfg)
        need = sum(self.corrected(e.kind, e.predicted) for e in queue)
        if not self.fits(need):
            if core:
                return self.shrunk_core(st, target, need)
            if not extra:
                self.skip(st, what, need, "students.seeds")
            else:
                self.log(f"{name}: {what} does not fit ({need:.0f}s predicted, {self.left():.0f}s left)")
                self.extras_not_run.append({"profile": name, "walk": what, "predicted_s": round(need, 1),
                                            "left_s": round(self.left(), 1)})
            return False
        self.log(f"{name}: walk '{what}': {len(queue) - 1} steps to run, predicted {need:.0f}s")
        started, run_s = time.perf_counter(), [0.0]

        def on_step(r: StepResult) -> None:
            hit = next((e for e in queue if (e.stage, e.label) == (r.stage, r.label)), None) if not r.skipped else None
            self.record(r, name, what, hit.predicted if hit else None, hit.kind if hit else _kind(r))
            st.done.add((r.stage, r.label))
            if hit:
                queue.remove(hit)
                run_s[0] += r.seconds
                finished = run_summary(r)
                if finished:
                    st.unreported.append(finished)
            nxt = next((e for e in queue), None)
            if nxt is not None and nxt.kind != "report":
                need = self.corrected(nxt.kind, nxt.predicted) + self.corrected("report", self.model.report(name))
                if not self.fits(need):
                    raise Deadline(f"{nxt.stage} {nxt.label}".strip(), need)

        try:
            manifest = pipeline.run_in_process(cfg, st.root, progress=not self.args.toy, on_step=on_step)
        except Deadline as d:
            step, need = d.args
            self.log(f"{name}: deadline: '{step}' would need {need:.0f}s, {self.left():.0f}s left; walk '{what}' stops here")
            self.skipped.append({"profile": name, "walk": what, "step": step, "predicted_s": round(need, 1),
                                 "left_s": round(self.left(), 1), "why": "deadline"})
            self.overhead(name, what, started, run_s[0])
            if st.reported is None:
                return self.fallback_report(st, target, what)
            self.note_cut(st, target, f"deadline: the walk '{what}' was cut short before {step}")
            return False
        self.overhead(name, what, started, run_s[0])
        # the runs of this walk are in the report now
        st.unreported = [u for u in st.unreported if not _covered(u, target)]
        st.reported, st.report = target, manifest
        s = st.settings
        planned = set(s.seeds) <= set(target.seeds) and (target.dynamic or not s.dynamic) and set(s.baselines) <= set(target.baselines)
        st.status = "complete" if planned else "partial"
        return True

    def overhead(self, name: str, what: str, started: float, run_s: float) -> None:
        """The time a walk spent besides its steps (re-checking finished artifacts) counts towards the report's kind."""
        extra = max(0.0, time.perf_counter() - started - run_s)
        self.phase("walk-overhead", extra, f"{name} / {what}")
        self.observe("report", extra, 0.0)

    def shrunk_core(self, st: State, target: Target, need: float) -> bool:
        """The first walk of a profile does not fit: without dynamic labels, then without each baseline, if that fits."""
        name = st.spec.name
        options = []
        t = Target(target.seeds, target.dynamic, list(target.baselines))
        if t.dynamic:
            t = Target(t.seeds, False, list(t.baselines))
            options.append((t, "no students with dynamic labels"))
        for b in ("random_soft_steps", "random_soft"):
            if b in t.baselines:
                t = Target(t.seeds, False, [x for x in t.baselines if x != b])
                options.append((t, f"no {b} baseline"))
        for option, why in options:
            cfg = self.config(st, option)
            n = sum(self.corrected(e.kind, e.predicted) for e in self.expected(st, option, cfg))
            if self.fits(n):
                self.note_cut(st, option, f"deadline: the first walk did not fit ({need:.0f}s predicted, {self.left():.0f}s left): {why}")
                return self.walk(st, option, "seed 1 (shrunk)", core=True)
        self.skip(st, "the whole profile", need)
        st.speed_pending = False
        return False

    def fallback_report(self, st: State, target: Target, what: str) -> bool:
        """A first walk cut short: report the runs that finished, if the static student of the first seed is one of them."""
        seed = target.seeds[0]
        arch = st.spec.config().students.archs[0]
        done = lambda stage, item: (stage, item) in st.done  # noqa: E731
        static = pipeline.STUDENTS.label({"arch": arch, "seed": seed, "label_mode": "static"})
        if not done("evaluate-student", static):
            self.log(f"{st.spec.name}: no student finished: no report")
            st.speed_pending = st.speed_pending and ("select-subsets", "") in st.done
            return False
        dynamic = target.dynamic and done("evaluate-student",
                                          pipeline.STUDENTS.label({"arch": arch, "seed": seed, "label_mode": "dynamic"}))
        baselines = [b for b in target.baselines
                     if done("evaluate-baseline", pipeline.BASELINES.label({"arch": arch, "seed": seed, "baseline": b}))]
        finished = Target([seed], dynamic, baselines)
        self.note_cut(st, finished, "deadline: the first walk was cut short; reported what finished")
        cfg = self.config(st, finished)
        walk = f"{what} (report of what finished)"
        manifest = pipeline.run_in_process(cfg, st.root, progress=False,
                                           on_step=lambda r: self.record(r, st.spec.name, walk, None, _kind(r)))
        st.done.add(("report", ""))
        st.reported, st.report, st.status = finished, manifest, "partial"
        return True

    def note_cut(self, st: State, target: Target, why: str) -> None:
        s = st.settings
        if list(target.seeds) != list(s.seeds):
            st.spec.why("students.seeds", why)
        if target.dynamic != s.dynamic:
            st.spec.why("labels.modes", why)
        if list(target.baselines) != list(s.baselines):
            st.spec.why("students.baselines", why)

    def skip(self, st: State, what: str, need: float, key: str | None = None) -> None:
        left = self.left()
        kept = self.reserved()
        self.log(f"{st.spec.name}: skipped {what}: predicted {need:.0f}s, {left:.0f}s left before the deadline"
                 + (f" ({kept:.0f}s of it kept for speed measurements)" if kept else ""))
        self.skipped.append({"profile": st.spec.name, "walk": what, "predicted_s": round(need, 1), "left_s": round(left, 1),
                             "why": "deadline"})
        if key:
            st.spec.why(key, f"deadline: {what} skipped ({need:.0f}s predicted, {left:.0f}s left)")

    def extras(self, st: State):
        """What the plan gave up, in its own priority order: dynamic labels, the equal-steps baseline, seeds.

        Each target is made when asked for, from what is reported by then."""
        r, s = st.requested, st.settings
        if r.dynamic and not s.dynamic and st.reported is not None:
            yield Target(st.reported.seeds, True, st.reported.baselines), "extra: dynamic labels"
        for b in r.baselines:
            if st.reported is not None and b not in st.reported.baselines:
                yield Target(st.reported.seeds, st.reported.dynamic,
                             [x for x in r.baselines if x in st.reported.baselines or x == b]), f"extra: {b}"
        for k in range(len(s.seeds) + 1, len(r.seeds) + 1):
            if st.reported is not None:
                yield Target(r.seeds[:k], st.reported.dynamic, st.reported.baselines), f"extra: seed {k}"

    def speed(self, st: State) -> None:
        name, s = st.spec.name, st.settings
        full = st.spec.official.synthesis.iterations
        iters = s.speed_iterations
        predicted = self.model.speed(name, s)
        if ("select-subsets", "") not in st.done:
            st.speed, st.speed_pending = {"skipped": "the profile's subsets were not made"}, False
            return
        if not self.fits(self.corrected("speed", predicted), but=name):
            # fewer iterations, if that fits (halving down to 10)
            while iters >= 10 and not self.fits(self.corrected("speed", self.model.speed(name, replace(s, speed_iterations=iters))),
                                                but=name):
                iters //= 2
            if iters < 10:
                left = self.left()
                self.log(f"{name}: speed measurement skipped: predicted {predicted:.0f}s, {left:.0f}s left")
                self.skipped.append({"profile": name, "walk": "speed measurement", "predicted_s": round(predicted, 1),
                                     "left_s": round(left, 1), "why": "deadline"})
                st.speed, st.speed_pending = {"skipped": f"deadline ({predicted:.0f}s predicted, {left:.0f}s left)"}, False
                st.spec.why("speed.iterations", "deadline: the speed measurement did not fit")
                return
            st.spec.why("speed.iterations", f"deadline: {iters} iterations fit where {s.speed_iterations} were planned")
            predicted = self.model.speed(name, replace(s, speed_iterations=iters))
        self.log(f"{name}: speed measurement, {iters} iterations each way (predicted {predicted:.0f}s)")
        cfg = self.config(st, st.reported or Target(s.seeds[:1], False, []))
        if iters < full and not st.spec.reasons.get("speed.iterations"):
            st.spec.why("speed.iterations", "as many iterations as the run's synthesis (synthesis.iterations)")
        why = "; ".join(st.spec.reasons.get("speed.iterations", []))
        t = time.perf_counter()
        st.speed = measure_speed(cfg, st.root, iters, full, s.speed_sample, self.log, why)
        took = time.perf_counter() - t
        st.speed_pending = False
        self.observe("speed", took, predicted)
        self.phase("speed-measurement", took, name, predicted)

    # ---- records -----------------------------------------------------------------------------
    def record(self, r: StepResult, scope: str, walk: str, predicted: float | None, kind: str) -> None:
        self.steps.append({"scope": scope, "walk": walk, "stage": r.stage, "label": r.label, "kind": kind,
                           "seconds": round(r.seconds, 3), "skipped": r.skipped,
                           "predicted_s": None if predicted is None else round(predicted, 3), "at_s": round(self.elapsed(), 1)})
        if not r.skipped and predicted is not None:
            self.observe(kind, r.seconds, predicted)
        where = f"{scope}: {r.stage}" + (f" {r.label}" if r.label else "")
        if r.skipped:
            self.log(f"{where}: current, reused")
        else:
            acc = r.manifest.get("metrics", {})
            extra = ""
            if "final_acc" in acc:
                extra = f", test acc final {100 * acc['final_acc']:.2f}% best {100 * acc['best_acc']:.2f}%"
            elif "test_acc" in acc:
                extra = f", test acc {100 * acc['test_acc']:.2f}%"
            self.log(f"{where}: {r.seconds:.1f}s" + (f" (predicted {predicted:.1f}s)" if predicted is not None else "") + extra)

    def results(self) -> dict:
        args = self.args
        wall = self.elapsed()
        profiles = {name: self.profile_result(st) for name, st in self.states.items()}
        deviations = []
        for name, st in self.states.items():
            deviations += profiles[name].pop("_deviations")
        stages_ = {}
        for s in self.steps:
            e = stages_.setdefault(s["stage"], {"seconds": 0.0, "runs": 0, "skipped": 0})
            e["skipped" if s["skipped"] else "runs"] += 1
            e["seconds"] = round(e["seconds"] + s["seconds"], 3)
        phases = {}
        for p in self.phases:
            phases[p["phase"]] = round(phases.get(p["phase"], 0.0) + p["seconds"], 3)
        complete = self.error is None and bool(self.states) and all(st.status == "complete" for st in self.states.values()) \
            and not self.skipped and all(st.speed is None or "skipped" not in st.speed for st in self.states.values())
        return {
            "schema": SCHEMA, "created_at": self.created_at, "updated_at": now_iso(), "complete": complete,
            "command": " ".join(shlex.quote(a) for a in ["python", "-m", "benchmarks.gpu", *self.argv]),
            "argv": self.argv,
            "options": {"profiles": list(dict.fromkeys(args.profile)), "out": str(self.out), "datasets": str(args.datasets),
                        "budget_s": self.budget, "device": args.device, "seeds": args.seeds, "toy": args.toy,
                        "speed": args.speed, "speed_sample": args.speed_sample},
            "machine": self.machine,
            "pools": {pool: {"profiles": members, "dir": str(self.out / pool)} for pool, members in self.pools.items()},
            "teacher_recipe": {pool: protocol.teacher_recipe(self.config(self.states[m[0]], Target([0], False, [])))
                               for pool, m in self.pools.items()} if self.plan else {},
            "calibration": self.calibration,
            "plan": self.plan.as_dict() if self.plan else None,
            "deviations": deviations,
            "skipped": self.skipped,
            "extras_not_run": self.extras_not_run,
            "times": {"wall_s": round(wall, 1), "budget_s": self.budget,
                      "stages": stages_, "phases": phases, "predicted_vs_actual": self.predicted_vs_actual(),
                      "steps": self.steps, "phase_log": self.phases},
            "profiles": profiles,
            "error": self.error,
        }

    def predicted_vs_actual(self) -> list[dict]:
        parts: dict[tuple, list[float]] = {}
        for s in self.steps:
            if s["skipped"] or s["predicted_s"] is None:
                continue
            part = s["label"] if s["kind"] == "teacher" else s["kind"]
            key = (s["scope"], "teacher " + part if s["kind"] == "teacher" else part)
            a = parts.setdefault(key, [0.0, 0.0, 0])
            a[0] += s["predicted_s"]
            a[1] += s["seconds"]
            a[2] += 1
        for p in self.phases:
            if p["predicted_s"] is not None:
                a = parts.setdefault((p["scope"], p["phase"]), [0.0, 0.0, 0])
                a[0] += p["predicted_s"]
                a[1] += p["seconds"]
                a[2] += 1
        out = [{"scope": k[0], "part": k[1], "steps": v[2], "predicted_s": round(v[0], 2), "actual_s": round(v[1], 2),
                "actual_over_predicted": round(v[1] / v[0], 3) if v[0] > 0 else None} for k, v in parts.items()]
        if self.plan:
            predicted = self.plan_at + self.plan.predicted_total_s
            out.append({"scope": "all", "part": "whole run (time at the plan + the plan's prediction with its safety factor)",
                        "steps": None, "predicted_s": round(predicted, 1), "actual_s": round(self.elapsed(), 1),
                        "actual_over_predicted": round(self.elapsed() / predicted, 3) if predicted > 0 else None})
        return out

    def profile_result(self, st: State) -> dict:
        spec = st.spec
        used = self.config(st, st.reported or Target(st.settings.seeds, st.settings.dynamic, list(st.settings.baselines))) \
            if self.plan else spec.config()
        devs = protocol.deviations(spec, used)
        if st.status == "not run":
            devs.append({"profile": spec.name, "key": "(profile)", "config": "run", "protocol": "run", "used": "not run",
                         "why": "; ".join(x["why"] for x in self.skipped if x["profile"] == spec.name) or "not reached"})
        full = spec.official.synthesis.iterations
        if st.speed is not None:
            used_iters = st.speed.get("iterations_timed")
            if used_iters is not None and used_iters != full:
                devs.append({"profile": spec.name, "key": "speed.iterations", "config": full, "protocol": full, "used": used_iters,
                             "why": "; ".join(spec.reasons.get("speed.iterations", []))})
            elif "skipped" in st.speed:
                devs.append({"profile": spec.name, "key": "speed", "config": "measured", "protocol": "measured", "used": "skipped",
                             "why": st.speed["skipped"]})
        out: dict = {"config_file": str(spec.config_path.relative_to(protocol.REPO)), "run_root": st.root, "pool": st.pool,
                     "status": st.status, "full_protocol": st.reported is not None and protocol.full_protocol(devs), "ipc": spec.ipc,
                     "paper_best_acc_percent": spec.paper,
                     "paper_note": "the paper's best-over-epochs top-1 (%), as quoted in the config file's header",
                     "protocol": used.model_dump(mode="json"), "speed": st.speed, "unreported_runs": st.unreported,
                     "_deviations": devs}
        if self.model and spec.name in self.model.profiles:
            shape = self.model.profiles[spec.name]
            out.update({"K": shape.K, "M": shape.M, "num_classes": shape.C, "num_ufcs": shape.K * shape.M})
        teachers = [s for s in self.steps if s["scope"] == st.pool and s["stage"] == "train-teacher"]
        out["teachers"] = []
        if st.report is not None:
            rep = st.report["metrics"]["report"]
            out["report_uri"] = Layout(st.root).report
            out["teachers"] = [{"arch": t["arch"], "test_acc": t["test_acc"], "epochs": used.teachers.epochs} for t in rep["teachers"]]
            out["accuracy"] = accuracy(rep, spec.paper)
            out["lift"] = rep["lift"]
            out["distilled_set"] = rep["budget"]
            out["report_timings_s"] = rep["timings_s"]
        elif teachers:
            out["teachers"] = [{"arch": s["label"], "epochs": used.teachers.epochs} for s in teachers]
        return out


def accuracy(rep: dict, paper: dict) -> dict:
    """Per method: every seed's final and best accuracy, mean ± std, stored bytes, the paper's figure."""
    out = {}
    for mode in ("static", "dynamic"):
        rows = [r for r in rep["students"] if r["label_mode"] == mode]
        if rows:
            agg = next(a for a in rep["student_summary"] if a["label_mode"] == mode)
            out[f"infer_{mode}"] = {"label": "INFER" if mode == "static" else "INFER+Dyn", **_method(rows, agg),
                                    "stored_bytes": rep["budget"]["stored_bytes"],
                                    "paper_best_acc": None if paper.get(mode) is None else paper[mode] / 100}
    for b in ("random_soft", "random_soft_steps"):
        rows = [r for r in rep["baselines"] if r["baseline"] == b]
        if rows:
            agg = next(a for a in rep["baseline_summary"] if a["baseline"] == b)
            out[b] = {"label": b, "description": agg["description"], **_method(rows, agg), "stored_bytes": agg["stored_bytes"],
                      "epochs": agg["epochs"], "steps": agg["steps"], "paper_best_acc": None}
    return out


def _method(rows: list[dict], agg: dict) -> dict:
    return {"seeds": [r["seed"] for r in rows],
            "runs": [{"seed": r["seed"], "final_acc": r["final_acc"], "best_acc": r["best_acc"], "best_epoch": r["best_epoch"],
                      "curve": r["curve"]} for r in rows],
            "final_acc_mean": agg["final_acc_mean"], "final_acc_std": agg["final_acc_std"],
            "best_acc_mean": agg["best_acc_mean"], "best_acc_std": agg["best_acc_std"]}


def run_summary(r: StepResult) -> dict | None:
    m = r.manifest.get("metrics", {})
    if "final_acc" not in m:
        return None
    return {"stage": r.stage, "label": r.label, "seed": m.get("seed"), "label_mode": m.get("label_mode"),
            "baseline": m.get("baseline"), "final_acc": m["final_acc"], "best_acc": m["best_acc"]}


def _covered(run: dict, target: Target) -> bool:
    if run["seed"] not in target.seeds:
        return False
    if run["label_mode"]:
        return run["label_mode"] in target.modes()
    return run["baseline"] in target.baselines


def _kind(r: StepResult) -> str:
    if r.stage == "evaluate-student":
        return f"student-{r.manifest.get('metrics', {}).get('label_mode', 'static')}"
    return {"select-subsets": "subsets", "synthesize-ufc": "synthesis", "soft-label": "labels", "evaluate-baseline": "baseline",
            "train-teacher": "teacher", "prepare-data": "data"}.get(r.stage, r.stage)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    return device


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(args: Any, argv: list[str], t0: float) -> int:
    bench = Benchmark(args, argv, t0)
    try:
        bench.run()
    except BaseException as e:
        bench.error = f"{type(e).__name__}: {e}"
        bench.log(f"stopped: {bench.error}")
        raise
    finally:
        bench.save()
        bench.log(f"done in {bench.elapsed():.0f}s: {bench.out / 'results.json'}, {bench.out / 'summary.md'}")
    return 0
