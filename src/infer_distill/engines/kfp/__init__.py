"""INFER on Kubeflow Pipelines: the DAG rendered from `infer_distill.dag.PLAN` (`dag`) and one
lightweight component per step (`components`). Needs the kfp extra: pip install 'infer-distill[kfp]'.

`main` is the DAG's command line (compile, upload, submit, run-local, compile-components), as
`python pipelines/infer_dag.py ...` in a checkout or `python -m infer_distill.engines.kfp ...` anywhere.
"""
from __future__ import annotations

import sys

from infer_distill.dag.steps import EXIT_REFUSED
from infer_distill.errors import MissingExtra


def main(argv: list[str] | None = None) -> int:
    try:
        from infer_distill.engines.kfp.dag import main as dag_main
    except MissingExtra as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    return dag_main(argv)
