"""INFER as a Kubeflow Pipelines v2 DAG: compile it, upload it, submit it to a cluster, or run it here
with KFP's local runner (`python pipelines/infer_dag.py --help` for every option).

    python pipelines/infer_dag.py compile --image REGISTRY/infer-distill:TAG --config cifar10-ipc10 --output infer.yaml
    python pipelines/infer_dag.py run-local --config quickstart --out runs/kfp-local

The DAG and its components are the package's `infer_distill.engines.kfp` (pip install 'infer-distill[kfp]');
`python -m infer_distill.engines.kfp` is the same command without a checkout.
"""
import sys

from infer_distill.engines.kfp import main

if __name__ == "__main__":
    sys.exit(main())
