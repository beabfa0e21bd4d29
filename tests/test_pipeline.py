"""End to end: the whole method through the stages and the CLI, on real data at tiny sizes."""
import json
import os
import shutil
from pathlib import Path

import boto3
import pytest
import torch
from conftest import TINY

from infer_distill import stages
from infer_distill.cli import main
from infer_distill.cli.show import print_step
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.data.splits import open_split
from infer_distill.engines.runner import plan_ufc_shards
from infer_distill.engines.walk import run_in_process
from infer_distill.method.training import evaluate
from infer_distill.outputs import instances
from infer_distill.outputs.instances import distilled_instances
from infer_distill.stages import infer
from infer_distill.stages.inputs import build_model, load_teachers
from infer_distill.storage import open_artifact

pytestmark = pytest.mark.slow


def _all_artifacts(cfg, out, num_classes):
    layout = Layout(out)
    uris = [layout.data, layout.subsets, layout.distilled, layout.report, *layout.teachers(cfg), *layout.students(cfg),
            *layout.baselines(cfg)]
    return uris + [layout.ufc(ids) for ids in cfg.shard_plan(num_classes)]


def _verify_complete(cfg, out, num_classes):
    """Every artifact exists and every file in it passes its size and sha256 check."""
    for uri in _all_artifacts(cfg, out, num_classes):
        art = open_artifact(uri)
        manifest = art.read_manifest()
        for name in manifest["files"]:
            art.read_bytes(name)
    return json.loads(open_artifact(Layout(out).report).read_text("report.json"))


def test_quickstart_end_to_end_resume_and_reproducibility(tmp_path, capsys):
    cfg = load_config("configs/quickstart.yaml", TINY + ["synthesis.subsets_per_shard=3"])
    out = str(tmp_path / "run")
    run_in_process(cfg, out, progress=False)
    report = _verify_complete(cfg, out, 10)

    # report.json holds what the issue asks for
    assert {"students", "teachers", "budget", "timings_s"} <= set(report)
    (student,) = report["students"]
    assert {"arch", "seed", "label_mode", "final_acc", "best_acc"} <= set(student)
    # the reported accuracy is the stored student's on the real test set; the best is a point of the curve
    dm = open_artifact(Layout(out).data).read_manifest()
    model = build_model(student["arch"], dm)
    model.load_state_dict(open_artifact(Layout(out).student(student["arch"], 0, "static")).read_tensors("weights.safetensors"))
    assert evaluate(model, open_split(open_artifact(Layout(out).data), "test"), "cpu", cfg.students.batch_size) == student["final_acc"] == student["curve"][-1][1]
    assert [student["best_epoch"], student["best_acc"]] in student["curve"]
    assert [t["arch"] for t in report["teachers"]] == cfg.teachers.archs
    assert set(report["timings_s"]) >= {"prepare-data", "train-teacher", "synthesize-ufc", "soft-label", "evaluate-student"}

    # budget, by hand: M=2 teachers, C=10, ipc 10 -> K = floor(100/12) = 8; 8x8 grayscale; UFCs uint8 with a
    # float32 scale and offset each, labels float16
    b = report["budget"]
    n_train = open_artifact(Layout(out).data).read_manifest()["metrics"]["num_train"]
    natural, ufcs, labels = 8 * 10 * 64, 8 * 2 * (64 + 8), 8 * 3 * 10 * 10 * 2
    assert (b["num_subsets"], b["num_ufcs"], b["num_instances"]) == (8, 16, 240)
    assert b["stored_bytes"] == natural + ufcs + labels == 11072 == cfg.infer_stored_bytes(10, 64)
    assert b["compression_ratio"] == pytest.approx(11072 / (n_train * 64))
    assert open_artifact(Layout(out).subsets).read_manifest()["metrics"]["shards"] == [[0, 1, 2], [3, 4, 5], [6, 7]]

    # static labels are the mean of the M teachers' logits on the un-augmented instances, as stored (uint8 UFCs)
    teachers = load_teachers(cfg, Layout(out).teachers(cfg), dm, "cpu")
    t = instances.read_distilled(open_artifact(Layout(out).distilled))
    x = distilled_instances(t["natural"], t["ufc"], None)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in teachers]).mean(0)
    torch.testing.assert_close(t["soft_labels"], expected, rtol=2**-10, atol=1e-4)  # float16 rounding

    # the same config and seed give byte-identical UFCs (and labels) in a fresh directory
    out2 = str(tmp_path / "again")
    run_in_process(cfg, out2, progress=False)
    for ids in cfg.shard_plan(10):
        a = open_artifact(Layout(out).ufc(ids)).read_manifest()["files"]["ufc.safetensors"]["sha256"]
        b2 = open_artifact(Layout(out2).ufc(ids)).read_manifest()["files"]["ufc.safetensors"]["sha256"]
        assert a == b2
    assert open_artifact(Layout(out).distilled).read_manifest()["files"] == open_artifact(Layout(out2).distilled).read_manifest()["files"]

    # show prints the report
    assert main(["show", Layout(out).report]) == 0
    assert "INFER distillation report" in capsys.readouterr().out


def test_cifar10_from_zips_one_per_split(tmp_path, datasets_dir):
    cfg = load_config(None, TINY + [
        "dataset.name=imagefolder", f"dataset.root={datasets_dir / 'cifar10'}", "dataset.train_per_class=12",
        "dataset.test_per_class=5", "budget.ipc=3", "labels.modes=[static, dynamic]", "students.epochs_dynamic=1",
        "teachers.min_accuracy_over_chance=null",  # two epochs on 120 images: teachers about as good as chance
    ])
    out = str(tmp_path / "cifar")
    run_in_process(cfg, out, progress=False)
    report = _verify_complete(cfg, out, 10)
    dm = open_artifact(Layout(out).data).read_manifest()["metrics"]
    assert (dm["num_train"], dm["num_test"], dm["image_size"], dm["in_chans"]) == (120, 50, 32, 3)
    assert dm["classes"][:2] == ["airplane", "automobile"]
    assert {s["label_mode"] for s in report["students"]} == {"static", "dynamic"}
    assert report["budget"]["num_subsets"] == 2  # floor(3 / (1 + 2/10))
    png = open_artifact(Layout(out).report).read_bytes("ufc_examples.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_against_s3(s3_bucket, tmp_path):
    cfg = load_config(None, TINY)
    out = f"s3://{s3_bucket}/runs/tiny"
    assert main(["run", "--out", out, "--no-progress", *sum((["--set", s] for s in TINY), [])]) == 0
    _verify_complete(cfg, out, 10)
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert "runs/tiny/report/report.json" in keys and "runs/tiny/distilled/distilled.safetensors" in keys


def test_a_failed_stage_loses_no_finished_work(tmp_path, monkeypatch):
    cfg = load_config(None, TINY)
    out = str(tmp_path / "run")

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    real = stages.evaluate_student
    monkeypatch.setattr(stages, "evaluate_student", boom)
    with pytest.raises(RuntimeError, match="killed"):
        run_in_process(cfg, out, progress=False)
    layout = Layout(out)
    assert open_artifact(layout.distilled).exists() and not open_artifact(layout.student("convnet_d3_w32", 0, "static")).exists()
    done = {u: open_artifact(u).read_manifest()["created_at"] for u in [layout.data, layout.subsets, layout.distilled]}

    monkeypatch.setattr(stages, "evaluate_student", real)
    run_in_process(cfg, out, progress=False)
    assert done == {u: open_artifact(u).read_manifest()["created_at"] for u in done}
    assert open_artifact(layout.report).exists()


def test_stage_cli_with_explicit_uris(tmp_path):
    """What a container runs: one stage, inputs and output as URIs."""
    sets = sum((["--set", s] for s in TINY), [])
    root = str(tmp_path / "r")
    assert main(["stage", "prepare-data", "--out", f"{root}/d", *sets]) == 0
    assert main(["stage", "train-teacher", "--arch", "resnet_tiny", "--data", f"{root}/d", "--out", f"{root}/t", *sets]) == 0
    m = open_artifact(f"{root}/t").read_manifest()
    assert m["stage"] == "train-teacher" and m["metrics"]["arch"] == "resnet_tiny"
    assert main(["stage", "train-teacher", "--data", f"{root}/d", "--out", f"{root}/t2", *sets]) == 2  # no --arch
    assert main(["stage", "select-subsets", "--data", f"{root}/d", "--out", f"{root}/s", "--shards-output", f"{root}/plan.json",
                 *sets, "--set", "synthesis.subsets_per_shard=3"]) == 0
    assert json.loads(open(f"{root}/plan.json").read()) == [{"subset_ids": ids} for ids in ("0,1,2", "3,4,5", "6,7")]


def test_teacher_weights_can_be_imported_instead_of_trained(tmp_path, capsys):
    from safetensors.torch import save_file

    from infer_distill.models.networks import create_model

    torch.manual_seed(5)
    net = create_model("resnet_tiny", num_classes=10, in_chans=1, image_size=8)
    save_file(net.state_dict(), tmp_path / "w.safetensors")
    sets = sum((["--set", s] for s in TINY + [f"teachers.pretrained={{resnet_tiny: {tmp_path / 'w.safetensors'}}}",
                                              "teachers.min_accuracy_over_chance=null"]), [])  # untrained weights
    root = str(tmp_path / "r")
    assert main(["stage", "prepare-data", "--root", root, *sets]) == 0
    assert main(["stage", "train-teacher", "--root", root, "--arch", "resnet_tiny", *sets]) == 0
    manifest = open_artifact(f"{root}/teachers/resnet_tiny").read_manifest()
    assert manifest["metrics"]["imported_from"].endswith("w.safetensors") and manifest["metrics"]["train_losses"] == []
    weights = open_artifact(f"{root}/teachers/resnet_tiny").read_tensors("weights.safetensors")
    for key, value in net.state_dict().items():
        assert torch.equal(weights[f"1.{key}"], value)

    bad = sum((["--set", s] for s in TINY + ["teachers.pretrained={resnet_tiny: /no/such.safetensors}"]), [])
    capsys.readouterr()
    assert main(["stage", "train-teacher", "--root", root, "--arch", "resnet_tiny", "--out", str(tmp_path / "t2"), *bad]) == 2
    assert "/no/such.safetensors is not a file" in capsys.readouterr().err


def test_every_stage_through_the_cli_with_a_run_root(tmp_path):
    """What the compose services and Argo steps run: `infer-distill stage NAME --root ...` in DAG order."""
    sets = sum((["--set", s] for s in TINY + ["synthesis.subsets_per_shard=5"]), [])
    root = str(tmp_path / "r")
    steps = [["prepare-data"], ["train-teacher", "--arch", "convnet_d2_w32"], ["train-teacher", "--arch", "resnet_tiny"],
             ["select-subsets"], ["synthesize-ufc", "--subset-ids", "0,1,2,3,4"], ["synthesize-ufc", "--subset-ids", "5,6,7"],
             ["soft-label"], ["evaluate-student", "--arch", "convnet_d3_w32", "--seed", "0"],
             ["evaluate-baseline", "--arch", "convnet_d3_w32", "--seed", "0", "--baseline", "random_soft"], ["report"]]
    for step in steps:
        assert main(["stage", step[0], "--root", root, *step[1:], *sets]) == 0, step
    report = json.loads(open_artifact(f"{root}/report").read_text("report.json"))
    assert report["budget"]["num_subsets"] == 8 and len(report["students"]) == 1 and len(report["baselines"]) == 1


# ----------------------------------------------------------------------------------------
# Resuming: corrupt artifacts are remade with everything made from them; resharding reuses UFCs
# ----------------------------------------------------------------------------------------

SHARDED = TINY + ["synthesis.subsets_per_shard=3"]   # K = 8: shards [0,1,2] [3,4,5] [6,7]


def _made_from(cfg, layout: Layout) -> dict[str, set[str]]:
    """Each artifact of a run and the artifacts it is made from, directly: the DAG, written out by hand."""
    teachers, shards = set(layout.teachers(cfg)), {layout.ufc(ids) for ids in cfg.shard_plan(10)}
    students, baselines = set(layout.students(cfg)), set(layout.baselines(cfg))
    return {layout.data: set(), **{t: {layout.data} for t in teachers}, layout.subsets: {layout.data},
            **{u: {layout.data, layout.subsets, *teachers} for u in shards},
            layout.distilled: {layout.data, layout.subsets, *teachers, *shards},
            **{s: {layout.data, layout.distilled} for s in students},
            **{b: {layout.data, layout.subsets, *teachers} for b in baselines},
            layout.report: {layout.data, *teachers, *shards, layout.distilled, *students, *baselines}}


def _downstream(made_from: dict[str, set[str]], uri: str) -> set[str]:
    out = {uri}
    while True:
        more = {a for a, inputs in made_from.items() if inputs & out} - out
        if not more:
            return out
        out |= more


def _manifest_mtimes(made_from: dict[str, set[str]]) -> dict[str, int]:
    return {uri: os.stat(Path(uri) / "manifest.json").st_mtime_ns for uri in made_from}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    run_in_process(load_config(None, SHARDED), str(out), progress=False, on_step=print_step)
    return out


@pytest.mark.parametrize("artifact", ["data", "teachers/resnet_tiny", "subsets", "ufc/subsets-0003-0005", "distilled",
                                      "students/convnet_d3_w32-static-seed0", "report"])
def test_a_corrupt_byte_in_any_artifact_is_remade_with_everything_downstream(finished_run, tmp_path, artifact):
    cfg = load_config(None, SHARDED)
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)  # copy2: unchanged artifacts keep their manifests' times
    layout = Layout(str(out))
    made_from = _made_from(cfg, layout)
    assert set(made_from) == set(_all_artifacts(cfg, str(out), 10))
    before = _manifest_mtimes(made_from)

    target = out / artifact
    name = sorted(open_artifact(target).read_manifest()["files"])[0]
    data = bytearray((target / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (target / name).write_bytes(bytes(data))

    run_in_process(cfg, str(out), progress=False, on_step=print_step)
    after = _manifest_mtimes(made_from)
    remade = {uri for uri in made_from if after[uri] != before[uri]}
    assert remade == _downstream(made_from, str(target)) | {layout.report}  # the report is always rebuilt
    report = _verify_complete(cfg, str(out), 10)
    assert report["students"][0]["final_acc"] == json.loads((finished_run / "report" / "report.json").read_text()
                                                            )["students"][0]["final_acc"]  # same seeds, same result


def test_resharding_reuses_finished_ufcs_and_makes_only_missing_subsets(tmp_path, capsys):
    """Shard size is placement: the UFCs of a subset are reused whatever shard made them (decided in plan_ufc_shards)."""
    one_shard, pairs = load_config(None, TINY), load_config(None, TINY + ["synthesis.subsets_per_shard=2"])
    out = str(tmp_path / "run")
    layout = Layout(out)
    run_in_process(one_shard, out, progress=False, on_step=print_step)
    made_from = _made_from(one_shard, layout)
    before = _manifest_mtimes(made_from)
    everything = layout.ufc(list(range(8)))

    # 0 -> 2 subsets per shard after a finished synthesis: nothing is synthesised again, nothing downstream either
    assert plan_ufc_shards(pairs, layout, 10) == [(list(range(8)), everything)]
    capsys.readouterr()
    run_in_process(pairs, out, progress=False, on_step=print_step)
    assert "synthesize-ufc subsets 0..7: up to date, skipped" in capsys.readouterr().err
    assert {u for u, t in _manifest_mtimes(made_from).items() if t != before[u]} == {layout.report}

    # without that shard, the plan of pairs is made; then with one pair lost, going back to one shard of all
    # subsets makes only the lost pair
    one = open_artifact(everything).read_tensors("ufc.safetensors")["ufc"]
    shutil.rmtree(everything)
    run_in_process(pairs, out, progress=False, on_step=print_step)
    pair_uris = [layout.ufc([k, k + 1]) for k in range(0, 8, 2)]
    assert plan_ufc_shards(one_shard, layout, 10) == [([k, k + 1], u) for k, u in zip(range(0, 8, 2), pair_uris)]
    shutil.rmtree(pair_uris[1])
    kept = {u: os.stat(Path(u) / "manifest.json").st_mtime_ns for u in pair_uris if u != pair_uris[1]}
    capsys.readouterr()
    run_in_process(one_shard, out, progress=False, on_step=print_step)
    err = capsys.readouterr().err
    assert "synthesize-ufc subsets 2..3: " in err and err.count("synthesize-ufc") == 4 and err.count("up to date, skipped") == 8
    assert kept == {u: os.stat(Path(u) / "manifest.json").st_mtime_ns for u in kept}
    # a subset's UFCs do not depend on the shard that made them, up to rounding (which Adam's first steps can
    # enlarge where a gradient is almost zero: measured on digits, at most 1e-3 in pixels, 2e-5 on average)
    diff = (torch.cat([open_artifact(u).read_tensors("ufc.safetensors")["ufc"] for u in pair_uris]) - one).abs()
    assert diff.max() < 5e-3 and diff.mean() < 1e-3 * one.abs().mean()
    assert open_artifact(layout.distilled).read_manifest()["inputs"]["ufc"] == pair_uris
    assert json.loads(open_artifact(layout.report).read_text("report.json"))["budget"]["num_ufcs"] == 16


def test_baselines_share_the_draw_the_labels_and_the_budget_and_show_in_the_report(tmp_path):
    cfg = load_config(None, TINY + ["students.baselines=[random_soft, random_soft_steps]", "students.seeds=[0, 1]"])
    out = str(tmp_path / "run")
    layout = Layout(out)
    run_in_process(cfg, out, progress=False)
    data = open_artifact(layout.data)
    split = open_split(data, "train")
    train = {"x": split.read_all(), "y": split.labels}
    classes = data.read_manifest()["metrics"]["classes"]
    subsets = open_artifact(layout.subsets).read_tensors("subsets.safetensors")["indices"]        # [K, C]
    per_class = cfg.baseline_per_class(10, 64)
    assert per_class == 14 > cfg.budget.ipc           # digits: INFER's 240 labels outweigh its images (see test_budget)

    base = open_artifact(layout.baseline("convnet_d3_w32", 0, "random_soft"))
    metrics = base.read_manifest()["metrics"]
    assert metrics["per_class"] == per_class and metrics["num_instances"] == per_class * 10
    assert metrics["stored_bytes"] == per_class * 10 * (64 + 10 * 2) >= cfg.infer_stored_bytes(10, 64)
    # the images continue select-subsets' draw: the first K rows per class are INFER's natural subsets
    drawn = infer.draw_per_class(train["y"], per_class, cfg.seed, classes)
    assert torch.equal(drawn[: len(subsets)], subsets)
    # the labels are the same teachers' mean logits on those images, rounded like INFER's (float16)
    teachers = load_teachers(cfg, layout.teachers(cfg), data.read_manifest(), "cpu")
    with torch.no_grad():
        expected = torch.stack([m(train["x"][drawn.flatten()].float() / 255.0) for m in teachers]).mean(0)
    torch.testing.assert_close(base.read_tensors("labels.safetensors")["soft_labels"].float(), expected, rtol=2**-10, atol=1e-4)
    # equal steps: INFER's static student takes 2 epochs x ceil(240 / 64) = 8 steps; the baseline ceil(140 / 64) = 3 per epoch
    steps = open_artifact(layout.baseline("convnet_d3_w32", 0, "random_soft_steps")).read_manifest()["metrics"]
    assert (steps["infer_static_steps"], steps["epochs"], steps["steps"]) == (8, 3, 9)

    report = json.loads(open_artifact(layout.report).read_text("report.json"))
    assert [(b["baseline"], b["seeds"]) for b in report["baseline_summary"]] == [("random_soft", [0, 1]), ("random_soft_steps", [0, 1])]
    infer_acc = {s["seed"]: s["final_acc"] for s in report["students"]}
    random_soft = {b["seed"]: b["final_acc"] for b in report["baselines"] if b["baseline"] == "random_soft"}
    lift = next(x for x in report["lift"] if x["baseline"] == "random_soft")
    assert lift["lift_mean"] == pytest.approx(sum(infer_acc[s] - random_soft[s] for s in (0, 1)) / 2)
    assert "What the distillation bought" in open_artifact(layout.report).read_text("report.md")

    # students.baselines: [] removes them (everything else is reused)
    run_in_process(load_config(None, TINY + ["students.seeds=[0, 1]", "students.baselines=[]"]), out, progress=False)
    report = json.loads(open_artifact(layout.report).read_text("report.json"))
    assert report["baselines"] == [] and report["lift"] == []
    assert "What the distillation bought" not in open_artifact(layout.report).read_text("report.md")
