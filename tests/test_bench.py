"""The benchmark client (benchmarks/run.py, benchmarks/report.py) on tiny profiles: pools, workers, resume, rendering."""
import json
from pathlib import Path

import pytest
import yaml

from benchmarks import report, speed
from benchmarks.run import load_profile, main, profile_names
from infer_distill.errors import ConfigError

TINY_PROFILE = {
    "title": "digits, tiny",
    "notes": ["a tiny profile on scikit-learn's digits"],
    "config": {
        "dataset": {"name": "digits"},
        "budget": {"ipc": 3},
        "teachers": {"archs": ["convnet_d2_w32", "resnet_tiny"], "epochs": 2},  # one leaves resnet_tiny at chance
        "synthesis": {"iterations": 2},
        "students": {"archs": ["convnet_d2_w32"], "seeds": [0, 1], "epochs": 2, "eval_every": 1,
                     "baselines": ["random_soft", "random_soft_steps"]},
        "device": "cpu",
    },
    "variants": {
        "m1": {"title": "M = 1", "set": ["teachers.archs=[convnet_d2_w32]"]},
        "m2": {"title": "M = 2", "set": []},
        "m1-ls0": {"title": "M = 1, no label smoothing", "set": ["teachers.archs=[convnet_d2_w32]", "teachers.label_smoothing=0.0"],
                   "question": "does label smoothing matter?"},
        "m1-f32": {"title": "M = 1, float32 UFCs", "set": ["teachers.archs=[convnet_d2_w32]", "synthesis.ufc_dtype=float32",
                                                          "students.baselines=[]"], "baselines_from": "m1"},
    },
}


@pytest.mark.parametrize("name", profile_names())
def test_every_profile_is_valid_and_infer_never_stores_more_than_its_baselines(name):
    profile = load_profile(name)
    assert profile.variants and profile.notes
    for variant in profile.variants.values():
        cfg = profile.variant_config(variant.name)
        if variant.baselines_from:
            assert variant.baselines_from in profile.variants and not cfg.students.baselines
            continue
        if "random" in cfg.methods:  # the random method stands for the baselines, at the peers' bytes
            image_bytes = 3 * 32 * 32
            assert cfg.method_budget_bytes(10, image_bytes) >= (cfg.infer_stored_bytes(10, image_bytes) if cfg.runs_infer() else 0)
            continue
        assert cfg.students.baselines == ["random_soft", "random_soft_steps"], variant.name
        image_bytes = 3 * 32 * 32
        baseline_images = cfg.baseline_per_class(10, image_bytes) * 10
        assert cfg.infer_stored_bytes(10, image_bytes) <= baseline_images * image_bytes + baseline_images * 10 * 2, variant.name


def _rendered(results: Path, md: Path, before: str) -> str:
    """BENCHMARKS.md as benchmarks/report.py rewrites `md` (holding `before`) from the results in `results`."""
    md.write_text(before)
    report.main(["--results", str(results), "--out", str(md)])
    return md.read_text()


def test_a_bad_profile_is_refused_before_anything_runs(tmp_path, capsys):
    bad = json.loads(json.dumps(TINY_PROFILE))
    bad["variants"]["m1"]["set"] = ["teachers.epochs=-1"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(ConfigError, match="teachers.epochs"):
        load_profile(str(path))
    assert main(["--profile", str(path), "--root", str(tmp_path / "runs")]) == 2
    assert "teachers.epochs" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    assert main(["--profile", "no-such-profile"]) == 2


@pytest.mark.slow
def test_variants_share_a_pool_run_in_workers_resume_and_render(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_PROFILE, sort_keys=False))
    runs, results = tmp_path / "runs", tmp_path / "results"
    args = ["--profile", str(path), "--root", str(runs), "--results", str(results)]
    assert main([*args, "--jobs", "2"]) == 0
    result = json.loads((results / "tiny.json").read_text())
    assert result["unfinished"] == [] and list(result["variants"]) == ["m1", "m2", "m1-ls0", "m1-f32"]

    # one teacher per recipe and architecture: m1, m2 and m1-f32 link the same convnet_d2_w32
    pools = sorted(p.name for p in runs.iterdir() if p.name.startswith("pool-"))
    assert len(pools) == 2  # label smoothing 0.1 and 0.0
    linked = {v: (runs / v / "teachers" / "convnet_d2_w32").resolve() for v in ("m1", "m2", "m1-f32", "m1-ls0")}
    assert linked["m1"] == linked["m2"] == linked["m1-f32"] != linked["m1-ls0"]
    trained = {s["uri"] for s in result["steps"] if s["stage"] == "train-teacher" and not s["skipped"]}
    assert len(trained) == 3  # convnet_d2_w32 twice (two recipes), resnet_tiny once
    assert result["source"]["commit"] and result["source"]["dirty"] in (True, False)

    # the synthesis speed measurement on a finished variant: grouped against one UFC at a time
    assert speed.main(["--profile", str(path), "--variant", "m2", "--root", str(runs), "--results", str(results),
                       "--iterations", "2", "--sample", "1"]) == 0
    measured = json.loads((results / "tiny-m2-speed.json").read_text())
    assert measured["ufcs"] == measured["K"] * 2 and measured["one_at_a_time"]["timed"] == 1 and measured["one_at_a_time"]["extrapolated"]
    assert measured["speedup"] > 0 and measured["source"]["commit"]

    m2 = result["variants"]["m2"]["report"]
    assert m2["budget"]["num_teachers"] == 2 and {b["baseline"] for b in m2["baselines"]} == {"random_soft", "random_soft_steps"}
    assert {(b["baseline"], b["seed"]) for b in m2["baselines"]} == {(n, s) for n in ("random_soft", "random_soft_steps") for s in (0, 1)}
    assert result["variants"]["m1-f32"]["report"]["baselines"] == []

    # resumed: every step but the reports is current, and the results are the same
    assert main([*args, "--jobs", "1"]) == 0
    again = json.loads((results / "tiny.json").read_text())
    assert all(s["skipped"] for s in again["steps"] if s["stage"] != "report")
    assert again["variants"]["m2"]["report"]["students"] == m2["students"]

    # --reuse-teachers keeps the pools only; a deadline already passed starts nothing after them
    assert main([*args, "--jobs", "1", "--reuse-teachers", "--variants", "m1", "--deadline-s", "0"]) == 1
    stopped = json.loads((results / "tiny.json").read_text())
    assert stopped["unfinished"] == ["m1"] and not (runs / "m2").exists()
    assert stopped["variants"]["m2"]["report"] == m2  # kept from the earlier invocation, with the code it came from
    assert stopped["variants"]["m2"]["source"] == again["source"] and again["variants"]["m2"]["source"] == again["source"]
    assert all(s["skipped"] for s in stopped["steps"] if s["stage"] == "train-teacher" and s["variant"] == "m1")
    # the step timings of the variants this invocation did not run are kept with their reports
    assert [s for s in stopped["steps"] if s["variant"] == "m2"] == [s for s in again["steps"] if s["variant"] == "m2"]

    # BENCHMARKS.md's region and the figure, from the results
    text = _rendered(results, tmp_path / "B.md", f"# Benchmarks\n\nprose stays\n\n{report.BEGIN}\nold\n{report.END}\ntail stays\n")
    assert "prose stays" in text and "tail stays" in text and "old" not in text.split(report.BEGIN)[1]
    assert (results / "tiny.png").read_bytes().startswith(b"\x89PNG")
    table = [line for line in text.splitlines() if line.startswith("| m")]
    assert any(line.startswith("| m1-f32: M = 1, float32 UFCs (baselines of m1)") for line in table)
    assert "does label smoothing matter?" in text and "--variants VARIANT" in text
    assert "Synthesis speed, m2" in text and "Speed-up: **" in text


def test_speed_sample_and_a_variant_not_run_yet(tmp_path, capsys):
    assert speed.sample_pairs(3, 2, 100) == [(k, m) for m in range(2) for k in range(3)]  # all of them
    pairs = speed.sample_pairs(35, 4, 20)
    assert len(set(pairs)) == 20 and {m for _, m in pairs} == {0, 1, 2, 3}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_PROFILE, sort_keys=False))
    assert speed.main(["--profile", str(path), "--variant", "m1", "--root", str(tmp_path / "runs")]) == 2
    assert "run the benchmark first" in capsys.readouterr().err


def test_the_paper_profile_is_the_papers_budget():
    """cifar10-paper: M = 4 teachers, K = 7 at ipc 10 and 35 at ipc 50; 350 and 1,750 instances; bytes as the budget says."""
    profile = load_profile("cifar10-paper")
    image = 3 * 32 * 32
    for variant, k, instances in (("ipc10", 7, 350), ("ipc50", 35, 1750)):
        cfg = profile.variant_config(variant)
        assert cfg.teachers.archs == ["resnet18", "mobilenetv2", "efficientnet_b0", "shufflenetv2"]
        assert cfg.num_subsets(10) == k and k * (len(cfg.teachers.archs) + 1) * 10 == instances
        assert (cfg.synthesis.iterations, cfg.students.epochs, cfg.students.epochs_dynamic, cfg.students.seeds) == (1000, 400, 80, [0, 1, 2])
        assert cfg.students.archs == ["resnet18"] and cfg.labels.modes == ["static", "dynamic"]
        # natural uint8 images, uint8 UFCs with their scale and offset, labels at labels.dtype
        label_bytes = {"float16": 2, "float32": 4}[cfg.labels.dtype]
        expected = k * 10 * image + k * 4 * (image + 8 if cfg.synthesis.ufc_dtype == "uint8" else image * 4) + instances * 10 * label_bytes
        assert cfg.infer_stored_bytes(10, image) == expected
        assert profile.variants[variant].paper["static"] in (32.0, 60.4)


@pytest.mark.slow
def test_the_paper_profiles_teacher_recipe_trains_at_toy_size(tmp_path):
    """The profile's teacher recipe (one-cycle, batch 512, peak lr 0.2, label smoothing) on digits with a small net."""
    from infer_distill import stages

    cfg = load_profile("cifar10-paper").variant_config(
        "ipc10", extra=["dataset={name: digits}", "teachers.archs=[resnet_tiny]", "teachers.epochs=20", "device=cpu"])
    assert (cfg.teachers.batch_size, cfg.teachers.lr, cfg.teachers.label_smoothing) == (512, 0.2, 0.1)
    stages.prepare_data(cfg, str(tmp_path / "data"))
    manifest = stages.train_teacher(cfg, "resnet_tiny", str(tmp_path / "data"), str(tmp_path / "teacher"), progress=False)
    assert manifest["metrics"]["test_acc"] > 0.5 and len(manifest["metrics"]["train_losses"]) > 0


METHODS_PROFILE = {
    "title": "digits, the methods, tiny",
    "notes": ["the methods at equal bytes on scikit-learn's digits"],
    "config": {
        "dataset": {"name": "digits"},
        "budget": {"ipc": 2},
        "teachers": {"archs": ["convnet_d2_w32"], "epochs": 1},
        "synthesis": {"iterations": 2},
        "students": {"archs": ["convnet_d2_w32"], "seeds": [0, 1], "epochs": 2, "baselines": [], "scores": ["soft", "hard"]},
        "methods": ["infer", "random", "herding"],
        "device": "cpu",
    },
    "variants": {
        "ipc2": {"title": "ipc 2, every method", "set": ["students.full_data_reference=true", "students.full_data_epochs=1"]},
        "ipc1": {"title": "ipc 1, the peers", "set": ["budget.ipc=1", "methods=[random, herding]"]},
    },
}


@pytest.mark.slow
def test_the_methods_profile_renders_the_method_table_with_infers_feasibility_and_a_borrowed_reference(tmp_path):
    path = tmp_path / "methods.yaml"
    path.write_text(yaml.safe_dump(METHODS_PROFILE, sort_keys=False))
    runs, results = tmp_path / "runs", tmp_path / "results"
    assert main(["--profile", str(path), "--root", str(runs), "--results", str(results), "--jobs", "1"]) == 0
    result = json.loads((results / "methods.json").read_text())
    ipc1 = result["variants"]["ipc1"]["report"]
    assert ipc1["infer_not_run"]["smallest_feasible_ipc"] == 2 and {m["method"] for m in ipc1["methods"]} == {"random", "herding"}

    rows = {(m["variant"], m["method"]): m for m in report.method_rows(result)}
    assert set(rows) == {("ipc2", "infer"), ("ipc2", "random"), ("ipc2", "herding"), ("ipc1", "random"), ("ipc1", "herding")}
    full = next(r["hlr"]["full_data_acc"] for r in rows.values() if r["variant"] == "ipc2")
    borrowed = rows[("ipc1", "herding")]
    assert borrowed["hlr_from"] == "ipc2" and borrowed["hlr"]["mean"] == pytest.approx(full - borrowed["hard"]["mean"])
    assert rows[("ipc2", "herding")]["hlr_from"] == ""

    text = _rendered(results, tmp_path / "B.md", f"# Benchmarks\n\n{report.BEGIN}\n{report.END}\n")
    assert "Methods at equal bytes" in text and "ipc1: INFER is not run (K = 0 at ipc 1); its smallest feasible ipc here is 2" in text
    assert "(reference of ipc2)" in text and "same class / different classes" in text
    assert (results / "methods-similarity.png").read_bytes().startswith(b"\x89PNG")


# ----------------------------------------------------------------------------------------
# The paper's protocol on one GPU: the command, its estimate, its results file
# ----------------------------------------------------------------------------------------

ONE_GPU = ["--profile", "cifar10-paper", "--variants", "ipc10-one-gpu", "--device", "cuda", "--jobs", "8"]


def test_the_one_gpu_command_is_the_papers_protocol_with_shorter_teachers():
    variant = load_profile("cifar10-paper").variants["ipc10-one-gpu"]
    cfg = load_profile("cifar10-paper").variant_config("ipc10-one-gpu")
    assert (cfg.num_subsets(10), len(cfg.teachers.archs), cfg.synthesis.iterations) == (7, 4, 1000)
    assert (cfg.students.epochs, cfg.students.epochs_dynamic, cfg.students.seeds, cfg.labels.modes) == (400, 80, [0, 1, 2], ["static", "dynamic"])
    assert cfg.students.baselines == ["random_soft", "random_soft_steps"] and cfg.teachers.epochs == 20
    assert variant.target_s == 540 and variant.paper == {"static": 32.0, "dynamic": 30.7}


def test_the_estimate_scales_the_measured_costs_and_bounds_the_wall_time():
    """Each item's seconds are the first GPU run's, scaled by what they grow with; the schedule lies between the sum of
    the work (no sharing gain) and the critical path (free sharing); the break-even gain meets the target and no less."""
    import json as _json

    from benchmarks import estimate as est

    costs = est.measured_costs()
    run = _json.loads(est.MEASURED.read_text())
    measured = {(s["stage"], s["label"]): s["seconds"] for s in run["times"]["steps"] if not s["skipped"]}
    cfg = load_profile("cifar10-paper").variant_config("ipc10-one-gpu")
    # 20 of the measured 5 teacher epochs, 1000 of 250 iterations, 400 of 100 static and 80 of 20 dynamic student epochs
    teacher = {a: est.item_seconds(costs, cfg, "train-teacher", {"arch": a}) for a in cfg.teachers.archs}
    assert teacher == pytest.approx({a: 4 * measured[("train-teacher", a)] for a in cfg.teachers.archs})
    assert est.item_seconds(costs, cfg, "synthesize-ufc", {"subset_ids": list(range(7))}) == pytest.approx(
        4 * measured[("synthesize-ufc", "subsets 0..6")])
    static = est.item_seconds(costs, cfg, "evaluate-student", {"arch": "resnet18", "seed": 0, "label_mode": "static"})
    assert static == pytest.approx(4 * (measured[("evaluate-student", "resnet18 static seed 0")]
                                        + measured[("evaluate-student", "resnet18 static seed 1")]) / 2)
    steps = est.item_seconds(costs, cfg, "evaluate-baseline", {"arch": "resnet18", "seed": 0, "baseline": "random_soft_steps"})
    assert steps == pytest.approx(4 * (12.364 + 12.241) / 2)  # 2400 of 600 steps (INFER's 400 epochs x 6 batches)

    e = est.estimate([cfg], 8, 540, "cmd", costs)
    assert e["stages"]["evaluate-student"]["items"] == 6 and e["stages"]["evaluate-baseline"]["items"] == 6
    assert e["wall_s_by_gain"]["1"] == pytest.approx(e["work_s"], abs=0.2)
    critical = (costs.fixed_s["prepare-data"] + max(teacher.values()) + 4 * measured[("synthesize-ufc", "subsets 0..6")]
                + costs.fixed_s["soft-label"] + static + costs.fixed_s["report"])  # the static student is the longest after the labels
    assert e["wall_s_by_gain"]["8"] == pytest.approx(critical, abs=0.2)
    walls = list(e["wall_s_by_gain"].values())
    assert walls == sorted(walls, reverse=True)
    g = e["break_even_gain"]
    assert 1 < g < 8
    assert est.schedule([cfg], 8, g + 0.01, costs)[0] <= 540 < est.schedule([cfg], 8, g - 0.05, costs)[0]
    # forty teacher epochs (the ipc10 variant) do not fit nine minutes even with free sharing
    assert est.estimate([load_profile("cifar10-paper").variant_config("ipc10")], 8, 540, "cmd", costs)["break_even_gain"] is None

    # what was never measured is refused, naming it
    with pytest.raises(ConfigError, match="teacher resnet_tiny"):
        est.item_seconds(costs, cfg, "train-teacher", {"arch": "resnet_tiny"})
    with pytest.raises(ConfigError, match="35 subsets x 4 teachers"):
        est.estimate([load_profile("cifar10-paper").variant_config("ipc50")], 8, 540, "cmd", costs)


def test_make_paper_runs_the_one_gpu_command():
    from benchmarks.run import REPO

    recipe = (REPO / "Makefile").read_text().split("\npaper: install\n", 1)[1].splitlines()
    assert recipe[0].strip() == "$(PY) -m benchmarks.run " + " ".join(ONE_GPU) + " $(ARGS)"


@pytest.mark.processes  # it asks git for the commit
def test_the_estimate_command_prints_and_writes_the_breakdown(tmp_path, capsys):
    assert main([*ONE_GPU, "--estimate", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "synthesize-ufc" in out and "sharing gain 1:" in out and "target 540 s: reached from a sharing gain of" in out
    written = json.loads((tmp_path / "cifar10-paper-estimate.json").read_text())
    assert written["command"] == "python -m benchmarks.run " + " ".join([*ONE_GPU, "--results", str(tmp_path)])
    assert written["variants"] == ["ipc10-one-gpu"] and written["source"]["commit"]
    assert main([*ONE_GPU, "--estimate", "--results", str(tmp_path), "--set", "teachers.batch_size=256"]) == 2
    assert "teachers.batch_size=256" in capsys.readouterr().err

    # BENCHMARKS.md: the pending GPU run, with its estimate
    text = _rendered(tmp_path, tmp_path / "B.md", f"{report.BEGIN}\n{report.END}\n")
    assert "ipc10-one-gpu on one GPU, the run is pending" in text and "The target, 540 s, is met from a gain of" in text
    assert "--jobs 8`" in text and str(tmp_path) not in text.split("Command:")[1].split("\n")[0]


@pytest.mark.slow
def test_the_one_gpu_command_at_toy_size_on_a_cpu_writes_every_field_of_its_results(tmp_path):
    """The same command on a CPU with a few CIFAR-10 images and small networks: commit, machine, each stage's time and
    (no GPU) null busy fraction, final and best top-1 over seeds of INFER, INFER+Dyn and both baselines beside the
    paper's, and the estimate, refused for networks the GPU run never measured."""
    from benchmarks.run import default_datasets

    toy = ["--set", "dataset.train_per_class=12", "--set", "dataset.test_per_class=5",
           "--set", "teachers.archs=[convnet_d2_w32,resnet_tiny]", "--set", "teachers.epochs=1", "--set", "synthesis.iterations=2",
           "--set", "students.archs=[convnet_d2_w32]", "--set", "students.epochs=2", "--set", "students.epochs_dynamic=1",
           "--set", "students.seeds=[0,1]",
           "--set", "teachers.min_accuracy_over_chance=null"]  # 12 images per class: teachers near chance, on purpose
    results = tmp_path / "results"
    args = ["--profile", "cifar10-paper", "--variants", "ipc10-one-gpu", "--device", "cpu", "--jobs", "2",
            "--datasets", default_datasets(), "--root", str(tmp_path / "runs"), "--results", str(results), *toy]
    assert main(args) == 0
    r = json.loads((results / "cifar10-paper.json").read_text())
    assert r["source"]["commit"] and r["machine"]["torch"] and r["machine"]["device"] == "cpu"
    assert (r["machine"]["gpu"], r["machine"]["driver"], r["machine"]["cuda"]) == (None, None, None)
    assert r["gpu_utilisation_by_stage"] is None and r["unfinished"] == []
    stages = r["stages"]
    assert set(stages) == {"prepare-data", "train-teacher", "select-subsets", "synthesize-ufc", "soft-label",
                           "evaluate-student", "evaluate-baseline", "report"}
    for s in stages.values():
        assert s["work_s"] >= 0 and 0 <= s["span_s"] <= r["wall_s"] and s["gpu_busy_percent"] is None
    assert stages["evaluate-student"]["steps_run"] == 4 and stages["evaluate-baseline"]["steps_run"] == 4
    acc = r["variants"]["ipc10-one-gpu"]["accuracy"]
    assert {a["run"]: a["paper_best_percent"] for a in acc.values()} == {
        "infer": 32.0, "infer_dynamic": 30.7, "random_soft": None, "random_soft_steps": None}
    students = r["variants"]["ipc10-one-gpu"]["report"]["students"]
    static = [s["final_acc"] for s in students if s["label_mode"] == "static"]
    assert acc["infer convnet_d2_w32"]["final_mean"] == pytest.approx(sum(static) / 2)
    for a in acc.values():
        assert a["seeds"] == [0, 1] and 0 <= a["final_mean"] <= a["best_mean"] <= 1 and a["final_std"] >= 0
    assert r["estimate"]["command"] == r["command"] and "teacher convnet_d2_w32" in r["estimate"]["error"]

    text = _rendered(results, tmp_path / "B.md", f"{report.BEGIN}\n{report.END}\n")
    assert "### ipc10-one-gpu against the paper" in text and "| INFER+Dyn (dynamic labels) | convnet_d2_w32 | 2 |" in text
    assert "| 30.7 |" in text and "under 90 %: convnet_d2_w32, resnet_tiny" in text
    assert "wall span (s)" in text and "No GPU-time estimate: teacher convnet_d2_w32" in text
