"""The plan as an Argo WorkflowTemplate (built with hera, the argo extra): the DAG, its fan-outs, every
step's command, inputs, outputs and retry strategy.

The template does not depend on the config: its `config` parameter is given when a run is submitted,
and its first pod (resolve-config, `infer-distill plan --items-dir`) writes the fan-outs' items, and
select-subsets the shards', at run time. So one template runs every config and every dataset source,
including those whose number of classes is known only once prepare-data has read the data.
The Helm chart (helm/infer-distill) ships it (files/workflow-template.yaml) and completes it from its
values (image, resources, GPUs, scheduling, S3, volumes, security); `infer-distill render argo`
writes one for a config, with that config as the parameter's default.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from infer_distill import dag
from infer_distill.config.loading import dump_config
from infer_distill.config.schema import Config
from infer_distill.errors import MissingExtra

CONFIG_PATH = "/config/config.yaml"                 # the config parameter, as a raw input artifact
RUN_ROOT = "{{workflow.parameters.root}}/{{workflow.name}}"  # every run of the template under its own name
ITEMS_DIR = "/tmp/items"                            # resolve-config writes the fan-outs' items here
SHARDS_FILE = "/tmp/shards.json"                    # select-subsets writes the shard items here
IMAGE = "infer-distill"                             # (the chart sets the image)


def runs_parameter(step: dag.Step) -> str:
    """resolve-config's output saying whether the config runs `step` ("true"/"false")."""
    return dag.runs_file(step)


def fanout_template(step: dag.Step) -> str:
    """The DAG template that runs a fan-out step once per item (its parallelism limits that fan-out alone)."""
    return f"{step.name}s"


def workflow_template(config: str | None = None) -> dict:
    """The WorkflowTemplate as a dict; `config` (YAML text): the default of its config parameter (None: none,
    every run gives one, as the chart's values do)."""
    try:
        from hera.workflows import DAG, Container, Parameter, RawArtifact, RetryStrategy, Task, WorkflowTemplate
        from hera.workflows import models as m
    except ImportError as e:
        raise MissingExtra("the Argo WorkflowTemplate (infer-distill render argo)", "argo", e) from None

    def retry(policy: dag.RetryPolicy) -> RetryStrategy:
        # retryPolicy Always: an evicted or preempted pod (an Argo "Error", exit code -1) is retried too.
        return RetryStrategy(limit=policy.limit, retry_policy="Always", expression=policy.argo_expression(),
                             backoff=m.Backoff(duration=f"{policy.backoff_s}s", factor=str(policy.factor),
                                               max_duration=f"{policy.max_duration_s // 3600}h"))

    def pod(name: str, args: list[str], params=(), outputs=(), retry_policy=dag.RETRY, labels=None) -> None:
        Container(name=name, image=IMAGE, command=["infer-distill"], args=args,
                  labels={"infer-distill/stage": name, **(labels or {})},
                  inputs=[RawArtifact(name="config", path=CONFIG_PATH, data="{{workflow.parameters.config}}"),
                          *(Parameter(name=p) for p in params)],
                  outputs=list(outputs) or None, retry_strategy=retry(retry_policy))

    config_fanouts = [f for f in dag.FANOUTS.values() if f.source == "config"]
    arguments = [Parameter(name="config", description="the infer-distill config (YAML), e.g. \"$(cat configs/cifar10-ipc10.yaml)\"",
                           **({"value": config} if config is not None else {})),
                 Parameter(name="root", description="runs are written under <root>/<workflow name>, e.g. s3://bucket/infer")]
    with WorkflowTemplate(name="infer-distill", entrypoint="infer", arguments=arguments) as wt:
        pod("resolve-config", ["plan", "--config", CONFIG_PATH, "--items-dir", ITEMS_DIR],
            outputs=[*(Parameter(name=f.name, value_from=m.ValueFrom(path=f"{ITEMS_DIR}/{f.name}.json")) for f in config_fanouts),
                     *(Parameter(name=runs_parameter(s), value_from=m.ValueFrom(path=f"{ITEMS_DIR}/{runs_parameter(s)}"))
                       for s in dag.PLAN if s.when)])
        for step in dag.PLAN:
            args = ["stage", step.name, "--config", CONFIG_PATH, "--root", RUN_ROOT]
            keys = step.over.keys if step.over else ()
            args += [part for key in keys for part in (f"--{key.replace('_', '-')}", f"{{{{inputs.parameters.{key}}}}}")]
            outputs = []
            if any(f.source == step.name for f in dag.FANOUTS.values()):
                args += ["--shards-output", SHARDS_FILE]
                outputs = [Parameter(name=dag.SHARDS.name, value_from=m.ValueFrom(path=SHARDS_FILE))]
            pod(step.name, args, keys, outputs, step.retry, {"infer-distill/reads-dataset": "true"} if step.reads_dataset else None)
        for step in dag.PLAN:
            if step.over:
                with DAG(name=fanout_template(step), inputs=[Parameter(name="items")]):
                    Task(name=step.name, template=step.name, with_param="{{inputs.parameters.items}}",
                         arguments=[Parameter(name=k, value=f"{{{{item.{k}}}}}") for k in step.over.keys])

        def task_name(name: str) -> str:
            step = dag.STEPS[name]
            return fanout_template(step) if step.over else step.name

        with DAG(name="infer"):
            Task(name="resolve-config", template="resolve-config")
            for step in dag.PLAN:
                after = [task_name(d) for d in dag.depends(step)] or ["resolve-config"]
                # A step the config does not run is skipped; Argo counts a skipped dependency as done.
                when = {"when": f"{{{{tasks.resolve-config.outputs.parameters.{runs_parameter(step)}}}}} == true"} if step.when else {}
                if step.over is None:
                    Task(name=step.name, template=step.name, depends=" && ".join(after), **when)
                    continue
                source = "resolve-config" if step.over.source == "config" else step.over.source
                items = f"{{{{tasks.{source}.outputs.parameters.{step.over.name}}}}}"
                Task(name=fanout_template(step), template=fanout_template(step), depends=" && ".join(after),
                     arguments=[Parameter(name="items", value=items)], **when)
    return wt.to_dict()


def render_workflow_template(generated_by: str, config: str | None = None) -> str:
    """The template as a YAML file, headed by `generated_by` (how to render it again)."""
    return f"# {generated_by}\n" + yaml.safe_dump(workflow_template(config), sort_keys=False, width=120)


def write(cfg: Config, config: str | None, sets: list[str], out: Path) -> list[Path]:
    """`infer-distill render argo`: under `out`, workflow-template.yaml (the template, with `cfg` resolved, its
    --set overrides included, as the default of the config parameter) and values.yaml (the same config for the
    Helm chart: `helm install ... -f values.yaml`). Overwrites only files this command wrote."""
    from infer_distill.engines.compose import MARK, write_generated

    rerender = shlex.join(["infer-distill", "render", "argo", *(["--config", config] if config else []),
                           *(part for s in sets for part in ("--set", s)), "--out", str(out)])
    text = dump_config(cfg)
    values = (f"{MARK} argo; do not edit ({rerender}).\n"
              f"# The config of {config or 'the defaults'} for the Helm chart: helm install infer-distill ./helm/infer-distill "
              f"-f {out / 'values.yaml'} ...\n" + yaml.safe_dump({"config": yaml.safe_load(text)}, sort_keys=False, width=120))
    return write_generated({out / "workflow-template.yaml": render_workflow_template(f"{MARK[2:]} argo; do not edit ({rerender}).", text),
                            out / "values.yaml": values})
