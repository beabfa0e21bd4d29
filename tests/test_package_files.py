"""What the wheel ships besides the modules: py.typed, the LICENSE, and `python -m infer_distill`."""
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO


@pytest.mark.processes
def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "infer_distill", "plan", "--set", "budget.ipc=0"],
                          capture_output=True, text=True, timeout=120)
    # the CLI's own refusal (exit 2, naming the field), not an import error or a usage message
    assert done.returncode == 2 and "budget.ipc" in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.processes
def test_the_wheel_holds_py_typed_the_license_and_main(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                           str(REPO)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("infer_distill-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "infer_distill/py.typed" in names and "infer_distill/__main__.py" in names
    (license_file,) = [n for n in names if n.endswith("/licenses/LICENSE")]
    assert "Apache License" in zipfile.ZipFile(wheel).read(license_file).decode()
