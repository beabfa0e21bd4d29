"""`infer-distill`: run the whole pipeline, one stage (what containers call), or show an artifact.

    infer-distill configs
    infer-distill run --config quickstart --out runs/quickstart [--set synthesis.iterations=50]
    infer-distill stage train-teacher --config C --root s3://bucket/run1 --arch resnet18
    infer-distill show runs/quickstart/report
    infer-distill plan --config cifar10-ipc10
    infer-distill check-store s3://bucket/runs
    infer-distill export runs/quickstart/distilled --format imagefolder --out runs/exported

Exit codes: 0 done, 2 input refused (never worth retrying), 75 object store unavailable (retry later).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from . import plan
from .config import BASELINES, KNOWN_NUM_CLASSES, Config, check_budget, config_description, dump_config, load_config, packaged_configs
from .errors import USER_ERRORS, StageError
from .metrics import ReportMetrics, SubsetsMetrics
from .metrics import read as read_metrics
from .store import ArtifactError, StoreUnavailable, open_artifact

if TYPE_CHECKING:
    from .tracking import Tracker

# Modules that import torch (stages, executor, distilled, report) are imported by the commands
# that need them: --help, config, configs and plan start in a fraction of a second.
console = Console(stderr=True)


# ----------------------------------------------------------------------------------------
# run: every step of the plan in order, in this process, skipping artifacts that are current
# ----------------------------------------------------------------------------------------


def print_step(step: plan.StepResult) -> None:
    name = f"{step.stage} {step.label}".strip()
    if step.skipped:
        console.print(f"[dim]✓ {name}: up to date, skipped[/dim]")
    else:
        console.print(f"[green]✓[/green] {name}: {step.seconds:.1f}s")


def print_summary(report: dict) -> None:
    from .report import distilled_set_lines, result_tables

    r = ReportMetrics.from_manifest(report).report
    for title, _note, header, rows in result_tables(r):
        table = Table(title=title)
        for col in header:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    for line in distilled_set_lines(r):
        Console().print(line)


# ----------------------------------------------------------------------------------------
# stage: one stage, inputs as URIs (explicit, or derived from --root)
# ----------------------------------------------------------------------------------------


# The flags of a fan-out item's keys (plan.FanOut.keys): how each is parsed, and its value when not given
# (None: required). Any other key is a required plain string.
ITEM_FLAGS = {
    "arch": {"help": "train-teacher, evaluate-student, evaluate-baseline: the architecture"},
    "seed": {"type": int, "help": "the student's seed (default: the first of students.seeds)"},
    "label_mode": {"default": "static", "choices": ["static", "dynamic"]},
    "subset_ids": {"help": "synthesize-ufc: comma-separated subset ids, e.g. 0,1,2"},
    "baseline": {"choices": list(BASELINES), "help": "evaluate-baseline: which baseline"},
}


def _item(args: argparse.Namespace, cfg: Config, step: plan.Step) -> dict:
    """The fan-out item of `step` from its flags, as the stage function takes it."""
    item = {}
    for key in step.over.keys if step.over else ():
        flag, value = f"--{key.replace('_', '-')}", getattr(args, key)
        if key == "seed":
            value = cfg.students.seeds[0] if value is None else value
            if not 0 <= value < 2**63:
                raise StageError(f"--seed {value}: a seed must be at least 0 and below 2^63")
        value = _need(value, flag, step.name)
        if key == "subset_ids":
            try:
                value = [int(i) for i in value.split(",") if i.strip()]
            except ValueError:
                value = []
            if not value:
                raise StageError(f"--subset-ids {getattr(args, key)!r}: expected comma-separated subset numbers, e.g. --subset-ids 0,1,2")
        item[key] = value
    return item


def run_stage(args: argparse.Namespace, cfg: Config, tracker: Tracker | None = None) -> dict:
    """One step of the plan: its item from the flags, each input from --<input> or derived from --root;
    `tracker` logs its manifest."""
    from .plan import Layout

    step = plan.STEPS[args.name]
    layout = Layout(args.root) if args.root else None
    item = _item(args, cfg, step)

    def located(flag: str, derive) -> str | list[str]:
        """The location given with --flag, else derived from --root."""
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            return value
        if layout is None:
            raise StageError(f"stage {step.name} needs {flag} (or --root to derive every location)")
        return derive(layout)

    def produced(name: str):
        """Where a run under `layout` keeps input `name`: the producer's artifact, or every item's."""
        producer = plan.PRODUCER[name]

        def derive(layout):
            if producer.over is None:
                return plan.location(layout, producer, {})
            items = plan.step_items(producer, cfg, layout, lambda: plan.num_classes_of(inputs.get("data") or layout.data))
            return [plan.location(layout, producer, i) for i in items]
        return located(f"--{name}", derive)

    inputs: dict = {}
    for name in step.inputs:
        producer = plan.PRODUCER[name]
        inputs[name] = produced(name) if producer.runs(cfg) else plan.absent(producer)
    out = located("--out", lambda l: plan.location(l, step, item))
    manifest = step.function(cfg, **item, **inputs, out=out)
    if tracker is not None:
        tracker.step(step.name, out, manifest)
    if step.name == "select-subsets" and args.shards_output:  # for engines that fan out over the shards (Argo withParam)
        items = plan.fanout_items(cfg, SubsetsMetrics.from_manifest(manifest, out).num_classes)[plan.SHARDS.name]
        Path(args.shards_output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.shards_output).write_text(json.dumps(items))
    return manifest


@contextmanager
def tracked(cfg: Config, out: str, name: str) -> Iterator[Tracker | None]:
    """The run's tracker (None without tracking.backend), closed as finished or failed."""
    from .tracking import open_tracker

    tracker = open_tracker(cfg, out, name)
    try:
        yield tracker
    except BaseException:
        if tracker is not None:
            tracker.close(finished=False)
        raise
    if tracker is not None:
        tracker.close(finished=True)


def _need(value, flag: str, stage: str):
    if value is None:
        raise StageError(f"stage {stage} needs {flag}")
    return value


# ----------------------------------------------------------------------------------------
# show and main
# ----------------------------------------------------------------------------------------


def show(uri: str, as_json: bool = False) -> None:
    """A report as its Markdown, any other artifact as a summary; `as_json`: the whole manifest.
    A run root (no artifact of its own) lists the artifacts under it."""
    art = open_artifact(uri)
    try:
        manifest = art.read_manifest()
    except ArtifactError:
        found = _run_artifacts(art.uri)
        if not found:
            raise
        table = Table(title=f"{art.uri} is a run root, not an artifact: it holds", title_justify="left")
        for col in ("artifact", "stage", "accuracy", "made"):
            table.add_column(col)
        for child, m in found:
            accs = ", ".join(f"{k} {_metric(k, v)}" for k, v in sorted(_accuracies(child.uri, m).items()))
            table.add_row(child.uri.removeprefix(art.uri + "/"), m.get("stage", "?"), accs, m.get("created_at", "?"))
        Console().print(table)
        first = next((child for child, m in found if m.get("stage") == "report"), found[0][0])
        print(f"show one of them: infer-distill show {first.uri}")
        return
    if as_json:
        print(json.dumps(manifest, indent=2))
    elif manifest.get("stage") == "report":
        print(art.read_text("report.md"))
    else:
        print(_summary(art.uri, manifest))


def _run_artifacts(root: str) -> list[tuple]:
    """(artifact, manifest) of everything `run --out root` lays out under `root`: single steps at its top,
    each fan-out's items in the folder of its step (found from the plan's locations of an example config)."""
    from .plan import Layout

    layout, example = Layout(root), Config()
    folders = [root] + [plan.location(layout, step, items[0]).rpartition("/")[0]
                        for step in plan.PLAN if step.over for items in [step.over.items(example, 10)] if items]
    found = []
    for folder in dict.fromkeys(folders):
        for child in open_artifact(folder).children():
            try:
                found.append((child, child.read_manifest()))
            except ArtifactError:
                continue  # half-written or foreign: not a finished artifact of the run
    return found


def _accuracies(uri: str, manifest: dict) -> dict[str, float]:
    """An artifact's accuracies; none for one whose metrics are not its step's (the listing shows it all the same)."""
    try:
        return read_metrics(manifest, uri).accuracies()
    except ArtifactError:
        return {}


def _metric(key: str, value) -> str:
    if key.endswith("_acc") and isinstance(value, float):
        return f"{100 * value:.2f} %"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value)
    return text if len(text) <= 100 else f"{len(value)} {'values' if isinstance(value, list) else 'entries'}"


def _summary(uri: str, manifest: dict) -> str:
    """An artifact's identity, then its metrics (single values first), files and inputs, one per line."""
    metrics = manifest.get("metrics", {})
    single = sorted(k for k, v in metrics.items() if not isinstance(v, (list, dict)))
    lines = [f"{manifest.get('stage', '?')} artifact {uri}",
             f"  {'fingerprint':<16} {manifest.get('fingerprint')} (seed {manifest.get('seed')})",
             f"  {'made':<16} {manifest.get('created_at', '?')} by infer-distill {manifest.get('infer_distill_version', '?')}, "
             f"in {manifest.get('elapsed_s', 0):.1f} s"]
    lines += [f"  {k:<16} {_metric(k, metrics[k])}" for k in single + sorted(set(metrics) - set(single))]
    lines += [f"  {'file':<16} {name} ({entry.get('bytes', 0):,} bytes)" for name, entry in sorted(manifest.get("files", {}).items())]
    for name, value in manifest.get("inputs", {}).items():
        values = value if isinstance(value, list) else [value]
        lines.append(f"  {'input ' + name:<16} {values[0]}" + (f" and {len(values) - 1} more" if len(values) > 1 else ""))
    lines.append(f"The whole manifest (settings, checksums, every value): infer-distill show {uri} --json")
    return "\n".join(lines)


def print_plan(cfg: Config, items_dir: str | None) -> None:
    """The steps this config runs, with every fan-out item; --items-dir also writes the items as JSON."""
    num_classes = KNOWN_NUM_CLASSES.get(cfg.dataset.name)
    if num_classes is not None:
        check_budget(cfg, num_classes)
    here = {"cpu": "on the CPU", "cuda": "on the GPU", "auto": "on a GPU when one is visible, else on the CPU"}[cfg.device]
    table = Table(title="INFER plan", caption=f"infer-distill run computes every step in one process, {here} "
                                              f"(device: {cfg.device}). Pod on a cluster: what the Kubeflow and Argo "
                                              "renderings request for the step (no GPU when compiled with --gpus 0).")
    for col in ("step", "after", "runs", "pod on a cluster", "items"):
        table.add_column(col)
    for step in plan.PLAN:
        after, pod = ", ".join(plan.depends(step)), "GPU" if step.gpu else "CPU"
        if not step.runs(cfg):
            table.add_row(step.name, after, "0", pod, f"not run: INFER's own step, and methods={cfg.methods} has no infer")
        elif step.over is None:
            table.add_row(step.name, after, "1", pod, "")
        elif step.over.source == "config" or num_classes is not None:
            items = step.over.items(cfg, num_classes)
            table.add_row(step.name, after, str(len(items)), pod, "; ".join(step.over.label(i) for i in items))
        else:
            table.add_row(step.name, after, "?", pod, f"decided by {step.over.source} (number of classes)")
    Console().print(table)
    if items_dir:
        Path(items_dir).mkdir(parents=True, exist_ok=True)
        for name, items in plan.fanout_items(cfg).items():
            (Path(items_dir) / f"{name}.json").write_text(json.dumps(items))
        for step in plan.PLAN:  # whether each conditional step runs, for engines that skip one at run time (Argo's when)
            if step.when:
                (Path(items_dir) / plan.runs_file(step)).write_text("true" if step.runs(cfg) else "false")


def print_threads() -> None:
    from .threads import configure_cpu_threads

    threads, why = configure_cpu_threads()
    console.print(f"CPU threads: {threads} ({why}); artifacts are byte-identical across runs at the same count")


def print_configs() -> None:
    """The configs shipped with the package, each with the first sentence of its comment."""
    shipped = packaged_configs()
    width = max(map(len, shipped))
    for name, path in shipped.items():
        print(f"{name:<{width}}  {config_description(path)}")


def export_set(args: argparse.Namespace) -> None:
    from .distilled import export

    out = export(args.uri, args.format, args.out, include_test=args.include_test)
    console.print(f"✓ exported {args.uri} as {args.format} to {out} (see {out / 'DATASHEET.md'})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infer-distill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def add_config(sp):
        sp.add_argument("--config", help="a YAML file, or the name of a shipped config (`infer-distill configs`); "
                                          "default: the embedded quickstart defaults")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. synthesis.iterations=50")

    r = sub.add_parser("run", help="run every stage in order, in this process (resumes: current artifacts are skipped)")
    add_config(r)
    r.add_argument("--out", default="runs/default", help="local directory or s3://bucket/prefix")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--jobs", type=int, default=1,
                   help="worker processes: independent steps (teachers, shards, students, baselines) run side by side")
    r.add_argument("--devices", default="", metavar="cuda:0,cuda:1",
                   help="GPUs to spread the workers over, one each in turn (default: every worker uses the default device)")
    r.add_argument("--engine", choices=["local", "kfp-local"], default="local",
                   help="local: every stage in this process; kfp-local: the Kubeflow DAG under KFP's local runner")
    r.add_argument("--force-unlock", action="store_true",
                   help="remove the run root's lock first, whoever holds it: only when the run it names is dead")

    s = sub.add_parser("stage", help="run one stage (the entry point of every container)")
    s.add_argument("name", choices=plan.STAGES)
    add_config(s)
    s.add_argument("--root", help="derive every input/output location from this run root (as `run --out` lays them out)")
    s.add_argument("--out", help="output artifact URI")
    for name, producer in plan.PRODUCER.items():  # every step's output is some step's input: --data, --teachers, ...
        if producer.always:
            continue
        many = {"nargs": "*" if producer.over.optional else "+"} if producer.over else {}
        s.add_argument(f"--{name}", **many, help=f"the {producer.name} artifact{'s' if producer.over else ''} (default: derived from --root)")
    for key in dict.fromkeys(k for f in plan.FANOUTS.values() for k in f.keys):
        s.add_argument(f"--{key.replace('_', '-')}", **ITEM_FLAGS.get(key, {}))
    s.add_argument("--shards-output", metavar="FILE",
                   help="select-subsets: also write the shard plan as JSON items, e.g. [{\"subset_ids\": \"0,1\"}, ...]")

    pl = sub.add_parser("plan", help="print the steps a config runs, with every fan-out item")
    add_config(pl)
    pl.add_argument("--items-dir", metavar="DIR",
                    help="also write each fan-out's items as DIR/<fan-out>.json (what workflow engines iterate)")

    ch = sub.add_parser("check-store", help="check that a run root can be written (S3: endpoint, bucket, credentials)")
    ch.add_argument("uri", help="local directory or s3://bucket/prefix")

    sh = sub.add_parser("show", help="summarise an artifact, print a report, or list the artifacts of a run root")
    sh.add_argument("uri")
    sh.add_argument("--json", action="store_true", help="print the artifact's whole manifest as JSON")

    e = sub.add_parser("export", help="write a distilled set as an ImageFolder of PNGs or one .npz, with a DATASHEET.md")
    e.add_argument("uri", help="the soft-label stage's artifact, e.g. runs/quickstart/distilled or s3://bucket/run1/distilled")
    e.add_argument("--format", required=True,
                   help="imagefolder: train/<class>/<subset>_<slot>_<teacher>.png + soft_labels.npy in ImageFolder order; npz: one distilled.npz; "
                        "hf: a Hugging Face DatasetDict (save_to_disk; needs the hf extra)")
    e.add_argument("--out", required=True, help="a new (or empty) local directory; written whole or not at all")
    e.add_argument("--include-test", action="store_true",
                   help="also write the real test split the set was made for (from the run's data artifact)")

    c = sub.add_parser("config", help="print the resolved config")
    add_config(c)

    sub.add_parser("configs", help="list the configs shipped with the package (give one by name: --config cifar10-ipc10)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 2 (plan.EXIT_REFUSED) input refused; 75 (plan.EXIT_TRANSIENT) the
    object store is unavailable; anything else (a traceback) is a crash."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "show":
            show(args.uri, args.json)
            return 0
        if args.command == "check-store":
            open_artifact(args.uri).check_writable()
            print(f"ok: {args.uri} is writable")
            return 0
        if args.command == "export":
            export_set(args)
            return 0
        if args.command == "configs":
            print_configs()
            return 0
        cfg = load_config(args.config, args.set)
        if args.command == "config":
            print(dump_config(cfg), end="")
        elif args.command == "plan":
            print_plan(cfg, args.items_dir)
        elif args.command == "run":
            started = time.perf_counter()
            print_threads()
            if args.engine == "kfp-local":
                from .kfp import dag

                report_uri = dag.run_local(cfg, args.out)
                print_summary(open_artifact(report_uri).read_manifest())
            else:
                from .executor import parse_devices
                from .plan import Layout

                report_uri = Layout(args.out).report
                devices = tuple(parse_devices(args.devices))
                with tracked(cfg, args.out, args.out) as tracker:
                    def on_step(step: plan.StepResult) -> None:
                        print_step(step)
                        if tracker is not None:
                            tracker.step(step.stage, step.uri, step.manifest)
                    print_summary(plan.run_in_process(cfg, args.out, progress=not args.no_progress, on_step=on_step,
                                                      jobs=args.jobs, devices=devices, force_unlock=args.force_unlock))
            console.print(f"Done in {time.perf_counter() - started:.1f}s. Report: {report_uri}/report.md")
        else:
            print_threads()
            # a single stage's tracking store sits in its run root (the folder above its artifact without --root)
            step = plan.STEPS[args.name]
            where = args.root or (args.out or "").rstrip("/").rpartition("/")[0] or "."
            with tracked(cfg, where, f"{step.name} {step.over.label(_item(args, cfg, step)) if step.over else ''}".strip()) as tracker:
                manifest = run_stage(args, cfg, tracker)
            console.print(f"✓ {args.name}: {manifest['elapsed_s']:.1f}s, fingerprint {manifest['fingerprint']}")
        return 0
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return plan.EXIT_REFUSED
    except StoreUnavailable as e:
        print(f"error (transient, worth retrying): {e}", file=sys.stderr)
        return plan.EXIT_TRANSIENT

if __name__ == "__main__":
    sys.exit(main())
