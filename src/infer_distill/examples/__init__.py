"""Examples that ship with the package, each runnable from an installed wheel:

    python -m infer_distill.examples.train_your_own runs/quickstart/distilled   # a timm model of your own on a distilled set
"""
