"""The DAG as text, drawn from `dag.PLAN`: the drawing in README.md, kept current by a test.

    python -m infer_distill.dag.drawing                 # print the drawing
    python -m infer_distill.dag.drawing --update README.md     # and docs/kubeflow.md

Each line is one step of the plan, in run order: its fan-out (one run per item, and the item's
keys) and the steps it waits for (`dag.depends`: its inputs' producers, without those another
of them already waits for). In a file, the drawing is the fenced block after the MARKER line.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from infer_distill import dag

MARKER = "<!-- the plan's drawing, generated: python -m infer_distill.dag.drawing --update <this file> -->"


def drawing(steps: tuple[dag.Step, ...] = dag.PLAN) -> str:
    rows = [(s.name, f"one per {s.over.name.removesuffix('s')} ({' x '.join(s.over.keys)})" if s.over else "",
             ", ".join(dag.depends(s))) for s in steps]
    name_w, over_w = (max(len(r[i]) for r in rows) for i in (0, 1))
    return "\n".join(f"{name:<{name_w}}  {over:<{over_w}}  <- {after}".rstrip() if after else name for name, over, after in rows)


def updated(text: str, path: str = "README.md") -> str:
    """`text` with the fenced block after MARKER replaced by the current drawing."""
    pattern = re.compile(re.escape(MARKER) + r"\n```\n.*?\n```", re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no line {MARKER!r} followed by a fenced block: add them where the drawing goes")
    return pattern.sub(lambda _: f"{MARKER}\n```\n{drawing()}\n```", text, count=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infer_distill.dag.drawing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--update", metavar="FILE", help="rewrite the drawing in FILE (after its marker line) instead of printing it")
    args = p.parse_args(argv)
    if not args.update:
        print(drawing())
        return 0
    path = Path(args.update)
    try:
        path.write_text(updated(path.read_text(), args.update))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
