"""Bad input: a clear error naming the field or file, before any expensive work, and no half artifact.

The table of bad inputs (config values, datasets, weight files, stage flags) is tests/test_bad_inputs.py;
here: the cases that need more than one row can say (a custom teacher, S3, artifacts, exit codes).
"""
import pytest
from conftest import TINY, OddBatchNorms

from infer_distill.cli import main
from infer_distill.models import architectures
from infer_distill.models.networks import MODEL_REGISTRY
from infer_distill.storage import open_artifact


def _sets(extra):
    return sum((["--set", s] for s in TINY + extra), [])


def _run(capsys, out, extra=(), *args):
    code = main(["run", "--out", str(out), "--no-progress", *_sets(list(extra)), *args])
    return code, capsys.readouterr().err


def test_teacher_whose_batchnorm_never_runs_is_refused_naming_the_layer(tmp_path, capsys, monkeypatch):
    def odd_bn(num_classes, in_chans=3, image_size=32):
        return OddBatchNorms(num_classes, in_chans, image_size)

    monkeypatch.setitem(MODEL_REGISTRY, "odd_bn", odd_bn)
    monkeypatch.setattr(architectures, "NAMES", architectures.NAMES | {"odd_bn"})
    code, err = _run(capsys, tmp_path / "out", ["teachers.archs=[resnet_tiny, odd_bn]"])
    assert code == 2 and "teachers.archs: teacher 'odd_bn'" in err and "BatchNorm layer 'spare' did not run" in err
    assert not list((tmp_path / "out").rglob("manifest.json"))


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _run(capsys, blocker / "out")
    assert code == 2 and "not writable" in err


def test_missing_s3_bucket(s3_env, capsys):
    code, err = _run(capsys, "s3://no-such-bucket-xyz/run")
    assert code == 2 and "no-such-bucket-xyz" in err and "does not exist" in err


def test_missing_s3_credentials(s3_bucket, monkeypatch, capsys, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, err = _run(capsys, f"s3://{s3_bucket}/run")
    assert code == 2 and "credentials" in err and "AWS_ACCESS_KEY_ID" in err


def test_truncated_and_altered_artifacts_are_refused(tmp_path, capsys):
    root = tmp_path / "r"
    assert main(["stage", "prepare-data", "--root", str(root), *_sets([])]) == 0
    data_file = root / "data" / "train.labels.safetensors"  # what select-subsets reads
    original = data_file.read_bytes()

    data_file.write_bytes(original[:-10])
    assert main(["stage", "select-subsets", "--root", str(root), *_sets([])]) == 2
    assert "train.labels.safetensors" in capsys.readouterr().err

    altered = bytearray(original)
    altered[-1] ^= 0xFF
    data_file.write_bytes(bytes(altered))
    assert main(["stage", "select-subsets", "--root", str(root), *_sets([])]) == 2
    assert "sha256" in capsys.readouterr().err
    assert not open_artifact(root / "subsets").exists()


def test_artifact_from_a_different_config_is_refused(tmp_path, capsys):
    root = tmp_path / "r"
    assert main(["stage", "prepare-data", "--root", str(root), *_sets(["dataset.test_per_class=5"])]) == 0
    capsys.readouterr()
    assert main(["stage", "select-subsets", "--root", str(root), *_sets([])]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "dataset.test_per_class: artifact has 5, config has None" in err


def test_unknown_stage_input_kind_is_refused(tmp_path, capsys):
    root = tmp_path / "r"
    assert main(["stage", "prepare-data", "--root", str(root), *_sets([])]) == 0
    capsys.readouterr()
    assert main(["stage", "select-subsets", "--data", str(root / "nothing"), "--out", str(root / "s"), *_sets([])]) == 2
    assert "manifest.json missing" in capsys.readouterr().err


# ---- exit codes: what a workflow engine's retry policy sees ------------------------------------


def _exit(args, env_extra=None, code=None):
    """Run the real CLI in a fresh process; returns (exit code, stderr)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(env_extra or {})
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "infer_distill", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return done.returncode, done.stderr


@pytest.mark.processes
def test_exit_code_2_for_refused_input(tmp_path):
    code, err = _exit(["stage", "prepare-data", "--root", str(tmp_path), "--set", "dataset.name=mnist"])
    assert code == 2 and "dataset.name" in err and "Traceback" not in err


@pytest.mark.processes
def test_exit_code_75_when_the_store_refuses_connections_after_botos_retries(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "AWS_DEFAULT_REGION": "us-east-1"}
    code, err = _exit(["stage", "prepare-data", "--root", "s3://bucket/run", *_sets([])], env)
    assert code == 75, err
    assert f"127.0.0.1:{port} is unreachable (EndpointConnectionError, after 6 attempts)" in err and "Traceback" not in err


@pytest.mark.processes
def test_a_crash_is_neither_refused_nor_transient(tmp_path):
    crash = ("import sys; from infer_distill import cli, stages\n"
             "def crash(*a, **k): raise ZeroDivisionError('injected')\n"
             "stages.prepare_data = crash\n"
             f"sys.exit(cli.main(['stage', 'prepare-data', '--root', {str(tmp_path)!r}]))")
    code, err = _exit([], code=crash)
    assert code not in (0, 2, 75) and "ZeroDivisionError: injected" in err
