"""Each stage reads of the data artifact what it uses (issue: ImageNet-scale data): select-subsets the labels, a UFC
shard its subsets' rows, soft-label the K*C subset rows, a baseline its drawn rows, a student the test split held
whole or, over the data memory budget (INFER_DATA_MEMORY_BYTES), a batch at a time; a teacher trains from the whole
split or from batches read as it goes, with the same results. Every split a stage opens is wrapped to record the rows
asked of it (the rows it returns are the split's own)."""
from __future__ import annotations

import os

import pytest
import torch
from conftest import TINY
from safetensors.torch import save_file

from infer_distill import stages
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.data.splits import Split, open_split
from infer_distill.method.training import Held, evaluate
from infer_distill.runtime.memory import ENV, data_memory_budget
from infer_distill.stages import infer, inputs
from infer_distill.stages.artifacts import is_current
from infer_distill.storage import open_artifact

EVAL_BATCH = 1000  # method.training.evaluate's batch


class Recorded:
    """A data artifact's split that records every read: ("train" | "test", "read" | "read_all" | "batch", rows)."""

    def __init__(self, split: Split, name: str, log: list):
        self.split, self.name, self.log = split, name, log

    @property
    def labels(self) -> torch.Tensor:
        return self.split.labels

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.split.shape

    @property
    def nbytes(self) -> int:
        return self.split.nbytes

    def __len__(self) -> int:
        return len(self.split)

    def read(self, rows) -> torch.Tensor:
        self.log.append((self.name, "read", torch.as_tensor(rows).clone()))
        return self.split.read(rows)

    def read_all(self) -> torch.Tensor:
        self.log.append((self.name, "read_all", None))
        return self.split.read_all()

    def batches(self, batch_size: int):
        for x, y in self.split.batches(batch_size):
            self.log.append((self.name, "batch", len(x)))
            yield x, y


@pytest.fixture
def reads(monkeypatch) -> list:
    log: list = []
    real = inputs.open_split
    monkeypatch.setattr(inputs, "open_split", lambda art, name: Recorded(real(art, name), name, log))
    return log


def _rows(log: list, split: str) -> torch.Tensor:
    """Every row read one by one from `split`, in the order asked."""
    asked = [rows for name, kind, rows in log if name == split and kind == "read"]
    return torch.cat(asked) if asked else torch.zeros(0, dtype=torch.int64)


def _whole(log: list) -> list[str]:
    return [name for name, kind, _ in log if kind == "read_all"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = load_config(None, TINY + ["students.eval_every=1"])
    layout = Layout(str(tmp_path_factory.mktemp("reads")))
    stages.prepare_data(cfg, layout.data)
    for arch in cfg.teachers.archs:
        stages.train_teacher(cfg, arch, layout.data, layout.teacher(arch), progress=False)
    stages.select_subsets(cfg, layout.data, layout.subsets)
    return cfg, layout


def _indices(layout: Layout) -> torch.Tensor:
    return open_artifact(layout.subsets).read_tensors("subsets.safetensors")["indices"]


def _split(layout: Layout, name: str) -> Split:
    return open_split(open_artifact(layout.data), name)


def test_the_budget_is_the_environments_or_half_the_memory_left(monkeypatch):
    from infer_distill.errors import ConfigError

    monkeypatch.setenv(ENV, "12345")
    assert data_memory_budget("cpu") == 12345
    monkeypatch.setenv(ENV, "0")
    assert data_memory_budget("cpu") == 0
    for bad in ("-1", "1e9", "lots"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ConfigError, match=ENV):
            data_memory_budget("cpu")
    monkeypatch.delenv(ENV)
    assert 0 < data_memory_budget("cpu") <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def test_a_cgroup_limit_counts_what_it_leaves(tmp_path):
    from infer_distill.runtime.memory import _cgroup_left

    assert _cgroup_left(tmp_path) is None
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("1000\n")
    assert _cgroup_left(tmp_path) is None
    (tmp_path / "memory.max").write_text("5000\n")
    assert _cgroup_left(tmp_path) == 4000
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{2**63 - 4096}\n")  # v1's "no limit"
    (v1 / "memory" / "memory.usage_in_bytes").write_text("1000\n")
    assert _cgroup_left(v1) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("3000\n")
    assert _cgroup_left(v1) == 2000


@pytest.mark.slow
def test_select_subsets_reads_labels_and_no_image(run, reads, tmp_path):
    cfg, layout = run
    stages.select_subsets(cfg, layout.data, str(tmp_path / "subsets"))
    assert reads == []
    assert torch.equal(open_artifact(str(tmp_path / "subsets")).read_tensors("subsets.safetensors")["indices"], _indices(layout))


@pytest.mark.slow
def test_a_ufc_shard_reads_exactly_its_subsets_rows_and_soft_label_the_k_times_c_subset_rows(run, reads):
    cfg, layout = run
    indices = _indices(layout)
    K = len(indices)
    ids = [0, K - 1] if K > 1 else [0]
    stages.synthesize_ufc(cfg, ids, layout.data, layout.subsets, layout.teachers(cfg), layout.ufc(ids), progress=False)
    assert _whole(reads) == [] and {name for name, _, _ in reads} == {"train"}
    assert torch.equal(_rows(reads, "train"), indices[ids].flatten())
    rest = [k for k in range(K) if k not in ids]
    shards = [layout.ufc(ids)]
    if rest:
        stages.synthesize_ufc(cfg, rest, layout.data, layout.subsets, layout.teachers(cfg), layout.ufc(rest), progress=False)
        shards.append(layout.ufc(rest))
    reads.clear()
    manifest = stages.soft_label(cfg, layout.data, layout.subsets, layout.teachers(cfg), shards, layout.distilled)
    assert _whole(reads) == [] and torch.equal(_rows(reads, "train"), indices.flatten())
    train = _split(layout, "train")
    assert manifest["metrics"]["budget"]["train_bytes"] == train.nbytes == train.read_all().numel()
    natural = open_artifact(layout.distilled).read_tensors("distilled.safetensors")["natural"]
    assert torch.equal(natural, train.read_all()[indices])


@pytest.fixture(scope="module")
def distilled(run):
    cfg, layout = run
    K = len(_indices(layout))
    if not is_current(layout.distilled, cfg, "soft-label"):
        stages.synthesize_ufc(cfg, list(range(K)), layout.data, layout.subsets, layout.teachers(cfg),
                              layout.ufc(list(range(K))), progress=False)
        stages.soft_label(cfg, layout.data, layout.subsets, layout.teachers(cfg), [layout.ufc(list(range(K)))], layout.distilled)
    return layout.distilled


def _student(cfg, layout, out) -> dict:
    return stages.evaluate_student(cfg, "convnet_d3_w32", 0, "static", layout.data, layout.distilled, layout.teachers(cfg),
                                   out, progress=False)


@pytest.mark.slow
def test_a_student_over_the_budget_streams_the_test_split_and_scores_as_when_held(run, distilled, reads, monkeypatch,
                                                                                   tmp_path, capsys):
    cfg, layout = run
    test = _split(layout, "test")
    held = _student(cfg, layout, str(tmp_path / "held"))
    assert _whole(reads) == ["test"] and _rows(reads, "test").numel() == 0 and _rows(reads, "train").numel() == 0
    reads.clear()
    monkeypatch.setenv(ENV, str(test.nbytes - 1))  # one byte short of the test split
    streamed = _student(cfg, layout, str(tmp_path / "streamed"))
    assert _whole(reads) == [] and not [r for r in reads if r[0] == "train"]
    batches = [n for name, kind, n in reads if name == "test" and kind == "batch"]
    assert max(batches) <= EVAL_BATCH and sum(batches) == len(test) * cfg.students.epochs  # evaluated after every epoch
    assert "the test split's" in capsys.readouterr().err
    for key in ("final_acc", "best_acc", "curve", "train_losses"):
        assert streamed["metrics"][key] == held["metrics"][key], key
    weights = [open_artifact(str(tmp_path / w)).read_bytes("weights.safetensors") for w in ("held", "streamed")]
    assert weights[0] == weights[1]


@pytest.mark.slow
def test_streamed_and_held_evaluation_give_the_same_accuracy_batch_by_batch(run):
    _, layout = run
    torch.manual_seed(0)
    model = inputs.build_model("convnet_d2_w32", open_artifact(layout.data).read_manifest())
    test = _split(layout, "test")
    held = Held(test.read_all(), test.labels)
    for batch in (7, 64, EVAL_BATCH):
        assert evaluate(model, test, "cpu", batch) == evaluate(model, held, "cpu", batch)


@pytest.mark.slow
def test_a_baseline_reads_only_its_drawn_rows(run, distilled, reads, monkeypatch, tmp_path):
    cfg, layout = run
    monkeypatch.setenv(ENV, "0")
    m = stages.evaluate_baseline(cfg, "convnet_d3_w32", 0, "random_soft", layout.data, layout.subsets, layout.teachers(cfg),
                                 str(tmp_path / "baseline"), progress=False)
    per_class = m["metrics"]["per_class"]
    drawn = infer.draw_per_class(_split(layout, "train").labels, per_class, cfg.seed, open_artifact(layout.data)
                                        .read_manifest()["metrics"]["classes"])
    assert _whole(reads) == [] and torch.equal(_rows(reads, "train"), drawn.flatten())


@pytest.mark.slow
def test_a_teacher_trained_from_streamed_batches_is_reproducible_and_the_held_ones_twin(run, reads, monkeypatch, tmp_path):
    cfg, layout = run
    arch = cfg.teachers.archs[0]
    train = _split(layout, "train")
    monkeypatch.setenv(ENV, str(train.nbytes - 1))
    weights = []
    for name in ("a", "b"):
        reads.clear()
        m = stages.train_teacher(cfg, arch, layout.data, str(tmp_path / name), progress=False)
        weights.append(open_artifact(str(tmp_path / name)).read_bytes("weights.safetensors"))
        assert _whole(reads) == []
        rows = [r for split, kind, r in reads if split == "train" and kind == "read"]
        assert max(len(r) for r in rows) <= cfg.teachers.batch_size
        assert sorted(torch.cat(rows).tolist()) == sorted(list(range(len(train))) * cfg.teachers.epochs)  # each row once an epoch
    assert weights[0] == weights[1]
    held = open_artifact(layout.teacher(arch))
    assert weights[0] == held.read_bytes("weights.safetensors")  # the same batches: the same teacher
    assert m["metrics"]["train_losses"] == held.read_manifest()["metrics"]["train_losses"]


@pytest.mark.slow
def test_an_imported_teacher_reads_no_training_image_and_streams_the_test_split(run, reads, tmp_path):
    cfg, layout = run
    arch = cfg.teachers.archs[0]
    path = tmp_path / "w.safetensors"
    trained = open_artifact(layout.teacher(arch)).read_tensors("weights.safetensors")  # "0.": Normalize, "1.": the network
    save_file({k.removeprefix("1."): v for k, v in trained.items() if k.startswith("1.")}, str(path))
    imported = load_config(None, TINY + [f"teachers.archs=[{arch}]", f"teachers.pretrained={{{arch}: {path}}}"])
    m = stages.train_teacher(imported, arch, layout.data, str(tmp_path / "imported"), progress=False)
    assert not [r for r in reads if r[0] == "train"] and _whole(reads) == []
    assert max(n for _, kind, n in reads if kind == "batch") <= EVAL_BATCH
    assert m["metrics"]["test_acc"] == open_artifact(layout.teacher(arch)).read_manifest()["metrics"]["test_acc"]


@pytest.mark.slow
def test_full_data_over_the_budget_streams_both_splits_with_the_held_result(run, reads, monkeypatch, tmp_path):
    cfg, layout = run
    arch = "convnet_d2_w32"
    held = stages.evaluate_full_data(cfg, arch, layout.data, str(tmp_path / "held"), progress=False)
    assert sorted(_whole(reads)) == ["test", "train"]
    reads.clear()
    monkeypatch.setenv(ENV, "0")
    streamed = stages.evaluate_full_data(cfg, arch, layout.data, str(tmp_path / "streamed"), progress=False)
    assert _whole(reads) == []
    assert max(len(r) for split, kind, r in reads if split == "train" and kind == "read") <= cfg.students.batch_size
    assert streamed["metrics"]["curve"] == held["metrics"]["curve"]
    weights = [open_artifact(str(tmp_path / w)).read_bytes("weights.safetensors") for w in ("held", "streamed")]
    assert weights[0] == weights[1]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "herding", "rded", "sre2l"])
def test_a_peer_method_reads_its_candidates_only(run, reads, tmp_path, method):
    cfg, layout = run
    cfg = cfg.model_copy(update={"rded": cfg.rded.model_copy(update={"candidates": 20}),
                                 "sre2l": cfg.sre2l.model_copy(update={"iterations": 2})})
    stages.distill_method(cfg, method, layout.data, layout.teachers(cfg), str(tmp_path / method), progress=False)
    labels = _split(layout, "train").labels
    classes = open_artifact(layout.data).read_manifest()["metrics"]["classes"]
    expected = {
        "random": lambda: infer.draw_per_class(labels, cfg.method_per_class(10, 64), cfg.seed, classes).flatten(),
        "herding": lambda: torch.cat([(labels == c).nonzero().flatten() for c in range(10)]),   # every class, one at a time
        "rded": lambda: infer.draw_per_class(labels, 20, cfg.seed, classes).T.flatten(),        # its candidates, class by class
        "sre2l": lambda: torch.zeros(0, dtype=torch.int64),                                     # from noise: no image
    }[method]()
    assert _whole(reads) == [] and torch.equal(_rows(reads, "train"), expected)
