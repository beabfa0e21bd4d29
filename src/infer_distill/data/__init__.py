"""Datasets: sources, decoding and augmentation."""
