"""A dataset source as a stream of decoded batches: `Source`, `SourceSplit`, and the channel
statistics accumulated batch by batch (`ChannelStats`).

A source lists its data when it is opened and decodes nothing until a split's `batches` is
iterated, so a consumer (prepare-data) holds a few batches at a time, whatever the dataset's size.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import NamedTuple

import torch

Stats = tuple[tuple[float, ...], tuple[float, ...]]  # per-channel (mean, std), pixel scale [0, 1]
Batch = tuple[torch.Tensor, torch.Tensor]  # (uint8 [n, C, H, W], int64 [n])
# (the image files' bytes, labels int64 [n], the images decoded as `batches` gives them, or None where not asked for)
EncodedBatch = tuple[list[bytes], torch.Tensor, "torch.Tensor | None"]


class DecodeSettings(NamedTuple):
    """How a source's image files become its rows (data.folders.decode_image): the side every image is resized and
    center-cropped to (None: kept as it is), and the (H, W) every row has."""

    image_size: int | None
    size: tuple[int, int]

SPLITS = ("train", "test")
CHUNK_VALUES = 1 << 20


class SourceSplit(ABC):
    """One split of a source: its images in a fixed order, decoded batch by batch."""

    name: str  # "train" or "test"

    @property
    def count(self) -> int | None:
        """The number of images, where the listing tells it without decoding; None where only reading them does."""
        return None

    @property
    def class_counts(self) -> torch.Tensor | None:
        """int64 [num_classes], images per class, where the listing tells it without decoding; else None."""
        return None

    @abstractmethod
    def batches(self, batch_size: int, progress: bool = True) -> Iterator[Batch]:
        """(images uint8 [n, C, H, W], labels int64 [n]), n <= batch_size, every image once in the split's order.

        The same config gives the same bytes in the same order on every call and machine; `progress` shows a bar
        in a terminal or a line in a log every so often while it decodes."""

    def encoded(self, batch_size: int, pixels: bool = False, progress: bool = True) -> Iterator[EncodedBatch]:
        """The split's image files as they are, in `batches`' order and batching, for a source whose
        `decode_settings()` is not None: (files' bytes, labels, images decoded where `pixels` asks, else None). Each
        file is checked as decoding it would check it (from its header alone without `pixels`): a file `batches`
        would refuse is refused here."""
        raise NotImplementedError(f"{type(self).__name__} gives no image files: its rows are decoded by `batches`")


class Source(ABC):
    """A dataset opened for reading: its classes, its known normalisation, and its two splits."""

    classes: list[str]
    stats: Stats | None  # the published per-channel (mean, std) where there is one (CIFAR, ImageNet); else None

    @abstractmethod
    def split(self, name: str) -> SourceSplit:
        """The split `name`, "train" or "test" (the test split is read from dataset.test_split's folder or shards)."""

    def decode_settings(self) -> DecodeSettings | None:
        """How the image files its splits' `encoded` gives become rows, where the source's images are image files
        (folders, WebDataset shards); None where they are not (digits, CIFAR, Hugging Face datasets), which may only
        be read by `batches`. Settles the rows' size (it may decode the first training image)."""
        return None

    def close(self) -> None:
        """Release what the source holds open (zip archives); a source is also a context manager."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChannelStats:
    """Per-channel mean and std of uint8 images at pixel scale [0, 1], fed batch by batch.

    Sums of pixel values and of their squares are accumulated as int64, exactly (no float rounding
    over millions of pixels), so the result does not depend on how the images were batched.
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.pixels = 0  # per channel

    def add(self, x: torch.Tensor) -> None:
        """Count the images x, uint8 [n, C, H, W]."""
        if len(x) == 0:
            return
        if self.total is None:
            self.total = torch.zeros(x.shape[1], dtype=torch.int64)
            self.squares = torch.zeros(x.shape[1], dtype=torch.int64)
        # int32 copies of about a million values at a time: small temporaries, which the allocator reuses from batch to
        # batch (copies of a whole 1024-image batch, interleaved with the decoding threads' allocations, left the heap
        # some 200 MB larger while CIFAR-10 was read)
        for chunk in x.split(max(1, CHUNK_VALUES // max(1, x[0].numel()))):
            wide = chunk.to(torch.int32)
            self.total += wide.sum(dim=(0, 2, 3), dtype=torch.int64)
            self.squares += wide.square().sum(dim=(0, 2, 3), dtype=torch.int64)
        self.pixels += x.shape[0] * x.shape[2] * x.shape[3]

    def result(self) -> Stats:
        """(mean, std) per channel of every image added."""
        if self.total is None or self.pixels == 0:
            raise ValueError("no images were added")
        mean = self.total.double() / self.pixels
        var = self.squares.double() / self.pixels - mean.square()
        return tuple((mean / 255).tolist()), tuple((var.clamp_min(0).sqrt() / 255).tolist())
