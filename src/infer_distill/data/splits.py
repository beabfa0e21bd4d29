"""A split of a data artifact as prepare-data writes it and the stages read it: by rows, in bounded memory.

A stage asks a `Split` for what it uses: select-subsets the labels, a UFC shard the rows of its
subsets, a student the test split batch by batch. `open_split(artifact, "train")` gives one;
the images come back as uint8 [n, C, H, W] exactly as prepare-data stored them.

The format, per split (`train`, `test`), three files of the data artifact:
    <split>.images             the images, uint8, C-order [N, C, H, W], one row after another, no header
    <split>.labels.safetensors {"y": int64 [N]}
    <split>.images.sha256      the sha256 (32 raw bytes) of each block of `block_rows` consecutive rows of
                               <split>.images, the last block holding what is left
and, in the manifest's metrics (`DataMetrics.splits[split]`, the record `SplitWriter.description` gives):
    {"rows": N, "shape": [C, H, W], "dtype": "uint8", "block_rows": R}
A block is the fewest whole rows totalling at least BLOCK_BYTES (4 KiB): 2 rows of a 32 px RGB
image, one row of a 224 px one, so a read of scattered rows (a UFC shard's one image per class) fetches
little beyond them; the digests cost 32 bytes a block (under 1 % of 32 px rows, 0.02 % of 224 px ones). Every file's size and sha256 are in the manifest as for any artifact.

Reading rows fetches only the blocks that hold them, adjacent blocks in one ranged read of at most
READ_BYTES, and checks each block against its sha256 (read verified whole) before a byte of it is
used; a file of at most SMALL_FILE_BYTES, or of at most WHOLE_FILE_BYTES when a read asks for half of its
blocks or more, is read whole once, checked against its manifest sha256, and kept. Memory grows with what is asked (plus a read), the labels (8 bytes a row) and the block digests
(32 bytes a block), never with the images of the split.

Written by `SplitWriter`, streaming: rows arrive batch by batch, memory is bounded by a batch, and
N need not be known in advance.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from infer_distill.errors import ArtifactError, DataError
from infer_distill.storage.artifact import Artifact

BLOCK_BYTES = 4 * 1024                # a block: the fewest whole rows totalling at least this
SMALL_FILE_BYTES = 1024 * 1024        # an images file up to this is read whole (one request, one digest) and kept
WHOLE_FILE_BYTES = 64 * 1024 * 1024   # ... and up to this, when a read asks for half of its blocks or more
READ_BYTES = 16 * 1024 * 1024         # the most one ranged read fetches (unless one block is larger)
_DIGEST = 32                          # bytes of a sha256
_REMAKE = "re-run stage prepare-data to remake it"


def split_files(split: str) -> tuple[str, str, str]:
    """The files of `split` in a data artifact: its images, its labels, its images' block digests."""
    return f"{split}.images", f"{split}.labels.safetensors", f"{split}.images.sha256"


def block_rows(shape: Sequence[int]) -> int:
    """The rows of a block of images of `shape` (C, H, W): the fewest whole rows totalling at least BLOCK_BYTES."""
    return max(1, math.ceil(BLOCK_BYTES / math.prod(shape)))


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------


class Split:
    """One split of a data artifact, read by rows (see the module's docstring for what is read and checked)."""

    def __init__(self, art: Artifact, split: str, record: Mapping[str, Any], entries: Mapping[str, Any]) -> None:
        self.art, self.name = art, split
        self.images, self.labels_file, self.digests_file = split_files(split)
        self._rows: int = record["rows"]
        self._shape: tuple[int, int, int] = tuple(record["shape"])  # type: ignore[assignment]
        self.block_rows: int = record["block_rows"]
        self._row_bytes = math.prod(self._shape)
        self._file_bytes: int = entries[self.images]["bytes"]
        self._labels: torch.Tensor | None = None
        self._digests: bytes | None = None
        self._whole: torch.Tensor | None = None
        self._kept: tuple[int, int, bytes] = (0, 0, b"")  # the blocks [first, end) of the last ranged read

    @property
    def labels(self) -> torch.Tensor:
        """int64 [N], one class index per image (reads the labels file alone, once)."""
        if self._labels is None:
            self._labels = self.art.read_tensors(self.labels_file)["y"]
        return self._labels

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image."""
        return self._shape

    def __len__(self) -> int:
        return self._rows

    @property
    def nbytes(self) -> int:
        """The split's images, uint8, in bytes: what reading it whole takes."""
        return self._rows * self._row_bytes

    def read(self, rows: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """uint8 [len(rows), C, H, W], in the order given (a row may repeat)."""
        index = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self._rows):
            bad = int(index[(index < 0) | (index >= self._rows)][0])
            raise IndexError(f"row {bad} of the {self.name} split of {self.art.uri}, which has {self._rows} rows")
        if self._whole is not None or self._file_bytes <= SMALL_FILE_BYTES:
            return self._all()[index]
        order = np.argsort(index.numpy(), kind="stable")
        ordered = index.numpy()[order]
        blocks = np.unique(ordered // self.block_rows)
        if self._file_bytes <= WHOLE_FILE_BYTES and 2 * len(blocks) * self.block_rows * self._row_bytes >= self._file_bytes:
            return self._all()[index]  # half the file or more: one read of all of it, kept for the next
        out = np.empty((len(index), *self._shape), dtype=np.uint8)  # numpy: a copy per read, no torch op per read
        for first, end in self._reads(blocks):
            begin_row, end_row = first * self.block_rows, min(end * self.block_rows, self._rows)
            data = self._blocks(first, end)
            a, b = np.searchsorted(ordered, [begin_row, end_row])
            block = np.frombuffer(data, dtype=np.uint8).reshape(-1, *self._shape)
            out[order[a:b]] = block[ordered[a:b] - begin_row]
        return torch.from_numpy(out)

    def read_all(self) -> torch.Tensor:
        """Every image, uint8 [N, C, H, W]."""
        # a copy of the kept file: a caller that changes it in place never changes what later reads return
        return self._all().clone() if self._file_bytes <= WHOLE_FILE_BYTES else self.read(torch.arange(self._rows))

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images uint8, labels int64) of consecutive rows, in order, at most `batch_size` each."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: give at least 1")
        for start in range(0, len(self), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(self)))
            yield self.read(rows), self.labels[rows]

    def _all(self) -> torch.Tensor:
        """The (small) images file read whole once, checked against its manifest sha256, and kept."""
        if self._whole is None:
            data = self.art.read_bytes(self.images)
            self._whole = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()).reshape(self._rows, *self._shape)
        return self._whole

    def _blocks(self, first: int, end: int) -> bytes | memoryview:
        """Blocks [first, end) of the images, verified. The last read is kept: a stage that reads class after class
        (or batch after batch) asks again for the block where one ends and the next begins, and gets it from here."""
        block_bytes = self.block_rows * self._row_bytes
        kept_first, kept_end, kept = self._kept
        if kept_first <= first and end <= kept_end:
            return memoryview(kept)[(first - kept_first) * block_bytes:(end - kept_first) * block_bytes]
        start = kept_end if kept_first <= first < kept_end else first  # the blocks already here are not read again
        end_byte = min(end * block_bytes, self._file_bytes)
        data = self.art.read_range(self.images, start * block_bytes, end_byte - start * block_bytes)
        self._check(start, end, data)
        if start > first:
            data = bytes(memoryview(kept)[(first - kept_first) * block_bytes:]) + data
        self._kept = (first, end, data)
        return data

    def _reads(self, blocks: np.ndarray) -> Iterator[tuple[int, int]]:
        """The ranged reads [first, end) of blocks covering `blocks` (sorted, distinct): runs of adjacent blocks,
        at most READ_BYTES each."""
        most = max(1, READ_BYTES // (self.block_rows * self._row_bytes))
        first = prev = None
        for b in blocks.tolist():
            if first is not None and (b != prev + 1 or b - first >= most):
                yield first, prev + 1
                first = None
            first = b if first is None else first
            prev = b
        if first is not None:
            yield first, prev + 1

    def _check(self, first: int, end: int, data: bytes) -> None:
        """Blocks [first, end) of the images, as read, against their recorded sha256."""
        if self._digests is None:
            self._digests = self.art.read_bytes(self.digests_file)
        view, size = memoryview(data), self.block_rows * self._row_bytes
        for b in range(first, end):
            offset = (b - first) * size
            if hashlib.sha256(view[offset:offset + size]).digest() != self._digests[b * _DIGEST:(b + 1) * _DIGEST]:
                rows = f"{b * self.block_rows}-{min((b + 1) * self.block_rows, self._rows) - 1}"
                raise ArtifactError(f"artifact {self.art.uri}: file {self.images!r}, block {b} (rows {rows}), does not match "
                                    f"its sha256 in {self.digests_file!r} (corrupted): {_REMAKE}")


def open_split(art: Artifact, split: str) -> Split:
    """The `split` ("train" or "test") of a data artifact. Reads the manifest and checks that it describes the split's
    files consistently (ArtifactError naming the file and the fix if not); no image byte is read."""
    manifest = art.read_manifest()
    metrics = manifest.get("metrics")
    splits = metrics.get("splits") if isinstance(metrics, dict) else None
    if not isinstance(splits, dict):
        raise ArtifactError(f"artifact {art.uri} records no splits in its metrics (a data artifact of an earlier version, "
                            f"one {split}.safetensors file per split, or not a data artifact): {_REMAKE}")
    record = splits.get(split)
    if not _valid_record(record):
        raise ArtifactError(f"artifact {art.uri}: its metrics record no valid {split!r} split ({record!r}): {_REMAKE}")
    images, labels, digests = split_files(split)
    entries = manifest["files"]
    rows = record["rows"]
    expected = {images: rows * math.prod(record["shape"]), digests: _DIGEST * math.ceil(rows / record["block_rows"])}
    for name, size in expected.items():
        found = entries.get(name, {}).get("bytes")
        if found != size:
            raise ArtifactError(f"artifact {art.uri}: file {name!r} has {found} bytes in manifest.json, {size} for the "
                                f"{split} split its metrics record: {_REMAKE}")
    tensors = entries.get(labels, {}).get("tensors")
    if tensors != {"y": {"dtype": "int64", "shape": [rows]}}:
        raise ArtifactError(f"artifact {art.uri}: file {labels!r} holds {tensors} in manifest.json, not the int64 labels of "
                            f"the {rows} rows of the {split} split: {_REMAKE}")
    return Split(art, split, record, entries)


def _valid_record(record: Any) -> bool:
    return (isinstance(record, dict) and set(record) == {"rows", "shape", "dtype", "block_rows"}
            and type(record["rows"]) is int and record["rows"] >= 0 and record["dtype"] == "uint8"
            and isinstance(record["shape"], list) and len(record["shape"]) == 3
            and all(type(n) is int and n > 0 for n in record["shape"])
            and type(record["block_rows"]) is int and record["block_rows"] > 0)


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------


class SplitWriter:
    """The files of one split, written as its batches stream by: memory is bounded by a batch.

        writer = SplitWriter("train", batches, num_classes=10, on_batch=stats.add)
        art.write({**writer.files(), ...}, manifest, finish=lambda: {"metrics": ... writer.description() ...})

    `batches`: (x uint8 [n, C, H, W], y int64 [n]) pairs, consumed once, in order, while the images
    file is stored; every batch must have the first one's (C, H, W) (DataError otherwise, which stops
    the write: nothing is stored). `on_batch(x, y)` sees each batch as it passes. Once the files are
    written: `count` (rows), `shape` (C, H, W), `class_counts` (int64 [num_classes]) and
    `description()` (the split's record in the manifest's metrics).
    """

    def __init__(self, split: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int | None = None,
                 on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> None:
        self.split, self.num_classes, self.on_batch = split, num_classes, on_batch
        self._batches = batches
        self.count = 0
        self.shape: tuple[int, int, int] | None = None
        self.class_counts = torch.zeros(num_classes or 0, dtype=torch.int64)
        self._labels: list[torch.Tensor] = []
        self._digests = bytearray()
        self._started = self._done = False

    def files(self) -> dict[str, Any]:
        """The split's files as `Artifact.write` takes them, in the order they must be written: the images streamed,
        then the labels and the block digests, which exist once the images have passed."""
        images, labels, digests = split_files(self.split)
        return {images: self._images(), labels: lambda: {"y": torch.cat(self._finished()._labels)},
                digests: lambda: bytes(self._finished()._digests)}

    def description(self) -> dict[str, Any]:
        """The split's record in the manifest's metrics (`DataMetrics.splits[split]`): what `open_split` reads."""
        self._finished()
        return {"rows": self.count, "shape": list(self.shape), "dtype": "uint8", "block_rows": block_rows(self.shape)}

    def _finished(self) -> SplitWriter:
        if not self._done:
            raise RuntimeError(f"the {self.split} split's images have not been written yet: write its files in the order "
                               "files() gives them")
        return self

    def _images(self) -> Iterator[memoryview]:
        if self._started:
            raise RuntimeError(f"the {self.split} split's batches are consumed once")
        self._started = True
        block = hashlib.sha256()
        in_block = block_bytes = 0
        for i, (x, y) in enumerate(self._batches):
            self._check(i, x, y)
            if self.on_batch is not None:
                self.on_batch(x, y)
            if not len(x):
                continue
            if self.shape is None:
                self.shape = tuple(x.shape[1:])  # type: ignore[assignment]
                block_bytes = block_rows(self.shape) * math.prod(self.shape)
            view = memoryview(x.detach().cpu().contiguous().numpy()).cast("B")
            pos = 0
            while pos < len(view):  # the batch's bytes cut at block boundaries, each block's digest as it completes
                take = min(len(view) - pos, block_bytes - in_block)
                block.update(view[pos:pos + take])
                pos, in_block = pos + take, in_block + take
                if in_block == block_bytes:
                    self._digests += block.digest()
                    block, in_block = hashlib.sha256(), 0
            self._count(y)
            yield view
        if self.count == 0:
            raise DataError(f"the {self.split} split has no images: check the dataset's source and its split settings")
        if in_block:
            self._digests += block.digest()
        self._done = True

    def _check(self, i: int, x: Any, y: Any) -> None:
        where = f"the {self.split} split, batch {i}"
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
            what = _described(x)
            raise DataError(f"{where}: images are {what}, not uint8 [n, C, H, W]: fix the data source")
        if self.shape is not None and len(x) and tuple(x.shape[1:]) != self.shape:
            raise DataError(f"{where}: images of shape {list(x.shape[1:])}, the batches before were {list(self.shape)}: "
                            "every image of a split must have one size (set dataset.image_size)")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
            what = _described(y)
            raise DataError(f"{where}: labels are {what}, not int64 [{len(x)}] (one per image): fix the data source")
        if len(y) and (int(y.min()) < 0 or (self.num_classes is not None and int(y.max()) >= self.num_classes)):
            bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
            classes = f"from 0 to {self.num_classes - 1}" if self.num_classes is not None else "(0 or more)"
            raise DataError(f"{where}: label {bad} is not a class index {classes}: fix the data source")

    def _count(self, y: torch.Tensor) -> None:
        self.count += len(y)
        self._labels.append(y.detach().cpu().clone())
        counts = torch.bincount(y.cpu(), minlength=len(self.class_counts))
        if len(counts) > len(self.class_counts):
            counts[: len(self.class_counts)] += self.class_counts
            self.class_counts = counts
        else:
            self.class_counts += counts


def _described(t: Any) -> str:
    """A batch's tensor as a message names it: "int32 [10]"."""
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
