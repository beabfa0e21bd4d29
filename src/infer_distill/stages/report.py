"""The report stage: every upstream manifest summarised into report.json, report.md,
report.html and plots.
"""
from __future__ import annotations

import math

from infer_distill import dag
from infer_distill.config.schema import Config
from infer_distill.dag.metrics import (
    BaselineMetrics,
    DataMetrics,
    DistilledMetrics,
    FullDataMetrics,
    MethodScoreMetrics,
    MethodSetMetrics,
    ReportMetrics,
    StageMetrics,
    StudentMetrics,
    TeacherMetrics,
)
from infer_distill.errors import StageError
from infer_distill.outputs import plots
from infer_distill.outputs import report as report_files
from infer_distill.outputs.instances import distilled_instances, instance_origins, read_distilled
from infer_distill.stages.artifacts import _begin, _write, load_input
from infer_distill.stages.inputs import load_teachers
from infer_distill.stages.peers import set_similarity
from infer_distill.storage import open_artifact
from infer_distill.storage.artifact import Artifact


def report(cfg: Config, data: str, teachers: list[str], ufc: list[str], distilled: str | None, students: list[str], out: str,
           baselines: list[str] | None = None, method_scores: list[str] | None = None, full_data: list[str] | None = None,
           methods: list[str] | None = None) -> dict:
    """report.json, report.md and plots from every upstream manifest (timings summed per stage); without INFER's
    steps (`methods` without infer: `distilled` None, no UFCs and students) the peers' method table alone."""
    if cfg.runs_infer() and distilled is None:
        raise StageError("report needs --distilled, INFER's soft-label artifact (methods has infer)")
    output = _begin(out, {"data": data, "teachers": teachers,
                          **({"ufc": ufc or [], "distilled": distilled, "students": students or [], "baselines": baselines or []}
                             if distilled is not None else {}),
                          **({"method_scores": method_scores} if method_scores else {}),
                          **({"full_data": full_data} if full_data else {}),
                          **({"methods": methods} if methods else {})})
    _, dm = load_input(data, cfg, "prepare-data")
    teacher_manifests = [load_input(u, cfg, "train-teacher", arch=a)[1] for a, u in zip(cfg.teachers.archs, teachers)]
    ufc_manifests = [open_artifact(u).read_manifest() for u in ufc or []]
    dist_art, dist_manifest = load_input(distilled, cfg, "soft-label") if distilled is not None else (None, None)

    def fanned_out(uris: list[str] | None, kind: type[StageMetrics], keys: tuple[str, ...]) -> list[dict]:
        """The manifests at `uris`, each checked against this config for the item its metrics name."""
        manifests = []
        for uri in uris or []:
            m = kind.from_manifest(open_artifact(uri).read_manifest(), uri)
            manifests.append(load_input(uri, cfg, kind.kind, **{k: getattr(m, k) for k in keys})[1])
        return manifests

    student_manifests = fanned_out(students, StudentMetrics, ("arch", "seed", "label_mode"))
    baseline_manifests = fanned_out(baselines, BaselineMetrics, ("arch", "seed", "baseline"))
    score_manifests = fanned_out(method_scores, MethodScoreMetrics, ("method", "score", "protocol", "arch", "seed"))
    full_manifests = fanned_out(full_data, FullDataMetrics, ("arch",))

    # each step's time, summed over its items: by the producer of each input read, in plan order
    read = {"data": [dm], "teachers": teacher_manifests, "ufc": ufc_manifests, "distilled": [dist_manifest] if dist_manifest else [],
            "students": student_manifests, "baselines": baseline_manifests, "method_scores": score_manifests,
            "full_data": full_manifests}
    timings = {dag.PRODUCER[name].name: sum(m["elapsed_s"] for m in manifests) for name, manifests in read.items() if manifests}
    student_runs = [StudentMetrics.from_manifest(m) for m in student_manifests]
    baseline_runs = [BaselineMetrics.from_manifest(m) for m in baseline_manifests]
    infer_set = DistilledMetrics.from_manifest(dist_manifest) if dist_manifest else None
    rows = [{"arch": s.arch, "seed": s.seed, "label_mode": s.label_mode, "final_acc": s.final_acc, "best_acc": s.best_acc,
             "best_epoch": s.best_epoch, "curve": s.curve} for s in student_runs]
    baseline_rows = [{"arch": b.arch, "seed": b.seed, "baseline": b.baseline, "description": b.description, "final_acc": b.final_acc,
                      "best_acc": b.best_acc, "best_epoch": b.best_epoch, "epochs": b.epochs, "steps": b.steps,
                      "num_instances": b.num_instances, "stored_bytes": b.stored_bytes, "curve": b.curve} for b in baseline_runs]
    teacher_rows = [{"arch": t.arch, "test_acc": t.test_acc} for t in map(TeacherMetrics.from_manifest, teacher_manifests)]
    summary = report_files.summarise(teacher_rows, infer_set.budget if infer_set else None, rows, timings, baseline_rows)
    data_metrics = DataMetrics.from_manifest(dm)
    if not cfg.runs_infer():
        C = data_metrics.num_classes
        summary["infer_not_run"] = {"methods": cfg.methods, "ipc": cfg.budget.ipc, "num_subsets": cfg.num_subsets(C),
                                    "smallest_feasible_ipc": cfg.smallest_feasible_ipc(C)}
    if score_manifests or full_manifests:
        summary["methods"] = report_files.method_summary(
            _method_rows(cfg, infer_set, student_runs, [MethodScoreMetrics.from_manifest(m) for m in score_manifests]),
            [{"arch": f.arch, "final_acc": f.final_acc} for f in map(FullDataMetrics.from_manifest, full_manifests)])
        summary["feature_similarity"] = _similarities(cfg, teachers, dm, dist_art, methods or [])
    method_curves = [{"method": m.method, "score": m.score, "protocol": m.protocol, "arch": m.arch, "seed": m.seed, "curve": m.curve}
                     for m in map(MethodScoreMetrics.from_manifest, score_manifests)]
    full_curves = [{"arch": f.arch, "curve": f.curve} for f in map(FullDataMetrics.from_manifest, full_manifests)]
    pngs = ({"student_curves.png": plots.student_curves_png(rows, baseline_rows, method_curves, full_curves)}
            if rows or baseline_rows or method_curves or full_curves else {})
    if dist_art is not None:
        t = read_distilled(dist_art)
        pngs["ufc_examples.png"] = plots.ufc_examples_png(t["natural"], t["ufc"], data_metrics.classes, cfg.teachers.archs,
                                                        cfg.synthesis.classes_per_ufc)
    if "feature_similarity" in summary:
        pngs["feature_similarity.png"] = plots.similarity_png(summary["feature_similarity"])
    files = {"report.json": report_files.json_bytes(summary), "report.md": report_files.markdown(summary).encode(),
             "report.html": report_files.html(summary, pngs).encode(), **pngs}
    return _write(output, cfg, files, ReportMetrics(report=summary))


def _similarities(cfg: Config, teachers: list[str], dm: dict, dist_art: Artifact | None, methods: list[str]) -> dict:
    """{method: feature_similarity} on the first teacher: INFER's computed here (when it ran), each peer's as its
    distill-method artifact recorded it."""
    out = {}
    if dist_art is not None:
        t = read_distilled(dist_art)
        K, C, M = t["natural"].shape[0], t["natural"].shape[1], t["ufc"].shape[1]
        teacher = load_teachers(cfg, teachers, dm, "cpu")[0]
        out["infer"] = set_similarity(teacher, distilled_instances(t["natural"], t["ufc"], cfg.synthesis.classes_per_ufc),
                                      instance_origins(K, M, C)["label"], "cpu", cfg.teachers.batch_size)
    for uri in methods:
        method = open_artifact(uri).read_manifest().get("settings", {}).get("method")
        out[method] = MethodSetMetrics.from_manifest(load_input(uri, cfg, "distill-method", method=method)[1], uri).feature_similarity
    return out


def _method_rows(cfg: Config, infer_set: DistilledMetrics | None, students: list[StudentMetrics],
                 scores: list[MethodScoreMetrics]) -> list[dict]:
    """Every method student as a row of the method table: the evaluate-method runs, and INFER's static-label students
    as its soft-label score (under every protocol: INFER's steps are its epochs)."""
    rows = [{"method": m.method, "score": m.score, "protocol": m.protocol, "arch": m.arch, "seed": m.seed, "final_acc": m.final_acc,
             "steps": m.steps, "num_instances": m.num_instances, "stored_bytes": m.stored_bytes} for m in scores]
    if infer_set is None:
        return rows
    b = infer_set.budget
    for s in students:
        if s.label_mode != "static":
            continue
        steps = s.epochs * math.ceil(b["num_instances"] / cfg.students.batch_size)
        rows += [{"method": "infer", "score": "soft", "protocol": p, "arch": s.arch, "seed": s.seed, "final_acc": s.final_acc,
                  "steps": steps, "num_instances": b["num_instances"], "stored_bytes": b["stored_bytes"]} for p in cfg.students.protocols]
    return rows
