"""BENCHMARKS.md's measured sections, rendered from benchmarks/results/<profile>.json.

    python -m benchmarks.report            # rewrites the part of BENCHMARKS.md between the markers

The text above the markers (what the numbers say) is written by people; everything between
them, and the figures benchmarks/results/<profile>.png, is generated here from the results, so
no number in those sections is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import ingest, scale  # noqa: E402
from benchmarks.run import ESTIMATE_SCHEMA, RESULTS, SCHEMA, load_profile  # noqa: E402
from infer_distill.outputs.plots import figure_png, similarity_png  # noqa: E402
from infer_distill.outputs.report import METHOD_ORDER, mean_std, pct, score_cell

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin (python -m benchmarks.report) -->", "<!-- results:end -->"
BASELINE_TITLES = {
    "random_soft": "random real, same labels, same epochs",
    "random_soft_steps": "random real, same labels, same optimiser steps",
}


# ----------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------


def pm(xs: list[float], sign: bool = False) -> str:
    """Accuracies (fractions) as 'mean ± std' in percent points, as the run reports write them."""
    return pct(*mean_std(xs), sign=sign) if xs else "-"


def by_seed(rows: list[dict], key: str = "final_acc") -> dict[int, float]:
    return {r["seed"]: r[key] for r in rows}


def lift(ours: dict[int, float], theirs: dict[int, float]) -> list[float]:
    """Differences paired by seed (the same seed draws the same random images and batches)."""
    return [ours[s] - theirs[s] for s in sorted(set(ours) & set(theirs))]


def infer_steps(report: dict, label_mode: str, config: dict) -> int:
    epochs = config["students"]["epochs"] if label_mode == "static" else (config["students"].get("epochs_dynamic") or config["students"]["epochs"])
    return epochs * math.ceil(report["budget"]["num_instances"] / config["students"]["batch_size"])


def _baselines_from(result: dict, variant: str) -> str:
    entry = result["variants"][variant]
    if "baselines_from" in entry:
        return entry["baselines_from"]
    try:  # results written before the key existed: the profile says
        return load_profile(result["profile"]).variants[variant].baselines_from
    except Exception:  # noqa: BLE001 - a profile renamed since: no comparison
        return ""


def rows_of(result: dict) -> list[dict]:
    """One row per variant and label mode: INFER's numbers and its baselines' (its own, or baselines_from's)."""
    rows = []
    for variant, entry in result["variants"].items():
        report = entry.get("report")
        if not report:
            continue
        source = _baselines_from(result, variant)
        base_report = result["variants"].get(source, {}).get("report") if source else report
        baselines = {}
        for b in (base_report or {}).get("baselines", []):
            baselines.setdefault(b["baseline"], []).append(b)
        for mode in sorted({s["label_mode"] for s in report["students"]}):
            students = [s for s in report["students"] if s["label_mode"] == mode]
            rows.append({"variant": variant, "title": entry["title"], "question": entry.get("question", ""), "label_mode": mode,
                         "students": students, "baselines": baselines, "baselines_from": source, "report": report,
                         "steps": infer_steps(report, mode, entry["config"]), "teachers": report["teachers"]})
    return rows


# ----------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------


def _mean_curve(runs: list[dict]) -> tuple[list[int], list[float]]:
    points: dict[int, list[float]] = {}
    for r in runs:
        for epoch, acc in r["curve"]:
            points.setdefault(epoch, []).append(100 * acc)
    epochs = sorted(points)
    return epochs, [sum(points[e]) / len(points[e]) for e in epochs]


def curves_png(result: dict, variants: list[str] | None = None) -> bytes:
    """Test accuracy over epochs, mean over seeds: INFER solid, its baselines dashed, one panel per variant."""
    rows = [r for r in rows_of(result) if (variants is None or r["variant"] in variants) and not r["baselines_from"]]
    cols = min(3, len(rows)) or 1
    nrows = math.ceil(len(rows) / cols) or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False, sharey=True)
    for ax, row in zip(axes.flat, rows):
        ax.plot(*_mean_curve(row["students"]), "-o", ms=3, label=f"INFER ({row['label_mode']})")
        for name, runs in sorted(row["baselines"].items()):
            ax.plot(*_mean_curve(runs), "--o", ms=3, label=BASELINE_TITLES.get(name, name))
        ax.set_title(row["title"], fontsize=9)
        ax.set_xlabel("epoch"), ax.grid(alpha=0.3)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    axes[0][0].set_ylabel("test top-1 (%), mean of seeds")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


# ----------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------


def _machine(m: dict) -> str:
    if m.get("gpu"):
        return f"{m['gpu']} ({m.get('gpu_memory_gib')} GiB), CUDA {m.get('cuda')}, driver {m.get('driver')}, {m.get('cpu_count')} CPU cores"
    return f"{m.get('cpu')}, {m.get('cpu_count')} cores"


def _rate(result: dict) -> str:
    """Steps run (not skipped) per minute of the invocation's wall time: --jobs 1 against --jobs N on one machine."""
    # this invocation's steps (a kept variant's ran in an earlier one; older results name the shared data and teachers "pool")
    this_run = set(result.get("variants_run") or result["variants"]) | {"pool"}
    ran = len({s.get("uri", (s["variant"], s["stage"], s["label"])) for s in result.get("steps", [])
               if not s["skipped"] and s["variant"] in this_run})
    return f", {ran} steps run, {60 * ran / result['wall_s']:.1f} per minute" if ran and result.get("wall_s") else ""


def _source(result: dict) -> str:
    """The commit the results came from; where variants came from several (run at different times), each one's."""
    def commit(src: dict | None) -> str:
        return f"{src['commit'][:10]}{' with uncommitted changes' if src.get('dirty') else ''}" if src and src.get("commit") else ""

    by_variant = {v: commit(e.get("source") or result.get("source")) for v, e in result["variants"].items()}
    if len(set(by_variant.values())) > 1:
        return " Code: " + "; ".join(f"{v} from commit {c}" for v, c in by_variant.items() if c) + "."
    return f" Code: commit {commit(result.get('source'))}." if commit(result.get("source")) else ""


def _stage_times(result: dict) -> list[tuple[str, float, int]]:
    totals: dict[str, list[float]] = {}
    for s in result.get("steps", []):
        if not s["skipped"]:
            totals.setdefault(s["stage"], []).append(s["seconds"])
    return [(stage, sum(t), len(t)) for stage, t in totals.items()]


def method_rows(result: dict) -> list[dict]:
    """The method table of every variant (report.json's `methods`; a variant of INFER alone gives its soft score), in
    the profile's order. A variant without the full-data reference takes HLR's reference from one that has it for
    the same student (the same dataset and recipe, whatever the ipc), and says so."""
    references = {}
    for variant, entry in result["variants"].items():
        for m in (entry.get("report") or {}).get("methods") or []:
            if m.get("hlr"):
                references.setdefault(m["arch"], (m["hlr"]["full_data_acc"], variant))
    rows = []
    for variant, entry in result["variants"].items():
        report = entry.get("report")
        if not report:
            continue
        table = report.get("methods") or [
            {"arch": a["arch"], "protocol": "epochs", "method": "infer", "stored_bytes": report["budget"]["stored_bytes"],
             "num_instances": report["budget"]["num_instances"], "steps_soft": None, "hard": None, "ior_soft": None, "ior_hard": None,
             "hlr": None, "soft": {"mean": a["final_acc_mean"], "std": a["final_acc_std"], "seeds": a["seeds"]}}
            for a in report["student_summary"] if a["label_mode"] == "static"]
        for m in table:
            hlr, via = m.get("hlr"), ""
            if hlr is None and m.get("hard") and m["arch"] in references:
                full, via = references[m["arch"]]
                hlr = {"mean": full - m["hard"]["mean"], "std": m["hard"]["std"], "seeds": m["hard"]["seeds"], "full_data_acc": full}
            rows.append({**m, "variant": variant, "title": entry["title"], "ipc": entry["config"]["budget"]["ipc"],
                         "hlr": hlr, "hlr_from": via if via and via != variant else "", "infer_not_run": report.get("infer_not_run")})
    return rows


def _score(x: dict | None, sign: bool = False) -> str:
    return score_cell(x, sign, missing="-")


def method_lines(result: dict, rel: str) -> list[str]:
    """The method table, INFER's feasibility where a variant leaves it out, and the feature similarities."""
    rows = method_rows(result)
    if not rows:
        return []
    lines = ["### Methods at equal bytes: final-epoch test accuracy (%), mean ± std over seeds", "",
             "Soft: MixUp + KL on the set's static labels (the teacher's); hard: cross-entropy on the instances' classes. "
             "IOR: minus random at the same protocol and score, paired by seed (points). HLR: the full training set's "
             "hard-label accuracy minus the set's (points; lower is better).", "",
             "| variant | ipc | protocol | method | stored bytes | instances | steps (soft / hard) | soft | hard | IOR soft "
             "| IOR hard | HLR |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in rows:
        steps = " / ".join(str(m[f"steps_{s}"]) for s in ("soft", "hard") if m.get(f"steps_{s}") is not None) or "-"
        hlr = _score(m["hlr"]) + (f" (reference of {m['hlr_from']})" if m["hlr_from"] else "")
        lines.append(f"| {m['variant']} | {m['ipc']} | {m['protocol']} | {m['method']} | {m['stored_bytes']:,} | {m['num_instances']} | "
                     f"{steps} | {_score(m['soft'])} | {_score(m['hard'])} | {_score(m['ior_soft'], True)} | "
                     f"{_score(m['ior_hard'], True)} | {hlr} |")
    absent = {m["variant"]: m["infer_not_run"] for m in rows if m["infer_not_run"]}
    lines += [""] + [f"- {v}: INFER is not run (K = {why['num_subsets']} at ipc {why['ipc']}); its smallest feasible ipc here is "
                     f"{why['smallest_feasible_ipc']}." for v, why in absent.items()]
    references = {(m["arch"], m["hlr"]["full_data_acc"]) for m in rows if m["hlr"]}
    lines += [f"- HLR's reference: {arch} trained on the full training set with hard labels, {100 * acc:.2f} %." for arch, acc in sorted(references)]
    sims = [(v, e["report"]["feature_similarity"]) for v, e in result["variants"].items()
            if (e.get("report") or {}).get("feature_similarity")]
    if sims:
        names = sorted({name for _, f in sims for name in f}, key=lambda n: METHOD_ORDER.get(n, 99))
        lines += ["", "Cosine similarity of the teacher's penultimate features between two instances of a set, mean over all "
                      "pairs (same class / different classes):", "",
                  "| variant | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for v, f in sims:
            def cos(x: dict) -> str:  # (no pair of the same class in a set of one image per class)
                return "-" if x["mean"] is None else f"{x['mean']:.3f}"

            cells = [f"{cos(f[n]['same_class'])} / {cos(f[n]['cross_class'])}" if n in f else "-" for n in names]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines += ["", f"![feature similarity of each method's instances, {sims[0][0]}]({rel}/{result['profile']}-similarity.png)"]
    return lines + [""]


def portable(command: str) -> str:
    """The command without the run's own paths or its time limit: what another machine types."""
    return re.sub(r"\s--(results|root|datasets|deadline-s)\s+\S+", "", command)


def estimate_lines(est: dict) -> list[str]:
    """The GPU time a command was estimated at (benchmarks.estimate): per stage and in all, and where the figures come from."""
    if est.get("error"):
        return [f"No GPU-time estimate: {est['error']}", ""]
    gains = est["wall_s_by_gain"]
    lines = [f"Estimated from the per-step costs measured on {est['measured_on']} (`{est['measured_in']}`), each item scaled by "
             "what its cost grows with (`benchmarks/estimate.py`):", ""] + [f"- {h}" for h in est["how"][1:]]
    lines += ["", f"Stages on {est['jobs']} workers sharing the GPU (work: one item after another; span: when it would run "
                  "if sharing cost nothing):", "", "| stage | items | work (s) | span with free sharing (s) |", "|---|---|---|---|"]
    lines += [f"| {stage} | {st['items']} | {st['work_s']:.1f} | {st['start_s']:.1f} to {st['end_s']:.1f} |"
              for stage, st in est["stages"].items()]
    walls = ", ".join(f"gain {g}: {w:.0f} s" for g, w in gains.items())
    g = est["break_even_gain"]
    fit = ("" if est.get("target_s") is None else
           f" The target, {est['target_s']:.0f} s, is met from a gain of **{g:.2f}**." if g is not None else
           f" The target, {est['target_s']:.0f} s, is not met even with free sharing.")
    lines += ["", f"Wall time by sharing gain g (with k items running, each at min(1, g/k) of its speed alone; g = 1: no "
                  f"gain, the sum of the work; g = {est['jobs']}: free sharing): {walls}.{fit} The gain was never "
                  f"measured; the run's GPU busy fraction per stage shows it. Not included: {est['not_included']}.", ""]
    return lines


def pending_section(est: dict, rel: str) -> list[str]:
    return [f"## {est['title']}: {', '.join(est['variants'])} on one GPU, the run is pending", "",
            f"`{rel}/{est['profile']}-estimate.json`, written {est['created_at']}. Command: `{portable(est['command'])}`.", ""
            ] + estimate_lines(est)


def paper_lines(result: dict) -> list[str]:
    """Final- and best-epoch top-1 of INFER, INFER+Dyn and both baselines beside the paper's figures, and the teachers."""
    names = {"infer": "INFER (static labels)", "infer_dynamic": "INFER+Dyn (dynamic labels)",
             "random_soft": "random real, same labels, same epochs", "random_soft_steps": "random real, same labels, same steps"}
    lines = []
    for variant, entry in result["variants"].items():
        summary = entry.get("accuracy")
        if not summary or not entry.get("paper"):
            continue
        lines += ["", f"### {variant} against the paper: top-1 (%), mean ± std over seeds", "",
                  "| run | student | seeds | final epoch | best epoch | paper (best epoch) |", "|---|---|---|---|---|---|"]
        for s in sorted(summary.values(), key=lambda s: list(names).index(s["run"]) if s["run"] in names else len(names)):
            spread = len(s["seeds"]) > 1
            paper = s["paper_best_percent"]
            lines.append(f"| {names.get(s['run'], s['run'])} | {s['arch']} | {len(s['seeds'])} | "
                         f"{pct(s['final_mean'], s['final_std'] if spread else None)} | {pct(s['best_mean'], s['best_std'] if spread else None)} | "
                         f"{'-' if paper is None else f'{paper:.1f}'} |")
        teachers = (entry.get("report") or {}).get("teachers", [])
        under = [t["arch"] for t in teachers if t["test_acc"] < 0.9]
        lines += ["", "Teachers' test accuracy: " + ", ".join(f"{t['arch']} {100 * t['test_acc']:.1f} %" for t in teachers)
                  + (f"; under 90 %: {', '.join(under)}." if under else "; every one at 90 % or more.")]
    return lines


def section(result: dict, rel: str) -> list[str]:
    profile = result["profile"]
    command = portable(result["command"])
    one_row = re.sub(r"\s--variants\s+\S+", "", command)
    reproduce = re.sub(r"\s--(fresh|reuse-teachers)", "", one_row)
    lines = [f"## {result['title']}", "",
             f"`{rel}/{profile}.json`, written {result['created_at']}; ran on {_machine(result['machine'])}, "
             f"{result['jobs']} worker processes, torch {result['machine'].get('torch')}; "
             f"wall time of the invocation {result['wall_s'] / 60:.1f} min{_rate(result)}. Command: `{command}`.{_source(result)}", ""]
    if result.get("unfinished"):
        lines += [f"Unfinished in that invocation: {', '.join(result['unfinished'])}.", ""]
    lines += ["Protocol:", ""] + [f"- {n}" for n in result["notes"]] + [""]

    if any((e.get("report") or {}).get("methods") for e in result["variants"].values()):
        return lines + method_lines(result, rel) + _stage_lines(result) + [
            "", "Reproduce one row: `" + reproduce + " --variants VARIANT` (add `--fresh` to start from nothing).", ""]
    rows = rows_of(result)
    lines += ["### Final-epoch test accuracy (%), mean ± std over seeds", "",
              "Lift: INFER minus the baseline, paired by seed. Bytes: what each training set stores (images, UFCs with "
              "their scale and offset, soft labels).", "",
              "| variant | M | K | instances | steps | stored bytes | INFER | random real, same epochs | random real, same steps "
              "| lift, same epochs | lift, same steps | teachers' test accuracy |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["report"]["budget"]
        ours = by_seed(r["students"])
        cells = []
        for name in ("random_soft", "random_soft_steps"):
            runs = r["baselines"].get(name, [])
            cells.append((pm([x["final_acc"] for x in runs]) + (f" ({runs[0]['stored_bytes']:,} B, {runs[0]['steps']} steps)" if runs else ""),
                          pm(lift(ours, by_seed(runs)), sign=True) if runs else "-"))
        via = f" (baselines of {r['baselines_from']})" if r["baselines_from"] else ""
        mode = "" if r["label_mode"] == "static" or r["label_mode"] in r["title"] else f", {r['label_mode']} labels"
        teachers = ", ".join(f"{t['arch']} {100 * t['test_acc']:.1f}" for t in r["teachers"])
        lines.append(f"| {r['variant']}: {r['title']}{mode}{via} | {b['num_teachers']} | {b['num_subsets']} | {b['num_instances']} | "
                     f"{r['steps']} | {b['stored_bytes']:,} | **{pm([s['final_acc'] for s in r['students']])}** | "
                     f"{cells[0][0]} | {cells[1][0]} | {cells[0][1]} | {cells[1][1]} | {teachers} |")
    papers = {r["variant"]: result["variants"][r["variant"]].get("paper") or {} for r in rows}
    paper_col = any(papers.values())
    lines += ["", "Best over the evaluated epochs (what the paper reports), same runs:", "",
              "| variant | INFER best | random real, same epochs, best | random real, same steps, best |"
              + (" paper (best) |" if paper_col else ""), "|---|---|---|---|" + ("---|" if paper_col else "")]
    for r in rows:
        best = [pm([x["best_acc"] for x in r["baselines"].get(n, [])]) for n in ("random_soft", "random_soft_steps")]
        paper = papers[r["variant"]].get(r["label_mode"])
        lines.append(f"| {r['variant']}{'' if r['label_mode'] == 'static' else ' (' + r['label_mode'] + ')'} | "
                     f"{pm([s['best_acc'] for s in r['students']])} | {best[0]} | {best[1]} |"
                     + (f" {'-' if paper is None else f'{paper:.1f}'} |" if paper_col else ""))
    questions = [r for r in rows if r["question"]]
    if questions:
        lines += ["", "What each ablation asks:", ""] + [f"- {r['variant']}: {r['question']}" for r in questions]
    lines += ["", f"![test accuracy over epochs]({rel}/{profile}.png)"] + paper_lines(result) + _stage_lines(result)
    if result.get("estimate"):
        lines += ["", f"GPU time: {result['wall_s']:.0f} s of wall time; estimated before the run:", ""] + estimate_lines(result["estimate"])
    lines += _speed_lines(result)
    lines += ["", "Reproduce one row: `" + reproduce + " --variants VARIANT` (add `--fresh` to start from nothing).", ""]
    return lines


def _stage_lines(result: dict) -> list[str]:
    busy = result.get("gpu_utilisation_by_stage") or {}
    lines = ["", "Time spent per stage (seconds of work summed over worker processes; skipped steps not counted):", "",
             "| stage | steps run | seconds |" + (" mean GPU utilisation while running |" if busy else ""),
             "|---|---|---|" + ("---|" if busy else "")]
    spans = result.get("stages") or {}
    if spans:  # results that record each stage's wall span
        lines[-2:] = [lines[-2].replace(" seconds |", " seconds | wall span (s) |"), lines[-1] + "---|"]
    return lines + [f"| {stage} | {n} | {sec:.0f} |" + (f" {spans[stage]['span_s']:.0f} |" if spans else "")
                    + (f" {f'{busy[stage]:.0f} %' if stage in busy else '-'} |" if busy else "")
                    for stage, sec, n in _stage_times(result)]


def _speed_lines(result: dict) -> list[str]:
    lines = []
    for speed in result.get("speed", []):
        one = speed["one_at_a_time"]
        how = f"{one['timed']} of {one['of']} timed, the rest extrapolated per teacher" if one["extrapolated"] else "all timed"
        lines += ["", f"Synthesis speed, {speed['variant']} ({speed['K']} subsets x {speed['M']} teachers = {speed['ufcs']} UFCs, "
                      f"{speed['iterations']} iterations each way, {speed['device']}, written {speed['created_at']}):", "",
                  "| way | calls | seconds |", "|---|---|---|",
                  f"| grouped (the pipeline's) | 1 | {speed['grouped']['seconds']:.2f} |",
                  f"| one UFC at a time (the official loop; {how}) | {one['of']} | {one['seconds']:.2f} |",
                  "", f"Speed-up: **{speed['speedup']:.1f}x**."]
    return lines


def render(results_dir: Path, rel: str = "benchmarks/results") -> str:
    results = []
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        if result.get("schema") == SCHEMA:
            result["speed"] = [json.loads(p.read_text()) for p in sorted(results_dir.glob(f"{result['profile']}-*-speed.json"))]
            results.append(result)
            if rows_of(result):
                (results_dir / f"{result['profile']}.png").write_bytes(curves_png(result))
            sims = [e["report"]["feature_similarity"] for e in result["variants"].values() if (e.get("report") or {}).get("feature_similarity")]
            if sims:  # the first variant's (the profile's main budget)
                (results_dir / f"{result['profile']}-similarity.png").write_bytes(similarity_png(sims[0]))
    order = {"cifar10-cpu": 0}
    results.sort(key=lambda r: (order.get(r["profile"], 1), r["profile"]))
    lines = [line for r in results for line in section(r, rel)]
    ran = {portable(r["estimate"]["command"]) for r in results if r.get("estimate") and not r.get("unfinished")}
    for path in sorted(results_dir.glob("*-estimate.json")):
        est = json.loads(path.read_text())
        if est.get("schema") == ESTIMATE_SCHEMA and portable(est["command"]) not in ran:
            lines += pending_section(est, rel)
    for path in sorted(results_dir.glob("scale*.json")):  # benchmarks.scale: each stage's memory and bytes against the dataset
        result = json.loads(path.read_text())
        if result.get("schema") == scale.SCHEMA:
            lines += scale.section(result, rel)
    for path in sorted(results_dir.glob("ingest*.json")):  # benchmarks.ingest: listing and decoding against the files
        result = json.loads(path.read_text())
        if result.get("schema") == ingest.SCHEMA:
            lines += ingest.section(result, rel)
    return "\n".join(lines)


def update(markdown_path: Path, generated: str) -> None:
    text = markdown_path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{markdown_path} has no generated region: add the lines\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    markdown_path.write_text(f"{head}{BEGIN}\n\n{generated}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    update(args.out, render(args.results))
    print(f"updated {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
