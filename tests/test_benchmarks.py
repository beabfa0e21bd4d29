"""The benchmark code path at tiny sizes: every method, the results schema, BENCHMARKS.md."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` is a folder of the repository, not part of the installed package
    sys.path.insert(0, str(REPO))

from benchmarks import report  # noqa: E402
from benchmarks.profiles import CPU, METHODS, QUICK, Profile  # noqa: E402
from benchmarks.run import cosine_stats, random_real_indices, run_benchmark  # noqa: E402

pytestmark = pytest.mark.slow

TINY = Profile(
    name="tiny-digits", title="tiny", command="pytest", row_command="pytest --methods {method} --ipc {ipc}",
    dataset={"name": "digits"}, teachers=("convnet_d2_w32", "resnet_tiny"), teacher_epochs=1,
    student="convnet_d2_w32", student_epochs=2, student_epochs_dynamic=1, eval_every=1, synthesis_iterations=2,
    synthesis_jitter=1, seeds=(0, 1), speed_iterations=1, speed_subsets=2, notes=("tiny",),
)


def _check_schema(result: dict, profile: Profile) -> None:
    assert result["schema"] == "infer-distill-benchmark/1" and result["complete"] and result["missing"] == []
    assert {"machine", "versions", "profile", "configs", "teachers", "ceilings", "methods", "analysis", "speed", "steps",
            "stage_totals_s", "wall_s"} <= set(result)
    assert result["versions"]["torch"] == torch.__version__
    assert set(result["methods"]) == {f"ipc{i}/{m}" for i in profile.ipcs for m in profile.methods}
    for entry in result["methods"].values():
        assert [r["seed"] for r in entry["runs"]] == list(profile.seeds)
        for run in entry["runs"]:
            assert 0 <= run["final_acc"] <= 1 and [run["best_epoch"], run["best_acc"]] in [list(p) for p in run["curve"]]
            assert run["curve"][-1][1] == run["final_acc"]
        s = entry["summary"]
        assert s["final_mean"] == pytest.approx(sum(r["final_acc"] for r in entry["runs"]) / len(entry["runs"]))
        assert {"images_per_class", "stored_bytes", "compression_ratio", "num_instances"} <= set(entry["storage"])
        assert entry["training"]["epochs"] >= 1 and entry["command"]
    assert [t["arch"] for t in result["teachers"]] == list(profile.teachers)
    assert result["ceilings"]["full_train"]["arch"] == profile.student
    syn = result["speed"]["synthesis"]
    assert syn["grouped"]["ufc_iterations_per_s"] > 0 and syn["one_at_a_time"]["ufc_iterations_per_s"] > 0
    assert {s["stage"] for s in result["steps"]} >= {"prepare-data", "train-teacher", "synthesize-ufc", "soft-label",
                                                     "evaluate-student", "benchmark-student", "analysis", "speed-check"}
    assert all(s["reused"] or s["peak_rss_mb"] > 0 for s in result["steps"])


def test_benchmark_runs_every_method_resumes_and_renders(tmp_path):
    results_dir = tmp_path / "results"
    result = run_benchmark(TINY, tmp_path / "runs", results_dir, progress=False)
    _check_schema(result, TINY)
    on_disk = json.loads((results_dir / "tiny-digits.json").read_text())
    assert on_disk["methods"].keys() == result["methods"].keys()

    # budgets: digits, C=10, ipc 10: M=2 -> K=8 natural subsets, M=1 -> K=9; no-UFC stores K per class
    m = result["methods"]
    assert m["ipc10/infer"]["storage"]["num_instances"] == 8 * 3 * 10
    assert m["ipc10/infer_m1"]["storage"]["num_instances"] == 9 * 2 * 10
    assert m["ipc10/no_ufc"]["storage"]["num_instances"] == 80 and "below budget" in m["ipc10/no_ufc"]["storage"]["note"]
    assert m["ipc10/random_hard"]["storage"]["num_instances"] == 100
    assert m["ipc10/infer_dyn"]["training"]["epochs"] == 1
    assert result["analysis"]["ipc10"]["cosine_similarity"].keys() == {"infer", "no_ufc"}
    assert (results_dir / result["analysis"]["ipc10"]["ufc_examples_png"]).stat().st_size > 0

    # a second invocation reuses every artifact; a one-method run merges into the same results file
    again = run_benchmark(TINY.replace(methods=("random_hard",)), tmp_path / "runs", results_dir, progress=False, speed=False)
    assert all(s["reused"] for s in again["steps"] if s["stage"] not in ("report", "analysis"))
    assert again["methods"].keys() == result["methods"].keys()

    # BENCHMARKS.md and the plot from the results folder
    out = tmp_path / "BENCHMARKS.md"
    assert report.main(["--results", str(results_dir), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## tiny" in text and "| INFER+Dyn | 10 |" in text and "random+hard" in text and "ceiling" in text
    assert "results/tiny-digits.png" in text and (results_dir / "tiny-digits.png").read_bytes()[:4] == b"\x89PNG"
    assert "grouped (all subsets, all teachers per step)" in text and "Cosine similarity" in text


def test_random_real_draw_contains_the_natural_subsets_of_the_same_seed():
    y = torch.arange(10).repeat(30)
    a = random_real_indices(y, 10, 10, seed=3)
    b = random_real_indices(y, 7, 10, seed=3)
    assert torch.equal(a[:7], b) and (y[a] == torch.arange(10)).all()
    assert len(set(a.flatten().tolist())) == 100


def test_cosine_stats_within_and_across_classes():
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    s = cosine_stats(v, torch.tensor([0, 0, 1, 1]))
    assert s["within_class"] == pytest.approx(1.0) and s["across_classes"] == pytest.approx(0.0)


def test_profiles_are_valid_configs():
    for p in (CPU, QUICK):
        for ipc in p.ipcs:
            cfg = p.config(ipc)
            assert len(cfg.teachers.archs) >= 3 and cfg.students.archs == [p.student]
            assert set(p.methods) == set(METHODS)
        # M = 1 reuses a teacher: its train-teacher settings do not depend on the other teachers
        from infer_distill.config import stage_config

        assert stage_config(p.config(10), "train-teacher", arch=p.m1) == stage_config(p.config(10, [p.m1]), "train-teacher", arch=p.m1)
