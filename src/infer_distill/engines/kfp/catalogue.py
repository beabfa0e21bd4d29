"""The component catalogue: every Kubeflow component of the pipeline as a folder a user can reuse in
their own pipelines, laid out as Kubeflow's component catalogue lays its components out.

    <dir>/README.md                      the index: one line per component
    <dir>/<component>/component.yaml     the compiled spec: kfp.components.load_component_from_file(...)
    <dir>/<component>/README.md          what it does, its inputs, parameters and outputs, its image
    <dir>/<component>/metadata.yaml      name, tier, stability, version, Kubeflow dependency, tags

Everything is derived from the plan and the compiled specs (the tables are read back from each
component.yaml), so `write_catalogue` is all it takes to follow a change of the plan. The repository
keeps one at components/ (`python pipelines/infer_dag.py compile-components`, checked current by
tests/test_components.py), compiled for CATALOGUE_IMAGE: compile your own for the image you push.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import yaml

from infer_distill import __version__, dag
from infer_distill.engines.kfp.components import FUNCTIONS

# The image the repository's catalogue names; `compile-components --image` writes one for yours.
CATALOGUE_IMAGE = f"registry.example.com/infer-distill:{__version__}-cuda"
# The Kubeflow Pipelines backends that run the components: collected artifacts (kubeflow/pipelines#11725).
KFP_BACKEND = ">=2.14"
PARAMETER_TYPES = {"STRING": "string", "NUMBER_INTEGER": "integer", "NUMBER_DOUBLE": "number", "BOOLEAN": "boolean",
                   "STRUCT": "object", "LIST": "list"}
COMMAND = "python pipelines/infer_dag.py compile-components --image REGISTRY/infer-distill:TAG --output-dir components"


def describe(name: str, role: str, step: dag.Step | None) -> str:
    """What the input or output `name` of a component is, in words."""
    if name == "config":
        return ("the run's config as JSON (resolve-config's output, or the YAML `infer-distill config` prints)"
                if role == "input" else "the validated config every step reads")
    if name == "metrics":
        return "the test accuracies it measured, for the Kubeflow UI"
    if step is not None and role == "output" and name in step.ui_pages:
        kind, file = step.ui_pages[name]
        return f"the artifact's {file}, shown in the Kubeflow UI"
    if step is not None and role == "output":
        return f"its artifact ({step.artifact_type.lower()}): a folder with manifest.json and the files it lists"
    if step is not None and step.over and name in step.over.keys:
        return f"the {step.over.name} item it runs for: its {name.replace('_', ' ')}"
    producers = [s for s in dag.PLAN if name in (s.output, s.gathered_as)]
    if producers:
        producer = producers[0]
        if name == producer.gathered_as:
            return f"every {producer.name} artifact, gathered into one (gather-{producer.output})"
        return f"the artifact of {producer.name}" + (" (every item's, collected)" if producer.over else "")
    return name.replace("_", " ")


def _rows(definitions: dict, role: str, step: dag.Step | None) -> list[str]:
    rows = []
    for name, spec in sorted(definitions.get("artifacts", {}).items()):
        kind = spec["artifactType"]["schemaTitle"].removeprefix("system.")
        rows.append(f"| `{name}` | {'list of ' if spec.get('isArtifactList') else ''}{kind} | {describe(name, role, step)} |")
    for name, spec in sorted(definitions.get("parameters", {}).items()):
        optional = " (optional)" if spec.get("isOptional") else ""
        kind = PARAMETER_TYPES.get(spec["parameterType"], spec["parameterType"].lower())
        rows.append(f"| `{name}` | {kind}{optional} | {describe(name, role, step)} |")
    return rows


def summary(name: str) -> str:
    """The first paragraph of the component function's docstring, on one line."""
    return " ".join((inspect.getdoc(FUNCTIONS[name]) or name).split("\n\n")[0].split())


def component_readme(name: str, spec: dict, image: str) -> str:
    step = dag.STEPS.get(name)
    doc = inspect.getdoc(FUNCTIONS[name]) or name
    (component,) = spec["components"].values()
    lines = [f"# {name}", "", doc, ""]
    if step is not None:
        facts = [f"step `{name}` of the INFER pipeline (`infer-distill stage {name}` runs the same)"]
        if step.over:
            facts.append(f"runs once per {step.over.name} item ({', '.join(step.over.keys)})")
        if step.gpu:
            facts.append("wants a GPU")
        lines += ["It is " + "; ".join(facts) + ".", ""]
    lines += ["## Inputs", "", "| Name | Type | What |", "| --- | --- | --- |", *_rows(component.get("inputDefinitions", {}), "input", step)]
    outputs = _rows(component.get("outputDefinitions", {}), "output", step)
    if outputs:
        lines += ["", "## Outputs", "", "| Name | Type | What |", "| --- | --- | --- |", *outputs]
    lines += ["", "## Image", "", f"`{image}` (the project image: docker/Dockerfile). For your registry: `{COMMAND}`.", "",
              "## Use", "", "```python", "from kfp import components",
              f'{name.replace("-", "_")} = components.load_component_from_file("components/{name}/component.yaml")', "```", ""]
    return "\n".join(lines)


def component_metadata(name: str) -> dict:
    step = dag.STEPS.get(name)
    tags = ["dataset-distillation", "infer"]
    if step is not None:
        tags += ["gpu"] * step.gpu + ["data"] * step.reads_dataset + ["fan-out"] * bool(step.over)
    return {"name": name, "tier": "third_party", "stability": "beta", "version": __version__,
            "dependencies": {"kubeflow": [{"name": "Pipelines", "version": KFP_BACKEND}]}, "tags": tags,
            "links": {"documentation": "docs/kubeflow.md"}}


def index(names: list[str], image: str) -> str:
    lines = ["# Components", "",
             "Every step of the INFER pipeline as a reusable Kubeflow component (generated from the plan; do not edit).",
             f"Each folder: the compiled `component.yaml`, a README and `metadata.yaml`. They run `{image}`;",
             f"compile them for your image with `{COMMAND}`.", "", "| Component | What |", "| --- | --- |"]
    lines += [f"| [{n}]({n}/README.md) | {summary(n)} |" for n in names]
    return "\n".join(lines) + "\n"


def write_catalogue(image: str, out_dir: Path, compile_component) -> list[Path]:
    """Every component's folder under `out_dir`, for `image`; `compile_component(name, path)` writes a spec."""
    written = []
    for name in FUNCTIONS:
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        compile_component(name, folder / "component.yaml")
        spec = yaml.safe_load((folder / "component.yaml").read_text())
        (folder / "README.md").write_text(component_readme(name, spec, image))
        (folder / "metadata.yaml").write_text(yaml.safe_dump(component_metadata(name), sort_keys=False))
        written += [folder / "component.yaml", folder / "README.md", folder / "metadata.yaml"]
    (out_dir / "README.md").write_text(index(list(FUNCTIONS), image))
    return [*written, out_dir / "README.md"]
