"""What the CLI prints: steps as they finish, artifacts, run roots, plans, configs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from infer_distill import dag
from infer_distill.config.budget import KNOWN_NUM_CLASSES
from infer_distill.config.loading import config_description, packaged_configs
from infer_distill.config.schema import Config
from infer_distill.dag.metrics import read as read_metrics
from infer_distill.errors import ArtifactError, ConfigError
from infer_distill.runtime.progress import console as progress_console
from infer_distill.storage import open_artifact
from infer_distill.storage.local import file_kind

if TYPE_CHECKING:
    from infer_distill.engines.runner import StepResult
    from infer_distill.runtime.threads import Workers

console = progress_console(stderr=True)


def print_step(step: StepResult) -> None:
    name = f"{step.stage} {step.label}".strip()
    if step.skipped:
        console.print(f"[dim]✓ {name}: up to date, skipped[/dim]")
    else:
        console.print(f"[green]✓[/green] {name}: {step.seconds:.1f}s")


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
            table.add_row(child.uri.removeprefix(art.uri + "/"), str(m.get("stage", "?")), accs, str(m.get("created_at", "?")))
        progress_console().print(table)
        first = next((child for child, m in found if m.get("stage") == dag.final_step().name), found[0][0])
        print(f"show one of them: infer-distill show {first.uri}")
        return
    if as_json:
        print(json.dumps(manifest, indent=2, ensure_ascii=False))
    elif manifest.get("stage") == dag.final_step().name:  # the run's result: its page
        print(art.read_text("report.md"))
    else:
        print(_summary(art.uri, manifest))


def _run_artifacts(root: str) -> list[tuple]:
    """(artifact, manifest) of everything `run --out root` lays out under `root`: single steps at its top, each
    fan-out's items in the folder of its step (the plan's locations, `dag.artifact_folders`)."""
    found = []
    for folder in dag.artifact_folders(dag.Layout(root)):
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
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):  # names (classes, teachers) as text
        shown = [v for i, v in enumerate(value) if len(", ".join(value[:i + 1])) <= 200] or value[:1]
        return ", ".join(shown) + (f", ... ({len(value)} in all)" if len(shown) < len(value) else "")
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 100 else f"{len(value)} {'values' if isinstance(value, list) else 'entries'}"


def _summary(uri: str, manifest: dict) -> str:
    """An artifact's identity, then its metrics (single values first), files and inputs, one per line."""
    # anything but the files table may be altered by hand: shown as it is, never trusted to have its type
    metrics = manifest.get("metrics", {})
    metrics = metrics if isinstance(metrics, dict) else {"metrics": metrics}
    single = sorted(k for k, v in metrics.items() if not isinstance(v, (list, dict)))
    elapsed = manifest.get("elapsed_s", 0)
    elapsed = f"{elapsed:.1f}" if type(elapsed) in (int, float) else _metric("elapsed_s", elapsed)
    lines = [f"{manifest.get('stage', '?')} artifact {uri}",
             f"  {'fingerprint':<16} {manifest.get('fingerprint')} (seed {manifest.get('seed')})",
             f"  {'made':<16} {manifest.get('created_at', '?')} by infer-distill {manifest.get('infer_distill_version', '?')}, "
             f"in {elapsed} s"]
    lines += [f"  {k:<16} {_metric(k, metrics[k])}" for k in single + sorted(set(metrics) - set(single))]
    lines += [f"  {'file':<16} {name} ({entry.get('bytes', 0):,} bytes)" for name, entry in sorted(manifest.get("files", {}).items())]
    inputs = manifest.get("inputs", {})
    for name, value in (inputs if isinstance(inputs, dict) else {"": inputs}).items():
        values = value if isinstance(value, list) else [value]
        lines.append(f"  {'input ' + str(name):<16} {values[0] if values else '(none)'}"
                     + (f" and {len(values) - 1} more" if len(values) > 1 else ""))
    lines.append(f"The whole manifest (settings, checksums, every value): infer-distill show {uri} --json")
    return "\n".join(lines)


def print_plan(cfg: Config, items_dir: str | None) -> None:
    """The steps this config runs, with every fan-out item; --items-dir also writes the items as JSON."""
    num_classes = KNOWN_NUM_CLASSES.get(cfg.dataset.name)
    if num_classes is not None:
        cfg.check_budget(num_classes)
    if items_dir:
        try:
            Path(items_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file (or device) of that name, or a folder that cannot be made
            what = e.strerror
            with contextlib.suppress(OSError):  # what is there already, if anything can be said of it
                what = file_kind(os.stat(items_dir).st_mode) if isinstance(e, FileExistsError) else what
            raise ConfigError(f"--items-dir {items_dir}: cannot make that folder ({what}): give a folder path") from None
    here = {"cpu": "on the CPU", "cuda": "on the GPU", "auto": "on a GPU when one is visible, else on the CPU"}[cfg.device]
    table = Table(title="INFER plan", caption=f"infer-distill run computes every step in one process, {here} "
                                              f"(device: {cfg.device}). Pod on a cluster: what the Kubeflow and Argo "
                                              "renderings request for the step (no GPU when compiled with --gpus 0).")
    for col in ("step", "after", "runs", "pod on a cluster", "items"):
        table.add_column(col)
    for step in dag.PLAN:
        after, pod = ", ".join(dag.depends(step)), "GPU" if step.gpu else "CPU"
        if not step.runs(cfg):
            table.add_row(step.name, after, "0", pod, f"not run: INFER's own step, and methods={cfg.methods} has no infer")
        elif step.over is None:
            table.add_row(step.name, after, "1", pod, "")
        elif step.over.source == "config" or num_classes is not None:
            items = step.over.items(cfg, num_classes)
            table.add_row(step.name, after, str(len(items)), pod, "; ".join(step.over.label(i) for i in items))
        else:
            table.add_row(step.name, after, "?", pod, f"decided by {step.over.source} (number of classes)")
    progress_console().print(table)
    if items_dir:
        for name, items in dag.fanout_items(cfg).items():
            (Path(items_dir) / f"{name}.json").write_text(json.dumps(items))
        for step in dag.PLAN:  # whether each conditional step runs, for engines that skip one at run time (Argo's when)
            if step.when:
                (Path(items_dir) / dag.runs_file(step)).write_text("true" if step.runs(cfg) else "false")


def print_threads() -> None:
    from infer_distill.runtime.threads import configure_cpu_threads

    threads, why = configure_cpu_threads()
    console.print(f"CPU threads: {threads} ({why}); artifacts are byte-identical across runs at the same count")


def print_workers(cfg: Config, root: str, jobs: int | str, devices: tuple[str, ...]) -> Workers:
    """Decide (with --jobs auto) and print how `run` spreads the plan over processes and torch threads.

    With a number of jobs given, each worker gets an equal share of the usable cores (or OMP_NUM_THREADS); with
    auto, `runtime.threads.choose_workers` decides from the cores, their load and the plan's width."""
    from infer_distill.engines.runner import num_classes_of
    from infer_distill.runtime.threads import Workers, busy_fraction, choose_workers, usable_cpus

    cores = usable_cpus()
    omp = os.environ.get("OMP_NUM_THREADS", "")
    omp_threads = int(omp) if omp.strip().isdigit() and int(omp) > 0 else None
    if jobs == "auto":
        num_classes = KNOWN_NUM_CLASSES.get(cfg.dataset.name)
        if num_classes is None:
            try:
                num_classes = num_classes_of(dag.Layout(root).data)
            except ArtifactError:
                num_classes = None  # no data artifact yet: the shards count as one item
        gpus = len(devices) or (1 if cfg.resolve_device() == "cuda" else 0)
        workers = choose_workers(cores, dag.parallel_width(cfg, num_classes), None if gpus or omp_threads else busy_fraction(),
                                 gpus, omp_threads)
    else:
        workers = Workers(int(jobs), omp_threads or max(1, cores // max(1, int(jobs))), "as --jobs asks")
    if workers.jobs == 1 and omp_threads is None:
        import torch

        torch.set_num_threads(workers.threads)
    plural = "es" if workers.jobs > 1 else ""
    console.print(f"Workers: {workers.jobs} process{plural} x {workers.threads} CPU thread{'s' if workers.threads > 1 else ''} "
                  f"({workers.why}); choose with --jobs N and OMP_NUM_THREADS. Artifacts are byte-identical across runs "
                  "at the same thread count")
    return workers


def print_configs() -> None:
    """The configs shipped with the package, each with the first sentence of its comment."""
    shipped = packaged_configs()
    width = max(map(len, shipped))
    for name, path in shipped.items():
        print(f"{name:<{width}}  {config_description(path)}")


def export_set(args: argparse.Namespace) -> None:
    from infer_distill.outputs.export import export

    out = export(args.uri, args.format, args.out, include_test=args.include_test)
    console.print(f"✓ exported {args.uri} as {args.format} to {out} (see {out / 'DATASHEET.md'})")
