"""Benchmarks of infer-distill: INFER against its fair baselines, with seeds, timings and curves.

    python -m benchmarks.run [--profile cifar10-cpu]   # runs of the pipeline side by side (make bench)
    python -m benchmarks.report                       # BENCHMARKS.md's tables and plots from benchmarks/results/*.json
    python -m benchmarks.run --profile cifar10-paper --device cuda --jobs 8   # the paper's protocol on a GPU
    python -m benchmarks.speed --profile cifar10-paper --variant ipc50        # grouped against one-at-a-time synthesis
    python -m benchmarks.scale                        # each stage's memory, CPU time and S3 bytes against the dataset's size
    python -m benchmarks.ingest                       # listing an ImageFolder and decoding its images against the files

See BENCHMARKS.md for the protocols and the numbers.
"""
