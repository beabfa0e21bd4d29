"""What an installed package offers: shipped configs by name, the kfp extra, a CLI that starts without torch."""
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

import infer_distill
import infer_distill.engines.kfp
from infer_distill.cli import main
from infer_distill.config.loading import PACKAGED_CONFIGS, load_config, packaged_configs
from infer_distill.errors import ConfigError

HEAVY = ("torch", "torchvision", "timm", "matplotlib", "boto3")
# Runs the CLI, then reports which heavy modules it imported (on stderr, after the command's own output).
PROBE = ("import sys\nfrom infer_distill.cli import main\n"
         "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
         f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
         "print('PROBE', code, ','.join(heavy), file=sys.stderr)\n")

# ----------------------------------------------------------------------------------------
# A CLI that starts without torch
# ----------------------------------------------------------------------------------------


@pytest.mark.processes
@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["config", "--config", "cifar10-ipc10"], 0),
    (["plan", "--config", "cifar10-ipc10"], 0),
    (["configs"], 0),
    (["config", "--set", "teachers.archs=[resnet_tiny, resnet81]"], 2),  # validation refuses the name without torch
])
def test_help_config_and_plan_leave_torch_out(tmp_path, argv, code):
    env = {**os.environ, "PYTHONPATH": str(Path(infer_distill.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    probe = re.search(r"^PROBE (\S+) (.*)$", proc.stderr, re.M)
    assert probe, proc.stderr
    assert probe.group(1) == str(code), proc.stderr
    assert probe.group(2) == "", f"{argv} imported {probe.group(2)}"
    if code == 2:
        assert "teachers.archs: unknown architecture 'resnet81'" in proc.stderr


# ----------------------------------------------------------------------------------------
# Configs shipped as package data, addressable by name
# ----------------------------------------------------------------------------------------


def test_the_checkouts_configs_folder_is_the_packaged_one():
    assert (REPO / "configs").resolve() == PACKAGED_CONFIGS.resolve()
    assert {"quickstart", "cifar10-ipc10", "cifar100-ipc50", "tiny-imagenet-ipc50", "imagenet-ipc10"} <= set(packaged_configs())


def test_configs_lists_each_with_its_description(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(packaged_configs())
    quickstart = next(line for line in lines if line.startswith("quickstart "))
    assert quickstart.split(None, 1)[1] == ("Quickstart: the whole INFER method on scikit-learn's bundled `digits` "
                                            "(1,797 8x8 grayscale images, 10 classes) with small BatchNorm networks.")


def test_a_config_by_name_is_the_shipped_file_from_any_directory(tmp_path, monkeypatch):
    by_path = load_config(REPO / "configs" / "cifar10-ipc10.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_config("cifar10-ipc10") == by_path == load_config("cifar10-ipc10.yaml")
    (tmp_path / "cifar10-ipc10").write_text("budget:\n  ipc: 50\n")  # a file of that name is the user's, and wins
    assert load_config("cifar10-ipc10").budget.ipc == 50


def test_a_missing_config_names_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"configs/cifar10-ipc10.yaml does not exist.*--config cifar10-ipc10 \(shipped"):
        load_config("configs/cifar10-ipc10.yaml")  # a checkout's path, outside the checkout
    with pytest.raises(ConfigError, match=r"cifar-10 does not exist.*shipped configs: cifar10-ipc10, .*quickstart"):
        load_config("cifar-10")


# ----------------------------------------------------------------------------------------
# The Kubeflow pipeline behind the kfp extra
# ----------------------------------------------------------------------------------------


@pytest.fixture
def without_kfp(monkeypatch):
    """As if kfp were not installed: importing it fails, and the package's kfp modules are imported afresh."""
    monkeypatch.setitem(sys.modules, "kfp", None)
    for name in ("infer_distill.engines.kfp.dag", "infer_distill.engines.kfp.components"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delattr(infer_distill.engines.kfp, "dag", raising=False)
    monkeypatch.delattr(infer_distill.engines.kfp, "components", raising=False)


EXTRA_HINT = re.compile(r"error: the Kubeflow pipeline .* needs the 'kfp' extra, which is not installed \(.*kfp.*\): "
                        r"pip install 'infer-distill\[kfp\]'")


def test_kfp_engine_without_the_extra_says_which_to_install(without_kfp, tmp_path, capsys):
    assert main(["run", "--engine", "kfp-local", "--out", str(tmp_path / "run")]) == 2
    assert EXTRA_HINT.search(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_the_dag_script_without_the_extra_says_which_to_install(without_kfp, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["infer_dag.py", "compile", "--output", str(tmp_path / "x.yaml")])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "pipelines" / "infer_dag.py"), run_name="__main__")
    assert done.value.code == 2 and EXTRA_HINT.search(capsys.readouterr().err)
    assert not (tmp_path / "x.yaml").exists()


# ----------------------------------------------------------------------------------------
# Packaging, not path manipulation
# ----------------------------------------------------------------------------------------


def test_nothing_in_the_repository_edits_sys_path():
    edit = re.compile(r"sys\.path\s*(\.(insert|append|extend)\b|\[|\+?=)")
    skip = {".git", ".venv", "runs", "node_modules", "__pycache__"}
    found = [f"{path.relative_to(REPO)}:{n}" for path in REPO.rglob("*")
             if path.is_file() and not skip & set(path.relative_to(REPO).parts) and path != Path(__file__)
             and path.suffix in (".py", ".sh", "") and not path.is_symlink()
             for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if edit.search(line)]
    assert found == []
