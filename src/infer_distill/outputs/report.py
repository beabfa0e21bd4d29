"""The report: report.json (machine-readable), report.md (tables), report.html, and the terminal summary.

Headline accuracy is the FINAL-epoch top-1 (mean and std over seeds); best-over-epochs (what
the paper and its code report) is shown beside it, labelled as such. Torch-free: the plots are
outputs.plots.
"""
from __future__ import annotations

import base64
import html as html_lib
import json
import statistics
from collections import defaultdict

from rich.table import Table

from infer_distill.dag.metrics import ReportMetrics
from infer_distill.dag.steps import STAGES
from infer_distill.runtime.progress import console


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(teachers: list[dict], budget: dict | None, students: list[dict], timings: dict[str, float],
              baselines: list[dict] | None = None) -> dict:
    """report.json: per-run rows, per-(arch, label mode) and per-(arch, baseline) aggregates over seeds,
    and the lift of every INFER student over every baseline of the same architecture."""
    baselines = baselines or []
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for s in students:
        groups[(s["arch"], s["label_mode"])].append(s)
    aggregates = [{"arch": arch, "label_mode": mode, **_aggregate(rows)} for (arch, mode), rows in sorted(groups.items())]
    by_baseline: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for b in baselines:
        by_baseline[(b["arch"], b["baseline"])].append(b)
    baseline_summary = [{"arch": arch, "baseline": name, "description": rows[0]["description"], "epochs": rows[0]["epochs"],
                         "steps": rows[0]["steps"], "num_instances": rows[0]["num_instances"],
                         "stored_bytes": rows[0]["stored_bytes"], **_aggregate(rows)}
                        for (arch, name), rows in sorted(by_baseline.items())]
    lift = []
    for (arch, mode), rows in sorted(groups.items()):
        for (b_arch, name), b_rows in sorted(by_baseline.items()):
            if b_arch != arch:
                continue
            ours, theirs = {r["seed"]: r["final_acc"] for r in rows}, {r["seed"]: r["final_acc"] for r in b_rows}
            seeds = sorted(set(ours) & set(theirs))
            if not seeds:
                continue
            m, s = mean_std([ours[k] - theirs[k] for k in seeds])
            lift.append({"arch": arch, "label_mode": mode, "baseline": name, "seeds": seeds, "lift_mean": m, "lift_std": s,
                         "infer_stored_bytes": budget["stored_bytes"], "baseline_stored_bytes": b_rows[0]["stored_bytes"]})
    return {"students": students, "student_summary": aggregates, "baselines": baselines, "baseline_summary": baseline_summary,
            "lift": lift, "teachers": teachers, "budget": budget, "timings_s": {k: round(v, 3) for k, v in timings.items()}}


def method_summary(runs: list[dict], full_data: list[dict]) -> list[dict]:
    """The method table: per (architecture, protocol, method) the soft- and hard-label scores over seeds, the
    improvement over random at the same protocol and score (DD-Ranking's IOR: paired by seed, points of accuracy as
    a fraction) and the hard-label recovery (HLR: the full real training set's hard-label accuracy minus the set's).

    `runs`: one row per trained student {method, score, protocol, arch, seed, final_acc, steps, num_instances,
    stored_bytes}; `full_data`: {arch, final_acc} of the full-data hard-label references.
    """
    cells: dict[tuple[str, str, str, str], dict[int, dict]] = defaultdict(dict)
    for r in runs:
        cells[(r["arch"], r["protocol"], r["method"], r["score"])][r["seed"]] = r
    full = {f["arch"]: f["final_acc"] for f in full_data}

    def paired(a: dict[int, dict], b: dict[int, dict]) -> dict | None:
        seeds = sorted(set(a) & set(b))
        if not seeds:
            return None
        m, s = mean_std([a[k]["final_acc"] - b[k]["final_acc"] for k in seeds])
        return {"mean": m, "std": s, "seeds": seeds}

    table = []
    for arch, protocol, method in sorted({k[:3] for k in cells}, key=lambda k: (k[0], k[1], METHOD_ORDER.get(k[2], 99), k[2])):
        row: dict = {"arch": arch, "protocol": protocol, "method": method}
        for score in ("soft", "hard"):
            mine = cells.get((arch, protocol, method, score))
            if not mine:
                row[score] = row[f"ior_{score}"] = None
                continue
            any_run = next(iter(mine.values()))
            row.update({k: any_run[k] for k in ("stored_bytes", "num_instances")})
            row[f"steps_{score}"] = any_run["steps"]
            accs = [r["final_acc"] for r in mine.values()]
            m, s = mean_std(accs)
            row[score] = {"mean": m, "std": s, "seeds": sorted(mine)}
            random_runs = cells.get((arch, protocol, "random", score))
            row[f"ior_{score}"] = paired(mine, random_runs) if random_runs and method != "random" else None
        hard = cells.get((arch, protocol, method, "hard"))
        if hard and arch in full:
            m, s = mean_std([full[arch] - r["final_acc"] for r in hard.values()])
            row["hlr"] = {"mean": m, "std": s, "seeds": sorted(hard), "full_data_acc": full[arch]}
        else:
            row["hlr"] = None
        table.append(row)
    return table


METHOD_ORDER = {"infer": 0, "random": 1, "herding": 2, "rded": 3, "sre2l": 4}


def _aggregate(rows: list[dict]) -> dict:
    fm, fs = mean_std([r["final_acc"] for r in rows])
    bm, bs = mean_std([r["best_acc"] for r in rows])
    return {"seeds": [r["seed"] for r in rows], "final_acc_mean": fm, "final_acc_std": fs, "best_acc_mean": bm, "best_acc_std": bs}


def pct(mean: float, std: float | None, sign: bool = False) -> str:
    """Percent points, with the std over seeds; std None (one seed, no spread) gives the value alone."""
    value = f"{100 * mean:{'+' if sign else ''}.2f}"
    return value if std is None else f"{value} ± {100 * std:.2f}"


def _spread(std: float, seeds: list[int]) -> float | None:
    """The std to show: none for a single seed, whose 0.00 would read as a measured spread."""
    return std if len(seeds) > 1 else None


def score_cell(x: dict | None, sign: bool = False, missing: str = "—") -> str:
    """A method-table score {mean, std, seeds} as percent points, `missing` where there is none."""
    return missing if x is None else pct(x["mean"], _spread(x["std"], x["seeds"]), sign=sign)


def headline(report: dict) -> str:
    """What INFER bought and at what fraction of the data: the report's first sentence (without INFER: why, and the
    best peer)."""
    b = report["budget"]
    if b is None:
        return _peers_headline(report)
    sentences = [f"INFER's distilled set stores {b['stored_bytes']:,} bytes, {100 * b['compression_ratio']:.1f} % of the "
                 f"{b['train_bytes']:,} bytes of training images."]
    for a in report["student_summary"]:
        seeds = len(a["seeds"])
        text = (f"On it, {a['arch']} ({a['label_mode']} labels) reaches {pct(a['final_acc_mean'], _spread(a['final_acc_std'], a['seeds']))} % "
                f"final-epoch test accuracy ({seeds} seed{'s' if seeds > 1 else ''})")
        lifts = [f"{pct(x['lift_mean'], _spread(x['lift_std'], x['seeds']), sign=True)} points over "
                 + next(s["description"] for s in report["baseline_summary"] if s["baseline"] == x["baseline"] and s["arch"] == x["arch"])
                 + f" ({x['baseline_stored_bytes']:,} bytes)"
                 for x in report["lift"] if x["arch"] == a["arch"] and x["label_mode"] == a["label_mode"]]
        sentences.append(text + (": " + "; ".join(lifts) if lifts else "") + ".")
    return " ".join(sentences)


def _peers_headline(report: dict) -> str:
    """The headline of a run without INFER's steps: why INFER is absent, and the best peer by each score."""
    why = report.get("infer_not_run", {})
    sentences = [f"INFER is not part of this run (methods: {', '.join(why.get('methods', []))})"
                 + (f"; at budget.ipc={why['ipc']} it would have K = {why['num_subsets']} subsets, and its smallest feasible "
                    f"ipc here is {why['smallest_feasible_ipc']}." if why.get("num_subsets") == 0 else ".")]
    for score in ("soft", "hard"):
        rows = [m for m in report.get("methods") or [] if m.get(score)]
        if rows:
            best = max(rows, key=lambda m: m[score]["mean"])
            sentences.append(f"Best {score}-label score: {best['method']} ({best['arch']}, equal {best['protocol']}), "
                             f"{pct(best[score]['mean'], _spread(best[score]['std'], best[score]['seeds']))} % "
                             f"with {best['stored_bytes']:,} stored bytes.")
    return " ".join(sentences)


# Captions of the report's figures, by file name.
CAPTIONS = {
    "student_curves.png": "Test accuracy over the epochs of every student: INFER's solid, the baselines' dashed, the peer "
                          "methods' dash-dotted, the full-data references dotted.",
    "feature_similarity.png": "Cosine similarity of the first teacher's penultimate features between pairs of instances "
                              "of each method's set: of the same class (left) and of different classes (right).",
    "ufc_examples.png": "Subset 0 of the distilled set: each column a class, the natural image on top and below it the "
                        "same image plus the UFC of each teacher, clipped to [0, 1].",
}


def result_tables(report: dict) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, note, header, rows) of every table, shared by the Markdown and the HTML report."""
    b = report["budget"]
    def accs(a: dict) -> list[str]:
        return [pct(a["final_acc_mean"], _spread(a["final_acc_std"], a["seeds"])),
                pct(a["best_acc_mean"], _spread(a["best_acc_std"], a["seeds"]))]

    students = [[a["arch"], f"INFER, {a['label_mode']} labels", str(len(a["seeds"])), f"{b['stored_bytes']:,}", *accs(a)]
                for a in report["student_summary"]]
    students += [[a["arch"], a["description"], str(len(a["seeds"])), f"{a['stored_bytes']:,}", *accs(a)]
                 for a in report["baseline_summary"]]
    tables = [("Students (top-1 % on the real test set)",
               "Headline: final-epoch accuracy, mean ± std over seeds (the value alone for one seed). Best-over-epochs "
               "(what the paper reports) beside it.",
               ["student", "trained on", "seeds", "stored bytes", "final acc", "best acc (secondary)"], students)] if students else []
    if report["lift"]:
        rows = [[x["arch"], x["label_mode"], next(a["description"] for a in report["baseline_summary"] if a["baseline"] == x["baseline"]),
                 str(len(x["seeds"])), pct(x["lift_mean"], _spread(x["lift_std"], x["seeds"]), sign=True),
                 f"{x['infer_stored_bytes']:,} vs {x['baseline_stored_bytes']:,}"] for x in report["lift"]]
        tables.append(("What the distillation bought",
                       "Lift = INFER's final accuracy minus the baseline's, paired by seed (mean ± std, points). The baseline "
                       "trains the same student with the same teachers' labels and the same recipe on random real images: "
                       "ipc per class, more where the distilled set stores more bytes.",
                       ["student", "INFER labels", "baseline", "seeds", "lift (points)", "bytes: INFER vs baseline"], rows))
    if report.get("methods"):
        score = score_cell
        rows = [[m["arch"], m["protocol"], m["method"], f"{m['stored_bytes']:,}", str(m["num_instances"]),
                 " / ".join(str(m[f"steps_{s}"]) for s in ("soft", "hard") if m.get(f"steps_{s}") is not None),
                 score(m["soft"]), score(m["hard"]), score(m["ior_soft"], True), score(m["ior_hard"], True), score(m["hlr"])]
                for m in report["methods"]]
        tables.append(("Methods at equal bytes",
                       "Final-epoch top-1 %, mean ± std over seeds. Soft: MixUp + KL on the set's static labels; hard: "
                       "cross-entropy on the instances' classes. Protocol: the students' epochs, or INFER's static student's "
                       "optimiser steps. IOR: minus random at the same protocol and score, paired by seed (points). HLR: the "
                       "full real training set with hard labels minus the set's hard-label score (points; — without it).",
                       ["student", "protocol", "method", "stored bytes", "instances", "steps (soft / hard)", "soft",
                        "hard", "IOR soft", "IOR hard", "HLR"], rows))
    if report.get("feature_similarity"):
        def cos(x: dict) -> str:
            return "—" if x["mean"] is None else f"{x['mean']:.3f} / {x['median']:.3f}"

        tables.append(("Teacher feature similarity",
                       "Cosine similarity of the first teacher's penultimate features between two instances of a set, mean / "
                       "median over all pairs: of the same class, and of different classes.",
                       ["method", "same class", "different classes"],
                       [[name, cos(f["same_class"]), cos(f["cross_class"])]
                        for name, f in sorted(report["feature_similarity"].items(), key=lambda kv: METHOD_ORDER.get(kv[0], 99))]))
    tables.append(("Teachers", "", ["teacher", "test acc"], [[t["arch"], f"{100 * t['test_acc']:.2f}"] for t in report["teachers"]]))
    order = {stage: i for i, stage in enumerate(STAGES)}
    timings = sorted(report["timings_s"].items(), key=lambda kv: order.get(kv[0], len(order)))
    tables.append(("Time per stage (seconds)", "", ["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in timings]))
    return tables


def distilled_set_lines(report: dict) -> list[str]:
    b = report["budget"]
    if b is None:
        return []
    return [f"ipc budget {b['ipc']}: K = {b['num_subsets']} natural subsets x {b['num_classes']} classes, "
            f"{b['num_ufcs']} UFCs, {b['num_instances']} training instances",
            f"stored: {b['stored_bytes']:,} bytes (natural uint8, UFCs {b['ufc_dtype']}, static labels {b['label_dtype']}) "
            f"vs {b['train_bytes']:,} bytes of uint8 training images: compression ratio {b['compression_ratio']:.6f}"]


def markdown(report: dict) -> str:
    lines = ["# INFER distillation report", "", headline(report), ""]
    for title, note, header, rows in result_tables(report):
        lines += [f"## {title}", ""] + ([note, ""] if note else [])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
    if report["budget"] is not None:
        lines += ["## Distilled set", ""] + [f"- {line}" for line in distilled_set_lines(report)]
    figures = [*(["student_curves.png"] if report.get("students") or report.get("baselines") or report.get("methods") else []),
               *(["ufc_examples.png"] if report["budget"] is not None else []),
               *(["feature_similarity.png"] if report.get("feature_similarity") else [])]
    for name in figures:
        lines += ["", f"![{CAPTIONS[name]}]({name})", "", f"*{CAPTIONS[name]}*"]
    return "\n".join(lines + [""])


def json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def html(report: dict, pngs: dict[str, bytes]) -> str:
    """One self-contained page: the headline, the accuracy curves, the tables, then the distilled set and its
    example images (each figure captioned); what the Kubeflow UI shows."""
    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html_lib.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html_lib.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    sections = "".join(f"<h2>{html_lib.escape(title)}</h2>" + (f"<p>{html_lib.escape(note)}</p>" if note else "") + table(header, rows)
                       for title, note, header, rows in result_tables(report))
    distilled = "".join(f"<li>{html_lib.escape(line)}</li>" for line in distilled_set_lines(report))

    def figure(name: str) -> str:
        caption = html_lib.escape(CAPTIONS.get(name, name))
        return (f'<figure><img alt="{caption}" src="data:image/png;base64,{base64.b64encode(pngs[name]).decode()}">'
                f"<figcaption>{caption}</figcaption></figure>") if name in pngs else ""

    others = "".join(figure(name) for name in pngs if name not in CAPTIONS)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>INFER report</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}figure{margin:1em 0}img{max-width:100%;height:auto}"
        "figcaption{font-size:90%;color:#444}.headline{font-size:115%}</style>"
        "</head><body><h1>INFER distillation report</h1>"
        f"<p class='headline'>{html_lib.escape(headline(report))}</p>" + figure("student_curves.png")
        + sections + (f"<h2>Distilled set</h2><ul>{distilled}</ul>" if distilled else "") + figure("ufc_examples.png")
        + figure("feature_similarity.png") + others + "</body></html>"
    )


def print_summary(report: dict) -> None:
    r = ReportMetrics.from_manifest(report).report
    out = console()
    for title, _note, header, rows in result_tables(r):
        table = Table(title=title)
        for col in header:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        out.print(table)
    for line in distilled_set_lines(r):
        out.print(line)
