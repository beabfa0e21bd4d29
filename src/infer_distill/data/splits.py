"""A split of a data artifact (`train.safetensors`, `test.safetensors`) as the stages read it: by rows.

A stage asks a `Split` for what it uses: select-subsets the labels, a UFC shard the rows of its
subsets, a student the test split batch by batch. `open_split(artifact, "train")` gives one;
the images come back as uint8 [n, C, H, W] exactly as prepare-data stored them.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from infer_distill.storage.artifact import Artifact


class Split:
    """One split of a data artifact, read by rows. (This version reads the file whole on first use.)"""

    def __init__(self, art: Artifact, split: str) -> None:
        self.art, self.name = art, split
        self._tensors: dict[str, torch.Tensor] | None = None

    def _all(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            self._tensors = self.art.read_tensors(f"{self.name}.safetensors")
        return self._tensors

    @property
    def labels(self) -> torch.Tensor:
        """int64 [N], one class index per image."""
        return self._all()["y"]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image."""
        return tuple(self._all()["x"].shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        """The split's images, uint8, in bytes: what reading it whole takes."""
        c, h, w = self.shape
        return len(self) * c * h * w

    def read(self, rows: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """uint8 [len(rows), C, H, W], in the order given (a row may repeat)."""
        return self._all()["x"][torch.as_tensor(rows, dtype=torch.int64)]

    def read_all(self) -> torch.Tensor:
        """Every image, uint8 [N, C, H, W]."""
        return self._all()["x"]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images uint8, labels int64) of consecutive rows, in order, at most `batch_size` each."""
        for start in range(0, len(self), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(self)))
            yield self.read(rows), self.labels[rows]


def open_split(art: Artifact, split: str) -> Split:
    """The `split` ("train" or "test") of a data artifact whose manifest the caller has checked."""
    return Split(art, split)
