"""The GPU benchmark command (python -m benchmarks.gpu): budget sizing, and the whole path at toy size on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.gpu import budget as bud
from benchmarks.gpu import protocol

REPO = Path(__file__).resolve().parents[1]

STAGES = ("prepare-data", "train-teacher", "select-subsets", "synthesize-ufc", "soft-label", "evaluate-student",
          "evaluate-baseline", "report")
ARCHS = ("resnet18", "mobilenetv2", "efficientnet_b0", "shufflenetv2")


# ---- budget sizing with synthetic per-part costs ---------------------------------------------


def _model() -> bud.CostModel:
    """CIFAR-10 ipc 10 and 50 sharing one pool of four teachers, with made-up seconds per step."""
    pools = {"pool": bud.PoolShape("pool", ARCHS, 50_000, 10_000, 512, 200)}
    profiles = {"ipc10": bud.ProfileShape("ipc10", "pool", 7, 4, 10, 10, 64, 50, 10_000),
                "ipc50": bud.ProfileShape("ipc50", "pool", 35, 4, 10, 50, 64, 50, 10_000)}
    single = {"resnet18": 0.004, "mobilenetv2": 0.008, "efficientnet_b0": 0.012, "shufflenetv2": 0.008}
    costs = bud.Costs(
        teacher_step_s={"pool": {"resnet18": 0.03, "mobilenetv2": 0.035, "efficientnet_b0": 0.045, "shufflenetv2": 0.02}},
        teacher_eval_s_per_image={"pool": dict.fromkeys(ARCHS, 2e-5)},
        student_step_s={"pool": {"static": 0.007, "dynamic": 0.02, "plain": 0.009}},
        student_eval_s_per_image={"pool": 2e-5}, label_s_per_image={"pool": 1e-4}, step_overhead_s={"pool": 1.5},
        synthesis_iter_s={"ipc10": 0.04, "ipc50": 0.09}, synthesis_call_s={"ipc10": 0.5, "ipc50": 0.5},
        single_iter_s={"ipc10": single, "ipc50": single}, pass_overhead_s=5.0)
    return bud.CostModel(costs, pools, profiles)


def _requested() -> dict[str, bud.Settings]:
    return {n: bud.Settings([0, 1, 2], True, ["random_soft", "random_soft_steps"], 400, 80, 1000, 1000, 4) for n in ("ipc10", "ipc50")}


def test_no_budget_is_the_full_protocol():
    plan = bud.plan_run(_model(), _requested(), None)
    assert plan.teacher_epochs == 200 and plan.reductions == [] and plan.settings == _requested()


@pytest.mark.parametrize("left", [440.0, 700.0, 1500.0])
def test_a_budget_is_met_and_every_reduction_is_recorded(left):
    model, requested = _model(), _requested()
    plan = bud.plan_run(model, requested, left)
    assert plan.fits and bud.MIN_TEACHER_EPOCHS <= plan.teacher_epochs < 200
    # the prediction (with its safety factor) stays within what it was given, and the teachers took what was left
    assert plan.predicted_total_s <= left
    assert bud.SAFETY * model.total(plan.settings, plan.teacher_epochs + 1) > left
    assert plan.predicted_total_s == pytest.approx(bud.SAFETY * model.total(plan.settings, plan.teacher_epochs))
    assert plan.reductions, "the full protocol does not fit these budgets: something must be given up"
    # every knob that differs from the request is named by a recorded reduction, with its old and new value
    recorded: dict = {}
    for r in plan.reductions:
        for c in r["changes"]:
            recorded.setdefault((c["profile"], c["key"]), []).append(c)
    for name, s in plan.settings.items():
        for key, value in vars(s).items():
            if value != getattr(requested[name], key):  # a chain of recorded changes from the request to the plan
                chain = recorded[(name, key)]
                assert chain[0]["from"] == getattr(requested[name], key) and chain[-1]["to"] == value
                assert all(a["to"] == b["from"] for a, b in zip(chain, chain[1:]))
    # the costliest seeds go first: ipc 50 keeps no more seeds than ipc 10
    assert len(plan.settings["ipc50"].seeds) <= len(plan.settings["ipc10"].seeds)
    reasons = plan.reasons(left, 200)
    assert ("ipc10", "teachers.epochs") in {(n, k) for n, k, _ in reasons}
    assert all(why.startswith(f"--budget-s {left:g}") for _, _, why in reasons)


def test_a_budget_too_small_for_anything_keeps_one_teacher_epoch_and_says_so():
    plan = bud.plan_run(_model(), _requested(), 60.0)
    assert not plan.fits and plan.teacher_epochs == 1
    for s in plan.settings.values():
        assert s.seeds == [0] and not s.dynamic and s.baselines == ["random_soft"]
        assert (s.epochs, s.epochs_dynamic, s.iterations, s.speed_iterations) == (100, 20, 250, 20)


def test_a_generous_budget_caps_the_teachers_at_the_config(tmp_path):
    plan = bud.plan_run(_model(), _requested(), 1e6)
    assert plan.teacher_epochs == 200 and plan.reductions == []


def test_plan_reductions_become_deviations_from_the_config_file(tmp_path):
    """A reduced plan, applied to the real cifar10-ipc50 profile, shows up key by key in the results' deviations."""
    (tmp_path / "cifar10" / "train").mkdir(parents=True)
    (tmp_path / "cifar10" / "test").mkdir()
    spec = protocol.load_profile("cifar10-ipc50", tmp_path, tmp_path / "cache", "cuda")
    model = _model()
    plan = bud.plan_run(model, _requested(), 440.0)
    for name, key, why in plan.reasons(440.0, 200):
        if name == "ipc50":
            spec.why(key, why)
    plan.settings = {spec.name: plan.settings["ipc50"]}
    devs = {d["key"]: d for d in protocol.deviations(spec, spec.config(**plan.config_changes(spec.name)))}
    assert devs["teachers.epochs"]["config"] == 200 and devs["teachers.epochs"]["used"] == plan.teacher_epochs
    assert "--budget-s 440" in devs["teachers.epochs"]["why"]
    assert devs["students.seeds"]["used"] == plan.settings[spec.name].seeds and "--budget-s 440" in devs["students.seeds"]["why"]
    # the benchmark's own keys differ from the file by design: the protocol has them
    assert devs["teachers.batch_size"] == {"profile": "cifar10-ipc50", "key": "teachers.batch_size", "config": 128, "protocol": 512,
                                           "used": 512, "why": protocol.WHY["teachers.batch_size"]}
    assert devs["students.eval_every"]["used"] == 50 and devs["dataset.name"]["used"] == "imagefolder"
    # a baseline the plan dropped is a deviation from the protocol even where the file never asked for it
    assert devs["students.baselines"]["config"] == ["random_soft"] and devs["students.baselines"]["used"] == ["random_soft"]
    assert devs["students.baselines"]["protocol"] == ["random_soft", "random_soft_steps"]
    assert "--budget-s 440" in devs["students.baselines"]["why"]
    assert not protocol.full_protocol(list(devs.values()))
    assert protocol.full_protocol([d for d in devs.values() if d["key"] in ("teachers.lr", "synthesis.subsets_per_shard")])


def test_paper_figures_come_from_the_config_headers():
    assert protocol.paper_figures((REPO / "configs" / "cifar10-ipc10.yaml").read_text()) == {"static": 32.0, "dynamic": 30.7}
    assert protocol.paper_figures((REPO / "configs" / "cifar10-ipc50.yaml").read_text())["static"] == 60.4


# ---- the command, end to end at toy size ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.processes
def test_toy_run_writes_complete_results(datasets_dir, tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--profile", "cifar10-ipc10", "--toy", "--device", "cpu",
                           "--datasets", str(datasets_dir), "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "speed-up" in proc.stdout
    r = json.loads((out / "results.json").read_text())
    assert r["schema"] == "infer-distill-gpu-benchmark/1" and r["complete"] and r["error"] is None
    assert r["command"].endswith(f"--profile cifar10-ipc10 --toy --device cpu --datasets {datasets_dir} --out {out}")
    assert r["machine"]["device"] == "cpu" and r["machine"]["torch"] and r["machine"]["cpu_count"]

    # every stage and phase timed
    times = r["times"]
    assert set(STAGES) <= set(times["stages"]) and all(times["stages"][s]["runs"] >= 1 for s in STAGES)
    assert all(s["seconds"] >= 0 and s["stage"] in STAGES for s in times["steps"])
    assert {"calibration", "speed-measurement"} <= set(times["phases"]) and times["wall_s"] > 0
    parts = {(p["scope"], p["part"]) for p in times["predicted_vs_actual"]}
    assert ("cifar10-ipc10", "synthesis") in parts and ("cifar10-ipc10", "student-static") in parts

    # the protocol that ran, and every deviation from the config file with its reason
    p = r["profiles"]["cifar10-ipc10"]
    assert p["status"] == "complete" and not p["full_protocol"] and p["K"] == 7 and p["M"] == 4
    assert p["protocol"]["teachers"]["archs"] == protocol.TOY_TEACHERS
    devs = {d["key"]: d for d in r["deviations"]}
    assert {"teachers.epochs", "teachers.archs", "students.epochs", "synthesis.iterations", "speed.iterations"} <= set(devs)
    assert all(d["why"] for d in r["deviations"])
    assert devs["teachers.epochs"]["config"] == 200 and devs["teachers.epochs"]["used"] == 1

    # accuracies of every method next to the paper's, stored bytes, teachers
    acc = p["accuracy"]
    assert set(acc) == {"infer_static", "infer_dynamic", "random_soft", "random_soft_steps"}
    for a in acc.values():
        assert a["seeds"] == [0] and a["stored_bytes"] > 0
        assert all(0 <= run["final_acc"] <= 1 and 0 <= run["best_acc"] <= 1 for run in a["runs"])
    assert acc["infer_static"]["paper_best_acc"] == pytest.approx(0.32)
    assert acc["infer_dynamic"]["paper_best_acc"] == pytest.approx(0.307)
    assert [t["arch"] for t in p["teachers"]] == protocol.TOY_TEACHERS and all("test_acc" in t for t in p["teachers"])

    # the speed measurement: both ways timed, one-at-a-time extrapolated from a sample
    sp = p["speed"]
    assert sp["grouped"]["seconds"] > 0 and sp["one_at_a_time"]["seconds"] > 0 and sp["speedup"] > 0
    assert sp["ufcs"] == 28 and sp["one_at_a_time"]["sample_size"] == 4 and sp["one_at_a_time"]["extrapolated"]
    assert {t["teacher"] for t in sp["one_at_a_time"]["sample"]} == set(protocol.TOY_TEACHERS)

    summary = (out / "summary.md").read_text()
    assert "Speed-up" in summary and "paper (best)" in summary and "## Deviations from the config files" in summary
    assert (out / "student_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.processes
def test_the_command_imports_no_cluster_clients():
    """The benchmark runs from src/ with the core dependencies: no Kubeflow or S3 client is imported."""
    code = ("import sys; import benchmarks.gpu.runner; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'kfp', 'boto3', 'botocore', 'kubernetes'}); "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_walk_cut_short_by_the_deadline_reports_what_finished(datasets_dir, tmp_path, monkeypatch):
    """The deadline 'arrives' once the first student has finished: the rest is skipped and recorded, and the
    first walk is reported with the runs that finished."""
    from benchmarks.gpu import runner
    from benchmarks.gpu.__main__ import parser

    fits = runner.Benchmark.fits

    def late(self, need, but=None):
        if any(s["stage"] == "evaluate-student" and not s["skipped"] for s in self.steps):
            return False
        return fits(self, need, but)

    monkeypatch.setattr(runner.Benchmark, "fits", late)
    out = tmp_path / "gpu"
    argv = ["--profile", "cifar10-ipc10", "--toy", "--device", "cpu", "--datasets", str(datasets_dir), "--out", str(out),
            "--budget-s", "3600", "--seeds", "0,1"]
    assert runner.main(parser().parse_args(argv), argv, time.perf_counter()) == 0
    r = json.loads((out / "results.json").read_text())
    assert not r["complete"] and r["error"] is None
    p = r["profiles"]["cifar10-ipc10"]
    assert p["status"] == "partial" and set(p["accuracy"]) == {"infer_static"} and p["speed"]["skipped"].startswith("deadline")
    assert [(s["walk"], s.get("step")) for s in r["skipped"]] == [
        ("seed 1", "evaluate-student convnet_d3_w32 dynamic seed 0"), ("speed measurement", None), ("seed 2", None)]
    devs = {d["key"]: d for d in r["deviations"]}
    assert devs["labels.modes"]["used"] == ["static"] and "deadline" in devs["labels.modes"]["why"]
    assert devs["students.seeds"]["used"] == [0] and "deadline" in devs["students.seeds"]["why"]
    assert devs["speed"]["used"] == "skipped"
    assert "Skipped at run time" in (out / "summary.md").read_text()
