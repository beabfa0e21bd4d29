"""INFER dataset distillation (ICLR 2025, arXiv 2408.06927) as a pipeline of plain, resumable stages."""
__version__ = "0.1.0"
