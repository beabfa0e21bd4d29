"""The quickstart figure the README quotes is what a run gives, within the spread of its seeds."""
import json
import re

import pytest
from conftest import REPO

from infer_distill.cli.show import print_step
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.engines.walk import run_in_process
from infer_distill.storage import open_artifact


def readme_figure() -> tuple[float, float]:
    """(final-epoch accuracy in %, tolerance in points) as README.md's quick start states them."""
    text = (REPO / "README.md").read_text()
    figure = re.search(r"\| student \(convnet_d3_w32\), digits test set \| (\d+\.\d\d) % final epoch", text)
    tolerance = re.search(r"A run at seed 0 lands within (\d+(?:\.\d+)?) points of (\d+\.\d\d) %", text)
    assert figure and tolerance, "README.md's quick start no longer states the student's figure and its tolerance"
    assert tolerance.group(2) == figure.group(1)
    return float(figure.group(1)), float(tolerance.group(1))


@pytest.mark.slow
def test_a_quickstart_run_lands_on_the_readme_figure(tmp_path):
    """`make run` at the quickstart's own settings, on the CPU as the README measured it."""
    figure, tolerance = readme_figure()
    out = str(tmp_path / "quickstart")
    run_in_process(load_config(str(REPO / "configs" / "quickstart.yaml"), ["device=cpu"]), out, progress=False, on_step=print_step)
    (student,) = json.loads(open_artifact(Layout(out).report).read_text("report.json"))["students"]
    got = 100 * student["final_acc"]
    print(f"quickstart student: {got:.2f} % final epoch; README: {figure:.2f} % ± {tolerance}")
    assert abs(got - figure) <= tolerance, f"{got:.2f} % is not within {tolerance} points of the README's {figure:.2f} %"
