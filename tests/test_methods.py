"""The methods INFER is compared with: selection and synthesis (peers.py) and their stages on tiny digits runs."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY
from torch import nn

from infer_distill import DistilledSet, dag, stages
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.engines import runner
from infer_distill.method import peers
from infer_distill.outputs import report
from infer_distill.stages import artifacts, infer, inputs, preflight
from infer_distill.storage import open_artifact

# ---- herding, rded, sre2l on hand-made inputs ------------------------------------------------


def _herding_by_hand(x: torch.Tensor, count: int) -> list[int]:
    mu, picked = x.mean(0), []
    for t in range(1, count + 1):
        best = min((i for i in range(len(x)) if i not in picked),
                   key=lambda i: float(torch.linalg.vector_norm(mu - (sum((x[j] for j in picked), torch.zeros_like(mu)) + x[i]) / t)))
        picked.append(best)
    return picked


def test_herding_picks_what_the_herding_recursion_picks():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, -1.0], [10.0, 0.0], [0.1, 0.1], [3.0, -2.0]])
    assert peers.herding(x, 4) == _herding_by_hand(x, 4)
    # mean (2.183, -0.317): (1, 1) is nearest (1.77, against 1.87 for (3, -2)); then the point that pulls the mean
    # of two back onto it, (3, -2): ((1, 1) + (3, -2)) / 2 = (2, -0.5)
    assert peers.herding(x, 2) == [1, 5]
    rand = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    assert peers.herding(rand, 12) == _herding_by_hand(rand, 12)
    with pytest.raises(ValueError, match="12 picks asked of 5"):
        peers.herding(rand[:5], 12)


class Brightness(nn.Module):
    """A 'teacher' whose class-0 logit is the mean brightness of the image: bright crops score best for class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.mean((1, 2, 3))
        return torch.stack([20 * b, 20 * (1 - b)], 1)


def test_rded_stitches_the_top_scored_crops():
    gen = torch.Generator().manual_seed(0)
    candidates = (torch.rand(12, 1, 8, 8, generator=gen) * 255).to(torch.uint8)
    images, crops, scores = peers.rded_select([Brightness()], candidates, 0, 2, crops=4, factor=2,
                                                gen=torch.Generator().manual_seed(1), device="cpu")
    assert images.shape == (2, 1, 8, 8) and images.dtype == torch.uint8 and len(crops) == 8
    assert torch.all(scores[:-1] <= scores[1:])  # best first
    # every candidate's best crop, re-scored: the 8 kept are the 8 best of them
    g = torch.Generator().manual_seed(1)  # the same crops from the same seed
    best = []
    for i in range(12):
        boxes = peers.random_square_crops(8, 8, 4, g)
        views = torch.cat([peers.resize(candidates[i : i + 1, :, t : t + s, l : l + s].float() / 255, 8) for t, l, s in boxes])
        best.append(float(peers.class_cross_entropy([Brightness()], views, 0, "cpu").min()))
    assert sorted(best)[:8] == pytest.approx(scores.tolist(), abs=1e-6)
    # image 0's top-left tile is the best crop, resized to 4x4
    c = crops[0]
    tile = peers.resize(candidates[c.image : c.image + 1, :, c.top : c.top + c.side, c.left : c.left + c.side].float() / 255, 4)
    assert torch.equal(images[0, :, :4, :4], peers.to_uint8(tile[0]))
    with pytest.raises(ValueError, match="factor must divide"):
        peers.rded_select([Brightness()], candidates, 0, 1, 2, 3, torch.Generator(), "cpu")


def test_sre2l_images_move_from_their_noise_and_lower_the_loss():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3))
    with torch.no_grad():
        teacher[1].running_mean.uniform_(-0.2, 0.2)
        teacher[1].running_var.uniform_(0.5, 1.5)
    result = peers.sre2l_recover([teacher.eval()], 2, 3, (1, 8, 8), [0.5], [0.25], iterations=30, lr=0.25, betas=(0.5, 0.9),
                                   r_bn=0.01, first_bn_multiplier=10, jitter=1, flip=True, seed=0, device="cpu", progress=False)
    assert result.images.shape == (2, 3, 1, 8, 8) and result.images.dtype == torch.uint8
    assert (result.images.float() / 255 - result.noise).abs().mean() > 0.05
    assert torch.all(result.final_loss < result.initial_loss)


# ---- the stages on a tiny digits run ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = load_config(None, TINY + ["methods=[infer, random, herding, rded, sre2l]", "rded.candidates=20",
                                    "sre2l.iterations=3", "students.scores=[soft, hard]"])
    layout = Layout(str(tmp_path_factory.mktemp("methods")))
    stages.prepare_data(cfg, layout.data)
    for arch in cfg.teachers.archs:
        stages.train_teacher(cfg, arch, layout.data, layout.teacher(arch), progress=False)
    return cfg, layout


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "herding", "rded", "sre2l"])
def test_each_method_stores_no_more_than_its_budget_and_trains_a_student(tiny_run, method):
    cfg, layout = tiny_run
    manifest = stages.distill_method(cfg, method, layout.data, layout.teachers(cfg), layout.method_set(method), progress=False)
    b = manifest["metrics"]["budget"]
    assert b["stored_bytes"] <= b["budget_bytes"] == cfg.method_budget_bytes(10, 64)
    assert b["stored_bytes"] >= cfg.infer_stored_bytes(10, 64) - 10 * (64 + 10 * 2)  # within one row of INFER's bytes
    ds = DistilledSet.open(layout.method_set(method))
    per_class = cfg.method_per_class(10, 64)
    assert len(ds) == per_class * 10 and ds.soft_labels.shape == (len(ds), 10)
    assert torch.equal(ds.labels, torch.arange(10).repeat(per_class))
    stored = ds.manifest["metrics"]["budget"]["stored_bytes_by_tensor"]
    assert stored["natural"] == len(ds) * 64 and stored["soft_labels"] == len(ds) * 10 * 2 and stored["ufc"] == 0
    if method == "random":  # the random-real baseline's seeded draw
        _, (train,) = inputs.data_splits(cfg, layout.data, "train")
        drawn = infer.draw_per_class(train.labels, per_class, cfg.seed, ds.classes)
        assert torch.equal((ds.images * 255).round().to(torch.uint8), train.read_all()[drawn.flatten()])
    run = stages.evaluate_method(cfg, method, "hard", "epochs", "convnet_d3_w32", 0, layout.data, layout.distilled,
                                 layout.method_score(method, "hard", "epochs", "convnet_d3_w32", 0),
                                 methods=[layout.method_set(method)], progress=False)
    assert run["metrics"]["num_instances"] == len(ds) and 0 <= run["metrics"]["final_acc"] <= 1


@pytest.mark.slow
def test_rded_with_more_candidates_than_a_class_has_takes_them_all_and_a_bad_factor_is_refused_first(tiny_run, tmp_path):
    from infer_distill.errors import ConfigError

    cfg, layout = tiny_run
    many = cfg.model_copy(update={"rded": cfg.rded.model_copy(update={"candidates": 10_000})})
    m = stages.distill_method(many, "rded", layout.data, layout.teachers(many), str(tmp_path / "rded"), progress=False)
    train_y = inputs.data_splits(cfg, layout.data, "train")[1][0].labels
    assert m["metrics"]["rded_candidates"] == int(torch.bincount(train_y).min()) < 10_000
    with pytest.raises(ConfigError, match="rded.factor=3 does not divide the image side 8"):
        preflight.preflight(load_config(None, TINY + ["methods=[infer, rded]", "rded.factor=3"]), [str(tmp_path / "x")])


@pytest.mark.slow
def test_herding_set_is_what_herding_picks_on_the_first_teachers_features(tiny_run):
    cfg, layout = tiny_run
    uri = layout.method_set("herding")
    if not artifacts.is_current(uri, cfg, "distill-method", method="herding"):
        stages.distill_method(cfg, "herding", layout.data, layout.teachers(cfg), uri, progress=False)
    dm, (train,) = inputs.data_splits(cfg, layout.data, "train")
    train_x, train_y = train.read_all(), train.labels
    teacher = inputs.load_teachers(cfg, layout.teachers(cfg), dm, "cpu")[0]
    pool = (train_y == 3).nonzero().flatten()
    picks = peers.herding(peers.penultimate_features(teacher, train_x[pool], "cpu", 500), cfg.method_per_class(10, 64))
    got = DistilledSet.open(uri, dtype=torch.uint8)
    assert torch.equal(got.images[got.labels == 3], train_x[pool[picks]])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["imagefolder", "npz"])
def test_a_peer_sets_datasheet_describes_its_method_not_infer(tiny_run, tmp_path, fmt):
    from infer_distill.cli import main

    cfg, layout = tiny_run
    uri = layout.method_set("herding")
    if not artifacts.is_current(uri, cfg, "distill-method", method="herding"):
        stages.distill_method(cfg, "herding", layout.data, layout.teachers(cfg), uri, progress=False)
    assert main(["export", uri, "--format", fmt, "--out", str(tmp_path / "out")]) == 0
    sheet = (tmp_path / "out" / "DATASHEET.md").read_text()
    b = open_artifact(uri).read_manifest()["metrics"]["budget"]
    teacher_acc = open_artifact(layout.teacher("resnet_tiny")).read_manifest()["metrics"]["test_acc"]
    for needle in ["made with herding (Welling", "| method | herding (herding): features: penultimate, teacher convnet_d2_w32, seed 0 |",
                   f"| bytes stored | {b['stored_bytes']:,} (images and labels", f"{b['budget_bytes']:,} bytes",
                   f"| instances per class | {cfg.method_per_class(10, 64)},", f"resnet_tiny ({100 * teacher_acc:.2f} % test accuracy)",
                   "its images exactly", f"`{uri}` (distill-method stage)", "use at temperature 30"]:
        assert needle in sheet, needle
    for infer_only in ["UFC", "Compensator", "distilled with INFER", "natural subsets"]:
        assert infer_only not in sheet, infer_only


@pytest.mark.slow
def test_hard_label_score_uses_no_soft_label(tiny_run, tmp_path):
    cfg, layout = tiny_run
    uri = layout.method_set("random")
    if not artifacts.is_current(uri, cfg, "distill-method", method="random"):
        stages.distill_method(cfg, "random", layout.data, layout.teachers(cfg), uri, progress=False)
    # the same set with its soft labels shuffled between instances, stored as a set of its own
    art = open_artifact(uri)
    manifest = art.read_manifest()
    tensors = art.read_tensors("distilled.safetensors")
    shuffled = tensors["soft_labels"][torch.randperm(len(tensors["soft_labels"]), generator=torch.Generator().manual_seed(0))]
    assert not torch.equal(shuffled, tensors["soft_labels"])
    other = str(tmp_path / "shuffled")
    open_artifact(other).write({"distilled.safetensors": {**tensors, "soft_labels": shuffled}},
                                      {k: v for k, v in manifest.items() if k != "files"})
    runs = {}
    for name, sets in (("stored", [uri]), ("shuffled", [other])):
        for score in ("hard", "soft"):
            runs[name, score] = stages.evaluate_method(cfg, "random", score, "epochs", "convnet_d3_w32", 0, layout.data,
                                                       layout.distilled, str(tmp_path / f"{name}-{score}"), methods=sets,
                                                       progress=False)["metrics"]
    assert runs["stored", "hard"]["curve"] == runs["shuffled", "hard"]["curve"]
    assert runs["stored", "hard"]["train_losses"] == runs["shuffled", "hard"]["train_losses"]
    assert runs["stored", "soft"]["train_losses"] != runs["shuffled", "soft"]["train_losses"]  # the soft score does read them


@pytest.mark.slow
def test_equal_steps_protocol_matches_infers_static_steps(tiny_run, tmp_path):
    cfg, layout = tiny_run
    uri = layout.method_set("random")
    if not artifacts.is_current(uri, cfg, "distill-method", method="random"):
        stages.distill_method(cfg, "random", layout.data, layout.teachers(cfg), uri, progress=False)
    m = stages.evaluate_method(cfg, "random", "soft", "steps", "convnet_d3_w32", 0, layout.data, layout.distilled,
                               str(tmp_path / "steps"), methods=[uri], progress=False)["metrics"]
    infer_steps = cfg.students.epochs * math.ceil(cfg.num_subsets(10) * 3 * 10 / cfg.students.batch_size)
    assert m["epochs"] == max(1, round(infer_steps / math.ceil(m["num_instances"] / cfg.students.batch_size)))


# ---- the report's method table -----------------------------------------------------------------


def _run(method, score, seed, acc, protocol="epochs"):
    return {"method": method, "score": score, "protocol": protocol, "arch": "convnet", "seed": seed, "final_acc": acc,
            "steps": 100, "num_instances": 130, "stored_bytes": 10920}


def test_method_table_ior_and_hlr_by_hand():
    

    runs = [_run("infer", "soft", 0, 0.60), _run("infer", "soft", 1, 0.64), _run("infer", "hard", 0, 0.40), _run("infer", "hard", 1, 0.50),
            _run("random", "soft", 0, 0.50), _run("random", "soft", 1, 0.58), _run("random", "hard", 0, 0.30), _run("random", "hard", 1, 0.36),
            _run("rded", "soft", 0, 0.55), _run("rded", "hard", 1, 0.45)]  # rded: one seed of each score only
    table = {row["method"]: row for row in report.method_summary(runs, [{"arch": "convnet", "final_acc": 0.90}])}
    assert list(table) == ["infer", "random", "rded"]
    infer = table["infer"]
    assert infer["soft"]["mean"] == pytest.approx(0.62) and infer["hard"]["mean"] == pytest.approx(0.45)
    # IOR, paired by seed: soft (0.10 + 0.06) / 2, hard (0.10 + 0.14) / 2; std of the pairs
    assert infer["ior_soft"]["mean"] == pytest.approx(0.08) and infer["ior_soft"]["std"] == pytest.approx(0.04 / math.sqrt(2))
    assert infer["ior_hard"]["mean"] == pytest.approx(0.12)
    # HLR: 0.90 - hard accuracy, mean over seeds: (0.50 + 0.40) / 2
    assert infer["hlr"]["mean"] == pytest.approx(0.45) and infer["hlr"]["full_data_acc"] == 0.90
    assert table["random"]["ior_soft"] is None and table["random"]["hlr"]["mean"] == pytest.approx(0.57)
    rded = table["rded"]
    assert rded["ior_soft"] == {"mean": pytest.approx(0.05), "std": 0.0, "seeds": [0]}
    assert rded["ior_hard"]["mean"] == pytest.approx(0.09) and rded["ior_hard"]["seeds"] == [1]
    # without a full-data reference there is no HLR; the Markdown table shows the row all the same
    no_full = report.method_summary(runs, [])
    assert all(row["hlr"] is None for row in no_full)
    text = report.markdown({"budget": {"stored_bytes": 1, "compression_ratio": 0.1, "train_bytes": 10, "ipc": 1, "num_subsets": 1,
                                       "num_classes": 10, "num_ufcs": 1, "num_instances": 20, "ufc_dtype": "uint8",
                                       "label_dtype": "float16"},
                            "student_summary": [], "baseline_summary": [], "lift": [], "teachers": [], "timings_s": {},
                            "methods": no_full})
    assert "| convnet | epochs | infer | 10,920 | 130 | 100 / 100 | 62.00 ± 2.83 | 45.00 ± 7.07 | +8.00 ± 2.83 | +12.00 ± 2.83 | — |" in text


@pytest.mark.slow
def test_a_run_with_the_methods_reports_them_at_equal_bytes(tmp_path):
    from infer_distill.engines.walk import run_in_process

    cfg = load_config(None, TINY + ["methods=[infer, random, rded]", "rded.candidates=20", "students.scores=[soft, hard]",
                                    "students.full_data_reference=true", "students.baselines=[]"])
    report = run_in_process(cfg, str(tmp_path / "run"), progress=False)["metrics"]["report"]
    rows = {row["method"]: row for row in report["methods"]}
    assert set(rows) == {"infer", "random", "rded"}
    assert rows["infer"]["stored_bytes"] == report["budget"]["stored_bytes"]
    assert all(r["soft"] and r["hard"] and r["hlr"] for r in rows.values()) and rows["rded"]["ior_hard"]["seeds"] == [0]
    text = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "Methods at equal bytes" in text and "Teacher feature similarity" in text
    assert set(report["feature_similarity"]) == {"infer", "random", "rded"}
    n = report["budget"]["num_instances"]  # INFER's: every pair of its instances, split by class
    infer = report["feature_similarity"]["infer"]
    assert infer["same_class"]["pairs"] + infer["cross_class"]["pairs"] == n * (n - 1) // 2
    assert (tmp_path / "run" / "report" / "feature_similarity.png").stat().st_size > 1000
    # the datasheet of a peer's set gives that method's scores from the run's report, and its student recipe
    from infer_distill.outputs.export import export

    sheet = (export(Layout(str(tmp_path / "run")).method_set("rded"), "npz", tmp_path / "rded") / "DATASHEET.md").read_text()
    hard = rows["rded"]["hard"]["mean"]
    assert f"convnet_d3_w32, hard labels, equal epochs, 1 seed(s): {100 * hard:.2f} % final epoch" in sheet
    assert "made with RDED (Sun et al." in sheet and "| method | RDED (rded): candidates 20," in sheet
    assert "(read from the run's report)" in sheet


def test_feature_similarity_by_hand():
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    sim = peers.feature_similarity(feats, torch.tensor([0, 0, 1, 1]), bins=4)
    # same class: (0, 1) cos 1, (2, 3) cos 0; different classes: (0, 2) 0, (0, 3) -1, (1, 2) 0, (1, 3) -1
    assert sim["same_class"]["pairs"] == 2 and sim["same_class"]["mean"] == pytest.approx(0.5)
    assert sim["cross_class"]["pairs"] == 4 and sim["cross_class"]["mean"] == pytest.approx(-0.5)
    assert sim["cross_class"]["histogram"] == [2, 0, 2, 0] and sim["same_class"]["histogram"] == [0, 0, 1, 1]


@pytest.mark.slow
def test_the_methods_steps_through_the_cli_with_a_run_root(tmp_path):
    """What the compose services and Argo steps run for the methods: `infer-distill stage NAME --root ...`."""
    import json

    from infer_distill.cli import main
    from infer_distill.storage import open_artifact

    sets = sum((["--set", s] for s in TINY + ["methods=[infer, herding]", "students.scores=[hard]", "students.baselines=[]",
                                              "students.full_data_reference=true"]), [])
    root = str(tmp_path / "r")
    run = ["--arch", "convnet_d3_w32", "--seed", "0"]
    steps = [["prepare-data"], ["train-teacher", "--arch", "convnet_d2_w32"], ["train-teacher", "--arch", "resnet_tiny"],
             ["select-subsets"], ["synthesize-ufc", "--subset-ids", "0,1,2,3,4,5,6,7"], ["soft-label"],
             ["evaluate-student", *run], ["distill-method", "--method", "herding"],
             ["evaluate-method", "--method", "herding", "--score", "hard", "--protocol", "epochs", *run],
             ["evaluate-method", "--method", "infer", "--score", "hard", "--protocol", "epochs", *run],
             ["evaluate-full-data", "--arch", "convnet_d3_w32"], ["report"]]
    for step in steps:
        assert main(["stage", step[0], "--root", root, *step[1:], *sets]) == 0, step
    report = json.loads(open_artifact(f"{root}/report").read_text("report.json"))
    rows = {r["method"]: r for r in report["methods"]}
    assert rows["herding"]["hard"] and rows["herding"]["hlr"] and rows["infer"]["soft"] and rows["infer"]["hard"]
    assert rows["herding"]["ior_hard"] is None  # no random set to compare with


# ---- extreme compression: the peers alone where INFER has no subset -------------------------


def test_infer_is_refused_at_ipc_1_with_its_smallest_feasible_ipc_and_the_way_to_run_the_peers():
    from infer_distill.errors import ConfigError

    cfg = load_config(None, TINY + ["budget.ipc=1", "methods=[infer, random]"])
    with pytest.raises(ConfigError, match=r"K = floor.* = 0 .*at least 2.*leave infer out of methods"):
        cfg.check_budget(10)
    assert cfg.smallest_feasible_ipc(10) == 2 and cfg.smallest_feasible_ipc(100) == 2
    assert load_config(None, TINY + ["budget.ipc=2", "teachers.archs=[convnet_d2_w32]"]).num_subsets(10) == 1
    peers = load_config(None, TINY + ["budget.ipc=1", "methods=[random, herding]", "students.baselines=[]"])
    assert peers.check_budget(10) == 0


@pytest.mark.parametrize("override, field", [("students.baselines=[random_soft]", "students.baselines"),
                                             ("students.protocols=[epochs, steps]", "students.protocols")])
def test_a_config_without_infer_refuses_what_needs_infers_steps(override, field):
    from infer_distill.errors import ConfigError

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, TINY + ["methods=[random]", "students.baselines=[]", override])


def test_without_infer_the_plan_leaves_infers_steps_out_everywhere():
    

    cfg = load_config(None, TINY + ["methods=[random, herding]", "students.baselines=[]", "students.scores=[soft, hard]"])
    infer_steps = ["select-subsets", "synthesize-ufc", "soft-label", "evaluate-student", "evaluate-baseline"]
    assert dag.omitted(cfg) == [*infer_steps, "evaluate-full-data"]
    assert not any(runner.step_items(dag.STEPS[s], cfg, Layout("/x"), lambda: 10) for s in infer_steps)
    assert dag.step_inputs(dag.STEPS["report"], cfg, {o: o for o in dag.PRODUCER}) == {
        "data": "data", "teachers": "teachers", "ufc": [], "distilled": None, "students": [], "baselines": [],
        "method_scores": "method_scores", "full_data": "full_data", "methods": "methods"}
    with pytest.raises(Exception, match="compiled with the select-subsets step"):
        dag.check_omitted(cfg, ["evaluate-full-data"])
    # the peers' bytes: ipc real images per class with their labels (INFER's K = 0 stores nothing)
    assert cfg.method_per_class(10, 64) == cfg.budget.ipc


@pytest.mark.slow
def test_the_peers_alone_at_ipc_1_run_and_report_why_infer_is_absent(tmp_path):
    from infer_distill.engines.walk import run_in_process

    cfg = load_config(None, TINY + ["budget.ipc=1", "methods=[random, herding, sre2l]", "students.baselines=[]",
                                    "students.scores=[soft, hard]", "sre2l.iterations=3"])
    root = tmp_path / "run"
    report = run_in_process(cfg, str(root), progress=False)["metrics"]["report"]
    assert {r["method"] for r in report["methods"]} == {"random", "herding", "sre2l"}
    assert all(r["num_instances"] == 10 and r["soft"] and r["hard"] for r in report["methods"])
    assert report["infer_not_run"] == {"methods": ["random", "herding", "sre2l"], "ipc": 1, "num_subsets": 0,
                                       "smallest_feasible_ipc": 2}
    assert not (root / "subsets").exists() and not (root / "distilled").exists() and not (root / "students").exists()
    text = (root / "report" / "report.md").read_text()
    assert "INFER is not part of this run" in text and "smallest feasible ipc here is 2" in text and "Methods at equal bytes" in text
    assert "ufc_examples.png" not in text
    # resumable as any run: everything current the second time
    again = run_in_process(cfg, str(root), progress=False)
    assert again["metrics"]["report"]["methods"] == report["methods"]
