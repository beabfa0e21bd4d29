"""Ingest: listing an ImageFolder tree and decoding its images, against the number of files.

    python -m benchmarks.ingest            # the default grid: benchmarks/results/ingest.json
    python -m benchmarks.ingest --quick    # a tiny grid for tests: benchmarks/results/ingest-quick.json

Listing. A point is a generated ImageFolder tree of N empty files (listing never reads a file)
in C class folders, named as ImageNet's are (`train/n00000042/n00000042_17.JPEG`,
`test/n00000042/ILSVRC2012_val_004200017.JPEG`), split between train and test in ImageNet-1k's
proportion (50,000 of 1,331,167); the points of one C are one tree, grown from the smaller to the
larger by adding files (what a listing sees does not depend on the order the files came). Each point is listed by two calls, each in a fresh process
(benchmarks/ingest_meter.py) so that its peak memory is that of the call alone: `open_source` of
an imagefolder config (the walk and the per-class lists a run holds while it decodes) and
`source_digest` (one stat per file: what decides whether a resumed run remakes the data). Per
call: wall and CPU seconds, and the growth of resident memory at its peak and after it. Least
squares of each against N (slope: per file; intercept: per call) is extrapolated, labelled as
such, to ImageNet-1k's 1,331,167 files. The files were just written, so the kernel's caches of
their directory entries are warm, as on a second listing of a local disk; a first listing of a
network file system waits on the server as well.

Decoding. Images per second through the decoding prepare-data runs (`open_source(...).split(
"train").batches(PREPARE_BATCH)`: files read and decoded by `folders._decode` on the thread pool
of `folders.decoded_batches`), with the process's CPU affinity set to one core and to all the
cores it may use (torch's threads set for each as a run sets them), runs of the two alternating
so a drift of the machine's load affects both alike; the median over repeats. Per-core rate with
all cores over the one-core rate is the parallel efficiency. Three kinds of file:

- JPEGs like ImageNet's: 500x375, quality 90, content generated (a smooth colour field, bicubic
  from 6x5 random colours, plus Gaussian noise of sd 22, which brings a file to about 100 kB),
  resized to 224 px (shorter side) and center-cropped, as `dataset.image_size: 224` does;
- 224x224 JPEGs of the same content, decoded without resizing (a dataset stored resized);
- 32x32 PNGs: CIFAR-10's test images ($INFER_DATASETS/cifar10/cifar10-test-png.zip, written out
  as files), decoded without resizing.

The machine's load (other processes' busy fraction of the usable cores, over 0.25 s) is recorded
at the start and the end, and before each decoding run. `python -m benchmarks.report` renders
the results into BENCHMARKS.md's section "Ingest".
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, invocation, machine_info, scratch_folder, source_info
from benchmarks.run import RESULTS, atomic_write, log
from benchmarks.scale import extrapolate, fit, size

SCHEMA = "infer-distill-ingest/1"
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
IMAGENET_FILES = IMAGENET_TRAIN + IMAGENET_VAL
# The issue's figures for listing ImageNet-1k before this benchmark measured them
ISSUE = {"us_per_file": 81.0, "bytes_per_file": 576.0}
CALLS = {"open": "open_source (walk + per-class lists)", "digest": "source_digest (one stat per file)"}
METRICS = {"wall_s": "wall seconds", "cpu_s": "CPU seconds", "peak_increase_bytes": "peak memory growth",
           "retained_increase_bytes": "resident after the call"}
NOISE_SD = 22.0  # the generated JPEGs' noise: about 100 kB per 500x375 file at quality 90, ImageNet's mean file size


@dataclass(frozen=True)
class ListingPoint:
    files: int     # N: train + test
    classes: int   # C

    @property
    def name(self) -> str:
        return f"n{self.files}-c{self.classes}"

    @property
    def test_per_class(self) -> int:
        """ImageNet-1k's share of test files, at least one per class (a class must be in both splits)."""
        return max(1, round(self.files / self.classes * IMAGENET_VAL / IMAGENET_FILES))


@dataclass(frozen=True)
class DecodeSet:
    name: str
    kind: str               # "jpeg" (generated) or "cifar-png" (CIFAR-10's test images)
    width: int
    height: int
    image_size: int | None  # dataset.image_size: resize the shorter side and center-crop; None: as stored
    images: int


DEFAULT_LISTING = tuple(ListingPoint(n, c) for c in (100, 1000) for n in (10_000, 50_000, 200_000))
QUICK_LISTING = (ListingPoint(200, 10), ListingPoint(600, 10), ListingPoint(400, 20))
DEFAULT_DECODE = (DecodeSet("ImageNet-like JPEG", "jpeg", 500, 375, 224, 400),
                  DecodeSet("JPEG stored resized", "jpeg", 224, 224, None, 1000),
                  DecodeSet("CIFAR-10 test PNG", "cifar-png", 32, 32, None, 5000))
QUICK_DECODE = tuple(DecodeSet(d.name, d.kind, d.width, d.height, d.image_size, 12) for d in DEFAULT_DECODE)


# ----------------------------------------------------------------------------------------
# Listing
# ----------------------------------------------------------------------------------------


def _per_class(point: ListingPoint) -> tuple[int, int]:
    """(train, test) files per class of `point`."""
    per_class, test = point.files // point.classes, point.test_per_class
    if per_class * point.classes != point.files or per_class <= test:
        raise SystemExit(f"listing point {point.name}: N must be a multiple of C with more than {test} files per class")
    return per_class - test, test


def build_tree(root: Path, point: ListingPoint, grown_from: ListingPoint | None = None) -> dict:
    """<root>/{train,test}/<wnid>/<file>: N empty files in C classes, named as ImageNet's; the splits' counts.

    `grown_from`: the point whose tree `root` holds already (the same C, no more files in either split): only the
    files it lacks are made, so the points of one C are one tree written once."""
    train, test = _per_class(point)
    have_train, have_test = _per_class(grown_from) if grown_from else (0, 0)
    if grown_from and (grown_from.classes != point.classes or have_train > train or have_test > test):
        raise ValueError(f"the tree of {grown_from.name} cannot grow into {point.name}")
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC  # never over a file already there
    for c in range(point.classes):
        wnid = f"n{c:08d}"
        for split, names in (("train", (f"{wnid}_{i}.JPEG" for i in range(have_train, train))),
                             ("test", (f"ILSVRC2012_val_{c:04d}{i:05d}.JPEG" for i in range(have_test, test)))):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=grown_from is not None)
            for name in names:
                os.close(os.open(folder / name, flags, 0o644))
    return {"train_files": train * point.classes, "test_files": test * point.classes}


def measure_listing(what: str, root: Path, out: Path, timeout: float) -> dict:
    """One call (open or digest) on `root` in a fresh process, measured by benchmarks.ingest_meter."""
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ingest_meter", str(out), what, str(root)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"ingest_meter {what} {root} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def list_point(point: ListingPoint, root: Path, grown_from: ListingPoint | None, repeats: int, timeout: float) -> dict:
    """Build (or grow) the point's tree at `root`, then measure each call `repeats` times, the calls alternating."""
    t0 = time.perf_counter()
    counts = build_tree(root, point, grown_from)
    build_s = time.perf_counter() - t0
    runs: dict[str, list[dict]] = {what: [] for what in CALLS}
    for _ in range(repeats):
        for what in CALLS:
            m = measure_listing(what, root, root.parent / f"{what}.json", timeout)
            if m["files"] != point.files:
                raise RuntimeError(f"{what} of {root} counted {m['files']} files, not the {point.files} written")
            runs[what].append(m)
    medians = {what: {k: statistics.median(r[k] for r in rs) for k in METRICS} for what, rs in runs.items()}
    for what, m in medians.items():
        log(f"  {point.name} {what}: {m['wall_s']:.2f} s ({1e6 * m['wall_s'] / point.files:.1f} us/file), "
            f"{m['cpu_s']:.2f} CPU s, peak +{size(m['peak_increase_bytes'])} ({m['peak_increase_bytes'] / point.files:.0f} B/file)")
    return {**asdict(point), "name": point.name, **counts, "test_per_class": point.test_per_class,
            "grown_from": grown_from.name if grown_from else None, "build_s": round(build_s, 2), "runs": runs,
            "median": medians}


def grows(before: ListingPoint | None, point: ListingPoint) -> bool:
    """Whether the tree of `before` can grow into that of `point` (the same classes, more files in each split)."""
    if before is None or before.classes != point.classes:
        return False
    (train0, test0), (train, test) = _per_class(before), _per_class(point)
    return train0 <= train and test0 <= test


def listing_fits(points: list[dict]) -> dict:
    """Per call and metric: least squares against N over the points' medians, and its value at ImageNet-1k."""
    out: dict[str, dict] = {}
    xs = [{"files": p["files"]} for p in points]
    for what in CALLS:
        out[what] = {}
        for metric in METRICS:
            f = fit(xs, [p["median"][what][metric] for p in points], ("files",))
            value, how = extrapolate(f, {"files": IMAGENET_FILES})
            out[what][metric] = {**f, "imagenet": {"files": IMAGENET_FILES, "value": value, "arithmetic": how}}
    return out


# ----------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------


def generated_image(rng: np.random.Generator, width: int, height: int):
    """A smooth colour field (bicubic from 6x5 random colours) plus Gaussian noise: JPEG sizes like photographs'."""
    from PIL import Image

    field = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(field, dtype=np.float32) + rng.normal(0, NOISE_SD, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def datasets_dir() -> Path:
    return Path(os.environ.get("INFER_DATASETS") or REPO.parent / "shared" / "datasets")


def cifar_pngs(count: int) -> list[bytes]:
    """The first `count` of CIFAR-10's test PNGs, taken in turn from each class."""
    archive = datasets_dir() / "cifar10" / "cifar10-test-png.zip"
    if not archive.is_file():
        raise SystemExit(f"{archive} not found: set INFER_DATASETS to the folder holding cifar10/cifar10-test-png.zip")
    with zipfile.ZipFile(archive) as zf:
        by_class: dict[str, list[str]] = {}
        for name in sorted(zf.namelist()):
            if name.endswith(".png"):
                by_class.setdefault(name.rsplit("/", 2)[-2], []).append(name)
        order = [names[i] for i in range(max(map(len, by_class.values()))) for names in by_class.values() if i < len(names)]
        if len(order) < count:
            raise SystemExit(f"{archive} holds {len(order)} PNGs, fewer than the {count} asked for")
        return [zf.read(name) for name in order[:count]]


def write_decode_set(root: Path, spec: DecodeSet, seed: int) -> dict:
    """<root>/train/all/<i>.<ext> (the images decoded) and one test image (a split the source needs); file sizes."""
    rng = np.random.default_rng(seed)
    if spec.kind == "jpeg":
        def encoded() -> bytes:
            buf = io.BytesIO()
            generated_image(rng, spec.width, spec.height).save(buf, "JPEG", quality=90)
            return buf.getvalue()

        files, ext = [encoded() for _ in range(spec.images + 1)], "jpg"
    elif spec.kind == "cifar-png":
        files, ext = cifar_pngs(spec.images + 1), "png"
    else:
        raise ValueError(f"decode set {spec.name}: unknown kind {spec.kind!r}")
    for split, part in (("train", files[:-1]), ("test", files[-1:])):
        folder = root / split / "all"
        folder.mkdir(parents=True)
        for i, data in enumerate(part):
            (folder / f"{i:06d}.{ext}").write_bytes(data)
    sizes = [len(f) for f in files[:-1]]
    return {"mean_file_bytes": round(statistics.mean(sizes)), "total_bytes": sum(sizes)}


def decode_run(root: Path, image_size: int | None, cpus: set[int]) -> dict:
    """Decode every train image of `root` as prepare-data does, this process confined to `cpus`."""
    import resource

    import torch

    from infer_distill.config.schema import DatasetConfig
    from infer_distill.data.sources import open_source
    from infer_distill.runtime.threads import busy_fraction, configure_cpu_threads, usable_cpus
    from infer_distill.stages.infer import PREPARE_BATCH

    def cpu_s() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        return me.ru_utime + me.ru_stime

    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, cpus)  # decoded_batches' pool takes as many threads as the cores this leaves
    try:
        torch_threads, _why = configure_cpu_threads()
        busy = busy_fraction()
        with open_source(DatasetConfig(name="imagefolder", root=str(root), image_size=image_size)) as source:
            split = source.split("train")
            cpu0, t0 = cpu_s(), time.perf_counter()
            images = sum(len(y) for _x, y in split.batches(PREPARE_BATCH, progress=False))
            wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
        cores = usable_cpus()
    finally:
        os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)
    return {"cores": cores, "torch_threads": torch_threads, "images": images, "wall_s": round(wall, 6),
            "cpu_s": round(cpu, 6), "images_per_s": round(images / wall, 2), "busy_before": busy}


def decode_set(spec: DecodeSet, work: Path, repeats: int, seed: int) -> dict:
    """Write the set's files, then decode them with one core and with all, alternating, `repeats` times each."""
    root = work / f"decode-{spec.kind}-{spec.width}x{spec.height}"
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    files = write_decode_set(root, spec, seed)
    write_s = time.perf_counter() - t0
    every = os.sched_getaffinity(0)
    modes = {"one core": {min(every)}, "all cores": every}
    try:
        decode_run(root, spec.image_size, every)  # a first pass: the files in the page cache, PIL's decoders loaded
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        for _ in range(repeats):
            for mode, cpus in modes.items():
                runs[mode].append(decode_run(root, spec.image_size, cpus))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rates = {mode: statistics.median(r["images_per_s"] for r in rs) for mode, rs in runs.items()}
    # CPU seconds over wall seconds: the cores the decoding got, fewer than it may use where other processes took some
    used = {mode: round(statistics.median(r["cpu_s"] / r["wall_s"] for r in rs), 2) for mode, rs in runs.items()}
    cores = runs["all cores"][0]["cores"]
    per_core = rates["all cores"] / cores
    entry = {**asdict(spec), **files, "write_s": round(write_s, 2), "runs": runs,
             "one_core_images_per_s": rates["one core"], "all_cores": cores, "all_cores_images_per_s": rates["all cores"],
             "all_cores_per_core": round(per_core, 2), "parallel_efficiency": round(per_core / rates["one core"], 3),
             "cores_used": used}
    log(f"  {spec.name}: {files['mean_file_bytes'] / 1e3:.1f} kB a file; one core {rates['one core']:.0f} images/s, "
        f"{cores} cores {rates['all cores']:.0f} images/s ({per_core:.0f} per core, efficiency {entry['parallel_efficiency']:.2f})")
    return entry


def load() -> dict:
    from infer_distill.runtime.threads import busy_fraction

    return {"busy_fraction": busy_fraction(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


# ----------------------------------------------------------------------------------------
# BENCHMARKS.md's section (benchmarks.report renders every results file of this schema)
# ----------------------------------------------------------------------------------------


def _busy(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def _per_file(f: dict, metric: str) -> str:
    slope = f["slopes"].get("files", 0.0)
    return f"{1e6 * slope:.1f} us" if metric.endswith("_s") else f"{slope:,.0f} B"


def _value(v: float, metric: str) -> str:
    return f"{v:,.3f} s" if metric.endswith("_s") else size(v)


def section(result: dict, rel: str) -> list[str]:
    """The "Ingest" section of BENCHMARKS.md from one results file."""
    m, src, ld = result["machine"], result.get("source") or {}, result["load"]
    code = f" Code: commit {src['commit'][:10]}{' with uncommitted changes' if src.get('dirty') else ''}." if src.get("commit") else ""
    lines = [f"## Ingest: listing and decoding at scale ({result['name']})", "",
             f"`{rel}/{result['name']}.json`, written {result['created_at']}; ran on {m.get('cpu')}, {m.get('cpu_count')} cores "
             f"({result['usable_cores']} usable), torch {m.get('torch')}; wall time of the invocation {result['wall_s'] / 60:.1f} min. "
             f"Other processes kept {_busy(ld['start']['busy_fraction'])} of the usable cores busy at the start (load "
             f"average {ld['start']['loadavg'][0]})" + (f" and {_busy(ld['end']['busy_fraction'])} at the end (load average "
                                                        f"{ld['end']['loadavg'][0]})" if "end" in ld else "")
             + f". Command: `{result['command']}`.{code}", ""]
    if result.get("unfinished"):
        lines += [f"Not measured (the invocation stopped first): {', '.join(result['unfinished'])}.", ""]
    listing = result["listing"]
    if listing["points"]:
        lines += ["### Listing an ImageFolder tree", "",
                  f"Each point: a tree of N empty files in C class folders, named as ImageNet's, {listing['test_share']:.2%} "
                  "of them in the test split (ImageNet-1k's share); the points of one C are one tree, grown. Each call in a fresh process, median of "
                  f"{listing['repeats']}: `open_source` of an imagefolder config (the walk and the per-class lists, held "
                  "while a run decodes) and `source_digest` (one stat per file). Memory: growth of the resident set over "
                  "what the process held before the call (the interpreter, torch), at its peak and after the call (open: "
                  "the listing still held; digest: what the allocator kept of the memory the call freed). The files were "
                  "just written: the directory entries are in the kernel's cache.", "",
                  "| N | C | call | wall (s) | us per file | CPU (s) | peak memory growth | B per file | resident after |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for p in listing["points"]:
            for what in CALLS:
                x = p["median"][what]
                lines.append(f"| {p['files']:,} | {p['classes']:,} | {what} | {x['wall_s']:.3f} | "
                             f"{1e6 * x['wall_s'] / p['files']:.1f} | {x['cpu_s']:.3f} | {size(x['peak_increase_bytes'])} | "
                             f"{x['peak_increase_bytes'] / p['files']:,.0f} | {size(x['retained_increase_bytes'])} |")
        fits = listing["fits"]
        lines += ["", f"Least squares over the {len(listing['points'])} points against N (slope: per file; intercept: per "
                      f"call), extrapolated (not measured) to ImageNet-1k's {IMAGENET_FILES:,} files "
                      f"({IMAGENET_TRAIN:,} + {IMAGENET_VAL:,}); dof: points minus parameters.", "",
                  "| call | metric | per file | per call | largest residual | dof | ImageNet-1k (extrapolated) | = |",
                  "|---|---|---|---|---|---|---|---|"]
        for what in CALLS:
            for metric, title in METRICS.items():
                f = fits[what][metric]
                lines.append(f"| {what} | {title} | {_per_file(f, metric)} | {_value(f['intercept'], metric)} | "
                             f"{_value(f['max_abs_residual'], metric)} | {f['dof']} | "
                             f"**{_value(f['imagenet']['value'], metric)}** | {f['imagenet']['arithmetic']} |")
        wall, peak = fits["open"]["wall_s"]["slopes"].get("files"), fits["open"]["peak_increase_bytes"]["slopes"].get("files")
        if wall is not None and peak is not None:
            lines += ["", f"The issue's estimate for `open_source` was {ISSUE['us_per_file']:.0f} us and "
                          f"{ISSUE['bytes_per_file']:.0f} B per file; measured here: {1e6 * wall:.1f} us and {peak:,.0f} B "
                          "per file (the slopes above)."]
    decoding = result["decoding"]
    if decoding["sets"]:
        cores = decoding["sets"][0]["all_cores"]
        lines += ["", "### Decoding", "",
                  "Images per second through prepare-data's decoding (`split.batches`: each file read and decoded by "
                  f"`folders._decode` on `decoded_batches`' thread pool, batches of {decoding['batch']}), the process "
                  f"confined to one core and to all {cores} usable cores (torch's threads set to match), the two "
                  f"alternating; median of {decoding['repeats']}. Efficiency: per-core rate with all cores over the "
                  "one-core rate. Cores used: CPU seconds over wall seconds, median (one core / all; below the cores given "
                  "where other processes took some, or where the threads wait for each other). Busy: other processes' "
                  "share of the cores just before the runs (min to max).", "",
                  "| images | stored | decoded to | files | mean file | one core (images/s) | "
                  f"{cores} cores (images/s) | per core | efficiency | cores used | busy before |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for d in decoding["sets"]:
            busy = [r["busy_before"] for rs in d["runs"].values() for r in rs if r["busy_before"] is not None]
            out = f"{d['image_size']} px (shorter side, center crop)" if d["image_size"] else "as stored"
            lines.append(f"| {d['name']} | {d['width']}x{d['height']} | {out} | {d['images']:,} | {size(d['mean_file_bytes'])} | "
                         f"{d['one_core_images_per_s']:,.0f} | {d['all_cores_images_per_s']:,.0f} | "
                         f"{d['all_cores_per_core']:,.0f} | {d['parallel_efficiency']:.2f} | "
                         f"{d['cores_used']['one core']:.2f} / {d['cores_used']['all cores']:.2f} | "
                         f"{_busy(min(busy)) if busy else '-'} to {_busy(max(busy)) if busy else '-'} |")
        first = decoding["sets"][0]
        if first["image_size"]:
            core_h = IMAGENET_FILES / first["one_core_images_per_s"] / 3600
            wall_h = IMAGENET_FILES / first["all_cores_images_per_s"] / 3600
            lines += ["", f"Extrapolated (not measured): decoding ImageNet-1k's {IMAGENET_FILES:,} files at the "
                          f"{first['name']}'s rates: {core_h:,.2f} core-hours at the one-core rate "
                          f"({IMAGENET_FILES:,} / {first['one_core_images_per_s']:,.0f} / 3600), {wall_h:,.2f} h on these "
                          f"{first['all_cores']} cores ({IMAGENET_FILES:,} / {first['all_cores_images_per_s']:,.0f} / 3600)."]
    return lines + [""]


# ----------------------------------------------------------------------------------------
# The invocation
# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the test grid: "
                   f"{', '.join(x.name for x in QUICK_LISTING)}; {QUICK_DECODE[0].images} images of each kind")
    p.add_argument("--name", help="the results file's name (default: ingest, ingest-quick with --quick)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--repeats", type=int, help="measurements of each call and decoding (default 3, 1 with --quick)")
    p.add_argument("--timeout", type=float, default=600, help="seconds one listing call may take")
    p.add_argument("--seed", type=int, default=0, help="the generated images' seed")
    p.add_argument("--work", type=Path, help="where the trees and images are written (default: a temporary folder)")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    listing_points, decode_sets = (QUICK_LISTING, QUICK_DECODE) if args.quick else (DEFAULT_LISTING, DEFAULT_DECODE)
    name = args.name or ("ingest-quick" if args.quick else "ingest")
    command = invocation("benchmarks.ingest", argv)
    from infer_distill.runtime.threads import usable_cpus
    from infer_distill.stages.infer import PREPARE_BATCH

    started = time.perf_counter()
    path = args.results / f"{name}.json"
    result = {"schema": SCHEMA, "name": name, "command": command.strip(), "usable_cores": usable_cpus(),
              "load": {"start": load()}, "machine": machine_info("cpu"), "source": source_info()}
    points: list[dict] = []
    sets: list[dict] = []

    def save(finished: bool) -> None:  # after every point and set: an interrupted invocation keeps what it measured
        result.update({
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": round(time.perf_counter() - started, 1),
            "listing": {"repeats": repeats, "test_share": IMAGENET_VAL / IMAGENET_FILES, "issue": ISSUE,
                        "points": points, "fits": listing_fits(points) if points else {}},
            "decoding": {"repeats": repeats, "batch": PREPARE_BATCH, "seed": args.seed, "noise_sd": NOISE_SD, "sets": sets},
            "unfinished": [x.name for x in listing_points[len(points):]] + [x.name for x in decode_sets[len(sets):]],
        })
        if finished:
            result["load"]["end"] = load()
        atomic_write(path, json.dumps(result, indent=1) + "\n")

    with scratch_folder(args.work, "infer-ingest-") as work:
        before: ListingPoint | None = None
        tree = work / "tree"  # one tree at a time, grown from point to point of the same C
        try:
            for i, point in enumerate(listing_points, 1):
                log(f"listing {i}/{len(listing_points)}: {point.files:,} files in {point.classes:,} classes")
                grown_from = before if grows(before, point) else None
                if grown_from is None:  # other classes (or a tree an interrupted invocation left in --work): afresh
                    shutil.rmtree(tree, ignore_errors=True)
                points.append(list_point(point, tree, grown_from, repeats, args.timeout))
                before = point
                save(False)
        finally:
            shutil.rmtree(tree, ignore_errors=True)
        for i, spec in enumerate(decode_sets, 1):
            log(f"decoding {i}/{len(decode_sets)}: {spec.images:,} x {spec.name}")
            sets.append(decode_set(spec, work, repeats, args.seed))
            save(i == len(decode_sets))
    log(f"wrote {path} ({result['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
