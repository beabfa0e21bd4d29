"""components/: every Kubeflow component as a reusable folder (spec, README, metadata), current with the plan,
and loadable into a pipeline a user writes. (No `from __future__ import annotations`: KFP reads the pipeline's annotations.)"""

from pathlib import Path

import pytest
import yaml

from infer_distill import dag

kfp = pytest.importorskip("kfp")
from kfp import compiler, components, dsl  # noqa: E402

from infer_distill.engines.kfp.catalogue import CATALOGUE_IMAGE  # noqa: E402
from infer_distill.engines.kfp.components import FUNCTIONS  # noqa: E402
from infer_distill.engines.kfp.dag import compile_components  # noqa: E402

CATALOGUE = Path(__file__).resolve().parent.parent / "components"


def _content(path: Path):
    """A file as compared: a spec as the YAML it parses to (how a multi-line string is quoted varies with the yaml
    representers loaded in the process: hera adds its own), without the kfp release that compiled it."""
    if path.suffix != ".yaml":
        return path.read_text()
    return [{k: v for k, v in doc.items() if k != "sdkVersion"} for doc in yaml.safe_load_all(path.read_text())]


def test_the_catalogue_is_what_the_plan_gives(tmp_path):
    compile_components(CATALOGUE_IMAGE, tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(CATALOGUE) for p in CATALOGUE.rglob("*") if p.is_file())
    assert committed == fresh, "components/ has other files than the plan gives: regenerate it (components/README.md)"
    stale = [str(p) for p in fresh if _content(tmp_path / p) != _content(CATALOGUE / p)]
    assert stale == [], "stale: python pipelines/infer_dag.py compile-components --image " + CATALOGUE_IMAGE


def test_one_folder_per_step_with_its_spec_readme_and_metadata():
    for step in dag.PLAN:
        folder = CATALOGUE / step.name
        spec = yaml.safe_load((folder / "component.yaml").read_text())
        (component,) = spec["components"].values()
        inputs = {**component["inputDefinitions"].get("artifacts", {}), **component["inputDefinitions"].get("parameters", {})}
        assert {"config", *(step.over.keys if step.over else ())} <= set(inputs), step.name
        readme = (folder / "README.md").read_text()
        assert all(f"| `{name}` |" in readme for name in inputs), step.name
        assert yaml.safe_load((folder / "metadata.yaml").read_text())["name"] == step.name
    assert sorted(p.name for p in CATALOGUE.iterdir() if p.is_dir()) == sorted(FUNCTIONS)


def test_a_user_pipeline_built_from_two_catalogue_components_compiles(tmp_path):
    prepare_data = components.load_component_from_file(str(CATALOGUE / "prepare-data" / "component.yaml"))
    train_teacher = components.load_component_from_file(str(CATALOGUE / "train-teacher" / "component.yaml"))

    @dsl.pipeline(name="my-teachers")
    def my_teachers(config_uri: str = "s3://my-bucket/infer/config.yaml"):
        config = dsl.importer(artifact_uri=config_uri, artifact_class=dsl.Artifact, reimport=False)
        data = prepare_data(config=config.output)
        with dsl.ParallelFor(["resnet18", "mobilenetv2"]) as arch:
            train_teacher(config=config.output, data=data.outputs["data"], arch=arch)

    out = tmp_path / "my-teachers.yaml"
    compiler.Compiler().compile(my_teachers, str(out))
    spec = yaml.safe_load(out.read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert {"exec-prepare-data", "exec-train-teacher"} <= set(executors)
    assert executors["exec-train-teacher"]["container"]["image"] == CATALOGUE_IMAGE
