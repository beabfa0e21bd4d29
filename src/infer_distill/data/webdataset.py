"""The WebDataset source: tar shards in a folder or under an S3 prefix, streamed one at a time.

`dataset.root` is the folder or `s3://bucket/prefix`; `dataset.train_shards` and `dataset.test_shards` are
brace patterns of shard names under it (`train-{000000..000146}.tar`, `{a,b}.tar`), read in their expanded
order. A shard is read as a stream (a local file, or the body of one S3 GET resumed where it broke off),
member by member in tar order, so memory holds one member beyond the batches being decoded.

A sample is the consecutive members sharing a key: the member's name up to the first dot of its file
name (`n01440764/0001.jpg` and `n01440764/0001.cls` are the sample `n01440764/0001`), as the WebDataset
convention has it. It needs exactly one image (.jpg .jpeg .png .webp .bmp) and one label (.cls: the class
index as decimal text); other members (.json, .txt, ...) and names without an extension or starting with a
dot are skipped. The class names are the lines of `classes.txt` in dataset.root (line i names label i),
else `dataset.num_classes` names them '0', '1', .... Images are decoded as the folder sources decode
theirs (the same resize and crop, the same refusals).
"""
from __future__ import annotations

import gzip
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import IO

from infer_distill.config.schema import DatasetConfig
from infer_distill.data.folders import IMAGE_MAX_BYTES, Job, _decode, decoded_batches, encoded_batches, first_size
from infer_distill.data.s3prefix import S3Prefix
from infer_distill.data.stream import Batch, DecodeSettings, EncodedBatch, Source, SourceSplit
from infer_distill.data.tensors import IMAGE_EXTENSIONS
from infer_distill.errors import ConfigError, DataError
from infer_distill.storage.local import file_kind, read_regular

CLASSES_FILE = "classes.txt"
CLASSES_MAX_BYTES = 64 * 1024 * 1024  # a million class names of 60 characters
LABEL_MAX_BYTES = 64  # a class index as text, with room for spaces and a newline
MAX_SHARDS = 1_000_000  # a pattern expanding to more is a typo ({0..999999999}), refused before it fills memory

_IMAGE_EXTS = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)

# ----------------------------------------------------------------------------------------
# Brace patterns
# ----------------------------------------------------------------------------------------


def expand_braces(pattern: str, field: str) -> list[str]:
    """Every name `pattern` stands for, in order: `{a,b}` lists each alternative, `{0..9}` / `{000..146}` a range
    (zero-padded to the width of its first bound when that has a leading zero); groups nest and multiply."""
    names = _expand(pattern, field, pattern)
    if len(names) > MAX_SHARDS:
        raise ConfigError(f"{field}={pattern!r} expands to {len(names):,} names, over {MAX_SHARDS:,}: check the ranges")
    return names


def _expand(text: str, field: str, pattern: str) -> list[str]:
    open_at = text.find("{")
    if open_at < 0:
        if "}" in text:
            raise ConfigError(f"{field}={pattern!r}: a '}}' without its '{{'; braces are {{a,b}} lists or {{0..9}} ranges")
        return [text]
    depth, commas = 0, []
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                close_at = i
                break
        elif text[i] == "," and depth == 1:
            commas.append(i)
    else:
        raise ConfigError(f"{field}={pattern!r}: a '{{' without its '}}'; braces are {{a,b}} lists or {{0..9}} ranges")
    head, body, tail = text[:open_at], text[open_at + 1:close_at], text[close_at + 1:]
    if commas:
        cuts = [open_at, *commas, close_at]
        options = [x for a, b in zip(cuts, cuts[1:]) for x in _expand(text[a + 1:b], field, pattern)]
    else:
        bounds = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if not bounds:
            raise ConfigError(f"{field}={pattern!r}: '{{{body}}}' is neither a list {{a,b}} nor a range {{0..9}}")
        first, last = bounds.groups()
        width = len(first) if first.startswith("0") and len(first) > 1 else 0
        lo, hi = int(first), int(last)
        if hi - lo + 1 > MAX_SHARDS:
            raise ConfigError(f"{field}={pattern!r}: the range {{{body}}} has over {MAX_SHARDS:,} numbers: check it")
        step = 1 if hi >= lo else -1
        options = [str(n).zfill(width) for n in range(lo, hi + step, step)]
    rest = _expand(tail, field, pattern)
    return [head + option + after for option in options for after in rest]


# ----------------------------------------------------------------------------------------
# Where the shards are: a folder or an S3 prefix
# ----------------------------------------------------------------------------------------


class _Folder:
    def __init__(self, root: str) -> None:
        self.root = Path(root).expanduser()

    def where(self, name: str) -> str:
        return str(self.root / name)

    def listing(self, names: list[str]) -> dict[str, tuple[int, str]]:
        """{name: (size, modification time)} of those of `names` that are regular files."""
        found = {}
        for name in names:
            try:
                st = os.stat(self.root / name)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[name] = (st.st_size, str(st.st_mtime_ns))
        return found

    def read_small(self, name: str, limit: int) -> bytes | None:
        try:
            return read_regular(self.root / name, limit)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise DataError(f"cannot read {self.where(name)} ({e.strerror}): replace it with a text file") from None

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        # Opened without blocking and checked before a byte is read: a FIFO named like a shard would block forever
        path = self.root / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise DataError(f"shard {path} cannot be opened ({e.strerror}): check dataset.root and the shard "
                            "pattern") from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise DataError(f"shard {path} is {file_kind(mode)}, not a tar file: replace it with the shard")
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb", buffering=1024 * 1024, closefd=False) as f:
                yield f
        finally:
            os.close(fd)


def _location(root: str) -> _Folder | S3Prefix:
    return S3Prefix(root) if root.startswith("s3://") else _Folder(root)


# ----------------------------------------------------------------------------------------
# The source
# ----------------------------------------------------------------------------------------


def _shards(cfg: DatasetConfig) -> dict[str, list[str]]:
    """{"train": shard names, "test": shard names}, relative to dataset.root."""
    found = {}
    for split, field in (("train", "train_shards"), ("test", "test_shards")):
        pattern = getattr(cfg, field)
        if pattern is None:
            raise ConfigError(f"dataset.{field} must be set for dataset.name=webdataset, e.g. '{split}-{{000000..000009}}.tar'")
        names = expand_braces(pattern, f"dataset.{field}")
        for name in names:
            if name.startswith("/") or ".." in name.split("/") or "://" in name:
                raise ConfigError(f"dataset.{field}={pattern!r}: {name!r} is not under dataset.root; give shard names "
                                  "relative to dataset.root (which may be s3://bucket/prefix)")
        found[split] = names
    return found


def _root(cfg: DatasetConfig) -> str:
    if cfg.root is None:
        raise DataError("dataset.root must be set for dataset.name=webdataset: the folder or s3://bucket/prefix "
                        "holding the shards")
    return cfg.root


def open_webdataset(cfg: DatasetConfig) -> WebDatasetSource:
    return WebDatasetSource(cfg)


class WebDatasetSource(Source):
    def __init__(self, cfg: DatasetConfig) -> None:
        self.cfg, self.stats = cfg, None
        self.shards = _shards(cfg)
        self.location = _location(_root(cfg))
        self.classes = self._classes()
        self._size: tuple[int, int] | None = None

    def _classes(self) -> list[str]:
        where = self.location.where(CLASSES_FILE)
        raw = self.location.read_small(CLASSES_FILE, CLASSES_MAX_BYTES)
        if raw is None:
            if self.cfg.num_classes is None:
                raise DataError(f"dataset.root {self.cfg.root} has no {CLASSES_FILE}: add one (one class name per line, "
                                "line i naming label i) or set dataset.num_classes")
            return [str(i) for i in range(self.cfg.num_classes)]
        try:
            names = raw.decode("utf-8").removesuffix("\n").split("\n")
        except UnicodeDecodeError as e:
            raise DataError(f"{where} is not UTF-8 text (offset {e.start}): write one class name per line") from None
        names = [n.removesuffix("\r") for n in names]
        bad = next((i for i, n in enumerate(names) if not n.strip() or "/" in n or n in (".", "..")), None)
        if bad is not None:
            raise DataError(f"{where} line {bad + 1}: {names[bad]!r} is no class name (empty, '.', '..' or with a '/'): "
                            "write one class name per line")
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise DataError(f"{where} names the class {twice!r} twice: each line names another class")
        if self.cfg.num_classes is not None and self.cfg.num_classes != len(names):
            raise DataError(f"dataset.num_classes={self.cfg.num_classes} but {where} names {len(names)} classes: "
                            "unset dataset.num_classes or fix the file")
        return names

    def split(self, name: str) -> WebDatasetSplit:
        shards = self.shards[name]
        present = self.location.listing(shards)
        missing = [s for s in shards if s not in present]
        if missing:
            field = f"dataset.{name}_shards"
            raise DataError(f"shard {self.location.where(missing[0])} does not exist ({len(missing)} of the {len(shards)} "
                            f"shards {field}={getattr(self.cfg, f'{name}_shards')!r} names are missing): fix {field} "
                            "or dataset.root, or add the shards")
        limit = self.cfg.train_per_class if name == "train" else self.cfg.test_per_class
        return WebDatasetSplit(self, name, shards, limit)

    def decode_settings(self) -> DecodeSettings:
        return DecodeSettings(self.cfg.image_size, self.image_hw())

    def image_hw(self) -> tuple[int, int]:
        """(H, W) of every image: dataset.image_size squared where set, else the first training image's size."""
        if self._size is None:
            if self.cfg.image_size is not None:
                self._size = (self.cfg.image_size, self.cfg.image_size)
            else:
                with closing(self.split("train").samples()) as samples:  # the shard is closed once its first is read
                    where, data, _ = next(samples, (None, None, None))
                if where is None:
                    raise DataError(f"the train shards {self.cfg.train_shards!r} under {self.cfg.root} hold no samples")
                self._size = first_size(_decode(where, lambda: data, None), where)
        return self._size


class WebDatasetSplit(SourceSplit):
    def __init__(self, source: WebDatasetSource, name: str, shards: list[str], limit: int | None) -> None:
        self.source, self.name, self.shards, self.limit = source, name, shards, limit

    def samples(self) -> Iterator[tuple[str, bytes, int]]:
        """(where, image bytes, label) of the split's samples in order, at most `limit` per class: once every class
        has its `limit`, no further shard is read."""
        num_classes = len(self.source.classes)
        taken = [0] * num_classes
        full = 0
        for shard in self.shards:
            for where, data, label in _shard_samples(self.source.location, shard, num_classes):
                if self.limit is not None:
                    if taken[label] >= self.limit:
                        continue
                    taken[label] += 1
                    full += taken[label] == self.limit
                yield where, data, label
                if self.limit is not None and full == num_classes:
                    return

    def batches(self, batch_size: int, progress: bool = True) -> Iterator[Batch]:
        return decoded_batches(self._jobs(batch_size), self.source.cfg.image_size, self.source.image_hw(), self.name,
                               batch_size, progress=progress)

    def encoded(self, batch_size: int, pixels: bool = False, progress: bool = True) -> Iterator[EncodedBatch]:
        return encoded_batches(self._jobs(batch_size), self.source.cfg.image_size, self.source.image_hw(), self.name,
                               batch_size, progress=progress, pixels=pixels)

    def _jobs(self, batch_size: int) -> Iterator[tuple[list[Job], list[int]]]:
        batch: list[Job] = []
        labels: list[int] = []
        for where, data, label in self.samples():
            batch.append((where, lambda data=data: data))
            labels.append(label)
            if len(batch) == batch_size:
                yield batch, labels
                batch, labels = [], []
        if batch:
            yield batch, labels


# ----------------------------------------------------------------------------------------
# One shard: tar members -> samples
# ----------------------------------------------------------------------------------------


def _shard_samples(location: _Folder | S3Prefix, shard: str, num_classes: int) -> Iterator[tuple[str, bytes, int]]:
    """(where, image bytes, label) of each sample of `shard`, in tar order, reading it as a stream."""
    path = location.where(shard)
    key: str | None = None
    image: tuple[str, bytes] | None = None
    label: int | None = None
    last = "(none: at its start)"

    def sample() -> tuple[str, bytes, int]:
        if image is None or label is None:
            lacks = "an image (" + ", ".join(f".{e}" for e in sorted(_IMAGE_EXTS)) + ")" if image is None else "a .cls label"
            raise DataError(f"shard {path}: sample {key!r} lacks {lacks}; each sample needs both, as consecutive "
                            f"members <key>.<image extension> and <key>.cls: rebuild the shard")
        return f"{path}:{image[0]}", image[1], label

    with location.open(shard) as f:
        try:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    last = member.name
                    if member.isdir():
                        continue
                    base = member.name.rsplit("/", 1)[-1]
                    if base.startswith(".") or "." not in base:
                        continue  # hidden files and names without an extension belong to no sample
                    stem, ext = base.split(".", 1)
                    member_key, ext = member.name[:len(member.name) - len(base)] + stem, ext.lower()
                    if member_key != key:
                        if key is not None:
                            yield sample()
                        key, image, label = member_key, None, None
                    if ext not in _IMAGE_EXTS and ext != "cls":
                        continue
                    if not member.isfile():
                        raise DataError(f"shard {path}: member {member.name!r} is a link or special file, not the "
                                        "file itself: rebuild the shard with the files")
                    if ext == "cls" and label is not None:
                        raise DataError(f"shard {path}: sample {key!r} has two labels; member {member.name!r} is the "
                                        "second: keep one .cls member per sample")
                    if ext == "cls":
                        label = _label(path, member, _member_bytes(tar, member, LABEL_MAX_BYTES, path), num_classes)
                    elif image is not None:
                        raise DataError(f"shard {path}: sample {key!r} has two images, {image[0]!r} and "
                                        f"{member.name!r}: keep one image per sample")
                    else:
                        image = (member.name, _member_bytes(tar, member, IMAGE_MAX_BYTES, path))
                # tarfile ends a stream quietly where a header is cut or missing; an intact archive ends with a
                # zero block, which tarfile has read when it stops there
                if getattr(tar.fileobj, "pos", tar.offset + tarfile.BLOCKSIZE) < tar.offset + tarfile.BLOCKSIZE:
                    raise tarfile.ReadError("it ends without the end-of-archive block: the shard is cut short")
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise DataError(f"shard {path} is not a readable tar archive (after member {last!r}: {e}): replace it "
                            "with an intact shard") from None
    if key is not None:
        yield sample()


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int, path: str) -> bytes:
    if member.size > limit:  # as the member's header says: refused before a byte of it is read
        raise DataError(f"shard {path}: member {member.name!r} is {member.size:,} bytes, over the limit of {limit:,}: "
                        "remove it from the shard")
    extracted = tar.extractfile(member)
    assert extracted is not None  # a regular file, checked by the caller
    data = extracted.read()
    if len(data) != member.size:
        raise tarfile.ReadError(f"member {member.name!r} is cut short")
    return data


def _label(path: str, member: tarfile.TarInfo, raw: bytes, num_classes: int) -> int:
    text = raw.decode("utf-8", "replace").strip()
    if not re.fullmatch(r"-?[0-9]+", text):
        raise DataError(f"shard {path}: member {member.name!r} holds {text[:40]!r}, not a class index: a .cls member "
                        "holds the label as a whole number written in decimal")
    value = int(text)
    if not 0 <= value < num_classes:
        raise DataError(f"shard {path}: member {member.name!r} holds the label {value}, outside 0..{num_classes - 1} "
                        f"for the {num_classes} classes: fix the label, or the classes ({CLASSES_FILE} in dataset.root "
                        "or dataset.num_classes)")
    return value


# ----------------------------------------------------------------------------------------
# What a load reads, without reading it
# ----------------------------------------------------------------------------------------


def listing_lines(cfg: DatasetConfig) -> list[str]:
    """One line per file a load reads (the shards of both splits, classes.txt): name, size and modification time
    (a folder) or ETag (S3), or "missing"; nothing is read but the listing."""
    names = [*dict.fromkeys(n for split in _shards(cfg).values() for n in split), CLASSES_FILE]
    present = _location(_root(cfg)).listing(names)
    return [f"{n}\t{present[n][0]}\t{present[n][1]}\n" if n in present else f"{n}\tmissing\n" for n in names]
