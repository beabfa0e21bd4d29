"""The KFP component of every step of `infer_distill.dag.PLAN`, generated as source code into steps.py.

    python -m infer_distill.engines.kfp.generate           # rewrite src/infer_distill/engines/kfp/steps.py from the plan
    python -m infer_distill.engines.kfp.generate --check   # exit 1 if it is stale (tests/test_kfp_dag.py runs it)

KFP serialises a lightweight component by its function's source, with typed `Input[...]` and
`Output[...]` parameters, so each step needs a real function with its own signature. They all
follow from the step: the config, the fan-out item's keys, one parameter per input (a collected
list for a fan-out's outputs, or the one artifact they were gathered into where the consumer
fans out itself), the step's artifact and its metrics; each body is one call of `run.run_step`.
A fan-out's outputs read by a later fan-out get a gather component too (`gather_source`): every
artifact of the loop in one, laid out as a run root holds them, each identified by its manifest
(`run.gather`). Adding a step to the plan and running this is all the Kubeflow side needs.
"""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

from infer_distill import dag
from infer_distill.engines.runner import stage_function

STEPS_FILE = Path(__file__).with_name("steps.py")

# Item key types (the fan-outs' item values; subset ids travel as "0,1,2").
KEY_TYPES = {"seed": "int"}


def gathered_outputs() -> list[str]:
    """The fan-out outputs that a fan-out step reads, in plan order: gathered into one artifact, which every later step reads."""
    return [s.output for s in dag.PLAN if s.over and any(s.output in later.inputs and later.over for later in dag.PLAN)]


def output_name(step: dag.Step) -> str:
    """The parameter of its artifact: its location, or `<location>_<type>` where that is an item key (evaluate-baseline)."""
    keys = step.over.keys if step.over else ()
    return step.location if step.location not in keys else f"{step.location}_{step.artifact_type.lower()}"


def kind(output: str) -> str:
    """The KFP artifact type of an output (the Kubeflow UI shows datasets and models as such)."""
    return dag.PRODUCER[output].artifact_type


def component_source(step: dag.Step) -> str:
    """The source of `step`'s component function."""
    params = ["config: Input[Artifact]"] + [f"{k}: {KEY_TYPES.get(k, 'str')}" for k in (step.over.keys if step.over else ())]
    optional, inputs, gathered = [], [], []
    for name in step.inputs:
        producer = dag.PRODUCER[name]
        if name in gathered_outputs():
            spec, param = f"{dag.PRODUCER[name].gathered_as}: Input[{kind(name)}]", dag.PRODUCER[name].gathered_as
            if dag.optional_input(step, name):  # (the DAG leaves an omitted step out, and its gathered artifact with it)
                optional.append(spec + " = None")
                gathered.append(f'"{name}": {param}.path if {param} is not None else None')
            else:
                params.append(spec)
                gathered.append(f'"{name}": {param}.path')
        elif producer.over:
            spec = f"{name}: Input[List[{kind(name)}]]"
            if dag.optional_input(step, name):  # the step may be left out of the DAG: None then
                optional.append(spec + " = None")
            else:
                params.append(spec)
            inputs.append(f'"{name}": [a.path for a in {name}{" or []" if dag.optional_input(step, name) else ""}]')
        elif dag.optional_input(step, name):  # a step the DAG may be compiled without: the stage's default then
            optional.append(f"{name}: Input[{kind(name)}] = None")
            inputs.append(f'"{name}": {name}.path if {name} is not None else None')
        else:
            params.append(f"{name}: Input[{kind(name)}]")
            inputs.append(f'"{name}": {name}.path')
    out = output_name(step)
    params.append(f"{out}: Output[{kind(step.output)}]")
    ui = step.ui_pages
    params += [f"{n}: Output[{t}]" for n, (t, _) in ui.items()] + ["metrics: Output[Metrics]"] + optional
    feeds = any(f.source == step.name for f in dag.FANOUTS.values())  # it returns the items a later loop runs over
    item = "{" + ", ".join(f'"{k}": {k}' for k in (step.over.keys if step.over else ())) + "}"
    doc = (inspect.getdoc(stage_function(step)) or step.name).splitlines()[0]
    call = (f'run_step("{step.name}", config.path, {item}, {{{", ".join(inputs)}}}, {{{", ".join(gathered)}}}, {out}.path, metrics'
            + (", {" + ", ".join(f'"{n}": {n}.path' for n in ui) + "}" if ui else "") + ")")
    return (f"def {step.name.replace('-', '_')}({', '.join(params)}){' -> list' if feeds else ''}:\n"
            f'    """{doc}"""\n'
            f"    from infer_distill.engines.kfp.run import run_step\n\n"
            f"    {'return ' if feeds else ''}{call}\n")


def gather_source(output: str) -> str:
    """The source of the component gathering the fan-out artifacts of `output` into one (`run.gather`)."""
    producer = dag.PRODUCER[output]
    k, gathered = kind(output), producer.gathered_as
    where = dag.location(dag.Layout("<" + gathered + ">"), producer, {key: f"<{key}>" for key in producer.over.keys})
    return (f"def gather_{output}(config: Input[Artifact], {output}: Input[List[{k}]], {gathered}: Output[{k}]):\n"
            f'    """Fan-in: every {producer.name} artifact in one, at {where} (a run root\'s layout)."""\n'
            "    from infer_distill.engines.kfp.run import gather\n\n"
            f'    gather("{output}", config.path, [a.path for a in {output}], {gathered}.path)\n')


def module_source() -> str:
    functions = "\n\n".join([*(component_source(step) for step in dag.PLAN), *map(gather_source, gathered_outputs())])
    names = ", ".join(step.name.replace("-", "_") for step in dag.PLAN)
    gathers = ", ".join(f"gather_{output}" for output in gathered_outputs())
    return (f'"""One KFP component per step of infer_distill.dag.PLAN, and one per gathered fan-out output. Generated: '
            'python -m infer_distill.engines.kfp.generate; do not edit."""\n'
            "# flake8: noqa: E501\n\n"
            "from typing import List\n\n"
            "from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output\n\n\n"
            f"{functions}\n\nSTEP_FUNCTIONS = ({names},)\nGATHER_FUNCTIONS = ({gathers},)\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infer_distill.engines.kfp.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if steps.py is not what the plan gives")
    args = p.parse_args(argv)
    text = module_source()
    if args.check:
        if not STEPS_FILE.is_file() or STEPS_FILE.read_text() != text:
            print(f"{STEPS_FILE} is stale: run python -m infer_distill.engines.kfp.generate", file=sys.stderr)
            return 1
        return 0
    STEPS_FILE.write_text(text)
    print(f"wrote {STEPS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
