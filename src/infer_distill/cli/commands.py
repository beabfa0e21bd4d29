"""`infer-distill`: run the whole pipeline, one stage (what containers call), or show an artifact.

    infer-distill configs
    infer-distill run --config quickstart --out runs/quickstart [--set synthesis.iterations=50]
    infer-distill stage train-teacher --config C --root s3://bucket/run1 --arch resnet18
    infer-distill show runs/quickstart/report
    infer-distill plan --config cifar10-ipc10
    infer-distill check-store s3://bucket/runs
    infer-distill export runs/quickstart/distilled --format imagefolder --out runs/exported
    infer-distill render compose --config my-config.yaml --out my-compose   # or argo (the argo extra)

Exit codes: 0 done, 2 input refused (never worth retrying), 75 object store unavailable (retry later),
130 / 143 stopped by SIGINT / SIGTERM (finished artifacts kept; the same command resumes).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from infer_distill import dag
from infer_distill.cli.show import console, export_set, print_configs, print_plan, print_step, print_threads, print_workers, show
from infer_distill.config.loading import dump_config, load_config
from infer_distill.engines.stage_command import ITEM_FLAGS, item_from_flags, output_flag, run_stage
from infer_distill.engines.tracking import tracked
from infer_distill.errors import USER_ERRORS, Interrupted, StoreUnavailable
from infer_distill.outputs.report import print_summary
from infer_distill.runtime.signals import interruptible
from infer_distill.storage import open_artifact

# Modules that import torch (the stages, the runner, the executor, the distilled set, the report's plots) are
# imported by the commands that need them: --help, config, configs and plan start in a fraction of a second.


def jobs_arg(text: str) -> int | str:
    """`--jobs`: a number of worker processes, or auto."""
    if text.strip() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of worker processes nor auto "
                                         "(check --jobs and $INFER_JOBS)") from None


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
    r.add_argument("--jobs", type=jobs_arg, default=os.environ.get("INFER_JOBS") or "auto",
                   help="worker processes: independent steps (teachers, shards, students, baselines) run side by side; "
                        "auto (default, or $INFER_JOBS): chosen from the usable cores, their load and the plan's width")
    r.add_argument("--devices", default="", metavar="cuda:0,cuda:1",
                   help="GPUs to spread the workers over, one each in turn (default: every worker uses the default device)")
    r.add_argument("--engine", choices=["local", "kfp-local"], default="local",
                   help="local: every stage in this process; kfp-local: the Kubeflow DAG under KFP's local runner")
    r.add_argument("--force-unlock", action="store_true",
                   help="remove the run root's lock first, whoever holds it: only when the run it names is dead")

    s = sub.add_parser("stage", help="run one stage (the entry point of every container)")
    s.add_argument("name", choices=dag.STAGES)
    add_config(s)
    s.add_argument("--root", help="derive every input/output location from this run root (as `run --out` lays them out)")
    s.add_argument("--out", help="output artifact URI")
    for name, producer in dag.PRODUCER.items():  # every step's output is some step's input: --data, --teachers, ...
        if producer.always:
            continue
        many = {"nargs": "*" if producer.over.optional else "+"} if producer.over else {}
        s.add_argument(f"--{name}", **many, help=f"the {producer.name} artifact{'s' if producer.over else ''} (default: derived from --root)")
    for key in dict.fromkeys(k for f in dag.FANOUTS.values() for k in f.keys):
        s.add_argument(f"--{key.replace('_', '-')}", **ITEM_FLAGS.get(key, {}))
    for fanout in (f for f in dag.FANOUTS.values() if f.source != "config"):  # --shards-output
        s.add_argument(output_flag(fanout), metavar="FILE",
                       help=f"{fanout.source}: also write the {fanout.name} fan-out's items as JSON, e.g. [{{\"subset_ids\": \"0,1\"}}, ...]")

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

    rd = sub.add_parser("render", help="write a config's cluster files: compose (docker compose services and the config "
                                       "they mount) or argo (the Argo WorkflowTemplate and the Helm chart's values; the argo extra)")
    rd.add_argument("kind", choices=["compose", "argo"])
    add_config(rd)
    rd.add_argument("--out", required=True, help="the folder to write them to (re-rendering overwrites only files render wrote)")

    c = sub.add_parser("config", help="print the resolved config")
    add_config(c)

    sub.add_parser("configs", help="list the configs shipped with the package (give one by name: --config cifar10-ipc10)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 2 (dag.EXIT_REFUSED) input refused; 75 (dag.EXIT_TRANSIENT) the
    object store is unavailable; 128 + the signal for a `run` or `stage` stopped by SIGTERM or SIGINT
    (runtime.signals); anything else (a traceback) is a crash."""
    args = build_parser().parse_args(argv)
    resume = "resume with the same command (finished steps are skipped)"
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
        elif args.command == "render":
            from pathlib import Path

            from infer_distill.engines import argo, compose

            for path in (argo if args.kind == "argo" else compose).write(cfg, args.config, args.set, Path(args.out)):
                print(f"wrote {path}")
        elif args.command == "plan":
            print_plan(cfg, args.items_dir)
        elif args.command == "run":
            started = time.perf_counter()
            if args.engine == "kfp-local":
                print_threads()
                from infer_distill.engines.kfp.dag import run_local

                stopped = "the task running was stopped and wrote nothing; the finished tasks' outputs are kept"
                resume = "start again with the same command (KFP's local runner runs every task again)"
                with interruptible(forward=True):  # the tasks are child processes KFP waits for: they stop too
                    report_uri = run_local(cfg, args.out)
                print_summary(open_artifact(report_uri).read_manifest())
            else:
                from infer_distill.engines.executor import parse_devices
                from infer_distill.engines.walk import run_in_process

                report_uri = dag.location(dag.Layout(args.out), dag.final_step(), {})
                devices = tuple(parse_devices(args.devices))
                workers = print_workers(cfg, args.out, args.jobs, devices)
                finished: list[str] = []
                stopped = "no artifact had been finished; the step running was abandoned and wrote nothing"
                with tracked(cfg, args.out, args.out) as tracker:
                    def on_step(step) -> None:
                        nonlocal stopped
                        print_step(step)
                        finished.append(step.uri)
                        stopped = (f"{len(finished)} artifacts are finished under {args.out} and kept (the last: {step.uri}); "
                                   "the step running was abandoned and wrote nothing")
                        if tracker is not None:
                            tracker.step(step.stage, step.uri, step.manifest)
                    with interruptible():
                        report = run_in_process(cfg, args.out, progress=not args.no_progress, on_step=on_step,
                                                jobs=workers.jobs, threads=workers.threads, devices=devices,
                                                force_unlock=args.force_unlock)
                    print_summary(report)
            console.print(f"Done in {time.perf_counter() - started:.1f}s. Report: {report_uri}/report.md")
        else:
            print_threads()
            # a single stage's tracking store sits in its run root (the folder above its artifact without --root)
            step = dag.STEPS[args.name]
            where = args.root or (args.out or "").rstrip("/").rpartition("/")[0] or "."
            label = step.over.label(item_from_flags(args, cfg, step)) if step.over else ""
            stopped = f"stage {step.name} {label}".strip() + " was abandoned and wrote nothing; finished artifacts are kept"
            with tracked(cfg, where, f"{step.name} {label}".strip()) as tracker, interruptible():
                result = run_stage(args, cfg, tracker)
            print_step(result)
        return 0
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return dag.EXIT_REFUSED
    except StoreUnavailable as e:
        print(f"error (transient, worth retrying): {e}", file=sys.stderr)
        return dag.EXIT_TRANSIENT
    except Interrupted as e:
        again = shlex.join(["infer-distill", *(sys.argv[1:] if argv is None else argv)])
        print(f"stopped by {e.name}: {stopped}; {resume}: {again}",
              file=sys.stderr)
        return e.exit_code
