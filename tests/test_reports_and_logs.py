"""What a person reads of a run: the student-curves plot (every student the report has), `show` on a run root
(every artifact the plan lays out), tables and names as text in a log or a file, and the Kubeflow local run's
report and log."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY, make_folder

from infer_distill import dag
from infer_distill.cli import main
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.outputs import plots

METHODS = TINY + ["methods=[infer, random]", "students.scores=[hard]", "students.full_data_reference=true",
                  "students.baselines=[random_soft]"]


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory):
    """A run with INFER, a baseline, a peer method and the full-data reference; the labels of the curves its report
    plotted."""
    from infer_distill.engines.walk import run_in_process

    cfg = load_config(None, METHODS)
    root = str(tmp_path_factory.mktemp("reports") / "a-run-root-with-a-long-name")
    drawn = []
    with pytest.MonkeyPatch.context() as mp:
        def recording(*args, **kwargs):
            fig = student_curves(*args, **kwargs)
            drawn.append(fig.axes[0])
            return fig
        student_curves = plots.student_curves
        mp.setattr(plots, "student_curves", recording)
        run_in_process(cfg, root, progress=False)
    return cfg, Layout(root), drawn


@pytest.mark.slow
def test_the_curves_show_infer_the_baselines_every_peer_method_and_full_data_on_whole_epochs(methods_run):
    cfg, layout, drawn = methods_run
    (ax,) = drawn
    labels = [line.get_label() for line in ax.get_lines()]
    expected = ([f"{r['arch']} INFER {r['label_mode']} seed {r['seed']}" for r in cfg.student_runs()]
                + [f"{r['arch']} {r['baseline']} seed {r['seed']}" for r in cfg.baseline_runs()]
                + [f"{r['arch']} {r['method']} {r['score']} labels, equal {r['protocol']}, seed {r['seed']}" for r in cfg.method_runs()]
                + [f"{r['arch']} full data" for r in cfg.full_data_runs()])
    assert sorted(labels) == sorted(expected) and len(labels) == len(expected)
    assert any("random" in label and "hard labels" in label for label in labels) and "convnet_d3_w32 full data" in labels
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert (Path(layout.report) / "student_curves.png").is_file()


@pytest.mark.slow
def test_show_lists_every_artifact_of_the_run_root_with_full_names_when_redirected(methods_run, capsys, monkeypatch):
    cfg, layout, _ = methods_run
    monkeypatch.delenv("COLUMNS", raising=False)  # as in a log or `> file`: no terminal, no width given
    assert main(["show", layout.root]) == 0
    out = capsys.readouterr().out
    expected = {dag.location(layout, step, item).removeprefix(layout.root + "/")
                for step in dag.PLAN if step.runs(cfg)
                for item in (step.over.items(cfg, 10) if step.over else [{}])}
    assert {"methods/random", "full-data/convnet_d3_w32"} <= expected
    assert any(e.startswith("method-scores/") for e in expected)
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in out.splitlines() if line.startswith("│")]
    assert {row[0] for row in rows} == expected  # one line per artifact, every name whole
    assert "…" not in out


@pytest.mark.slow
def test_the_run_summary_keeps_whole_names_when_redirected(methods_run, capsys, monkeypatch):
    from infer_distill.outputs.report import print_summary
    from infer_distill.storage import open_artifact

    _, layout, _ = methods_run
    monkeypatch.delenv("COLUMNS", raising=False)
    manifest = open_artifact(layout.report).read_manifest()
    print_summary(manifest)
    out = capsys.readouterr().out
    assert "…" not in out and "\x1b[" not in out
    (baseline,) = manifest["metrics"]["report"]["baseline_summary"]
    assert any(line.startswith(f"│ convnet_d3_w32 │ {baseline['description']} ") for line in out.splitlines())  # one line, whole


def test_show_prints_class_names_as_text(tmp_path, capsys):
    data = make_folder(tmp_path / "data", {"train": 6, "test": 1})
    for old, new in (("apple", "café"), ("leaf", "niño")):
        for split in ("train", "test"):
            (data / split / old).rename(data / split / new)
    root = str(tmp_path / "run")
    sets = ["--set", "dataset.name=imagefolder", "--set", f"dataset.root={data}", "--set", "device=cpu"]
    assert main(["stage", "prepare-data", "--root", root, *sets]) == 0
    capsys.readouterr()
    assert main(["show", f"{root}/data"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.split()[0] == "classes"]
    assert line.split(None, 1)[1] == "café, niño, sky"


@pytest.mark.slow
@pytest.mark.processes  # KFP's local runner starts a process per task
def test_kfp_local_puts_its_report_where_run_does_and_logs_without_colour_codes(tmp_path, capfd):
    pytest.importorskip("kfp", reason="the kfp extra runs the Kubeflow DAG locally")
    out = tmp_path / "run"
    sets = [part for s in TINY + ["students.baselines=[]"] for part in ("--set", s)]
    assert main(["run", "--engine", "kfp-local", "--out", str(out), *sets]) == 0
    log = capfd.readouterr()
    assert (out / "report" / "report.md").read_text().startswith("# INFER distillation report")
    assert f"Report: {out}/report/report.md" in log.out + log.err
    assert "\x1b[" not in log.out + log.err
