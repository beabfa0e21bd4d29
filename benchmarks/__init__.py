"""Benchmarks of infer-distill: INFER against its fair baselines, with seeds, timings and curves.

    python -m benchmarks.run [--profile cifar10-cpu]   # runs of the pipeline side by side (make bench)
    python -m benchmarks.report                       # BENCHMARKS.md's tables and plots from benchmarks/results/*.json
    python -m benchmarks.gpu --profile cifar10-ipc10 --out DIR [--budget-s N]   # the paper's setting on a GPU

See BENCHMARKS.md for the protocols and the numbers.
"""
