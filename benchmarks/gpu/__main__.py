"""python -m benchmarks.gpu --profile cifar10-ipc10 [--profile cifar10-ipc50 ...] --out DIR [--budget-s N] [--toy]"""
from __future__ import annotations

import time

T0 = time.perf_counter()  # the budget counts from here, imports included

import argparse  # noqa: E402
import sys  # noqa: E402

from .protocol import PROFILES, default_datasets  # noqa: E402


def seeds(text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: a comma-separated list of integers, e.g. 0,1,2") from None
    if not values or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: distinct integers, e.g. 0,1,2")
    return values


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description="INFER at the paper's CIFAR scale: teachers from scratch, UFC synthesis, labels, students and baselines, "
                    "timed per stage, with the synthesis speed-up; sized to --budget-s if given. See benchmarks/gpu/README.md.")
    ap.add_argument("--profile", action="append", required=True, choices=PROFILES,
                    help="a paper setting (configs/<profile>.yaml); repeat for several (CIFAR-10 ipc 10 and 50 share their teachers)")
    ap.add_argument("--out", required=True,
                    help="results.json, summary.md, student_curves.png, and every artifact (one folder per profile)")
    ap.add_argument("--datasets", default=str(default_datasets()),
                    help="folder holding cifar10/ (ImageFolder train/ and test/, zips of them, or their .tar.gz archives) and "
                         "cifar100/ (torchvision's files, downloaded there if missing, or an ImageFolder); "
                         "default $INFER_DATASETS, else ../shared/datasets beside the checkout")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="size the run to this many seconds of wall time (measured costs; every reduction recorded); "
                         "default: the full protocol")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--seeds", type=seeds, default=None, help="student seeds, e.g. 0,1,2 (default: the config's)")
    ap.add_argument("--speed", dest="speed", action="store_true", default=None,
                    help="measure grouped against one-UFC-at-a-time synthesis (default: on with CUDA and with --toy)")
    ap.add_argument("--no-speed", dest="speed", action="store_false", help="skip the speed measurement")
    ap.add_argument("--speed-sample", type=int, default=4,
                    help="UFCs timed one at a time (spread over the teachers), extrapolated to all K x M (default 4)")
    ap.add_argument("--toy", action="store_true",
                    help="the whole path at toy size on any device in seconds (a test; numbers mean nothing)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.budget_s is not None and args.budget_s <= 0:
        raise SystemExit("--budget-s must be positive")
    if args.speed_sample < 1:
        raise SystemExit("--speed-sample must be at least 1")
    from .runner import main as run

    return run(args, argv, T0)


if __name__ == "__main__":
    sys.exit(main())
