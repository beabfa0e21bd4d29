"""The GPU benchmark: INFER at the paper's CIFAR scale as one command, sized to a wall-time budget.

    python -m benchmarks.gpu --profile cifar10-ipc10 --profile cifar10-ipc50 --out runs/gpu --budget-s 540

See benchmarks/gpu/README.md. Modules: protocol (the profiles and the benchmark's own keys),
calibrate (per-part costs measured on the machine), budget (the plan that fits a budget), speed
(grouped against one-UFC-at-a-time synthesis), runner (the run and results.json), summary
(summary.md and the plot).
"""
