"""The README's drawing of the DAG is the plan's, and current."""
import pytest
from conftest import REPO

from infer_distill import dag
from infer_distill.dag.drawing import MARKER, drawing, main, updated


def test_the_drawing_reads_back_as_the_plan():
    lines = drawing().splitlines()
    assert [line.split()[0] for line in lines] == [s.name for s in dag.PLAN]
    for line, step in zip(lines, dag.PLAN):
        head, _, after = line.partition("<-")
        assert [a.strip() for a in after.split(",") if a.strip()] == dag.depends(step), line
        if step.over:
            assert f"({' x '.join(step.over.keys)})" in head, line
        else:
            assert head.strip() == step.name, line


@pytest.mark.parametrize("page", ["README.md", "docs/kubeflow.md"])
def test_the_drawings_in_the_docs_are_current(page):
    text = (REPO / page).read_text()
    assert updated(text, page) == text, f"{page}'s DAG drawing is stale: python -m infer_distill.dag.drawing --update {page}"


def test_a_stale_drawing_is_rewritten_and_a_missing_marker_refused(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{MARKER}\n```\nprepare-data -> report\n```\n\nafter\n")
    assert main(["--update", str(readme)]) == 0
    assert readme.read_text() == f"# x\n\n{MARKER}\n```\n{drawing()}\n```\n\nafter\n"
    readme.write_text("no marker\n")
    assert main(["--update", str(readme)]) == 2
    assert "has no line" in capsys.readouterr().err and readme.read_text() == "no marker\n"
    with pytest.raises(ValueError, match="fenced block"):
        updated("text")
