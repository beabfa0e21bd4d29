"""The report: report.json (machine-readable), report.md (tables) and PNG plots.

Headline accuracy is the FINAL-epoch top-1 (mean and std over seeds); best-over-epochs (what
the paper and its code report) is shown beside it, labelled as such.
"""
from __future__ import annotations

import base64
import html as html_lib
import io
import json
import statistics
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .synthesis import class_batch_index, compose  # noqa: E402


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(teachers: list[dict], budget: dict, students: list[dict], timings: dict[str, float]) -> dict:
    """report.json: per-run rows plus per-(arch, label mode) aggregates over seeds."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for s in students:
        groups[(s["arch"], s["label_mode"])].append(s)
    aggregates = []
    for (arch, mode), rows in sorted(groups.items()):
        fm, fs = _mean_std([r["final_acc"] for r in rows])
        bm, bs = _mean_std([r["best_acc"] for r in rows])
        aggregates.append({"arch": arch, "label_mode": mode, "seeds": [r["seed"] for r in rows],
                           "final_acc_mean": fm, "final_acc_std": fs, "best_acc_mean": bm, "best_acc_std": bs})
    return {"students": students, "student_summary": aggregates, "teachers": teachers, "budget": budget,
            "timings_s": {k: round(v, 3) for k, v in timings.items()}}


def markdown(report: dict) -> str:
    b = report["budget"]
    lines = [
        "# INFER distillation report", "",
        "## Students (top-1 on the real test set)", "",
        "Headline: final-epoch accuracy, mean ± std over seeds. Best-over-epochs (what the paper reports) beside it.", "",
        "| student | labels | seeds | final acc | best acc (secondary) |", "|---|---|---|---|---|",
    ]
    for a in report["student_summary"]:
        lines.append(f"| {a['arch']} | {a['label_mode']} | {len(a['seeds'])} | {100 * a['final_acc_mean']:.2f} ± {100 * a['final_acc_std']:.2f} "
                     f"| {100 * a['best_acc_mean']:.2f} ± {100 * a['best_acc_std']:.2f} |")
    lines += ["", "## Teachers", "", "| teacher | test acc |", "|---|---|"]
    lines += [f"| {t['arch']} | {100 * t['test_acc']:.2f} |" for t in report["teachers"]]
    lines += [
        "", "## Distilled set", "",
        f"- ipc budget {b['ipc']}: K = {b['num_subsets']} natural subsets x {b['num_classes']} classes, "
        f"{b['num_ufcs']} UFCs, {b['num_instances']} training instances",
        f"- stored: {b['stored_bytes']:,} bytes (natural uint8 + UFCs float32 + static labels float32) "
        f"vs {b['train_bytes']:,} bytes of uint8 training images: compression ratio {b['compression_ratio']:.6f}",
        "", "## Time per stage (seconds)", "", "| stage | seconds |", "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in report["timings_s"].items()]
    lines += ["", "![natural vs natural+UFC](ufc_examples.png)", "", "![student accuracy](student_curves.png)", ""]
    return "\n".join(lines)


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed): every plot of the report and the benchmarks."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def ufc_examples_png(natural: torch.Tensor, ufc: torch.Tensor, classes: list[str], teachers: list[str],
                     classes_per_ufc: int | None, subset: int = 0, max_classes: int = 10) -> bytes:
    """Rows: classes of one subset; columns: natural image, then natural + UFC of each teacher."""
    nat = natural[subset].float() / 255.0                                   # [C, ch, H, W]
    composed = compose(nat.unsqueeze(0), ufc[subset], class_batch_index(len(classes), classes_per_ufc))  # [M, C, ...]
    n = min(max_classes, len(classes))
    cols = 1 + len(teachers)
    fig, axes = plt.subplots(n, cols, figsize=(1.4 * cols, 1.4 * n), squeeze=False)
    for r in range(n):
        for c in range(cols):
            img = nat[r] if c == 0 else composed[c - 1, r]
            ax = axes[r][c]
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("natural" if c == 0 else f"+UFC {teachers[c - 1]}", fontsize=6)
            if c == 0:
                ax.set_ylabel(classes[r], fontsize=6)
    return figure_png(fig)


def student_curves_png(students: list[dict]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for s in students:
        epochs, accs = zip(*s["curve"])
        ax.plot(epochs, [100 * a for a in accs], label=f"{s['arch']} {s['label_mode']} seed {s['seed']}", lw=1)
    ax.set_xlabel("epoch"), ax.set_ylabel("test top-1 (%)"), ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return figure_png(fig)


def json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def html(report: dict, pngs: dict[str, bytes]) -> str:
    """One self-contained page (tables + embedded plots): what the Kubeflow UI shows."""
    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html_lib.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html_lib.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    b = report["budget"]
    students = [[a["arch"], a["label_mode"], len(a["seeds"]), f"{100 * a['final_acc_mean']:.2f} ± {100 * a['final_acc_std']:.2f}",
                 f"{100 * a['best_acc_mean']:.2f} ± {100 * a['best_acc_std']:.2f}"] for a in report["student_summary"]]
    teachers = [[t["arch"], f"{100 * t['test_acc']:.2f}"] for t in report["teachers"]]
    images = "".join(f'<p><img alt="{html_lib.escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}"></p>'
                     for name, data in pngs.items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>INFER report</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}</style>"
        "</head><body><h1>INFER distillation report</h1>"
        "<h2>Students (top-1 on the real test set)</h2><p>Headline: final-epoch accuracy, mean ± std over seeds; "
        "best-over-epochs beside it.</p>"
        + table(["student", "labels", "seeds", "final acc", "best acc (secondary)"], students)
        + "<h2>Teachers</h2>" + table(["teacher", "test acc"], teachers)
        + f"<h2>Distilled set</h2><p>K = {b['num_subsets']} subsets, {b['num_ufcs']} UFCs, {b['num_instances']} instances; "
        f"{b['stored_bytes']:,} bytes stored vs {b['train_bytes']:,} (compression ratio {b['compression_ratio']:.6f}).</p>"
        + images + "</body></html>"
    )
