"""The package layout is the architecture: its packages are layers, each importing only the layers below it
(docs/architecture.md draws them); no import cycles between modules (counting imports inside functions);
and the DAG package is pure description (no stage, engine, storage or torch)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import infer_distill

PACKAGE = Path(infer_distill.__file__).parent
# What the DAG package may not import: it describes the plan, everything that runs it imports the DAG.
NOT_FROM_THE_DAG = ("infer_distill.stages", "infer_distill.engines", "infer_distill.storage", "infer_distill.method",
                    "infer_distill.runtime", "infer_distill.outputs", "infer_distill.cli", "torch", "torchvision", "timm")


# The layers, bottom first: a package imports only packages of lower layers (any module may read the
# version, `from infer_distill import __version__`; the package root gives `DistilledSet` from outputs).
LAYERS = (("errors",), ("runtime", "models", "storage"), ("config",), ("dag", "data"), ("method",), ("outputs",),
          ("stages",), ("engines",), ("cli", "examples"), ("__main__",))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The modules `name` imports: at load, inside a function, or for type checkers (`if TYPE_CHECKING`: a module
    that needs another's names for its annotations depends on it as much). `from pkg import x` imports `pkg`
    (running its __init__) and, where x is a module, `pkg.x`."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES}
    return found


def internal_graph() -> dict[str, set[str]]:
    return {name: {m for m in imports(name) if m in MODULES and m != name} for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_scan_sees_every_kind_of_import() -> None:
    """The scanner itself: at load, inside a function, `import a.b as c`, `from package import module` (the package
and the module), and under TYPE_CHECKING."""
    assert "infer_distill.engines.runner" in imports("infer_distill.engines.stage_command")  # inside run_stage
    assert "infer_distill.dag.artifact_settings" in imports("infer_distill.dag.steps")        # import a.b as c
    assert {"infer_distill", "infer_distill.dag"} <= imports("infer_distill.engines.kfp.run")  # from infer_distill import dag
    assert "infer_distill.engines.tracking" in internal_graph()["infer_distill.engines.stage_command"]  # TYPE_CHECKING
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(internal_graph()) == []


def test_each_layer_imports_only_the_layers_below_it() -> None:
    layer = {package: i for i, packages in enumerate(LAYERS) for package in packages}
    assert set(layer) == {m.split(".")[1] for m in MODULES if "." in m}, "a package is missing from LAYERS"
    upward = sorted((m, d) for m, deps in internal_graph().items() if "." in m for d in deps
                    if d != "infer_distill" and m.split(".")[1] != d.split(".")[1]
                    and layer[d.split(".")[1]] >= layer[m.split(".")[1]])
    assert upward == []


def test_the_dag_imports_no_execution_code() -> None:
    dag_modules = [m for m in MODULES if m == "infer_distill.dag" or m.startswith("infer_distill.dag.")]
    bad = {m: sorted(i for i in imports(m) if i.startswith(NOT_FROM_THE_DAG)) for m in dag_modules}
    assert {m: found for m, found in bad.items() if found} == {}


@pytest.mark.processes
def test_importing_the_dag_loads_no_execution_code() -> None:
    """Run: importing the plan loads none of them (nor torch) through any other module either."""
    code = ("import sys, infer_distill.dag; "
            f"print([m for m in sys.modules if m.startswith({NOT_FROM_THE_DAG!r})])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
