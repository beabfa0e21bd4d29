"""What a newcomer sees from `show` and `plan`: summaries first, a run root's contents, no GPU claimed for a CPU run."""
import json

import pytest
from conftest import REPO, TINY

from infer_distill import dag
from infer_distill.cli import main
from infer_distill.cli.show import print_step
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.engines.walk import run_in_process


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cfg = load_config(None, TINY)
    out = str(tmp_path_factory.mktemp("show") / "run")
    run_in_process(cfg, out, progress=False, on_step=print_step)
    return cfg, Layout(out)


@pytest.fixture(autouse=True)
def _wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich tables on one line per row


def _rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("│ ").split("│")] for line in text.splitlines() if line.startswith("│")]


@pytest.mark.slow
def test_show_on_a_run_root_lists_its_artifacts(finished, capsys):
    cfg, layout = finished
    assert main(["show", layout.root]) == 0
    out = capsys.readouterr().out
    assert f"{layout.root} is a run root, not an artifact" in out and f"infer-distill show {layout.report}" in out
    expected = [layout.data, layout.subsets, layout.distilled, layout.report, *layout.teachers(cfg), *layout.students(cfg),
                *layout.baselines(cfg), *[layout.ufc(ids) for ids in cfg.shard_plan(10)]]
    listed = {row[0]: row for row in _rows(out)}
    assert sorted(listed) == sorted(uri.removeprefix(layout.root + "/") for uri in expected)
    assert listed["teachers/resnet_tiny"][1] == "train-teacher" and listed["teachers/resnet_tiny"][2].startswith("test_acc ")


@pytest.mark.slow
def test_show_on_a_teacher_summarises_first_and_gives_the_manifest_with_json(finished, capsys):
    _, layout = finished
    uri = layout.teacher("resnet_tiny")
    assert main(["show", uri]) == 0
    summary = capsys.readouterr().out
    assert main(["show", uri, "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    m = manifest["metrics"]
    lines = summary.splitlines()
    assert lines[0] == f"train-teacher artifact {uri}"
    assert lines[1].split() == ["fingerprint", manifest["fingerprint"], "(seed", "0)"]
    assert f"in {manifest['elapsed_s']:.1f} s" in lines[2]
    for key, shown in [("arch", "resnet_tiny"), ("test_acc", f"{100 * m['test_acc']:.2f} %"), ("num_params", f"{m['num_params']:,}")]:
        (line,) = [x for x in lines[:8] if x.split()[0] == key]
        assert line.split(None, 1)[1] == shown
    assert len(lines) < 20 and f"show {uri} --json" in lines[-1]


@pytest.mark.slow
def test_show_on_a_report_prints_its_headline(finished, capsys):
    _, layout = finished
    assert main(["show", layout.report]) == 0
    assert capsys.readouterr().out.startswith("# INFER distillation report\n\nINFER's distilled set stores ")


def test_show_on_nothing_is_still_refused(tmp_path, capsys):
    assert main(["show", str(tmp_path / "nothing")]) == 2
    assert "manifest.json missing" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_plan_counts_runs_and_says_gpu_only_of_cluster_pods(device, capsys):
    assert main(["plan", "--config", str(REPO / "configs" / "quickstart.yaml"), "--set", f"device={device}"]) == 0
    out = capsys.readouterr().out
    rows = {row[0]: row for row in _rows(out)}
    assert rows["train-teacher"][2:4] == ["3", "GPU"] and rows["soft-label"][2:4] == ["1", "CPU"]
    assert all(row[2].isdigit() for row in rows.values())
    here = "on the CPU (device: cpu)" if device == "cpu" else "on a GPU when one is visible, else on the CPU (device: auto)"
    assert here in " ".join(out.split())


@pytest.mark.parametrize("methods, runs", [("[infer, random]", "true"), ("[random, herding]", "false")])
def test_plan_says_which_of_infers_steps_a_config_runs_and_writes_it_for_argo(methods, runs, tmp_path, capsys):
    sets = ["--set", f"methods={methods}", "--set", "students.baselines=[]", "--set", "budget.ipc=1" if runs == "false" else "seed=0"]
    assert main(["plan", "--config", str(REPO / "configs" / "quickstart.yaml"), *sets, "--items-dir", str(tmp_path)]) == 0
    rows = {row[0]: row for row in _rows(capsys.readouterr().out)}
    conditional = [s for s in dag.PLAN if s.when]
    assert [s.name for s in conditional] == ["select-subsets", "synthesize-ufc", "soft-label", "evaluate-student", "evaluate-baseline"]
    for step in conditional:
        assert (tmp_path / dag.runs_file(step)).read_text() == runs
        if runs == "false":
            assert rows[step.name][2] == "0"
    assert rows["distill-method"][2] == ("1" if runs == "true" else "2")
