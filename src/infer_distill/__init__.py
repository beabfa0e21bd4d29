"""INFER dataset distillation (ICLR 2025, arXiv 2408.06927) as a pipeline of plain, resumable stages."""
__version__ = "0.1.0"
__all__ = ["DistilledSet", "__version__"]


def __getattr__(name: str):
    # Imported on first use: `import infer_distill.config` (the DAG compiler, the CLI's argument
    # parsing) stays free of torch.
    if name == "DistilledSet":
        from infer_distill.outputs.distilled import DistilledSet

        return DistilledSet
    raise AttributeError(f"module 'infer_distill' has no attribute {name!r}")
