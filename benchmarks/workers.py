"""The quickstart's wall time with `run`'s old default (one process, a thread per core) and its new one
(`--jobs auto`), on this machine idle and loaded.

    python -m benchmarks.workers [--repeats 3] [--repeats-loaded 1]

Loaded means another program keeps every usable core busy: one process per core spinning in a
loop, started before the run and stopped after it. Each run is `infer-distill run` with the
embedded quickstart defaults into a fresh folder, timed from start to exit; the runs of the two
defaults alternate, so a drift of the machine's speed affects both alike. The medians go in the
README ("Threads and workers"). Results: benchmarks/results/workers.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import REPO, machine_info, source_info
from benchmarks.run import RESULTS, atomic_write, log

DEFAULTS = {"old (--jobs 1)": ["--jobs", "1"], "new (--jobs auto)": ["--jobs", "auto"]}


def spinners(count: int) -> list[subprocess.Popen]:
    """`count` processes that each keep one core busy until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def timed_run(args: list[str], timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "INFER_JOBS")}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "infer_distill", "run", "--out", f"{tmp}/run", "--no-progress", *args],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"run {args} failed ({out.returncode}): {out.stderr[-2000:]}")
    said = " ".join(line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Workers:"))
    return {"seconds": round(seconds, 1), "workers": said.split(";")[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs of each default on the idle machine")
    p.add_argument("--repeats-loaded", type=int, default=1, help="runs of each default on the loaded machine")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    args = p.parse_args(argv)
    from infer_distill.runtime.threads import usable_cpus

    cores = usable_cpus()
    runs: dict[str, dict[str, list[dict]]] = {"idle": {d: [] for d in DEFAULTS}, "loaded": {d: [] for d in DEFAULTS}}
    for condition, repeats in (("idle", args.repeats), ("loaded", args.repeats_loaded)):
        busy = spinners(cores) if condition == "loaded" else []
        try:
            time.sleep(1.0 if busy else 0)  # the spinners running before the run looks at the load
            for i in range(repeats):
                for name, flags in DEFAULTS.items():
                    result = timed_run(flags, args.timeout)
                    log(f"{condition} {name} #{i + 1}: {result['seconds']} s  {result['workers']}")
                    runs[condition][name].append(result)
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
    medians = {c: {d: statistics.median(r["seconds"] for r in rs) for d, rs in by.items()} for c, by in runs.items()}
    results = {
        "benchmark": "workers", "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m benchmarks.workers" + "".join(
            f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v != p.get_default(k)),
        "setup": {"config": "the embedded quickstart defaults", "usable_cores": cores,
                  "loaded": f"{cores} processes spinning in a loop, one per usable core",
                  "defaults": {name: " ".join(flags) for name, flags in DEFAULTS.items()}},
        "runs": runs, "median_seconds": medians,
        "machine": machine_info("cpu"), "source": source_info(),
    }
    path = RESULTS / "workers.json"
    atomic_write(path, json.dumps(results, indent=2) + "\n")
    print("| machine | " + " | ".join(DEFAULTS) + " |\n|---|" + "---:|" * len(DEFAULTS))
    for condition, by in medians.items():
        print(f"| {condition} | " + " | ".join(f"{s:.1f} s" for s in by.values()) + " |")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
