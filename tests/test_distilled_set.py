"""The distilled set as a product: DistilledSet, `infer-distill export`, and training on the export."""
import csv
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from infer_distill import DistilledSet, stages
from infer_distill.cli import main
from infer_distill.config.loading import dump_config, load_config
from infer_distill.config.schema import DatasetConfig
from infer_distill.dag.layout import Layout
from infer_distill.data.sources import load_dataset
from infer_distill.data.splits import open_split
from infer_distill.errors import ArtifactError
from infer_distill.method.synthesis import class_batch_index, decode_ufc, encode_ufc
from infer_distill.outputs import export
from infer_distill.outputs.datasheet import content_sha256
from infer_distill.outputs.distilled import to_uint8
from infer_distill.stages import infer
from infer_distill.storage import open_artifact


def test_to_uint8_rounds_to_the_nearest_step_and_clips():
    x = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.0, 254.6 / 255, 1.2, -0.1])
    assert to_uint8(x).tolist() == [0, 0, 0, 255, 255, 255, 0]  # round half to even: 0.5 -> 0
    grid = torch.rand(1000)
    assert ((to_uint8(grid).float() / 255 - grid).abs() <= 0.5 / 255 + 1e-7).all()


@pytest.mark.parametrize("M, classes_per_ufc", [(2, None), (3, 4), (0, None)])
def test_instances_composed_per_batch_are_the_whole_sets_and_give_the_same_labels_and_student(M, classes_per_ufc):
    """soft-label and evaluate-student compose each batch from uint8 images and UFCs: bit for bit the whole float set."""
    from sklearn.datasets import load_digits

    from infer_distill.config.schema import StudentConfig
    from infer_distill.method.training import Ensemble, Held, train_student_model
    from infer_distill.models.networks import create_model
    from infer_distill.outputs.instances import DistilledInstances, distilled_instances

    digits = load_digits()
    x = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(digits.target)
    K, C = 3, 10
    natural = torch.stack([torch.stack([x[(y == c).nonzero()[k, 0]] for c in range(C)]) for k in range(K)])
    B = class_batch_index(C, classes_per_ufc).max().item() + 1
    ufc = 0.2 * torch.randn(K, M, B, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = distilled_instances(natural, ufc, classes_per_ufc)
    composed = DistilledInstances(natural, ufc, classes_per_ufc)
    assert whole.shape == (K * (M + 1) * C, 1, 8, 8) and len(composed) == len(whole)
    index = torch.randperm(len(whole), generator=torch.Generator().manual_seed(1))[:13]
    assert torch.equal(composed[index], whole[index]) and torch.equal(composed[5:17], whole[5:17])

    torch.manual_seed(0)
    ensemble = Ensemble([create_model("convnet_d2_w32", num_classes=C, in_chans=1, image_size=8).eval()])
    labels = infer.ensemble_logits(ensemble, whole, "cpu", batch_size=7)
    assert torch.equal(infer.ensemble_logits(ensemble, composed, "cpu", batch_size=7), labels)

    cfg = StudentConfig(epochs=1, batch_size=16)
    students = []
    for images in (whole, composed):
        torch.manual_seed(0)
        student = create_model("convnet_d2_w32", num_classes=C, in_chans=1, image_size=8)
        train_student_model(student, images, labels, None, Held(x[:20], y[:20]), cfg, cfg.epochs, 30.0, (1, True), "cpu", seed=0,
                            progress=False)
        students.append(student.state_dict())
    assert all(torch.equal(students[0][k], students[1][k]) for k in students[0])


# ---- a tiny real run: digits, two teachers, three synthesis iterations --------------------

SETTINGS = TINY + ["students.epochs=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The stages up to soft-label under one run root (what `infer-distill run` lays out); no students, no report."""
    cfg = load_config(None, SETTINGS)
    root = str(tmp_path_factory.mktemp("distilled") / "run")
    layout = Layout(root)
    stages.prepare_data(cfg, layout.data)
    for arch in cfg.teachers.archs:
        stages.train_teacher(cfg, arch, layout.data, layout.teacher(arch), progress=False)
    stages.select_subsets(cfg, layout.data, layout.subsets)
    shards = cfg.shard_plan(10)
    for ids in shards:
        stages.synthesize_ufc(cfg, ids, layout.data, layout.subsets, layout.teachers(cfg), layout.ufc(ids), progress=False)
    stages.soft_label(cfg, layout.data, layout.subsets, layout.teachers(cfg), [layout.ufc(i) for i in shards], layout.distilled)
    return cfg, layout


def _student_inputs(cfg, layout, distilled, out, monkeypatch):
    """The images and soft labels evaluate-student hands to the training loop."""
    seen = {}
    real = infer.train_student_model

    def spy(model, images, soft_logits, *args, **kwargs):
        seen.update(images=images[torch.arange(len(images))], soft_labels=soft_logits.clone())  # composed: the whole set
        return real(model, images, soft_logits, *args, **kwargs)

    monkeypatch.setattr(infer, "train_student_model", spy)
    stages.evaluate_student(cfg, "convnet_d3_w32", 0, "static", layout.data, distilled, layout.teachers(cfg), out, progress=False)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["uint8 UFCs", "float16 UFCs", "5 classes per UFC"])
def test_the_set_is_exactly_what_evaluate_student_trains_on(run, tmp_path, monkeypatch, variant):
    cfg, layout = run
    distilled = layout.distilled
    if variant == "float16 UFCs":  # the same UFC shards, stored another way (ufc_dtype only changes soft-label)
        cfg = load_config(None, SETTINGS + ["synthesis.ufc_dtype=float16"])
        distilled = str(tmp_path / "distilled")
        stages.soft_label(cfg, layout.data, layout.subsets, layout.teachers(cfg), [layout.ufc(i) for i in cfg.shard_plan(10)], distilled)
    if variant == "5 classes per UFC":  # B = 2 UFCs per subset and teacher: new subsets and UFCs, same data and teachers
        cfg = load_config(None, SETTINGS + ["synthesis.classes_per_ufc=5"])
        other = Layout(str(tmp_path / "run"))
        stages.select_subsets(cfg, layout.data, other.subsets)
        ufc = [other.ufc(ids) for ids in cfg.shard_plan(10)]
        for ids, uri in zip(cfg.shard_plan(10), ufc):
            stages.synthesize_ufc(cfg, ids, layout.data, other.subsets, layout.teachers(cfg), uri, progress=False)
        distilled = other.distilled
        stages.soft_label(cfg, layout.data, other.subsets, layout.teachers(cfg), ufc, distilled)
    stored = open_artifact(distilled).read_manifest()["files"]["distilled.safetensors"]["tensors"]["ufc"]
    assert stored["dtype"] == cfg.synthesis.ufc_dtype and stored["shape"][2] == cfg.class_batches(10)

    seen = _student_inputs(cfg, layout, distilled, str(tmp_path / "student"), monkeypatch)
    ds = DistilledSet.open(distilled)
    images, soft_labels, labels = ds.tensors()
    assert images.dtype == torch.float32 and torch.equal(images, seen["images"])
    assert torch.equal(soft_labels, seen["soft_labels"])
    K = cfg.num_subsets(10)
    assert len(ds) == len(labels) == K * 3 * 10   # K subsets x (natural + 2 teachers) x 10 classes
    image, soft, label = ds[37]
    assert torch.equal(image, seen["images"][37]) and torch.equal(soft, seen["soft_labels"][37]) and int(label) == 7


@pytest.mark.slow
def test_origins_labels_and_description_agree_with_the_inputs(run):
    """Each instance is the natural image of its subset and class, plus its teacher's stored UFC, as the other artifacts say."""
    cfg, layout = run
    ds = DistilledSet.open(layout.distilled)
    data = open_artifact(layout.data)
    split = open_split(data, "train")
    train = {"x": split.read_all(), "y": split.labels}
    indices = open_artifact(layout.subsets).read_tensors("subsets.safetensors")["indices"]          # [K, C]
    (shard,) = [open_artifact(layout.ufc(ids)).read_tensors("ufc.safetensors")["ufc"] for ids in cfg.shard_plan(10)]
    ufc = decode_ufc(encode_ufc(shard, "uint8"))                                                     # as soft-label stores them
    batch = class_batch_index(10, None)
    for i in range(len(ds)):
        k, m, c = int(ds.subsets[i]), int(ds.teachers[i]), int(ds.labels[i])
        natural = train["x"][indices[k, c]].float() / 255
        assert c == int(train["y"][indices[k, c]])
        expected = natural if m < 0 else (natural + ufc[k, m, batch[c]]).clamp(0, 1)
        assert torch.equal(ds.images[i], expected), i
        assert ds.teacher_name(i) == ("natural" if m < 0 else cfg.teachers.archs[m])
    assert ds.teachers[:10].tolist() == [-1] * 10 and ds.teachers[10:20].tolist() == [0] * 10
    dm = data.read_manifest()["metrics"]
    assert (ds.classes, list(ds.mean), list(ds.std)) == (dm["classes"], dm["mean"], dm["std"])
    assert (ds.crop_padding, ds.hflip, ds.temperature) == (dm["crop_padding"], dm["hflip"], cfg.labels.temperature)
    assert ds.teacher_archs == cfg.teachers.archs

    as_uint8 = DistilledSet.open(layout.distilled, dtype=torch.uint8)
    assert as_uint8.images.dtype == torch.uint8 and torch.equal(as_uint8.images, to_uint8(ds.images))
    loader = torch.utils.data.DataLoader(DistilledSet.open(layout.distilled, transform=lambda x: 1 - x), batch_size=100)
    x, z, y = next(iter(loader))
    assert torch.equal(x, 1 - ds.images[:100]) and torch.equal(z, ds.soft_labels[:100]) and torch.equal(y, ds.labels[:100])
    test_x, test_y = ds.read_test_split()
    assert torch.equal(test_x, open_split(data, "test").read_all()) and len(test_y) == len(test_x)


@pytest.mark.slow
def test_the_set_from_the_s3_server(run, s3_bucket, tmp_path, monkeypatch):
    cfg, layout = run
    uri = f"s3://{s3_bucket}/run/distilled"
    stages.soft_label(cfg, layout.data, layout.subsets, layout.teachers(cfg), [layout.ufc(i) for i in cfg.shard_plan(10)], uri)
    seen = _student_inputs(cfg, layout, uri, str(tmp_path / "student"), monkeypatch)
    remote = DistilledSet.open(uri)
    assert remote.uri == uri
    assert torch.equal(remote.images, seen["images"]) and torch.equal(remote.soft_labels, seen["soft_labels"])
    local = DistilledSet.open(layout.distilled)
    assert torch.equal(remote.labels, local.labels) and remote.classes == local.classes

    assert main(["export", uri, "--format", "npz", "--out", str(tmp_path / "npz")]) == 0
    arrays = np.load(tmp_path / "npz" / "distilled.npz", allow_pickle=False)
    assert np.array_equal(arrays["soft_labels"], local.soft_labels.numpy())


# ---- export ---------------------------------------------------------------------------------


def _read_imagefolder(out: Path):
    rows = list(csv.DictReader(open(out / "instances.csv")))
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(out / r["file"]))) for r in rows])
    if pixels.dim() == 3:
        pixels = pixels.unsqueeze(1)        # grey PNGs: [N, H, W]
    else:
        pixels = pixels.permute(0, 3, 1, 2)
    return rows, pixels


@pytest.mark.slow
def test_imagefolder_export_round_trip(run, tmp_path, capsys):
    cfg, layout = run
    out = tmp_path / "exported"
    assert main(["export", layout.distilled, "--format", "imagefolder", "--out", str(out), "--include-test"]) == 0
    assert str(out) in capsys.readouterr().err
    ds = DistilledSet.open(layout.distilled)
    rows, pixels = _read_imagefolder(out)
    order = [int(r["instance"]) for r in rows]          # rows come in the folder readers' order
    assert sorted(order) == list(range(len(ds))) and [r["file"] for r in rows] == sorted(r["file"] for r in rows)

    # images within half an 8-bit step of the composed float images; labels exactly the artifact's
    assert pixels.shape == ds.images.shape and pixels.dtype == torch.uint8
    assert (pixels.float() / 255 - ds.images[order]).abs().max() <= 0.5 / 255 + 1e-6
    assert [int(r["label"]) for r in rows] == ds.labels[order].tolist()
    assert [(int(r["subset"]), r["teacher"]) for r in rows] == [(int(ds.subsets[i]), ds.teacher_name(i)) for i in order]
    assert rows[0]["file"] == "train/0/0000_0_natural.png" and rows[1]["file"] == "train/0/0000_1_convnet_d2_w32.png"
    soft = np.load(out / "soft_labels.npy", allow_pickle=False)
    stored = open_artifact(layout.distilled).read_tensors("distilled.safetensors")["soft_labels"]
    assert soft.dtype == np.float32 and np.array_equal(soft, stored.float().numpy()[order])
    assert json.loads((out / "classes.json").read_text()) == [str(d) for d in range(10)]

    sheet = (out / "DATASHEET.md").read_text()
    manifest = open_artifact(layout.distilled).read_manifest()
    b = manifest["metrics"]["budget"]
    teacher_acc = open_artifact(layout.teacher("resnet_tiny")).read_manifest()["metrics"]["test_acc"]
    for needle in ["quantises every composed image to 8 bits", manifest["fingerprint"], f"{b['stored_bytes']:,}",
                   f"{b['compression_ratio']:.4f}", f"resnet_tiny ({100 * teacher_acc:.2f} % test accuracy)",
                   manifest["files"]["distilled.safetensors"]["sha256"], "| images per class (ipc) | 10 |",
                   "| natural subsets (K) | 8,", "teachers (M = 2)", "source dataset | digits", "not recorded (no report"]:
        assert needle in sheet, needle
    # the content checksums in the datasheet are those of the pixels read back from the PNGs
    in_instance_order = pixels[np.argsort(order)]
    assert f"`{__import__('hashlib').sha256(in_instance_order.numpy().tobytes()).hexdigest()}`" in sheet
    assert content_sha256(ds)["soft_labels"] in sheet

    # round trip: dataset.name=imagefolder reads the export (train/ and test/) for ordinary training
    data = load_dataset(DatasetConfig(name="imagefolder", root=str(out)))
    assert data.classes == ds.classes
    assert torch.equal(data.train_x[:, :1], pixels) and torch.equal(data.train_y, ds.labels[order])
    test_x, test_y = ds.read_test_split()
    test_order = sorted(range(len(test_y)), key=lambda i: f"{ds.classes[int(test_y[i])]}/{i:05d}.png")
    assert torch.equal(data.test_y, test_y[test_order]) and torch.equal(data.test_x[:, :1], test_x[test_order])  # lossless
    sets = sum((["--set", s] for s in ["dataset.name=imagefolder", f"dataset.root={out}", "teachers.epochs=1",
                                       "teachers.archs=[convnet_d2_w32]", "device=cpu"]), [])
    root = str(tmp_path / "hard")
    assert main(["stage", "prepare-data", "--root", root, *sets]) == 0
    assert main(["stage", "train-teacher", "--root", root, "--arch", "convnet_d2_w32", *sets]) == 0
    trained = open_artifact(f"{root}/teachers/convnet_d2_w32").read_manifest()["metrics"]
    assert 0 <= trained["test_acc"] <= 1 and len(trained["train_losses"]) == 1


@pytest.mark.slow
def test_torchvision_imagefolder_pairs_every_soft_label_by_index(run, tmp_path):
    """What a new user does: ImageFolder over train/, soft_labels.npy row j for sample j; and the metadata.jsonl columns."""
    from torchvision.datasets import ImageFolder

    _, layout = run
    out = tmp_path / "exported"
    assert main(["export", layout.distilled, "--format", "imagefolder", "--out", str(out)]) == 0
    ds = DistilledSet.open(layout.distilled, dtype=torch.uint8)
    folder = ImageFolder(str(out / "train"), is_valid_file=lambda p: p.endswith(".png"))
    soft = np.load(out / "soft_labels.npy", allow_pickle=False)
    meta = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    assert len(folder) == len(soft) == len(meta) == len(ds)
    unmatched = list(range(len(ds)))
    for j, (path, target) in enumerate(folder.samples):
        pixels = torch.from_numpy(np.array(Image.open(path))).unsqueeze(0)
        # the instance with exactly these pixels, this label and this soft label
        hits = [i for i in unmatched if int(ds.labels[i]) == target and torch.equal(ds.images[i], pixels)
                and np.array_equal(ds.soft_labels[i].numpy(), soft[j])]
        assert hits, f"ImageFolder sample {j} ({path}) pairs with no instance of the set"
        unmatched.remove(hits[0])
        i = hits[0]
        assert Path(path).relative_to(out / "train").as_posix() == meta[j]["file_name"]
        assert meta[j]["label"] == target and meta[j]["soft_label"] == ds.soft_labels[i].tolist()
        assert (meta[j]["subset"], meta[j]["teacher"]) == (int(ds.subsets[i]), ds.teacher_name(i))
    assert not unmatched
    agree = (np.argmax(soft, 1) == np.array(folder.targets)).sum()   # the argmax agreement the set itself has
    assert agree == int((ds.soft_labels.argmax(1) == ds.labels).sum())


@pytest.mark.slow
def test_npz_export_has_the_same_content(run, tmp_path):
    cfg, layout = run
    assert main(["export", layout.distilled, "--format", "npz", "--out", str(tmp_path / "npz")]) == 0
    assert sorted(p.name for p in (tmp_path / "npz").iterdir()) == ["DATASHEET.md", "distilled.npz"]
    arrays = np.load(tmp_path / "npz" / "distilled.npz", allow_pickle=False)
    ds = DistilledSet.open(layout.distilled)
    assert np.array_equal(arrays["images"], to_uint8(ds.images).numpy())
    assert np.array_equal(arrays["soft_labels"], ds.soft_labels.numpy())
    for key in ("labels", "subsets", "teachers"):
        assert np.array_equal(arrays[key], getattr(ds, key).numpy()), key
    assert arrays["classes"].tolist() == ds.classes and arrays["teacher_archs"].tolist() == ds.teacher_archs
    assert np.allclose(arrays["mean"], ds.mean) and "test_images" not in arrays
    sheet = (tmp_path / "npz" / "DATASHEET.md").read_text()
    assert str(arrays["datasheet"]) == sheet and "quantises every composed image to 8 bits" in sheet
    assert content_sha256(ds)["images"] in sheet


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["imagefolder", "npz", pytest.param("hf", marks=pytest.mark.skipif(
    importlib.util.find_spec("datasets") is None, reason="the hf extra is not installed"))])
def test_the_datasheet_recipe_trains_a_model_on_the_export(run, tmp_path, monkeypatch, fmt):
    """The Python in DATASHEET.md runs as written, from the export folder, and changes the model."""
    _, layout = run
    out = tmp_path / fmt
    assert main(["export", layout.distilled, "--format", fmt, "--out", str(out)]) == 0
    _library, code = re.findall(r"```python\n(.*?)```", (out / "DATASHEET.md").read_text(), re.S)
    monkeypatch.chdir(out)
    namespace: dict = {}
    exec(code, namespace)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    before = model[1].weight.clone()
    assert namespace["train"](model, epochs=1) is model
    assert not torch.equal(model[1].weight, before)


def _reported_copy(run, dest: Path, students: list[str]):
    """A copy of the run root with one student and the report, made with these `students.*` settings."""
    _, layout = run
    cfg = load_config(None, SETTINGS + students)
    copy = Layout(str(shutil.copytree(layout.root, dest)))
    stages.evaluate_student(cfg, "convnet_d3_w32", 0, "static", copy.data, copy.distilled, copy.teachers(cfg),
                            copy.student("convnet_d3_w32", 0, "static"), progress=False)
    stages.report(cfg, copy.data, copy.teachers(cfg), [copy.ufc(ids) for ids in cfg.shard_plan(10)], copy.distilled,
                  copy.students(cfg), copy.report)
    return cfg, copy


RECIPE = ["students.batch_size=16", "students.lr=0.004", "students.weight_decay=0.03", "students.mixup_alpha=0.5",
          "students.eval_every=2"]


@pytest.mark.slow
def test_the_datasheet_states_the_runs_own_student_recipe(run, tmp_path):
    """Both training snippets carry the run's students settings (not the library's defaults), read from its report."""
    cfg, copy = _reported_copy(run, tmp_path / "run", RECIPE)
    assert DistilledSet.open(copy.distilled).student_recipe() == cfg.students
    assert main(["export", copy.distilled, "--format", "npz", "--out", str(tmp_path / "npz")]) == 0
    sheet = (tmp_path / "npz" / "DATASHEET.md").read_text()
    assert sheet.startswith("# Distilled set: digits, 24 training instances per class (budget: 10 images per class)\n")
    assert "(read from the run's report): 1 epochs in batches of 16, AdamW (learning rate 0.004, weight decay 0.03)" in sheet
    library, standalone = re.findall(r"```python\n(.*?)```", sheet, re.S)

    (line,) = [x for x in library.splitlines() if x.startswith("recipe = ")]
    from infer_distill.config.schema import StudentConfig
    stated = eval(line.removeprefix("recipe = ").split("#")[0], {"StudentConfig": StudentConfig})
    assert stated.model_dump(exclude={"archs", "seeds", "baselines"}) == cfg.students.model_dump(exclude={"archs", "seeds", "baselines"})

    namespace: dict = {}
    exec(standalone, namespace)
    defaults = {k: v.default for k, v in __import__("inspect").signature(namespace["train"]).parameters.items() if k != "model"}
    s = cfg.students
    assert defaults == {"epochs": s.epochs, "batch_size": 16, "lr": 0.004, "weight_decay": 0.03, "mixup_alpha": 0.5,
                        "temperature": cfg.labels.temperature, "seed": 0}

    (Path(copy.report) / "manifest.json").unlink()   # without the report the datasheet says whose numbers it gives
    assert main(["export", copy.distilled, "--format", "npz", "--out", str(tmp_path / "bare")]) == 0
    assert "(infer-distill's defaults: no report of the run beside the set" in (tmp_path / "bare" / "DATASHEET.md").read_text()
    with pytest.raises(ArtifactError, match="no report of the run beside .* records its student settings"):
        DistilledSet.open(copy.distilled).student_recipe()


@pytest.mark.slow
def test_export_of_a_run_root_names_its_distilled_set(run, tmp_path, capsys):
    _, layout = run
    assert main(["export", layout.root, "--format", "npz", "--out", str(tmp_path / "out")]) == 2
    assert f"{layout.root} is a run root, not a distilled set: give its soft-label artifact, {layout.distilled}" in capsys.readouterr().err


@pytest.mark.slow
def test_a_moved_run_still_describes_the_set_and_its_report_adds_the_student_accuracy(run, tmp_path):
    """Inputs recorded at paths that no longer exist are found beside the set, in its run root."""
    cfg, layout = run
    copy = Layout(str(shutil.copytree(layout.root, tmp_path / "run")))
    manifest_file = Path(copy.distilled) / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["inputs"] = {k: "/moved/away" if isinstance(v, str) else ["/moved/away"] * len(v) for k, v in manifest["inputs"].items()}
    manifest_file.write_text(json.dumps(manifest))       # inputs are no part of the fingerprint or the checksums
    ufc = [copy.ufc(ids) for ids in cfg.shard_plan(10)]
    stages.evaluate_student(cfg, "convnet_d3_w32", 0, "static", copy.data, copy.distilled, copy.teachers(cfg),
                            copy.student("convnet_d3_w32", 0, "static"), progress=False)
    stages.report(cfg, copy.data, copy.teachers(cfg), ufc, copy.distilled, copy.students(cfg), copy.report)

    assert main(["export", copy.distilled, "--format", "npz", "--out", str(tmp_path / "npz"), "--include-test"]) == 0
    sheet = (tmp_path / "npz" / "DATASHEET.md").read_text()
    acc = open_artifact(copy.student("convnet_d3_w32", 0, "static")).read_manifest()["metrics"]["final_acc"]
    assert f"convnet_d3_w32, static labels, 1 seed(s): {100 * acc:.2f} % final epoch" in sheet
    teacher_acc = open_artifact(copy.teacher("convnet_d2_w32")).read_manifest()["metrics"]["test_acc"]
    assert f"convnet_d2_w32 ({100 * teacher_acc:.2f} % test accuracy)" in sheet
    arrays = np.load(tmp_path / "npz" / "distilled.npz", allow_pickle=False)
    test = open_split(open_artifact(copy.data), "test")
    assert np.array_equal(arrays["test_images"], test.read_all().numpy()) and np.array_equal(arrays["test_labels"], test.labels.numpy())

    shutil.rmtree(copy.data)
    with pytest.raises(ArtifactError, match="no prepare-data artifact with the dataset settings .*manifest.json missing"):
        DistilledSet.open(copy.distilled).read_test_split()


# ---- refusals: nothing half-written -----------------------------------------------------


def _copy(uri: str, dest: Path) -> Path:
    shutil.copytree(uri, dest)
    return dest


def _nothing_written(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


@pytest.mark.slow
def test_a_corrupted_set_is_refused_and_nothing_is_written(run, tmp_path, capsys):
    _, layout = run
    bad = _copy(layout.distilled, tmp_path / "bad")
    blob = bytearray((bad / "distilled.safetensors").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (bad / "distilled.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="sha256"):
        DistilledSet.open(bad)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["export", str(bad), "--format", "imagefolder", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "distilled.safetensors" in err and "sha256" in err
    assert _nothing_written(out)

    (bad / "distilled.safetensors").write_bytes(bytes(blob[:-100]))   # truncated
    assert main(["export", str(bad), "--format", "npz", "--out", str(out)]) == 2
    assert "truncated" in capsys.readouterr().err and _nothing_written(out)


@pytest.mark.slow
def test_a_wrong_stage_or_altered_manifest_is_refused(run, tmp_path, capsys):
    _, layout = run
    out = tmp_path / "out"
    assert main(["export", layout.data, "--format", "npz", "--out", str(out)]) == 2
    assert "is a 'prepare-data' artifact, not a distilled set" in capsys.readouterr().err and _nothing_written(out)
    assert main(["export", str(tmp_path / "nothing"), "--format", "npz", "--out", str(out)]) == 2
    assert "manifest.json missing" in capsys.readouterr().err and _nothing_written(out)

    edited = _copy(layout.distilled, tmp_path / "edited")
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["settings"]["labels"]["temperature"] = 4.0
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="do not match its fingerprint"):
        DistilledSet.open(edited)

    older = _copy(layout.distilled, tmp_path / "older")
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["metrics"]["classes"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="records no classes"):
        DistilledSet.open(older)


@pytest.mark.slow
def test_export_never_overwrites_and_a_failure_midway_leaves_nothing(run, tmp_path, capsys, monkeypatch):
    _, layout = run
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    assert main(["export", layout.distilled, "--format", "imagefolder", "--out", str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    assert main(["export", layout.distilled, "--format", "npz", "--out", "s3://bucket/x"]) == 2
    assert "local directory" in capsys.readouterr().err

    

    written = []
    real_png = export._png

    def failing_png(image):
        if len(written) == 50:
            raise OSError(28, "No space left on device")
        written.append(1)
        return real_png(image)

    out = tmp_path / "out"
    monkeypatch.setattr(export, "_png", failing_png)
    with pytest.raises(ArtifactError, match="No space left on device"):
        export.export(layout.distilled, "imagefolder", out)
    assert len(written) == 50
    assert _nothing_written(out)

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(export, "_png", real_png)
    assert main(["export", layout.distilled, "--format", "imagefolder", "--out", str(empty)]) == 0
    assert (empty / "DATASHEET.md").is_file() and _nothing_written(tmp_path / "out")


@pytest.mark.slow
@pytest.mark.processes
def test_the_example_trains_a_timm_model_outside_the_registry_with_the_runs_recipe(run, tmp_path):
    from infer_distill.models.networks import MODEL_REGISTRY

    cfg, layout = run
    assert "resnet10t" not in MODEL_REGISTRY
    example = [sys.executable, "-m", "infer_distill.examples.train_your_own", layout.distilled, "--device", "cpu"]
    done = subprocess.run(example, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no report of the run beside" in done.stderr and "give the run's config" in done.stderr
    config = tmp_path / "run.yaml"
    config.write_text(dump_config(load_config(None, SETTINGS + RECIPE + ["students.epochs=2"])))
    for labels in ("soft", "hard"):
        done = subprocess.run(example + ["--config", str(config), "--labels", labels], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"recipe from {config}: 2 epochs, batch 16, AdamW lr 0.004 weight decay 0.03, " in done.stdout
        assert ("MixUp 0.5, KL at T = 30" if labels == "soft" else "cross-entropy on the classes") in done.stdout
        assert re.search(rf"resnet10t \(4,927,186 parameters\) trained on 240 distilled instances with {labels} labels for 2 epochs: "
                         r"\d+\.\d\d % test accuracy", done.stdout), done.stdout
