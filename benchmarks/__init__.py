"""Benchmarks of infer-distill: INFER against fair baselines, with seeds, timings and a GPU script.

    python -m benchmarks.run [--quick]     # the CPU benchmark on CIFAR-10 (make bench)
    python -m benchmarks.report            # BENCHMARKS.md and plots from benchmarks/results/*.json

See BENCHMARKS.md for the protocol and the numbers.
"""
