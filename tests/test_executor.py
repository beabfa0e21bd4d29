"""The executor: the plan's walk in worker processes (`infer-distill run --jobs N`), with the serial walk's rules."""
from __future__ import annotations

import json
import os
import queue

import pytest
import torch
from conftest import TINY

from infer_distill import dag
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.engines import executor, runner, walk
from infer_distill.engines.executor import Walk, parse_devices, run_walks
from infer_distill.errors import ConfigError, StageError
from infer_distill.stages import artifacts

# The tests' tiny run with two student seeds and two synthesis shards: steps that can run side by side.
PARALLEL = [*TINY, "students.seeds=[0,1]", "synthesis.subsets_per_shard=3"]


def test_devices_parse_and_bad_ones_are_refused() -> None:
    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"] and parse_devices("2,3") == ["cuda:2", "cuda:3"]
    assert parse_devices("") == []
    with pytest.raises(ConfigError, match="--devices: 'gpu0'"):
        parse_devices("gpu0")
    with pytest.raises(ConfigError, match="--devices: 'cuda:99999999999999999999'"):
        parse_devices("cuda:0,cuda:99999999999999999999")
    assert parse_devices("0,0") == ["cuda:0", "cuda:0"]  # two workers sharing one GPU
    with pytest.raises(ConfigError, match="--jobs 0"):
        run_walks([], jobs=0)
    with pytest.raises(ConfigError, match="--jobs 100000: use 1 to 1024"):
        run_walks([], jobs=100000)


def test_each_worker_gets_a_device_in_turn(monkeypatch) -> None:
    assert executor.device_slots(3, ["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1", "cuda:0"]  # a GPU shared by two
    assert executor.device_slots(2, []) == ["", ""]
    # a worker pins its device before torch sees CUDA: "cuda" in its stages is that GPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = queue.SimpleQueue()
    slots.put("cuda:5")
    threads = torch.get_num_threads()
    try:
        executor._worker_init(slots, 1)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    # one job: this process is the worker, on the first device
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    run_walks([], jobs=1, devices=["cuda:2", "cuda:3"], progress=False)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"


def test_a_failed_step_stops_its_dependants_and_keeps_finished_work(tmp_path, monkeypatch) -> None:
    """Serial walk: synthesis fails; the steps before it stay, nothing after it starts, the error is raised."""
    cfg = load_config(None, PARALLEL)
    ran = []
    real = runner.run_item

    def run_item(cfg, step, item, inputs, uri, progress=True):
        ran.append(step.name)
        if step.name == "synthesize-ufc":
            raise StageError("synthesis failed on purpose")
        return real(cfg, step, item, inputs, uri, progress)

    monkeypatch.setattr(executor, "run_item", run_item)
    with pytest.raises(StageError, match="on purpose"):
        run_walks([Walk("w", cfg, str(tmp_path))], jobs=1, progress=False)
    assert ran == ["prepare-data", "train-teacher", "train-teacher", "select-subsets", "synthesize-ufc"]
    layout = Layout(str(tmp_path))
    assert artifacts.is_current(layout.data, cfg, "prepare-data") and artifacts.is_current(layout.subsets, cfg, "select-subsets")
    assert all(artifacts.is_current(layout.teacher(a), cfg, "train-teacher", arch=a) for a in cfg.teachers.archs)
    assert not (tmp_path / "distilled").exists() and not (tmp_path / "report").exists()


@pytest.mark.slow
@pytest.mark.processes
def test_two_workers_run_the_plan_and_a_serial_walk_then_finds_everything_current(tmp_path) -> None:
    root = tmp_path / "jobs2"
    cfg = load_config(None, PARALLEL)
    results = []
    unfinished = run_walks([Walk("w", cfg, str(root))], jobs=2, progress=False,
                           on_step=lambda walk, r: results.append(r))
    assert unfinished == []
    expected = {(s.name, s.over.label(i) if s.over else "") for s in dag.PLAN
                for i in (s.over.items(cfg, 10) if s.over else [{}])}
    assert {(r.stage, r.label) for r in results} == expected and not any(r.skipped for r in results)
    # the order respects every edge: nothing finished before a step it reads from
    finished = [r.stage for r in results]
    for step in [s for s in dag.PLAN if s.name in finished]:  # (a step of an empty fan-out runs no item)
        for before in dag.upstream(step) & set(finished):
            assert max(i for i, s in enumerate(finished) if s == before) < finished.index(step.name)
    again = []
    walk.run_in_process(cfg, str(root), progress=False, on_step=again.append)
    assert all(r.skipped for r in again if r.stage != "report")
    report = json.loads((root / "report" / "report.json").read_text())
    assert len(report["students"]) == 2

    # the same walk one step at a time, at the workers' thread count: every student's numbers, seed for seed
    threads = torch.get_num_threads()
    torch.set_num_threads(executor.worker_threads(2))
    try:
        walk.run_in_process(cfg, str(tmp_path / "serial"), progress=False)
    finally:
        torch.set_num_threads(threads)
    serial = json.loads((tmp_path / "serial" / "report" / "report.json").read_text())
    by_seed = lambda rows: {(r["arch"], r["label_mode"], r["seed"]): (r["final_acc"], r["curve"]) for r in rows}  # noqa: E731
    assert by_seed(serial["students"]) == by_seed(report["students"])
    assert [b["final_acc"] for b in serial["baselines"]] == [b["final_acc"] for b in report["baselines"]]


@pytest.mark.slow
def test_walks_that_share_an_artifact_location_run_it_once(tmp_path) -> None:
    """The benchmark's pool: two walks (other students) whose data and teachers are one artifact each."""
    a = load_config(None, PARALLEL)
    b = load_config(None, [*PARALLEL, "teachers.archs=[convnet_d2_w32]"])
    results: list[tuple[str, str, str]] = []
    pool = str(tmp_path / "pool")
    walks = [Walk("a", a, pool, steps=("prepare-data", "train-teacher")), Walk("b", b, pool, steps=("prepare-data", "train-teacher"))]
    assert run_walks(walks, jobs=1, progress=False, on_step=lambda w, r: results.append((w.name, r.stage, r.label))) == []
    ran = [(stage, label) for _, stage, label in results]
    assert ran.count(("prepare-data", "")) == 2 and ran.count(("train-teacher", "convnet_d2_w32")) == 2  # both walks are told
    assert len(list((tmp_path / "pool" / "teachers").iterdir())) == 2
    bad = load_config(None, [*PARALLEL, "teachers.epochs=3"])
    with pytest.raises(ConfigError, match="different settings"):
        run_walks([Walk("a", a, pool, steps=("prepare-data", "train-teacher")), Walk("c", bad, pool, steps=("prepare-data", "train-teacher"))],
                  jobs=1, progress=False)
