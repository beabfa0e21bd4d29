"""A split of a data artifact as prepare-data writes it and the stages read it: by rows, in bounded memory.

A stage asks a `Split` for what it uses: select-subsets the labels, a UFC shard the rows of its
subsets, a student the test split batch by batch. `open_split(artifact, "train")` gives one;
the images come back as uint8 [n, C, H, W], whichever way the split stores them.

A split stores its images one of two ways, its record's `encoding` (dataset.storage chooses):
"raw" rows of decoded pixels, or "source": the source's image files as they are (JPEG, PNG, ...),
decoded where a stage reads them by the function prepare-data decodes raw rows with
(data.folders.decode_image), so a row reads the same bytes either way. Per split (`train`, `test`),
files of the data artifact:
    <split>.images             raw: the images, uint8, C-order [N, C, H, W], one row after another, no header;
                               source: the image files, one after another, no header
    <split>.offsets.safetensors  source only: {"offsets": int64 [N + 1]}, row i is bytes [offsets[i], offsets[i+1])
    <split>.labels.safetensors {"y": int64 [N]}
    <split>.images.sha256      the sha256 (32 raw bytes) of each block of `block_rows` consecutive rows of
                               <split>.images, the last block holding what is left (source: a block is one row)
and, in the manifest's metrics (`DataMetrics.splits[split]`, the record the writer's `description` gives):
    {"rows": N, "shape": [C, H, W], "dtype": "uint8", "block_rows": R, "encoding": "raw"}
    {"rows": N, "shape": [3, H, W], "dtype": "uint8", "block_rows": 1, "encoding": "source", "image_size": S or null}
where `image_size` is the side each image file is resized and center-cropped to as it is decoded (null: none).
A raw block is the fewest whole rows totalling at least BLOCK_BYTES (4 KiB): 2 rows of a 32 px RGB
image, one row of a 224 px one, so a read of scattered rows (a UFC shard's one image per class) fetches
little beyond them; the digests cost 32 bytes a block (under 1 % of 32 px rows, 0.02 % of 224 px ones). Every
file's size and sha256 are in the manifest as for any artifact.

Reading rows fetches only the blocks that hold them, adjacent blocks in one ranged read of at most
READ_BYTES, up to FETCHES ranged reads at once (on S3 a read of scattered rows waits on each request's latency),
and checks each block against its sha256 (read verified whole) before a byte of it is
used; a file of at most SMALL_FILE_BYTES, or of at most WHOLE_FILE_BYTES when a read asks for half of its
bytes or more, is read whole once, checked against its manifest sha256, and kept. Image files are decoded on
a thread pool of the usable cores (PIL releases the GIL). Memory grows with what is asked (plus a read), the labels
(8 bytes a row), the offsets (8 bytes a row) and the block digests (32 bytes a block), never with the images of the split.

Written by `SplitWriter` (raw) or `EncodedSplitWriter` (source), streaming: rows arrive batch by batch, memory is
bounded by a batch, and N need not be known in advance.
"""
from __future__ import annotations

import array
import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from infer_distill.data.folders import decode_image
from infer_distill.data.stream import DecodeSettings, EncodedBatch
from infer_distill.errors import ArtifactError, DataError
from infer_distill.runtime.threads import usable_cpus
from infer_distill.storage.artifact import Artifact

BLOCK_BYTES = 4 * 1024                # a block: the fewest whole rows totalling at least this
SMALL_FILE_BYTES = 1024 * 1024        # an images file up to this is read whole (one request, one digest) and kept
WHOLE_FILE_BYTES = 64 * 1024 * 1024   # ... and up to this, when a read asks for half of its bytes or more
READ_BYTES = 16 * 1024 * 1024         # the most one ranged read fetches (unless one block is larger)
FETCHES = 8                           # ranged reads in flight at once
_DIGEST = 32                          # bytes of a sha256
_REMAKE = "re-run stage prepare-data to remake it"


def split_files(split: str) -> tuple[str, str, str]:
    """The files of `split` in a data artifact: its images, its labels, its images' block digests."""
    return f"{split}.images", f"{split}.labels.safetensors", f"{split}.images.sha256"


def offsets_file(split: str) -> str:
    """The file of a split stored as image files ("source" encoding) that says where each row's file begins."""
    return f"{split}.offsets.safetensors"


def block_rows(shape: Sequence[int]) -> int:
    """The rows of a block of images of `shape` (C, H, W): the fewest whole rows totalling at least BLOCK_BYTES."""
    return max(1, math.ceil(BLOCK_BYTES / math.prod(shape)))


T = TypeVar("T")
R = TypeVar("R")


def _concurrently(work: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """[work(item) for item in items], up to `workers` at once (threads: ranged reads wait on I/O, PIL decodes
    without the GIL); the first failure, in order, is raised."""
    if len(items) <= 1 or workers <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(work, items))


def _runs(units: Sequence[int], bounds: Callable[[int], tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranged reads [first, end) covering `units` (sorted, distinct blocks or rows, whose bytes are
    bounds(unit) = [start, end)): runs of adjacent units, each at most READ_BYTES unless one unit is larger."""
    runs: list[tuple[int, int]] = []
    first = prev = None
    for u in units:
        if first is not None and (u != prev + 1 or bounds(u)[1] - bounds(first)[0] > READ_BYTES):
            runs.append((first, prev + 1))
            first = None
        first = u if first is None else first
        prev = u
    if first is not None:
        runs.append((first, prev + 1))
    return runs


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------


class Split:
    """One split of a data artifact, read by rows (see the module's docstring for what is read and checked)."""

    def __init__(self, art: Artifact, split: str, record: Mapping[str, Any], entries: Mapping[str, Any]) -> None:
        self.art, self.name = art, split
        self.images, self.labels_file, self.digests_file = split_files(split)
        self.offsets_file = offsets_file(split)
        self.encoding: str = record["encoding"]
        self._image_size: int | None = record.get("image_size")
        self._rows: int = record["rows"]
        self._shape: tuple[int, int, int] = tuple(record["shape"])  # type: ignore[assignment]
        self.block_rows: int = record["block_rows"]
        self._row_bytes = math.prod(self._shape)
        self._file_bytes: int = entries[self.images]["bytes"]
        self._labels: torch.Tensor | None = None
        self._digests: bytes | None = None
        self._offsets: np.ndarray | None = None
        self._whole: torch.Tensor | None = None    # raw: the images file, read whole
        self._whole_files: bytes | None = None     # source: the images file, read whole
        self._kept: tuple[int, int, bytes] = (0, 0, b"")  # raw: the blocks [first, end) of the last ranged read

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
        """The split's images, uint8, in bytes: what holding it whole takes (decoded, however it is stored)."""
        return self._rows * self._row_bytes

    @property
    def stored_bytes(self) -> int:
        """The bytes of its images file: what reading it whole fetches."""
        return self._file_bytes

    def read(self, rows: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """uint8 [len(rows), C, H, W], in the order given (a row may repeat)."""
        index = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self._rows):
            bad = int(index[(index < 0) | (index >= self._rows)][0])
            raise IndexError(f"row {bad} of the {self.name} split of {self.art.uri}, which has {self._rows} rows")
        return self._read_raw(index) if self.encoding == "raw" else self._read_files(index)

    def read_all(self) -> torch.Tensor:
        """Every image, uint8 [N, C, H, W]."""
        if self.encoding == "raw" and self._file_bytes <= WHOLE_FILE_BYTES:
            # a copy of the kept file: a caller that changes it in place never changes what later reads return
            return self._all().clone()
        return self.read(torch.arange(self._rows))

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images uint8, labels int64) of consecutive rows, in order, at most `batch_size` each."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: give at least 1")
        for start in range(0, len(self), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(self)))
            yield self.read(rows), self.labels[rows]

    def _whole_read(self, asked_bytes: int) -> bool:
        """Whether a read asking for `asked_bytes` of the images file reads it whole (the module's docstring)."""
        return (self._file_bytes <= SMALL_FILE_BYTES
                or self._file_bytes <= WHOLE_FILE_BYTES and 2 * asked_bytes >= self._file_bytes)

    # -- raw rows --------------------------------------------------------------------------

    def _read_raw(self, index: torch.Tensor) -> torch.Tensor:
        if self._whole is not None or self._file_bytes <= SMALL_FILE_BYTES:
            return self._all()[index]
        order = np.argsort(index.numpy(), kind="stable")
        ordered = index.numpy()[order]
        blocks = np.unique(ordered // self.block_rows)
        block_bytes = self.block_rows * self._row_bytes
        if self._whole_read(len(blocks) * block_bytes):
            return self._all()[index]  # half the file or more: one read of all of it, kept for the next
        out = np.empty((len(index), *self._shape), dtype=np.uint8)  # numpy: a copy per read, no torch op per read
        reads = _runs(blocks.tolist(), lambda b: (b * block_bytes, (b + 1) * block_bytes))
        kept = self._kept
        self._block_digests()  # read once, here, before the reads that check against them run at once
        datas = _concurrently(lambda r: self._blocks(*r, kept), reads, FETCHES)
        for (first, end), data in zip(reads, datas):
            begin_row, end_row = first * self.block_rows, min(end * self.block_rows, self._rows)
            a, b = np.searchsorted(ordered, [begin_row, end_row])
            block = np.frombuffer(data, dtype=np.uint8).reshape(-1, *self._shape)
            out[order[a:b]] = block[ordered[a:b] - begin_row]
        if reads and not (kept[0] <= reads[-1][0] and reads[-1][1] <= kept[1]):
            self._kept = (*reads[-1], bytes(datas[-1]))
        return torch.from_numpy(out)

    def _all(self) -> torch.Tensor:
        """The (small) images file read whole once, checked against its manifest sha256, and kept."""
        if self._whole is None:
            data = self.art.read_bytes(self.images)
            self._whole = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()).reshape(self._rows, *self._shape)
        return self._whole

    def _blocks(self, first: int, end: int, kept: tuple[int, int, bytes]) -> bytes | memoryview:
        """Blocks [first, end) of the images, verified. `kept` is the last read (the reader keeps it as the new last
        read): a stage that reads class after class (or batch after batch) asks again for the block where one ends
        and the next begins, and gets it from there."""
        block_bytes = self.block_rows * self._row_bytes
        kept_first, kept_end, held = kept
        if kept_first <= first and end <= kept_end:
            return memoryview(held)[(first - kept_first) * block_bytes:(end - kept_first) * block_bytes]
        start = kept_end if kept_first <= first < kept_end else first  # the blocks already here are not read again
        end_byte = min(end * block_bytes, self._file_bytes)
        data = self.art.read_range(self.images, start * block_bytes, end_byte - start * block_bytes)
        self._check(start, end, data, block_bytes)
        if start > first:
            data = bytes(memoryview(held)[(first - kept_first) * block_bytes:]) + data
        return data

    # -- image files ("source" encoding) ---------------------------------------------------

    def _read_files(self, index: torch.Tensor) -> torch.Tensor:
        offsets = self._row_offsets()
        wanted, first_at, inverse = np.unique(index.numpy(), return_index=True, return_inverse=True)
        starts, ends = offsets[wanted], offsets[wanted + 1]
        if self._whole_files is not None or self._whole_read(int((ends - starts).sum())):
            if self._whole_files is None:
                self._whole_files = self.art.read_bytes(self.images)  # checked whole against its manifest sha256
            whole = memoryview(self._whole_files)
            files = [whole[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
        else:
            files = self._fetch_files(wanted.tolist(), offsets)
        out = np.empty((len(index), *self._shape), dtype=np.uint8)
        size = self._shape[1:]

        def decode(part: range) -> None:
            for i in part:
                row = int(wanted[i])
                try:
                    image = decode_image(f"row {row}", bytes(files[i]), self._image_size, size, self.name)
                except DataError as e:
                    raise DataError(f"artifact {self.art.uri}: row {row} of the {self.name} split cannot be decoded as "
                                    f"it was checked when stored ({e}): replace that image in the dataset and re-run "
                                    "stage prepare-data") from None
                out[first_at[i]] = image.transpose(2, 0, 1)

        workers = usable_cpus()
        step = max(1, -(-len(wanted) // workers))
        _concurrently(decode, [range(s, min(s + step, len(wanted))) for s in range(0, len(wanted), step)], workers)
        again = np.flatnonzero(np.arange(len(index)) != first_at[inverse])  # a row asked twice is decoded once
        out[again] = out[first_at[inverse[again]]]
        return torch.from_numpy(out)

    def _fetch_files(self, rows: list[int], offsets: np.ndarray) -> list[bytes | memoryview]:
        """The image files of `rows` (sorted, distinct), each checked against its sha256: runs of adjacent rows in one
        ranged read of at most READ_BYTES, up to FETCHES reads at once."""
        def fetch(run: tuple[int, int]) -> list[memoryview]:
            first, end = run
            base = int(offsets[first])
            data = self.art.read_range(self.images, base, int(offsets[end]) - base)
            self._check_files(first, end, data, offsets)
            view = memoryview(data)
            return [view[int(offsets[r]) - base:int(offsets[r + 1]) - base] for r in range(first, end)]

        runs = _runs(rows, lambda r: (int(offsets[r]), int(offsets[r + 1])))
        self._block_digests()  # read once, here, before the reads that check against them run at once
        fetched = _concurrently(fetch, runs, FETCHES)
        by_row = {r: f for (first, end), files in zip(runs, fetched) for r, f in zip(range(first, end), files)}
        return [by_row[r] for r in rows]

    def _row_offsets(self) -> np.ndarray:
        """int64 [N + 1]: where each row's image file begins in the images file (read verified once, checked whole)."""
        if self._offsets is None:
            offsets = self.art.read_tensors(self.offsets_file)["offsets"].numpy()
            if offsets[0] != 0 or offsets[-1] != self._file_bytes or not (np.diff(offsets) > 0).all():
                raise ArtifactError(f"artifact {self.art.uri}: file {self.offsets_file!r} does not cut {self.images!r} "
                                    f"({self._file_bytes} bytes) into {self._rows} non-empty image files: {_REMAKE}")
            self._offsets = offsets
        return self._offsets

    # -- digests ---------------------------------------------------------------------------

    def _check(self, first: int, end: int, data: bytes, block_bytes: int) -> None:
        """Raw blocks [first, end) of the images, as read, against their recorded sha256."""
        view = memoryview(data)
        for b in range(first, end):
            offset = (b - first) * block_bytes
            self._check_block(b, view[offset:offset + block_bytes])

    def _check_files(self, first: int, end: int, data: bytes, offsets: np.ndarray) -> None:
        """The image files of rows [first, end), as read, each against its recorded sha256."""
        view, base = memoryview(data), int(offsets[first])
        for r in range(first, end):
            self._check_block(r, view[int(offsets[r]) - base:int(offsets[r + 1]) - base])

    def _block_digests(self) -> bytes:
        if self._digests is None:
            self._digests = self.art.read_bytes(self.digests_file)
        return self._digests

    def _check_block(self, b: int, data: memoryview) -> None:
        if hashlib.sha256(data).digest() != self._block_digests()[b * _DIGEST:(b + 1) * _DIGEST]:
            first, last = b * self.block_rows, min((b + 1) * self.block_rows, self._rows) - 1
            rows = f"row {first}" if first == last else f"rows {first}-{last}"
            raise ArtifactError(f"artifact {self.art.uri}: file {self.images!r}, block {b} ({rows}), does not match "
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
        raise ArtifactError(f"artifact {art.uri}: its metrics record no valid {split!r} split ({record!r}; a data "
                            f"artifact of an earlier version records no 'encoding'): {_REMAKE}")
    images, labels, digests = split_files(split)
    entries = manifest["files"]
    rows = record["rows"]
    expected = {digests: _DIGEST * math.ceil(rows / record["block_rows"])}
    tensors_expected = {labels: {"y": {"dtype": "int64", "shape": [rows]}}}
    if record["encoding"] == "raw":
        expected[images] = rows * math.prod(record["shape"])
    else:
        tensors_expected[offsets_file(split)] = {"offsets": {"dtype": "int64", "shape": [rows + 1]}}
        if type(entries.get(images, {}).get("bytes")) is not int:
            raise ArtifactError(f"artifact {art.uri}: file {images!r} of the {split} split is not in manifest.json: {_REMAKE}")
    for name, size in expected.items():
        found = entries.get(name, {}).get("bytes")
        if found != size:
            raise ArtifactError(f"artifact {art.uri}: file {name!r} has {found} bytes in manifest.json, {size} for the "
                                f"{split} split its metrics record: {_REMAKE}")
    for name, held in tensors_expected.items():
        tensors = entries.get(name, {}).get("tensors")
        if tensors != held:
            raise ArtifactError(f"artifact {art.uri}: file {name!r} holds {tensors} in manifest.json, not the {held} of "
                                f"the {rows} rows of the {split} split: {_REMAKE}")
    return Split(art, split, record, entries)


def _valid_record(record: Any) -> bool:
    if not isinstance(record, dict) or record.get("encoding") not in ("raw", "source"):
        return False
    keys = {"rows", "shape", "dtype", "block_rows", "encoding"} | ({"image_size"} if record["encoding"] == "source" else set())
    if not (set(record) == keys
            and type(record["rows"]) is int and record["rows"] >= 0 and record["dtype"] == "uint8"
            and isinstance(record["shape"], list) and len(record["shape"]) == 3
            and all(type(n) is int and n > 0 for n in record["shape"])
            and type(record["block_rows"]) is int and record["block_rows"] > 0):
        return False
    if record["encoding"] == "raw":
        return True
    size = record["image_size"]
    return (record["block_rows"] == 1 and record["shape"][0] == 3
            and (size is None or type(size) is int and size > 0 and record["shape"][1:] == [size, size]))


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------


class SplitWriter:
    """The files of one split, its images stored as raw rows, written as its batches stream by: memory is bounded
    by a batch.

        writer = SplitWriter("train", batches, num_classes=10, on_batch=stats.add)
        art.write({**writer.files(), ...}, manifest, finish=lambda: {"metrics": ... writer.description() ...})

    `batches`: (x uint8 [n, C, H, W], y int64 [n]) pairs, consumed once, in order, while the images
    file is stored; every batch must have the first one's (C, H, W) (DataError otherwise, which stops
    the write: nothing is stored). `on_batch(x, y)` sees each batch as it passes. Once the files are
    written: `count` (rows), `shape` (C, H, W), `class_counts` (int64 [num_classes]) and
    `description()` (the split's record in the manifest's metrics).
    """

    def __init__(self, split: str, batches: Iterable[Any], num_classes: int | None = None,
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
        return {images: self._streamed(), labels: lambda: {"y": torch.cat(self._finished()._labels)},
                digests: lambda: bytes(self._finished()._digests)}

    def description(self) -> dict[str, Any]:
        """The split's record in the manifest's metrics (`DataMetrics.splits[split]`): what `open_split` reads."""
        self._finished()
        return {"rows": self.count, "shape": list(self.shape), "dtype": "uint8", "block_rows": block_rows(self.shape),
                "encoding": "raw"}

    def _finished(self) -> SplitWriter:
        if not self._done:
            raise RuntimeError(f"the {self.split} split's images have not been written yet: write its files in the order "
                               "files() gives them")
        return self

    def _streamed(self) -> Iterator[Any]:
        if self._started:
            raise RuntimeError(f"the {self.split} split's batches are consumed once")
        self._started = True
        yield from self._images()
        if self.count == 0:
            raise DataError(f"the {self.split} split has no images: check the dataset's source and its split settings")
        self._done = True

    def _images(self) -> Iterator[memoryview]:
        """The images file's bytes, batch by batch, the block digests appended as each block completes."""
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
        if in_block:
            self._digests += block.digest()

    def _check(self, i: int, x: Any, y: Any) -> None:
        where = f"the {self.split} split, batch {i}"
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
            what = _described(x)
            raise DataError(f"{where}: images are {what}, not uint8 [n, C, H, W]: fix the data source")
        if self.shape is not None and len(x) and tuple(x.shape[1:]) != self.shape:
            raise DataError(f"{where}: images of shape {list(x.shape[1:])}, the batches before were {list(self.shape)}: "
                            "every image of a split must have one size (set dataset.image_size)")
        self._check_labels(where, len(x), y)

    def _check_labels(self, where: str, n: int, y: Any) -> None:
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (n,):
            what = _described(y)
            raise DataError(f"{where}: labels are {what}, not int64 [{n}] (one per image): fix the data source")
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


class EncodedSplitWriter(SplitWriter):
    """The files of one split, its images stored as the source's image files ("source" encoding), written as its
    batches stream by, as `SplitWriter` writes raw rows (the same counts, labels and description).

    `batches`: `SourceSplit.encoded` batches (files' bytes, y int64 [n], x uint8 [n, 3, H, W] or None), the files
    already checked as decoding them would check them; `settings`: how they decode (the source's `decode_settings`).
    `on_batch(x, y)` sees each batch that comes with its decoded images x.
    """

    def __init__(self, split: str, batches: Iterable[EncodedBatch], settings: DecodeSettings,
                 num_classes: int | None = None, on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None
                 ) -> None:
        super().__init__(split, batches, num_classes, on_batch)
        self.settings = settings
        self._offsets = array.array("q", [0])  # 8 bytes a row

    def files(self) -> dict[str, Any]:
        return {**super().files(), offsets_file(self.split): lambda: {
            "offsets": torch.from_numpy(np.array(self._finished()._offsets, dtype=np.int64))}}

    def description(self) -> dict[str, Any]:
        self._finished()
        return {"rows": self.count, "shape": list(self.shape), "dtype": "uint8", "block_rows": 1, "encoding": "source",
                "image_size": self.settings.image_size}

    def _images(self) -> Iterator[bytes]:
        for i, (files, y, x) in enumerate(self._batches):
            where = f"the {self.split} split, batch {i}"
            if not isinstance(files, list) or not all(isinstance(f, bytes) and f for f in files):
                raise DataError(f"{where}: image files are {type(files).__name__}, not a list of non-empty bytes: fix "
                                "the data source")
            self._check_labels(where, len(files), y)
            if x is not None:
                self._check(i, x, y)
                if self.on_batch is not None:
                    self.on_batch(x, y)
            if not files:
                continue
            self.shape = (3, *self.settings.size)
            for f in files:
                self._digests += hashlib.sha256(f).digest()
                self._offsets.append(self._offsets[-1] + len(f))
            self._count(y)
            yield b"".join(files)


def _described(t: Any) -> str:
    """A batch's tensor as a message names it: "int32 [10]"."""
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
