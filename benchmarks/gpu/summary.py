"""summary.md and student_curves.png from results.json: the tables a person reads."""
from __future__ import annotations

METHOD_NAMES = {"infer_static": "INFER (static labels)", "infer_dynamic": "INFER+Dyn (dynamic labels)",
                "random_soft": "random real + soft labels, same epochs", "random_soft_steps": "random real + soft labels, same steps"}
STAGE_ORDER = ("prepare-data", "train-teacher", "select-subsets", "synthesize-ufc", "soft-label", "evaluate-student",
               "evaluate-baseline", "report")


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(map(str, r)) + " |" for r in rows), ""]


def markdown(r: dict) -> str:
    m = r.get("machine", {})
    where = m.get("gpu") or m.get("cpu") or "?"
    lines = ["# INFER GPU benchmark", "",
             f"- command: `{r['command']}`",
             f"- machine: {where}, {m.get('device', '?')}; torch {m.get('torch', '?')}"
             + (f", CUDA {m['cuda']}" if m.get("cuda") else ""),
             f"- wall time {r['times']['wall_s']:.0f}s" + (f" of a {r['options']['budget_s']:g}s budget" if r["options"].get("budget_s") else
                                                          " (no budget: the full protocol)"),
             f"- finished everything planned: {'yes' if r['complete'] else 'no'}" + (f"; error: {r['error']}" if r.get("error") else ""),
             f"- results: results.json (every number below and more); created {r['created_at']}, updated {r['updated_at']}", ""]
    if r["options"].get("toy"):
        lines += ["**--toy: a test of the whole path at toy size; its numbers mean nothing.**", ""]
    plan = r.get("plan")
    if plan:
        recipe = next(iter(r.get("teacher_recipe", {}).values()), {})
        e = plan["teacher_epochs"]
        lines += [f"Teachers: {e} epoch{'s' if e != 1 else ''} each" + (f" ({recipe['text']})." if recipe else "."), ""]
    for name, p in r["profiles"].items():
        lines += [f"## {name}", "", f"Status: {p['status']}" + (" (the full protocol)" if p.get("full_protocol") else "")
                  + (f"; K = {p['K']} subsets x M = {p['M']} teachers = {p['num_ufcs']} UFCs" if "K" in p else ""), ""]
        acc = p.get("accuracy")
        if acc:
            rows = []
            for key, a in acc.items():
                paper = a.get("paper_best_acc")
                rows.append([METHOD_NAMES.get(key, key), len(a["seeds"]), _pct(a["final_acc_mean"], a["final_acc_std"]),
                             _pct(a["best_acc_mean"], a["best_acc_std"]), "-" if paper is None else f"{100 * paper:.1f}",
                             f"{a['stored_bytes']:,}"])
            lines += ["Top-1 test accuracy (%), mean ± std over seeds. Headline: the final epoch; best-over-epochs (what the paper "
                      "reports) beside it, over the evaluations made.", ""]
            lines += _table(["method", "seeds", "final epoch", "best epoch", "paper (best)", "stored bytes"], rows)
            if p.get("lift"):
                lines += _table(["INFER labels", "baseline", "seeds", "lift, final epoch (points)"],
                                [[x["label_mode"], x["baseline"], len(x["seeds"]),
                                  f"{100 * x['lift_mean']:+.2f} ± {100 * x['lift_std']:.2f}"]
                                 for x in p["lift"]])
        else:
            lines += ["No report: no student finished.", ""]
        if p.get("teachers"):
            lines += _table(["teacher", "epochs", "test acc (%)"],
                            [[t["arch"], t.get("epochs", "-"), _pct(t.get("test_acc"))] for t in p["teachers"]])
        sp = p.get("speed")
        if sp and "skipped" not in sp:
            g, o = sp["grouped"], sp["one_at_a_time"]
            lines += [f"Synthesis speed ({sp['K']} x {sp['M']} = {sp['ufcs']} UFCs, {sp['iterations_timed']} iterations each way; "
                      f"{sp['how']}):", ""]
            lines += _table(["way", "seconds", "at the full count", "UFC-iterations/s"],
                            [["grouped (all UFCs in one call)", f"{g['seconds']:.2f}", f"{g['seconds_at_full_iterations']:.1f}",
                              f"{g['ufc_iterations_per_s']:.0f}"],
                             [f"one at a time ({o['sample_size']} of {o['of_ufcs']} timed, extrapolated)", f"{o['seconds']:.2f}",
                              f"{o['seconds_at_full_iterations']:.1f}", f"{o['ufc_iterations_per_s']:.0f}"]])
            lines += [f"Speed-up: **{sp['speedup']:.1f}x** (target {sp['target_speedup']:.0f}x at CIFAR-10 ipc 50: "
                      f"{'met' if sp['meets_target'] else 'not met'} here).", ""]
        elif sp:
            lines += [f"Synthesis speed: skipped ({sp['skipped']}).", ""]
        if p.get("unreported_runs"):
            lines += ["Runs that finished after the last report (not in the tables): "
                      + ", ".join(f"{u['label']} {_pct(u['final_acc'])}" for u in p["unreported_runs"]), ""]
    lines += ["## Time per stage", ""]
    stages = r["times"]["stages"]
    rows = [[s, stages[s]["runs"], stages[s]["skipped"], f"{stages[s]['seconds']:.1f}"]
            for s in sorted(stages, key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER))]
    rows += [[f"({p})", "", "", f"{v:.1f}"] for p, v in r["times"]["phases"].items()]
    rows.append(["whole run", "", "", f"{r['times']['wall_s']:.1f}"])
    lines += _table(["stage", "runs", "reused", "seconds"], rows)
    pva = r["times"].get("predicted_vs_actual") or []
    if pva:
        lines += ["Predicted (from the calibration) against actual seconds:", ""]
        lines += _table(["scope", "part", "steps", "predicted", "actual"],
                        [[x["scope"], x["part"], x["steps"] if x["steps"] is not None else "", f"{x['predicted_s']:.1f}",
                          f"{x['actual_s']:.1f}"] for x in pva])
    lines += ["## Deviations from the config files", ""]
    if r["deviations"]:
        lines += ["`config`: configs/<profile>.yaml; `protocol`: the benchmark's full protocol (the file with the benchmark's "
                  "own keys); `used`: what ran.", ""]
        lines += _table(["profile", "key", "config", "protocol", "used", "why"],
                        [[d["profile"], d["key"], _short(d["config"]), _short(d.get("protocol", d["config"])), _short(d["used"]),
                          d["why"]] for d in r["deviations"]])
    else:
        lines += ["None.", ""]
    if r.get("skipped"):
        lines += ["Skipped at run time:", ""] + [f"- {s['profile']}: {s['walk']}" + (f" ({s['step']})" if s.get("step") else "")
                                                 + f": {s['predicted_s']}s predicted, {s['left_s']}s left" for s in r["skipped"]] + [""]
    if any(p.get("accuracy") for p in r["profiles"].values()):
        lines += ["![student test accuracy](student_curves.png)", ""]
    return "\n".join(lines)


def _short(v: object) -> str:
    text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def curves_png(r: dict) -> bytes | None:
    """Test accuracy over epochs, one panel per profile: INFER solid, baselines dashed, the paper's best dotted."""
    profiles = [(n, p) for n, p in r["profiles"].items() if p.get("accuracy")]
    if not profiles:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from infer_distill.report import figure_png

    fig, axes = plt.subplots(1, len(profiles), figsize=(6 * len(profiles), 3.8), squeeze=False)
    for ax, (name, p) in zip(axes[0], profiles):
        for i, (key, a) in enumerate(p["accuracy"].items()):
            colour = f"C{i}"
            for j, run in enumerate(a["runs"]):
                epochs, accs = zip(*run["curve"])
                ax.plot(epochs, [100 * x for x in accs], "-" if key.startswith("infer") else "--", color=colour, lw=1, marker=".", ms=3,
                        label=METHOD_NAMES.get(key, key) if j == 0 else None)
            if a.get("paper_best_acc") is not None:
                ax.axhline(100 * a["paper_best_acc"], color=colour, ls=":", lw=1, label=f"paper, {a['label']} (best)")
        ax.set_title(name), ax.set_xlabel("epoch"), ax.set_ylabel("test top-1 (%)"), ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return figure_png(fig)
