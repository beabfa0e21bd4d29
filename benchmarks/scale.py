"""Scale: each stage's peak memory, CPU time and S3 bytes against the size of the dataset.

    python -m benchmarks.scale                         # the default grid: benchmarks/results/scale.json
    python -m benchmarks.scale --quick                 # two tiny points: benchmarks/results/scale-quick.json
    python -m benchmarks.scale --points 10:5:32,100:50:32:10
    python -m benchmarks.scale --imported --points ...  # the shipped ImageNet configs' shape: imported teacher, INFER alone

A point is a generated ImageFolder: C classes, n training images per class (JPEG) and a fixed
number of test images per class (PNG), all `size` px squares (each class a seeded colour and
rectangle, each image its own noise and offset, so teachers learn something), and the budget's
images per class (`ipc`, default 2). At each point a local S3 server (moto, server mode) holds
the run root, and every step of the plan runs as its own process, one item after another, by
the same command a pod runs: `infer-distill stage <name> --config point.yaml --root s3://...`
with the item's flags, wrapped by benchmarks/scale_meter.py, which measures that process from
inside it: peak resident memory (`ru_maxrss`), CPU seconds (user + system), wall seconds, and the
bytes of every S3 object body it received and sent, per key. The steps and their items come from
the plan alone: `dag.PLAN`, `infer-distill plan --items-dir` (the config's fan-outs and which
conditional steps run) and the file a step writes a later fan-out's items to (select-subsets'
shards); nothing here knows an artifact's file names.

Per stage (all its items at a point): the largest peak RSS of one item (what one pod needs) and
the sums of CPU seconds, wall seconds and bytes (what the run spends). Per stage and image size,
a least-squares fit of peak RSS and of bytes read against the images in the dataset (N, train
and test), the classes (C) and the budget's images (B = ipc x C), with the regressors the points
vary; the fits of bytes read extrapolated (labelled as such) to ImageNet-1k and to a 10 M-image,
10,000-class set, at this benchmark's config (one tiny teacher, a few iterations and epochs), not
at the shipped ImageNet configs. Memory is not extrapolated (it follows batches, which fill and then
stop growing): each stage's peak is compared between points that differ in one setting alone.
`python -m benchmarks.report` renders the results into BENCHMARKS.md's section "Scale".
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.common import REPO, invocation, machine_info, moto_s3_server, scratch_folder, source_info
from benchmarks.run import RESULTS, atomic_write, log

SCHEMA = "infer-distill-scale/1"
BUCKET = "scale"
TEST_PER_CLASS = 5
REGRESSORS = ("images", "classes", "budget_images")  # N, C, B = ipc x C: the fit's variables, in the order they enter
REGRESSOR_TITLES = {"images": "N", "classes": "C", "budget_images": "B"}
# The sets the fits are extrapolated to (images: train + test).
TARGETS = [
    {"name": "ImageNet-1k, ipc 10", "images": 1_281_167 + 50_000, "classes": 1000, "ipc": 10, "size": 224},
    {"name": "ImageNet-1k, ipc 50", "images": 1_281_167 + 50_000, "classes": 1000, "ipc": 50, "size": 224},
    {"name": "10 M images, 10,000 classes, ipc 10", "images": 10_000_000, "classes": 10_000, "ipc": 10, "size": 224},
    {"name": "10 M images, 10,000 classes, ipc 50", "images": 10_000_000, "classes": 10_000, "ipc": 50, "size": 224},
]


@dataclass(frozen=True)
class Point:
    classes: int
    per_class: int       # training images per class
    size: int            # px, square
    ipc: int = 2         # budget.ipc

    @property
    def name(self) -> str:
        return f"c{self.classes}-n{self.per_class}-{self.size}px" + (f"-ipc{self.ipc}" if self.ipc != 2 else "")

    @property
    def images(self) -> int:
        return self.classes * (self.per_class + TEST_PER_CLASS)

    @property
    def budget_images(self) -> int:
        return self.ipc * self.classes


# Growth in each direction: at 224 px (the size of the sets the fits are extrapolated to), C = 10 and 100, 5 and 50
# images per class, ipc 2 and 10 (so the budget's images are not the classes); at 32 px the same up to C = 1000. In
# the order that makes an interrupted grid most useful: 224 px first, the largest point last.
DEFAULT_POINTS = (
    Point(10, 5, 224), Point(10, 50, 224), Point(100, 5, 224), Point(10, 50, 224, ipc=10),
    Point(10, 5, 32), Point(100, 5, 32), Point(100, 50, 32), Point(1000, 5, 32), Point(100, 50, 32, ipc=10),
    Point(10, 50, 32), Point(1000, 50, 32),
)
QUICK_POINTS = (Point(4, 5, 16), Point(8, 5, 16))


def parse_points(text: str) -> tuple[Point, ...]:
    """'C:n:size[:ipc],...' -> points."""
    points = []
    for part in text.split(","):
        try:
            fields = [int(x) for x in part.split(":")]
            point = Point(*fields) if 3 <= len(fields) <= 4 else None
        except ValueError:
            point = None
        if point is None or min(asdict(point).values()) < 1:
            raise SystemExit(f"--points: {part!r} is not CLASSES:PER_CLASS:SIZE[:IPC] with positive integers, e.g. 10:5:32")
        points.append(point)
    return tuple(points)


# ----------------------------------------------------------------------------------------
# The dataset and the config of a point
# ----------------------------------------------------------------------------------------


def make_dataset(root: Path, point: Point, seed: int = 0) -> Path:
    """<root>/train/<class>/<i>.jpg (per_class each) and <root>/test/<class>/<i>.png (TEST_PER_CLASS each)."""
    from PIL import Image

    s = point.size
    for c in range(point.classes):
        rng = np.random.default_rng([seed, c])
        colour = rng.integers(0, 256, 3)
        x0, y0 = rng.integers(0, s // 2, 2)
        w, h = rng.integers(s // 4, s // 2 + 1, 2)
        for split, count, ext in (("train", point.per_class, "jpg"), ("test", TEST_PER_CLASS, "png")):
            folder = root / split / f"class{c:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = rng.normal(128, 40, (s, s, 3))
                dx, dy = rng.integers(-s // 8, s // 8 + 1, 2)
                img[max(0, y0 + dy):y0 + dy + h, max(0, x0 + dx):x0 + dx + w] = colour
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.{ext}")
    return root


PEERS = ("random", "herding", "rded", "sre2l")
TEACHER = "convnet_d2_w32"
QUICK_PEERS = ("random",)  # every step still runs, with one item per fan-out


def point_config(point: Point, dataset: Path, peers: tuple[str, ...] = PEERS, imported: Path | None = None) -> dict:
    """Every step present, each as small as it runs: one tiny teacher for one epoch, two synthesis iterations, one
    student seed for one epoch, a baseline, the peer methods, the full-data reference.

    With `imported` (a weights file of the teacher), the shape of the shipped ImageNet configs instead: the teacher's
    weights imported, not trained (so no stage reads the training split whole), INFER alone, no full-data reference."""
    if imported is not None:
        cfg = point_config(point, dataset, ())
        cfg["teachers"]["pretrained"] = {TEACHER: str(imported)}
        cfg["students"]["full_data_reference"] = False
        return cfg
    return {
        "dataset": {"name": "imagefolder", "root": str(dataset)},
        "budget": {"ipc": point.ipc},
        # batches of 32: every point's splits fill whole batches, so memory that follows a batch is flat across points
        "teachers": {"archs": [TEACHER], "epochs": 1, "batch_size": 32, "min_accuracy_over_chance": None},
        "synthesis": {"iterations": 2, "classes_per_ufc": 100, "subsets_per_shard": 1, "max_images_per_forward": 100},
        "labels": {"modes": ["static"]},
        "students": {"archs": ["convnet_d2_w32"], "seeds": [0], "epochs": 1, "batch_size": 32, "eval_every": 1,
                     "baselines": ["random_soft"], "scores": ["soft"], "protocols": ["epochs"],
                     "full_data_reference": True, "full_data_epochs": 1},
        "methods": ["infer", *peers],
        "rded": {"candidates": 10},
        "sre2l": {"iterations": 2},
        "device": "cpu",
        "seed": 0,
    }


# ----------------------------------------------------------------------------------------
# A local S3 server
# ----------------------------------------------------------------------------------------


def _client(env: dict[str, str]):
    import boto3

    return boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]
                                 ).client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"])


def empty_prefix(env: dict[str, str], prefix: str) -> None:
    """Delete what this benchmark wrote under its own bucket's `prefix` (the server keeps objects in memory)."""
    client = _client(env)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})


# ----------------------------------------------------------------------------------------
# The steps of a point, each item in its own measured process
# ----------------------------------------------------------------------------------------


def plan_items(cfg_path: Path, items_dir: Path, env: dict[str, str]) -> None:
    """`infer-distill plan --items-dir`: the config's fan-out items and which conditional steps run."""
    subprocess.run([sys.executable, "-m", "infer_distill", "plan", "--config", str(cfg_path), "--items-dir", str(items_dir)],
                   env=env, check=True, capture_output=True, text=True)


def step_items(step, items_dir: Path) -> list[dict] | None:
    """The items of `step` as engines iterate them (one empty item for a single step); None: the config leaves it out."""
    from infer_distill import dag

    runs = items_dir / dag.runs_file(step)
    if step.when and runs.is_file() and runs.read_text().strip() != "true":
        return None
    if step.over is None:
        return [{}]
    items = json.loads((items_dir / f"{step.over.name}.json").read_text())
    return items or None


def measure(args: list[str], env: dict[str, str], out: Path) -> dict:
    """One `infer-distill` command in its own process, measured by benchmarks.scale_meter (which writes `out`)."""
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale_meter", str(out), *args], env=env, cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"`infer-distill {shlex.join(args)}` failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {**json.loads(out.read_text()), "process_wall_s": round(time.perf_counter() - started, 3)}


def teacher_weights(path: Path, point: Point) -> Path:
    """The teacher's weights for the point's classes and size, freshly initialised (seed 0), as a file to import: what
    each stage reads does not depend on what the weights have learnt."""
    from safetensors.torch import save_file

    from infer_distill.models.networks import create_model

    torch.manual_seed(0)
    save_file(create_model(TEACHER, num_classes=point.classes, in_chans=3, image_size=point.size).state_dict(), path)
    return path


def run_point(point: Point, work: Path, env: dict[str, str], jobs: int = 1, peers: tuple[str, ...] = PEERS,
              imported: bool = False) -> dict:
    """Generate the point's dataset and run every item of every step it runs, each in its own measured process: up to
    `jobs` at once, a step's items once every step making its inputs has finished (as a workflow engine would)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from infer_distill import dag
    from infer_distill.engines.stage_command import output_flag

    here = work / point.name
    shutil.rmtree(here, ignore_errors=True)
    t0 = time.perf_counter()
    dataset = make_dataset(here / "dataset", point)
    generate_s = time.perf_counter() - t0
    cfg_path = here / "config.yaml"
    weights = teacher_weights(here / "teacher.safetensors", point) if imported else None
    cfg_path.write_text(yaml.safe_dump(point_config(point, dataset, peers, weights), sort_keys=False))
    items_dir = here / "items"
    plan_items(cfg_path, items_dir, env)
    prefix = f"{point.name}/"
    root = f"s3://{BUCKET}/{point.name}"
    empty_prefix(env, prefix)

    def one(n: int, step: dag.Step, item: dict) -> dict:
        extra = []
        for fanout in dag.fed_fanouts(step):  # a step that decides a later fan-out's items writes them here
            extra += [output_flag(fanout), str(items_dir / f"{fanout.name}.json")]
        args = ["stage", step.name, "--config", str(cfg_path), "--root", root, *dag.cli_args(item), *extra]
        m = measure(args, env, here / f"meter-{n}.json")
        label = step.over.label(_typed(item)) if step.over else ""
        log(f"  {point.name} {step.name} {label}: {m['peak_rss_bytes'] / 2**20:.0f} MB peak, {m['cpu_s']:.1f} CPU s, "
            f"{m['wall_s']:.1f} s, read {_mb(sum(m['s3_read'].values()))}, wrote {_mb(sum(m['s3_written'].values()))}")
        return {"stage": step.name, "label": label, "item": item, **m,
                "s3_read": _relative(m["s3_read"], prefix), "s3_written": _relative(m["s3_written"], prefix)}

    waiting = list(dag.PLAN)
    finished: set[str] = set()
    left: dict[str, int] = {}
    done: list[tuple[int, dict]] = []
    running: dict = {}
    with ThreadPoolExecutor(jobs) as pool:
        while waiting or running:
            for step in [s for s in waiting if all(dag.PRODUCER[i].name in finished for i in s.inputs)]:
                waiting.remove(step)
                step_list = step_items(step, items_dir) or []
                left[step.name] = len(step_list)
                if not step_list:  # left out by the config: its consumers get no such input
                    finished.add(step.name)
                for item in step_list:
                    n = len(done) + len(running)
                    running[pool.submit(one, n, step, item)] = (dag.PLAN.index(step), n, step.name)
            if not running:
                continue
            ready, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in ready:
                order, n, name = running.pop(future)
                done.append(((order, n), future.result()))
                left[name] -= 1
                if not left[name]:
                    finished.add(name)
    items = [it for _, it in sorted(done, key=lambda d: d[0])]
    empty_prefix(env, prefix)
    shutil.rmtree(here, ignore_errors=True)
    return {**asdict(point), "name": point.name, "images": point.images, "budget_images": point.budget_images,
            "train_images": point.classes * point.per_class, "test_images": point.classes * TEST_PER_CLASS,
            "generate_s": round(generate_s, 2), "items": items, "stages": stage_totals(items)}


def _typed(item: dict) -> dict:
    """An item as its label function takes it (subset ids as a list, as the config gives them)."""
    return {k: [int(i) for i in v.split(",")] if k == "subset_ids" else v for k, v in item.items()}


def _relative(by_key: dict[str, int], prefix: str) -> dict[str, int]:
    return {k.removeprefix(prefix): v for k, v in by_key.items()}


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def stage_totals(items: list[dict]) -> dict[str, dict]:
    """Per stage: the largest peak RSS of one item (a pod's memory) and the sums over its items (the run's spend)."""
    out: dict[str, dict] = {}
    for it in items:
        s = out.setdefault(it["stage"], {"items": 0, "peak_rss_bytes": 0, "cpu_s": 0.0, "wall_s": 0.0, "read_bytes": 0,
                                         "written_bytes": 0, "requests": 0, "read_by_file": {}})
        s["items"] += 1
        s["peak_rss_bytes"] = max(s["peak_rss_bytes"], it["peak_rss_bytes"])
        s["cpu_s"] = round(s["cpu_s"] + it["cpu_s"], 3)
        s["wall_s"] = round(s["wall_s"] + it["wall_s"], 3)
        s["read_bytes"] += sum(it["s3_read"].values())
        s["written_bytes"] += sum(it["s3_written"].values())
        s["requests"] += sum(it["s3_requests"].values())
        for key, n in it["s3_read"].items():
            s["read_by_file"][key] = s["read_by_file"].get(key, 0) + n
    return out


# ----------------------------------------------------------------------------------------
# Growth: least squares, and its extrapolation
# ----------------------------------------------------------------------------------------


def fit(xs: list[dict], ys: list[float], regressors: tuple[str, ...] = REGRESSORS) -> dict:
    """y = a + sum_r b_r x_r by least squares over the points `xs` (dicts holding each regressor). A regressor enters
    only where it adds to what the points determine (not constant, not a combination of those before it), so a grid
    that varies one direction gives the slope along it alone. Returns the intercept, the slopes, the largest residual
    and the residual degrees of freedom (0: an exact fit, as many points as parameters)."""
    if len(xs) != len(ys) or not xs:
        raise ValueError("fit needs as many values as points, at least one")
    columns, used = [np.ones(len(xs))], []
    for r in regressors:
        trial = np.column_stack([*columns, [float(x[r]) for x in xs]])
        if np.linalg.matrix_rank(trial) > len(columns):
            columns, used = list(trial.T), [*used, r]
    a = np.column_stack(columns)
    y = np.asarray(ys, dtype=float)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    residual = y - a @ coef
    return {"intercept": float(coef[0]), "slopes": {r: float(c) for r, c in zip(used, coef[1:])},
            "max_abs_residual": float(np.abs(residual).max()), "dof": len(xs) - len(coef)}


def extrapolate(f: dict, target: dict) -> tuple[float, str]:
    """The fit `f` at `target` (a dict holding each regressor), and the arithmetic written out."""
    value = f["intercept"] + sum(b * target[r] for r, b in f["slopes"].items())
    terms = [f"{f['intercept']:.4g}"] + [f"{b:.4g} x {target[r]:,}" for r, b in f["slopes"].items()]
    return value, " + ".join(terms).replace("+ -", "- ")


def one_direction_pairs(points: list[dict]) -> list[tuple[str, dict, dict]]:
    """(label, a, b) for each two points that differ in one of classes, images per class or ipc alone, a the smaller."""
    settings = {"classes": "C", "per_class": "n", "ipc": "ipc"}
    pairs = []
    for i, a in enumerate(points):
        for b in points[i + 1:]:
            differ = [k for k in settings if a[k] != b[k]]
            if len(differ) == 1:
                (k,) = differ
                a_, b_ = (a, b) if a[k] < b[k] else (b, a)
                fixed = ", ".join(f"{settings[o]} {a_[o]}" for o in settings if o != k)
                pairs.append((f"{settings[k]} {a_[k]} to {b_[k]} ({fixed})", a_, b_))
    return pairs


def target_values(target: dict) -> dict:
    return {"images": target["images"], "classes": target["classes"], "budget_images": target["ipc"] * target["classes"]}


def growth(points: list[dict]) -> dict:
    """Per image size and stage: the fits of one pod's peak RSS and of the run's bytes read, and the bytes' extrapolation
    to each target (at the targets' size only)."""
    out: dict[str, dict] = {}
    for size in sorted({p["size"] for p in points}):
        at = [p for p in points if p["size"] == size]
        stages = list(dict.fromkeys(s for p in at for s in p["stages"]))
        per_stage = {}
        for stage in stages:
            have = [p for p in at if stage in p["stages"]]
            xs = [{r: p[r] for r in REGRESSORS} for p in have]
            entry = {"points": len(have)}
            entry["peak_rss_bytes"] = fit(xs, [p["stages"][stage]["peak_rss_bytes"] for p in have])  # described, never
            # extrapolated: memory follows batches, which fill and stop growing (section: "along one direction")
            f = fit(xs, [p["stages"][stage]["read_bytes"] for p in have])
            entry["read_bytes"] = {**f, "extrapolated": [
                {"target": t["name"], "value": round(v), "arithmetic": how}
                for t in TARGETS if t["size"] == size for v, how in [extrapolate(f, target_values(t))]]}
            per_stage[stage] = entry
        out[str(size)] = per_stage
    return out


# ----------------------------------------------------------------------------------------
# BENCHMARKS.md's section (benchmarks.report renders every results file of this schema)
# ----------------------------------------------------------------------------------------


def size(n: float) -> str:
    """Bytes, decimal units, signed where negative."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def formula(f: dict) -> str:
    """A fit as a + b N + c C + d B, in bytes."""
    terms = [size(f["intercept"])] + [f"{size(b)} x {REGRESSOR_TITLES[r]}" for r, b in f["slopes"].items()]
    return " + ".join(terms).replace("+ -", "- ")


def _stage_table(points: list[dict], stages: list[str], cell) -> list[str]:
    lines = ["| stage | " + " | ".join(p["name"] for p in points) + " |", "|---|" + "---|" * len(points)]
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(cell(p["stages"][stage]) if stage in p["stages"] else "-" for p in points) + " |")
    return lines


def _files_read(point: dict) -> list[str]:
    """Per stage, the bytes it read of each file (the run root's keys), beside the bytes its producer wrote."""
    sizes: dict[str, int] = {}
    for it in point["items"]:
        for key, n in it["s3_written"].items():
            sizes[key] = n
    lines = ["| stage | file | bytes read | of the file's bytes |", "|---|---|---|---|"]
    for stage, s in point["stages"].items():
        manifests = sum(n for k, n in s["read_by_file"].items() if k.rsplit("/", 1)[-1] == "manifest.json")
        for key, n in sorted(s["read_by_file"].items(), key=lambda kv: -kv[1]):
            if key.rsplit("/", 1)[-1] != "manifest.json":
                share = f"{n / sizes[key]:.2f}x" if sizes.get(key) else "-"
                lines.append(f"| {stage} | `{key}` | {n:,} | {share} |")
        if manifests:
            lines.append(f"| {stage} | manifests (`*/manifest.json`) | {manifests:,} | - |")
    return lines


def section(result: dict, rel: str) -> list[str]:
    """The "Scale" section of BENCHMARKS.md from one results file."""
    points, growth_ = result["points"], result["growth"]
    stages = list(dict.fromkeys(st for p in points for st in p["stages"]))
    m = result["machine"]
    src = result.get("source") or {}
    code = f" Code: commit {src['commit'][:10]}{' with uncommitted changes' if src.get('dirty') else ''}." if src.get("commit") else ""
    cfg = result["config"]
    lines = [f"## Scale: each stage's memory, CPU time and S3 bytes against the dataset ({result['name']})", "",
             f"`{rel}/{result['name']}.json`, written {result['created_at']}; ran on {m.get('cpu')}, {m.get('cpu_count')} cores, "
             f"torch {m.get('torch')}, {result['jobs']} stage processes at once; wall time of the invocation "
             f"{result['wall_s'] / 60:.1f} min. Command: `{result['command']}`.{code}", ""]
    if result.get("unfinished"):
        lines += [f"Not measured (the invocation stopped first): {', '.join(result['unfinished'])}.", ""]
    lines += [
        "Protocol:", "",
        f"- Each point is a generated ImageFolder: C classes, n training images per class (JPEG) and "
        f"{result['test_per_class']} test images per class (PNG), square images of the point's size (each class a seeded "
        "colour and rectangle, each image its own noise and offset). N: the dataset's images (train and test); "
        "B = budget.ipc x C: the budget's images.",
        f"- Config (the same at every point but the budget): teachers {cfg['teachers']['archs']}, " +
        ("weights imported (freshly initialised, saved as a file: no training); " if cfg["teachers"].get("pretrained")
         else f"{cfg['teachers']['epochs']} epoch; ") + f"{cfg['synthesis']['iterations']} synthesis iterations, "
        f"`classes_per_ufc` {cfg['synthesis']['classes_per_ufc']}, one subset per shard; students {cfg['students']['archs']} "
        f"seed {cfg['students']['seeds']}, {cfg['students']['epochs']} epoch; baselines {cfg['students']['baselines']}; "
        f"methods {cfg['methods']}; " + ("the full-data reference; " if cfg["students"]["full_data_reference"] else "") +
        f"device {cfg['device']}.",
        "- Every item of every step the config runs is its own process, as a pod runs it: `infer-distill stage <step> "
        "--config <point>.yaml --root s3://... <item flags>` against a local S3 server (moto), measured from inside by "
        "`benchmarks/scale_meter.py`: peak resident memory (`ru_maxrss`: the interpreter, torch and the stage), CPU "
        "seconds (user + system), and the bytes of every S3 object body received (GET, whole or ranged) and sent "
        "(PUT, multipart parts). prepare-data reads the ImageFolder from local disk (not counted).",
        "- Per stage and point: the largest peak RSS of one of its items (one pod's memory) and the sums over its items of "
        "CPU seconds and bytes (the run's).", ""]
    lines += ["| point | classes C | train images | test images | N | size (px) | budget ipc | B | generating the images (s) |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p['name']} | {p['classes']:,} | {p['train_images']:,} | {p['test_images']:,} | {p['images']:,} | {p['size']} | "
              f"{p['ipc']} | {p['budget_images']:,} | {p['generate_s']:.1f} |" for p in points]
    for title, cell in (("Peak RSS of one item (MB)", lambda s: f"{s['peak_rss_bytes'] / 1e6:,.0f}"),
                        ("CPU seconds, all items", lambda s: f"{s['cpu_s']:,.1f}"),
                        ("S3 bytes read, all items", lambda s: size(s["read_bytes"])),
                        ("S3 bytes written, all items", lambda s: size(s["written_bytes"]))):
        lines += ["", f"### {title}", ""] + _stage_table(points, stages, cell)
    for size_px in sorted({p["size"] for p in points}):
        at = [p for p in points if p["size"] == size_px]
        biggest = max(at, key=lambda p: (p["images"], p["budget_images"]))
        lines += ["", f"### Files each stage read at {biggest['name']} (the largest {size_px} px point)", "",
                  "Bytes of each file's body received by all the stage's items, against the bytes its producer wrote (1.00x: "
                  "the whole file once).",
                  ""] + _files_read(biggest)
    for size_px, per_stage in growth_.items():
        lines += ["", f"### Growth at {size_px} px: least squares over the points of that size", "",
                  "Fitted in bytes against N (the dataset's images), C (classes) and B (the budget's images) where the points "
                  "vary them independently; dof: points minus parameters (0: the fit passes through every point).", "",
                  "| stage | points | peak RSS of one item | largest residual | dof | S3 bytes read | largest residual | dof |",
                  "|---|---|---|---|---|---|---|---|"]
        for stage, e in per_stage.items():
            r, b = e["peak_rss_bytes"], e["read_bytes"]
            lines.append(f"| {stage} | {e['points']} | {formula(r)} | {size(r['max_abs_residual'])} | {r['dof']} | "
                         f"{formula(b)} | {size(b['max_abs_residual'])} | {b['dof']} |")
    for size_px in sorted({p["size"] for p in points}):
        at = [p for p in points if p["size"] == size_px]
        pairs = one_direction_pairs(at)
        top = max(((stage, p) for p in at for stage in p["stages"]), key=lambda sp: sp[1]["stages"][sp[0]]["peak_rss_bytes"])
        lines += ["", f"### Peak RSS of one item along one direction at {size_px} px", "",
                  "Memory is not extrapolated. A stage's peak follows its batches (training and evaluation batches, decoding "
                  "batches in flight, synthesis's images per forward), which grow with the data until they are full and then "
                  "stop, so a straight line through points on both sides of that describes neither. Instead: between points "
                  "that differ in one setting alone, the change of each stage's peak. The largest peak measured at this size: "
                  f"{top[0]} at {top[1]['name']}, {top[1]['stages'][top[0]]['peak_rss_bytes'] / 1e6:,.0f} MB."]
        if pairs:
            lines += ["", "| stage | " + " | ".join(label for label, _, _ in pairs) + " |", "|---|" + "---|" * len(pairs)]
            for stage in dict.fromkeys(st for p in at for st in p["stages"]):
                cells = [f"{b['stages'][stage]['peak_rss_bytes'] / a['stages'][stage]['peak_rss_bytes'] - 1:+.0%}"
                         if stage in a["stages"] and stage in b["stages"] else "-" for _, a, b in pairs]
                lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    for target in result["targets"]:
        per_stage = growth_.get(str(target["size"]))
        if not per_stage:
            continue
        reads = {stage: next(x for x in e["read_bytes"]["extrapolated"] if x["target"] == target["name"])
                 for stage, e in per_stage.items()}
        total = sum(v["value"] for v in reads.values())
        lines += ["", f"### Extrapolated (not measured): S3 reads of {target['name']}", "",
                  f"N = {target['images']:,}, C = {target['classes']:,}, B = {target['ipc'] * target['classes']:,}, "
                  f"{target['size']} px; the {target['size']} px fits of bytes read above (exact counts), at this benchmark's "
                  "config (its teacher's weights, iterations, epochs and items: not a shipped config's), far outside the "
                  "points they were fitted on.", "",
                  "| stage | S3 reads per run | = |", "|---|---|---|"]
        lines += [f"| {stage} | {size(reads[stage]['value'])} | {reads[stage]['arithmetic']} |" for stage in per_stage]
        lines += ["", f"S3 reads of the whole run: {size(total)} (the sum of the stages')."]
    return lines + [""]


# ----------------------------------------------------------------------------------------
# The invocation
# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--quick", action="store_true", help=f"the test grid: {', '.join(x.name for x in QUICK_POINTS)}")
    grid.add_argument("--points", type=parse_points, help="CLASSES:PER_CLASS:SIZE[:IPC],... instead of the default grid")
    p.add_argument("--name", help="the results file's name (default: scale, scale-quick with --quick, scale-points with --points)")
    p.add_argument("--imported", action="store_true", help="the shipped ImageNet configs' shape: the teacher's weights "
                   "imported (not trained), INFER alone, no full-data reference")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--jobs", type=int, default=2, help="stage processes at once (default 2); each one's memory, CPU "
                   "seconds and bytes are its own, its wall time grows when they share cores")
    p.add_argument("--work", type=Path, help="where the datasets are generated (default: a temporary folder)")
    args = p.parse_args(argv)
    points = QUICK_POINTS if args.quick else args.points or DEFAULT_POINTS
    name = args.name or ("scale-quick" if args.quick else "scale-points" if args.points else "scale")
    command = invocation("benchmarks.scale", argv)
    budget = os.environ.get("INFER_DATA_MEMORY_BYTES")  # which splits the stages hold whole: part of what was run
    command = f"INFER_DATA_MEMORY_BYTES={shlex.quote(budget)} {command}" if budget is not None else command
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    for unset in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(unset, None)
    peers = () if args.imported else QUICK_PEERS if args.quick else PEERS
    path = args.results / f"{name}.json"
    measured: list[dict] = []
    result = {"schema": SCHEMA, "name": name, "command": command.strip(), "jobs": args.jobs, "test_per_class": TEST_PER_CLASS,
              "config": {**point_config(Point(0, 0, 0), Path("<generated ImageFolder>"), peers,
                                        Path("<generated weights>") if args.imported else None), "budget": {"ipc": "per point"}},
              "targets": TARGETS, "machine": machine_info("cpu"), "source": source_info()}

    def save() -> None:  # after every point: an interrupted grid keeps what it measured
        result.update({"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "wall_s": round(time.perf_counter() - started, 1), "points": measured, "growth": growth(measured),
                       "unfinished": [p.name for p in points[len(measured):]]})
        atomic_write(path, json.dumps(result, indent=1) + "\n")

    with scratch_folder(args.work, "infer-scale-") as work, moto_s3_server(work / "moto.log") as s3:
        env.update(s3)
        _client(s3).create_bucket(Bucket=BUCKET)
        for i, point in enumerate(points, 1):
            log(f"point {i}/{len(points)}: {point.name} ({point.images:,} images, {point.classes} classes, "
                f"{point.size} px, ipc {point.ipc})")
            measured.append(run_point(point, work, env, args.jobs, peers, args.imported))
            save()
    log(f"wrote {path} ({result['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
