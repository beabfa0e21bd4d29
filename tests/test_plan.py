"""The plan (infer_distill.dag) and every rendering of it: the Kubeflow pipeline, the Argo
WorkflowTemplate of the Helm chart, the compose files, and the in-process walk."""
import re

import pytest
import yaml
from conftest import REPO, TINY

from infer_distill import dag
from infer_distill.cli.commands import build_parser
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.engines import argo, walk
from infer_distill.engines.kfp import dag as infer_dag
from infer_distill.engines.kfp import generate
from infer_distill.errors import ConfigError
from infer_distill.storage import open_artifact
from pipelines import render


def test_the_dag_edges_follow_from_the_inputs():
    for step in dag.PLAN:
        producers = {dag.PRODUCER[i].name for i in step.inputs}
        edges = dag.depends(step)
        assert set(edges) <= producers, step.name                  # an edge is an input's producer ...
        implied = set().union(*(dag.upstream(dag.STEPS[e]) for e in edges))
        assert implied.isdisjoint(edges), step.name                 # ... that no other edge already implies ...
        assert set(edges) | implied == dag.upstream(step), step.name  # ... and together they reach every producer
    # what the method needs: UFCs wait for the teachers and the subsets; the report for every kind of student
    assert set(dag.depends(dag.STEPS["synthesize-ufc"])) == {"select-subsets", "train-teacher"}
    assert dag.upstream(dag.final_step()) == {s.name for s in dag.PLAN} - {dag.final_step().name}
    for step in dag.PLAN:  # every input is produced by an earlier step
        assert all(dag.PLAN.index(dag.PRODUCER[i]) < dag.PLAN.index(step) for i in step.inputs), step.name
    assert dag.RETRY.argo_expression() == "asInt(lastRetry.exitCode) != 2"


def test_a_run_needs_the_steps_its_dag_was_built_with():
    with_baselines = load_config(None)  # the default trains the random_soft baseline, and no other method
    without = load_config(None, ["students.baselines=[]"])
    methods = ["distill-method", "evaluate-method", "evaluate-full-data"]
    assert dag.omitted(without) == ["evaluate-baseline", *methods] and dag.omitted(with_baselines) == methods
    dag.check_omitted(without, ["evaluate-baseline", *methods])
    dag.check_omitted(with_baselines, methods)
    with pytest.raises(ConfigError, match="compiled without the evaluate-baseline step"):
        dag.check_omitted(with_baselines, ["evaluate-baseline", *methods])
    with pytest.raises(ConfigError, match="compiled with the evaluate-baseline step"):
        dag.check_omitted(without, methods)
    peers = load_config(None, ["methods=[infer, rded]"])
    assert dag.omitted(peers) == ["evaluate-full-data"]
    with pytest.raises(ConfigError, match="compiled without the distill-method step"):
        dag.check_omitted(peers, methods)
    # without infer, INFER's own steps (`Step.when`) are left out too
    alone = load_config(None, ["methods=[rded]", "students.baselines=[]"])
    assert dag.omitted(alone) == ["select-subsets", "synthesize-ufc", "soft-label", "evaluate-student", "evaluate-baseline",
                                   "evaluate-full-data"]
    with pytest.raises(ConfigError, match="compiled with the select-subsets step"):
        dag.check_omitted(alone, ["evaluate-baseline", "evaluate-full-data"])


def test_fan_out_items_are_stage_keys_and_command_line_flags():
    cfg = load_config(None, ["labels.modes=[static, dynamic]", "students.seeds=[0, 1]", "synthesis.subsets_per_shard=3",
                             "students.baselines=[random_soft, random_soft_steps]", "methods=[infer, herding, sre2l]",
                             "students.scores=[soft, hard]", "students.protocols=[epochs, steps]",
                             "students.full_data_reference=true"])
    items = dag.fanout_items(cfg, 10)
    assert items["teachers"] == [{"arch": a} for a in cfg.teachers.archs]
    assert items["shards"] == [{"subset_ids": "0,1,2"}, {"subset_ids": "3,4,5"}, {"subset_ids": "6"}]
    assert [(i["label_mode"], i["seed"]) for i in items["students"]] == [("static", 0), ("static", 1), ("dynamic", 0), ("dynamic", 1)]
    assert [(i["baseline"], i["seed"]) for i in items["baselines"]] == [
        ("random_soft", 0), ("random_soft", 1), ("random_soft_steps", 0), ("random_soft_steps", 1)]
    assert items["methods"] == [{"method": "herding"}, {"method": "sre2l"}]
    assert [(i["method"], i["score"], i["protocol"], i["seed"]) for i in items["method_scores"]][:4] == [
        ("infer", "hard", "epochs", 0), ("infer", "hard", "epochs", 1), ("herding", "soft", "epochs", 0), ("herding", "soft", "epochs", 1)]
    assert len(items["method_scores"]) == 2 + 2 * 2 * 2 * 2 and items["references"] == [{"arch": a} for a in cfg.students.archs]
    # without the number of classes: the config's
    assert set(dag.fanout_items(cfg)) == {"teachers", "students", "baselines", "methods", "method_scores", "references"}
    parser = build_parser()
    for step in [s for s in dag.PLAN if s.over]:
        for item in step.over.items(cfg, 10):
            ns = parser.parse_args(["stage", step.name, *dag.cli_args(item)])
            assert {k: getattr(ns, k) for k in item} == {k: dag.cli_value(v) if isinstance(v, list) else v for k, v in item.items()}
            assert dag.location(Layout("r"), step, item).startswith("r/")


# ----------------------------------------------------------------------------------------
# Every rendering is the plan
# ----------------------------------------------------------------------------------------


def _kfp_graph(spec: dict) -> tuple[dict, dict]:
    """From a compiled KFP pipeline: {step: steps whose artifacts it reads}, {step: (items source, item keys)}."""
    tasks = {name: (parent, t) for parent, comp in [("root", spec["root"]), *spec["components"].items()]
             for name, t in comp.get("dag", {}).get("tasks", {}).items()}
    component = {name: re.sub(r"^comp-|-\d+$", "", t["componentRef"]["name"]) for name, (_, t) in tasks.items()}

    def producer(ref: str) -> str:  # "pipelinechannel--prepare-data-data" -> "prepare-data"
        ref = ref.removeprefix("pipelinechannel--")
        return max((t for t in tasks if ref.startswith(f"{t}-")), key=len)

    def reads(name: str) -> set[str]:
        found = set()
        for arg in tasks[name][1].get("inputs", {}).get("artifacts", {}).values():
            if "componentInputArtifact" in arg:
                source = producer(arg["componentInputArtifact"])
            elif arg["taskOutputArtifact"]["producerTask"].startswith("for-loop"):      # dsl.Collected
                source = producer(arg["taskOutputArtifact"]["outputArtifactKey"])
            else:
                source = arg["taskOutputArtifact"]["producerTask"]
            source = component[source]
            if source.startswith("gather-"):  # a fan-out's artifacts gathered into one: read from that fan-out
                found |= reads(next(t for t in tasks if component[t] == source))
            elif source != "resolve-config":
                found.add(source)
        return found

    graph, fanouts = {}, {}
    for name, (parent, task) in tasks.items():
        if component[name] not in dag.STEPS:
            continue
        graph[component[name]] = reads(name)
        if parent != "root":
            loop = next(t for t in tasks.values() if t[1].get("componentRef", {}).get("name") == parent)[1]
            source_task = producer(loop["parameterIterator"]["items"]["inputParameter"])
            source = tasks[source_task][1]["inputs"]["parameters"]["fanout"]["runtimeValue"]["constant"] \
                if component[source_task] == "fanout-items" else component[source_task]
            keys = {k for k, p in task["inputs"]["parameters"].items() if p["componentInputParameter"].endswith("-loop-item")}
            fanouts[component[name]] = (source, keys)
    return graph, fanouts


def _compose_services(path) -> dict:
    services = yaml.safe_load(path.read_text())["services"]
    return {n: s for n, s in services.items() if (s.get("command") or [""])[0] == "stage"}


def test_every_rendering_is_the_plan(tmp_path):
    reads = {s.name: {dag.PRODUCER[i].name for i in s.inputs} for s in dag.PLAN}
    fan_outs = {s.name: s.over for s in dag.PLAN if s.over}

    # Kubeflow: each step reads the steps the plan says, and fans out over the plan's items; a step
    # whose optional fan-out the compiled config leaves empty is left out (and so is its input)
    methods = ["students.baselines=[]", "methods=[infer, herding]", "students.scores=[soft, hard]", "students.full_data_reference=true"]
    peers = ["select-subsets", "synthesize-ufc", "soft-label", "evaluate-student", "evaluate-baseline"]
    for sets, empty in ((["students.baselines=[random_soft]"], ["distill-method", "evaluate-method", "evaluate-full-data"]),
                        (["students.baselines=[]"], ["evaluate-baseline", "distill-method", "evaluate-method", "evaluate-full-data"]),
                        (methods, ["evaluate-baseline"]),                          # the peers' sets gathered for evaluate-method
                        (["students.scores=[soft, hard]"], ["distill-method", "evaluate-full-data"]),  # INFER's hard score only
                        (["students.baselines=[]", "methods=[random, rded]"], [*peers, "evaluate-full-data"])):  # the peers alone
        out = tmp_path / "kfp.yaml"
        assert infer_dag.main(["compile", "--output", str(out), "--image", "ghcr.io/acme/infer-distill:0.1.0",
                               *(part for s in sets for part in ("--set", s))]) == 0
        spec = next(yaml.safe_load_all(out.read_text()))
        graph, kfp_fanouts = _kfp_graph(spec)
        assert empty == dag.omitted(load_config(None, sets)), sets
        left_out = set(empty)
        assert graph == {n: r - left_out for n, r in reads.items() if n not in left_out}, sets
        assert kfp_fanouts == {n: (f.name if f.source == "config" else f.source, set(f.keys)) for n, f in fan_outs.items()
                               if n not in left_out}
        omitted = spec["root"]["dag"]["tasks"]["resolve-config"]["inputs"]["parameters"]["omitted_steps"]
        assert omitted == {"runtimeValue": {"constant": empty}}
        gathers = {re.sub(r"^comp-|-\d+$", "", c) for c in spec["components"] if c.startswith("comp-gather-")}
        assert gathers == {f"gather-{o}" for o in generate.gathered_outputs() if dag.PRODUCER[o].name not in left_out}

    # Argo (the committed template the chart installs): the DAG's edges, fan-outs and each pod's flags
    wt = yaml.safe_load((REPO / "helm" / "infer-distill" / "files" / "workflow-template.yaml").read_text())
    templates = {t["name"]: t for t in wt["spec"]["templates"]}
    main = {t["name"]: t for t in templates["infer"]["dag"]["tasks"]}
    task_of = {s.name: argo.fanout_template(s) if s.over else s.name for s in dag.PLAN}
    assert list(main) == ["resolve-config", *task_of.values()]
    for step in dag.PLAN:
        task = main[task_of[step.name]]
        assert set(task["depends"].split(" && ")) == ({task_of[d] for d in dag.depends(step)} or {"resolve-config"})
        # a conditional step runs when resolve-config says the config runs it (`infer-distill plan --items-dir`)
        assert task.get("when") == (f"{{{{tasks.resolve-config.outputs.parameters.{dag.runs_file(step)}}}}} == true"
                                    if step.when else None)
        args = templates[step.name]["container"]["args"]
        assert args[:2] == ["stage", step.name]
        if step.over:
            source = "resolve-config" if step.over.source == "config" else step.over.source
            assert task["arguments"]["parameters"] == [
                {"name": "items", "value": f"{{{{tasks.{source}.outputs.parameters.{step.over.name}}}}}"}]
            (inner,) = templates[task_of[step.name]]["dag"]["tasks"]
            assert inner["template"] == step.name and inner["withParam"] == "{{inputs.parameters.items}}"
            assert [p["name"] for p in templates[step.name]["inputs"]["parameters"]] == list(step.over.keys)
            for key in step.over.keys:
                flag = args.index(f"--{key.replace('_', '-')}")
                assert args[flag + 1] == f"{{{{inputs.parameters.{key}}}}}"
    produced = {p["name"] for t in templates.values() for p in t.get("outputs", {}).get("parameters", [])}
    assert produced == set(dag.FANOUTS) | {dag.runs_file(s) for s in dag.PLAN if s.when}

    # compose: one service per step and item, waiting for every service of the steps before it
    parser = build_parser()
    for name in render.COMPOSE_HEADERS:
        services = _compose_services(REPO / "docker" / name)
        (sets,) = {tuple(s["command"][s["command"].index("--set"):]) for s in services.values()}
        cfg = load_config(REPO / "configs" / "quickstart.yaml", list(sets[1::2]))
        runs = {}  # service -> (step, item as its flags give it)
        for service, spec in services.items():
            ns = parser.parse_args(spec["command"])
            keys = dag.STEPS[ns.name].over.keys if dag.STEPS[ns.name].over else ()
            runs[service] = (ns.name, tuple((k, getattr(ns, k)) for k in keys))
        expected = [(s.name, tuple(item.items())) for s in dag.PLAN
                    for item in (dag.fanout_items(cfg, 10)[s.over.name] if s.over else [{}])]
        assert sorted(runs.values(), key=str) == sorted(expected, key=str), name
        for service, spec in services.items():
            step = runs[service][0]
            waits = {d for d in spec["depends_on"] if d in services}
            assert waits == {n for n, (s, _) in runs.items() if s in dag.depends(dag.STEPS[step])}, (name, service)


def test_generated_files_are_current():
    stale = [str(p.relative_to(REPO)) for p, text in render.generated().items() if not p.is_file() or p.read_text() != text]
    assert not stale, f"stale generated files {stale}: run `python pipelines/render.py`"


# ----------------------------------------------------------------------------------------
# The in-process walk
# ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_in_process_reports_every_step_and_skips_current_ones(tmp_path):
    cfg = load_config(None, TINY + ["synthesis.subsets_per_shard=5"])
    first, again = [], []
    manifest = walk.run_in_process(cfg, str(tmp_path), progress=False, on_step=first.append)
    assert manifest["stage"] == "report"
    expected = [(s.name, s.over.label(i) if s.over else "") for s in dag.PLAN
                for i in (s.over.items(cfg, 10) if s.over else [{}])]
    assert [(r.stage, r.label) for r in first] == expected
    assert not any(r.skipped for r in first) and all(r.seconds > 0 for r in first)
    made = {r.uri: open_artifact(r.uri).read_manifest()["created_at"] for r in first}
    walk.run_in_process(cfg, str(tmp_path), progress=False, on_step=again.append)
    assert [(r.stage, r.skipped) for r in again] == [(s, not dag.STEPS[s].always) for s, _ in expected]
    assert all(r.seconds == 0.0 for r in again if r.skipped)
    assert all(open_artifact(r.uri).read_manifest()["created_at"] == made[r.uri] for r in again if r.skipped)  # not rewritten
