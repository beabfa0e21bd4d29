"""`infer-distill render compose|argo`: a config's cluster files from the package, for any config and dataset
source; the compose services of a dataset whose number of classes is known only after prepare-data plan the
shards at run time, as the Argo template does."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, make_folder

from infer_distill import dag
from infer_distill.cli import commands
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout

SRC = Path(__file__).resolve().parents[1] / "src"


def _imagefolder_config(tmp_path: Path) -> Path:
    data = make_folder(tmp_path / "data", {"train": 8, "test": 2})
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"name": "imagefolder", "root": str(data)}}))
    return config


def test_compose_of_an_imagefolder_config_mounts_its_data_and_plans_shards_at_run_time(tmp_path):
    config = _imagefolder_config(tmp_path)
    out = tmp_path / "out"
    assert commands.main(["render", "compose", "--config", str(config), "--out", str(out)]) == 0
    assert (out / "config" / "mine.yaml").read_text().endswith(config.read_text())  # what the services mount
    for name, image in (("compose.yaml", "infer-distill:cpu"), ("compose.cuda.yaml", "infer-distill:cuda")):
        services = yaml.safe_load((out / name).read_text())["services"]
        stages = {n: s for n, s in services.items() if s.get("command", [""])[0] == "stage"}
        assert [n for n in stages if n.startswith("synthesize-ufc")] == ["synthesize-ufc"]  # one service, every shard
        assert {n for n in stages if n.startswith("train-teacher")} == {"train-teacher-convnet-d3-w32", "train-teacher-convnet-d2-w64",
                                                                         "train-teacher-resnet-tiny"}
        data_mount = f"{config.parent / 'data'}:{config.parent / 'data'}:ro"
        assert [n for n, s in stages.items() if data_mount in s["volumes"]] == ["prepare-data"]
        assert all(s["image"] == f"${{INFER_IMAGE:-{image}}}" and "./config:/config:ro" in s["volumes"] for s in stages.values())
        assert all(s["command"][s["command"].index("--config") + 1] == "/config/mine.yaml" for s in stages.values())


def test_render_refuses_to_overwrite_what_it_did_not_write_and_a_relative_data_root(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "compose.yaml").write_text("services: {}\n")
    assert commands.main(["render", "compose", "--out", str(out)]) == 2
    assert "compose.yaml exists and was not written by infer-distill render" in capsys.readouterr().err
    assert (out / "compose.yaml").read_text() == "services: {}\n" and not (out / "config").exists()
    (out / "compose.yaml").unlink()
    assert commands.main(["render", "compose", "--out", str(out)]) == 0
    assert commands.main(["render", "compose", "--out", str(out)]) == 0  # its own files: rendered again
    monkeypatch.chdir(tmp_path)
    make_folder(tmp_path / "rel")
    assert commands.main(["render", "compose", "--set", "dataset.name=imagefolder", "--set", "dataset.root=rel", "--out", "o2"]) == 2
    assert "dataset.root 'rel' is a relative path" in capsys.readouterr().err


@pytest.mark.processes  # runs sh and the CLI
@pytest.mark.slow
def test_the_run_time_shards_service_runs_every_shard_select_subsets_planned(tmp_path):
    """The synthesize-ufc service's entrypoint, as its container runs it (compose turns `$$` into `$`), after the
    steps before it: it asks select-subsets for the shards and runs each in turn."""
    config = _imagefolder_config(tmp_path)
    sets = [*TINY, "synthesis.subsets_per_shard=2", "teachers.min_accuracy_over_chance=null"]  # a few images: teachers at chance
    set_args = [part for s in sets for part in ("--set", s)]
    out = tmp_path / "out"
    assert commands.main(["render", "compose", "--config", str(config), *set_args, "--out", str(out)]) == 0
    service = yaml.safe_load((out / "compose.yaml").read_text())["services"]["synthesize-ufc"]
    root = str(tmp_path / "run")
    for step in ("prepare-data", "select-subsets"):
        assert commands.main(["stage", step, "--config", str(config), "--root", root, *set_args]) == 0
    for arch in load_config(config, sets).teachers.archs:
        assert commands.main(["stage", "train-teacher", "--arch", arch, "--config", str(config), "--root", root, *set_args]) == 0

    bin_dir = tmp_path / "bin"  # the image's infer-distill and python
    bin_dir.mkdir()
    (bin_dir / "infer-distill").write_text(f"#!/bin/sh\nexec {sys.executable} -m infer_distill \"$@\"\n")
    (bin_dir / "infer-distill").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    command = [str(out / "config" / "mine.yaml") if a.startswith("/config/") else root if a.startswith("s3://") else a
               for a in service["command"]]
    sh, flag, script, _ = service["entrypoint"]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(SRC)}
    done = subprocess.run([sh, flag, script.replace("$$", "$"), str(bin_dir / "infer-distill"), *command], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    cfg = load_config(config, sets)
    shards = cfg.shard_plan(3)  # three classes: K = 6, three shards of two
    assert len(shards) == 3
    layout = Layout(root)
    assert sorted(p.name for p in (tmp_path / "run" / "ufc").iterdir()) == sorted(
        dag.location(layout, dag.STEPS["synthesize-ufc"], {"subset_ids": ids}).rsplit("/", 1)[-1] for ids in shards)
    assert all((Path(dag.location(layout, dag.STEPS["synthesize-ufc"], {"subset_ids": ids})) / "manifest.json").is_file()
               for ids in shards)


def test_argo_template_carries_the_config_and_the_chart_values(tmp_path):
    pytest.importorskip("hera", reason="hera (the argo extra) builds the template")
    config = _imagefolder_config(tmp_path)
    out = tmp_path / "out"
    assert commands.main(["render", "argo", "--config", str(config), "--set", "budget.ipc=20", "--out", str(out)]) == 0
    template = yaml.safe_load((out / "workflow-template.yaml").read_text())
    (parameter,) = [p for p in template["spec"]["arguments"]["parameters"] if p["name"] == "config"]
    values = yaml.safe_load((out / "values.yaml").read_text())["config"]
    assert yaml.safe_load(parameter["value"]) == values == load_config(config, ["budget.ipc=20"]).model_dump(mode="json")


def test_argo_without_hera_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hera", None)
    monkeypatch.setitem(sys.modules, "hera.workflows", None)
    assert commands.main(["render", "argo", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "needs the 'argo' extra" in err and "pip install 'infer-distill[argo]'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.processes  # pip and the installed package
@pytest.mark.slow
def test_an_installed_wheel_renders_a_users_config_and_ships_the_example(tmp_path):
    """From a wheel installed outside the checkout, run from elsewhere: `render compose` for an imagefolder config,
    the shipped configs, and the example the README and every DATASHEET point to."""
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # the build writes build/ and *.egg-info beside the sources: a copy of them
    shutil.copytree(repo, source, ignore=shutil.ignore_patterns(".git", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                                                 ".venv", ".pytest_cache", ".ruff_cache"))
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = wheels.glob("infer_distill-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = _imagefolder_config(elsewhere)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)

    where = run("-c", "import infer_distill; print(infer_distill.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(site), where  # the wheel's package, not the checkout's
    done = run("-m", "infer_distill", "render", "compose", "--config", config.name, "--out", "out")
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load((elsewhere / "out" / "compose.yaml").read_text())["services"]
    assert "synthesize-ufc" in services and services["prepare-data"]["command"][:2] == ["stage", "prepare-data"]
    assert (elsewhere / "out" / "config" / "mine.yaml").is_file()
    assert "quickstart" in run("-m", "infer_distill", "configs").stdout
    example = run("-m", "infer_distill.examples.train_your_own", "--help")
    assert example.returncode == 0 and "a timm architecture" in example.stdout, example.stderr
