"""Image files: one view over directories, zips and directories of zips, and another over an S3 prefix; the folder
sources (imagefolder, tiny-imagenet, imagenet), listed when opened; and the decoding of image files into batches on a
thread pool, which the WebDataset source shares.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import functools
import io
import os
import stat
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from infer_distill.config.schema import DatasetConfig
from infer_distill.data.augment import _NATIVE_SIZE
from infer_distill.data.s3prefix import S3Prefix
from infer_distill.data.stream import Batch, DecodeSettings, EncodedBatch, Source, SourceSplit, Stats
from infer_distill.data.tensors import IMAGE_EXTENSIONS, IMAGENET_STATS
from infer_distill.errors import DataError
from infer_distill.runtime.progress import progress_bar
from infer_distill.runtime.threads import usable_cpus
from infer_distill.storage.local import file_kind, read_regular

# ----------------------------------------------------------------------------------------
# Image files: one view over directories, zips and directories of zips
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _File:
    archive: Path | None  # the zip holding the file; None: a plain file
    name: str  # the member name inside the archive, or the file's path

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}" if self.archive else self.name


class _Tree:
    """A dataset root read the same way whether it is a directory, a zip, or a directory of zips.

    `split(name)` lists one top-level folder as {path relative to it: file}, paths in posix style
    with directories ending in "/" (as zip member names do), so empty class folders show too.
    """

    threads = None  # reading a local file is the cores' work: one decoding thread per core

    def __init__(self, root: str | None):
        if root is None:
            raise DataError("dataset.root must be set: a directory or .zip holding <split>/<class>/<file>")
        self.root = Path(root).expanduser()
        try:
            mode = os.stat(self.root).st_mode
        except FileNotFoundError:
            raise DataError(f"dataset.root {self.root} does not exist; point it at the data directory or .zip") from None
        except OSError as e:  # a symlink loop, a path through a file
            raise DataError(f"dataset.root {self.root} cannot be read ({e.strerror}); point it at the data directory or .zip") from None
        if stat.S_ISDIR(mode):
            self._archives = sorted(p for p in self.root.glob("*.zip") if p.is_file())  # never a FIFO named x.zip
        elif stat.S_ISREG(mode) and zipfile.is_zipfile(self.root):  # is_zipfile opens it: a FIFO would block
            self._archives = [self.root]
        elif not stat.S_ISREG(mode):
            raise DataError(f"dataset.root {self.root} is {file_kind(mode)}: point it at the data directory or .zip")
        else:
            raise DataError(f"dataset.root {self.root} is neither a directory nor a zip archive")
        # Each zip is opened once, on first use (reading the index of 50,000 members takes a while).
        # A ZipFile shares one file position between readers, so decoding threads take turns reading
        # (a stored member is a plain copy, far cheaper than decoding it).
        self._zips: dict[Path, zipfile.ZipFile] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        for zf in self._zips.values():
            zf.close()
        self._zips.clear()

    def split(self, name: str) -> dict[str, _File]:
        """Everything below `<root>/<name>/`: a folder of the directory, else the first zip holding it."""
        folder = self.root / name
        if folder.is_dir():
            entries: dict[str, _File] = {}
            for dirpath, dirnames, filenames in walk(folder):
                rel = Path(dirpath).relative_to(folder).as_posix()
                prefix = "" if rel == "." else rel + "/"
                entries.update({prefix + d + "/": _File(None, os.path.join(dirpath, d)) for d in dirnames})
                entries.update({prefix + f: _File(None, os.path.join(dirpath, f)) for f in filenames})
            return entries
        for archive in self._archives:
            names = self._list(archive)
            # Accept the splits at the top of the zip, or inside a single folder wrapping everything
            # (as the official tiny-imagenet-200.zip has).
            tops = {n.split("/", 1)[0] for n in names}
            for prefix in [f"{name}/"] + [f"{t}/{name}/" for t in tops if len(tops) == 1]:
                entries = {n[len(prefix):]: _File(archive, n) for n in names if n.startswith(prefix) and n != prefix}
                if entries:
                    return entries
        raise DataError(
            f"dataset.root {self.root} has no {name!r} split; expected the layout {name}/<class>/<file> "
            f"(in the directory, in a zip, or in a zip inside the directory); found top-level entries: {self._top_level()}"
        )

    def read(self, file: _File) -> bytes:
        if file.archive is None:  # a FIFO or device named like an image: refused, never read
            return read_regular(file.name, IMAGE_MAX_BYTES)
        with self._lock:
            zf = self._zip(file.archive)
            size = zf.getinfo(file.name).file_size  # as the zip's index says: checked before a byte is inflated
            if size > IMAGE_MAX_BYTES:
                raise OSError(errno.EFBIG, f"{size:,} bytes, over the limit of {IMAGE_MAX_BYTES:,}", str(file))
            return zf.read(file.name)

    def _list(self, archive: Path) -> list[str]:
        return self._zip(archive).namelist()

    def _zip(self, archive: Path) -> zipfile.ZipFile:
        if archive not in self._zips:
            try:
                zf = zipfile.ZipFile(archive)
            except zipfile.BadZipFile as e:
                raise DataError(f"{archive} under dataset.root is not a readable zip archive: {e}") from None
            # train/a/../../x.png would count as an image of class a: a member must stay in its folder
            escaping = [n for n in zf.namelist() if n.startswith("/") or ".." in n.replace("\\", "/").split("/")]
            if escaping:
                zf.close()
                raise DataError(f"{archive} under dataset.root: member {escaping[0]!r} leaves its folder ('..' or an "
                                f"absolute path; {len(escaping)} such members); rebuild the zip with plain <split>/<class>/<file> names")
            self._zips[archive] = zf
        return self._zips[archive]

    def _top_level(self) -> str:
        found: list[str] = []
        if self.root.is_dir():
            found += sorted(p.name + "/" if p.is_dir() else p.name for p in self.root.iterdir())
        for archive in self._archives:
            found.append(f"{archive.name}: [{', '.join(sorted({n.split('/', 1)[0] for n in self._list(archive)}))}]")
        shown = ", ".join(found[:20]) + (f", ... ({len(found)} in all)" if len(found) > 20 else "")
        return shown or "(none: it is empty)"


@dataclass(frozen=True)
class _S3File:
    name: str  # s3://bucket/key: one string per image (ImageNet lists 1.28 M), what messages name
    size: int  # as the listing says: checked before the GET

    def __str__(self) -> str:
        return self.name


S3_THREADS = 32


class _S3Tree:
    """A dataset root under an S3 prefix, read as `_Tree` reads a directory: `<prefix>/<split>/<class>/<file>`,
    listed a split at a time (ListObjectsV2, 1,000 keys a page); each image fetched with one GET when it is decoded,
    on the decoding threads. S3 has no folders: a class folder is the keys below it (a "folder/" marker object,
    as consoles create, shows an empty one). Zips are not read from S3."""

    @property
    def threads(self) -> int:
        """Threads reading and decoding its images: a GET waits tens of milliseconds on the network, so with a thread per
        core the cores would mostly wait; with this many, the requests in flight cover that wait."""
        return max(usable_cpus(), S3_THREADS)

    def __init__(self, root: str) -> None:
        self.prefix = S3Prefix(root)
        self.root = self.prefix.uri

    def close(self) -> None:
        pass  # nothing is held open between requests

    def split(self, name: str) -> dict[str, _S3File]:
        """Every object below `<root>/<name>/`, as `_Tree.split` lists a folder: {path relative to it: file}."""
        entries: dict[str, _S3File] = {}
        for rel, size, _etag in self.prefix.objects(name + "/"):
            below = rel[len(name) + 1:]
            if not below:
                continue  # the marker object of the split folder itself
            if any(part in ("", ".", "..") for part in below.removesuffix("/").split("/")):
                raise DataError(f"dataset.root {self.root}: the key {self.prefix.where(rel)!r} has an empty, '.' or '..' "
                                f"path segment, which names no file of a folder layout: rename it to {name}/<class>/<file>")
            entries[below] = _S3File(self.prefix.where(rel), size)
        if entries:
            return entries
        top = self.prefix.top_level()
        zips = [t for t in top if t.lower().endswith(".zip")]
        if not top and self.prefix.is_object():
            zips = [self.root] if self.root.lower().endswith(".zip") else []
            if not zips:
                raise DataError(f"dataset.root {self.root} is an object, not a prefix: point it at the prefix holding "
                                f"{name}/<class>/<file>")
        if zips:
            raise DataError(
                f"dataset.root {self.root} has no {name!r} folder but zip archives ({', '.join(zips[:5])}), and zips are "
                f"not read from S3: unzip them to the prefix (so that it holds {name}/<class>/<file>), or pack the "
                "images as WebDataset tar shards (dataset.name=webdataset)")
        shown = ", ".join(top[:20]) + (f", ... ({len(top)} in all)" if len(top) > 20 else "")
        raise DataError(f"dataset.root {self.root} has no {name!r} split; expected the layout {name}/<class>/<file> under "
                        f"the prefix; found top-level entries: {shown or '(none: no object is under the prefix)'}")

    def read(self, file: _S3File) -> bytes:
        if file.size > IMAGE_MAX_BYTES:  # as the listing says: refused before the GET
            raise OSError(errno.EFBIG, f"{file.size:,} bytes, over the limit of {IMAGE_MAX_BYTES:,}", str(file))
        return self.prefix.get(file.name[len(self.root) + 1:], IMAGE_MAX_BYTES)  # where(rel) is root + "/" + rel


def _tree(root: str | None) -> _Tree | _S3Tree:
    """dataset.root as a view of its files, by its scheme: an S3 prefix, else a directory, a zip or a directory of
    zips."""
    return _S3Tree(root) if root is not None and root.startswith("s3://") else _Tree(root)


def s3_listing_lines(cfg: DatasetConfig) -> list[str]:
    """One line per object under the split folders of an S3 dataset.root (name, size, ETag), from the listing alone:
    what a load reads, for `sources.source_digest`."""
    prefix = S3Prefix(cfg.root)
    return [f"{rel}\t{size}\t{etag}\n" for split in dict.fromkeys(cfg.split_folders())
            for rel, size, etag in prefix.objects(split + "/")]


# One image file is read whole before PIL's pixel limit applies: ImageNet's largest JPEGs are a few MB, so a file far
# larger is no image (or a zip bomb's member), and is refused before it is read
IMAGE_MAX_BYTES = 256 * 1024 * 1024


def walk(folder: Path):
    """os.walk of `folder` that follows symlinked folders (a class folder may link to the images elsewhere) but
    enters each real folder once, so a symlink loop ends instead of going round; a link that cannot be followed
    (a loop, a dangling link) is listed as a file, which reading then refuses by name."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []  # a folder entered before: a loop (or two links to one folder), not new images
            continue
        seen.add((st.st_dev, st.st_ino))
        yield dirpath, dirnames, filenames


def _is_image(path: str) -> bool:
    base = path.rsplit("/", 1)[-1]
    # Names starting with "." are hidden files or macOS "._x.jpg" metadata, not images.
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------------------
# Folder datasets: imagefolder, tiny-imagenet, imagenet
# ----------------------------------------------------------------------------------------

Items = list[tuple[_File | _S3File, int]]  # (image file, label)


def _open_imagefolder(cfg: DatasetConfig) -> FolderSource:
    return _folder_source(cfg, cfg.test_split, cfg.image_size, stats=None)


def _open_imagenet(cfg: DatasetConfig) -> FolderSource:
    return _folder_source(cfg, cfg.split_folders()[1], cfg.image_size or _NATIVE_SIZE["imagenet"], IMAGENET_STATS)


def _folder_source(cfg: DatasetConfig, test_split: str, image_size: int | None, stats: Stats | None) -> FolderSource:
    tree = _tree(cfg.root)
    try:
        train = _class_folders(tree, cfg.train_split, cfg.train_per_class)
        test = _class_folders(tree, test_split, cfg.test_per_class)
        if set(train) != set(test):
            only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
            raise DataError(
                f"dataset.root {tree.root}: splits {cfg.train_split!r} and {test_split!r} have different classes; "
                f"only in {cfg.train_split!r}: {only_train[:10]}, only in {test_split!r}: {only_test[:10]}"
            )
        classes = sorted(train)
        return FolderSource(tree, classes, _items(train, classes), _items(test, classes), image_size, stats)
    except BaseException:
        tree.close()
        raise


def _open_tiny_imagenet(cfg: DatasetConfig) -> FolderSource:
    tree = _tree(cfg.root)
    try:
        return _tiny_imagenet(cfg, tree)
    except BaseException:
        tree.close()
        raise


def _tiny_imagenet(cfg: DatasetConfig, tree: _Tree | _S3Tree) -> FolderSource:
    val = cfg.split_folders()[1]
    train = _class_folders(tree, cfg.train_split, cfg.train_per_class)  # <wnid>/images/*.JPEG
    classes = sorted(train)
    entries = tree.split(val)
    if "val_annotations.txt" not in entries:
        raise DataError(f"dataset.root {tree.root}: {val}/val_annotations.txt is missing; tiny-imagenet expects "
                        f"{val}/images/<file> labelled by {val}/val_annotations.txt (file<TAB>wnid<TAB>...)")
    test: dict[str, list[_File | _S3File]] = {c: [] for c in classes}
    try:
        annotations = tree.read(entries["val_annotations.txt"]).decode("utf-8")
    except OSError as e:
        raise DataError(f"dataset.root {tree.root}: cannot read {val}/val_annotations.txt ({e.strerror}); "
                        "replace it with the text file of the official layout") from None
    except UnicodeDecodeError as e:
        raise DataError(f"dataset.root {tree.root}: {val}/val_annotations.txt is not UTF-8 text (offset {e.start}); "
                        "replace it with the text file of the official layout") from None
    for line_no, line in enumerate(annotations.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{val}/val_annotations.txt line {line_no}"
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"dataset.root {tree.root}: {where} is not <file><TAB><wnid>...: {line!r}")
        file, wnid = fields[:2]
        if wnid not in test:
            raise DataError(f"dataset.root {tree.root}: {where} names class {wnid!r}, "
                            f"which has no folder in {cfg.train_split}/")
        if f"images/{file}" not in entries:
            raise DataError(f"dataset.root {tree.root}: {where} names {val}/images/{file}, which does not exist")
        test[wnid].append(entries[f"images/{file}"])
    if not any(test.values()):
        raise DataError(f"dataset.root {tree.root}: {val}/val_annotations.txt lists no images")
    test = {c: sorted(files, key=lambda f: f.name)[: cfg.test_per_class] for c, files in test.items()}
    return FolderSource(tree, classes, _items(train, classes), _items(test, classes), cfg.image_size, IMAGENET_STATS)


def _class_folders(tree: _Tree | _S3Tree, split: str, limit: int | None) -> dict[str, list[_File | _S3File]]:
    """{class: its first `limit` images by name} from `<split>/<class>/...` (class folders may nest images deeper)."""
    classes: dict[str, list[_File | _S3File]] = {}
    for rel, file in sorted(tree.split(split).items()):
        name, sep, below = rel.partition("/")
        if not sep:
            continue  # a loose file beside the class folders (a README, say) is no class
        images = classes.setdefault(name, [])
        if _is_image(below):
            images.append(file)
    if not classes:
        raise DataError(f"dataset.root {tree.root}: split {split!r} has no class folders; expected {split}/<class>/<file>")
    empty = sorted(c for c, files in classes.items() if not files)
    if empty:
        raise DataError(f"dataset.root {tree.root}: class folders without images ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                        f"in split {split!r}: {empty[:10]}; remove them or add images")
    return {c: files[:limit] for c, files in classes.items()}


def _items(per_class: dict[str, list[_File | _S3File]], classes: list[str]) -> Items:
    return [(file, label) for label, c in enumerate(classes) for file in per_class[c]]


class FolderSource(Source):
    """Image files listed when opened (so counts are known), decoded when a split's batches are read."""

    def __init__(self, tree: _Tree | _S3Tree, classes: list[str], train: Items, test: Items, image_size: int | None,
                 stats: Stats | None) -> None:
        self.tree, self.classes, self.image_size, self.stats = tree, classes, image_size, stats
        self._items = {"train": train, "test": test}
        self._size: tuple[int, int] | None = None

    def split(self, name: str) -> FolderSplit:
        return FolderSplit(self, name, self._items[name])

    def close(self) -> None:
        self.tree.close()

    def decode_settings(self) -> DecodeSettings:
        return DecodeSettings(self.image_size, self.image_hw())

    def image_hw(self) -> tuple[int, int]:
        """(H, W) of every image: dataset.image_size squared where set, else the first training image's size."""
        if self._size is None:
            if self.image_size is not None:
                self._size = (self.image_size, self.image_size)
            else:
                file = self._items["train"][0][0]
                self._size = first_size(_decode(file, functools.partial(self.tree.read, file), None), file)
        return self._size


class FolderSplit(SourceSplit):
    def __init__(self, source: FolderSource, name: str, items: Items) -> None:
        self.source, self.name, self.items = source, name, items

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def class_counts(self) -> torch.Tensor:
        labels = torch.tensor([label for _, label in self.items], dtype=torch.int64)
        return torch.bincount(labels, minlength=len(self.source.classes))

    def batches(self, batch_size: int, progress: bool = True) -> Iterator[Batch]:
        return decoded_batches(self._jobs(batch_size), self.source.image_size, self.source.image_hw(), self.name,
                               batch_size, total=len(self.items), progress=progress, threads=self.source.tree.threads)

    def encoded(self, batch_size: int, pixels: bool = False, progress: bool = True) -> Iterator[EncodedBatch]:
        return encoded_batches(self._jobs(batch_size), self.source.image_size, self.source.image_hw(), self.name,
                               batch_size, total=len(self.items), progress=progress, pixels=pixels,
                               threads=self.source.tree.threads)

    def _jobs(self, batch_size: int) -> Iterator[tuple[list[Job], list[int]]]:
        tree, items = self.source.tree, self.items
        for start in range(0, len(items), batch_size):
            part = items[start:start + batch_size]
            yield [(f, functools.partial(tree.read, f)) for f, _ in part], [label for _, label in part]


def first_size(image: np.ndarray, where: object) -> tuple[int, int]:
    """(H, W) of the first training image, which every other image must match: refused unless square."""
    h, w = image.shape[:2]
    if h != w:
        raise DataError(f"train image {where} is {w}x{h}, not square; "
                        "set dataset.image_size to resize and center-crop every image to one square size")
    return h, w


# ----------------------------------------------------------------------------------------
# Decoding: image files -> uint8 batches, on a thread pool
# ----------------------------------------------------------------------------------------

Job = tuple[object, Callable[[], bytes]]  # (the image, named in messages by its str(), what reads its bytes)

# Batches submitted ahead of the one the consumer holds: the pool decodes the next while the consumer
# uses this one, and memory holds at most AHEAD + 2 batches (those in flight, the one being read, the one held).
AHEAD = 2


def decoded_batches(jobs: Iterable[tuple[list[Job], list[int]]], image_size: int | None, size: tuple[int, int],
                    desc: str, batch_size: int, total: int | None = None, progress: bool = True,
                    threads: int | None = None) -> Iterator[Batch]:
    """Batches of (jobs, labels) -> (uint8 RGB images [n, 3, H, W], int64 labels [n]), in the order given.

    Every image must come out H x W = `size` unless `image_size` resizes them all (`decode_image`). Threads, `threads`
    or as many as the cores this process may use, decode in parallel because PIL releases the GIL while
    decoding; each batch is split into one task per thread. `jobs` is iterated in this thread (a
    tar stream is read while the pool decodes the batches before it). A bad image raises its
    DataError when its batch is reached, the first in order; the batches after it are cancelled.
    """
    batches = _pooled(jobs, image_size, size, desc, batch_size, total, progress, pixels=True, files=False, threads=threads)
    return ((x, y) for _files, y, x in batches)


def encoded_batches(jobs: Iterable[tuple[list[Job], list[int]]], image_size: int | None, size: tuple[int, int],
                    desc: str, batch_size: int, total: int | None = None, progress: bool = True,
                    pixels: bool = False, threads: int | None = None) -> Iterator[EncodedBatch]:
    """Batches of (jobs, labels) -> (the image files' bytes, int64 labels [n], the images decoded as `decoded_batches`
    gives them where `pixels` asks, else None), in the order given. Without `pixels` no pixel is decoded: each file's
    header is checked (`check_header`) so a file decoding would refuse is refused here, on the same thread pool."""
    return _pooled(jobs, image_size, size, desc, batch_size, total, progress, pixels=pixels, files=True, threads=threads)


def _pooled(jobs: Iterable[tuple[list[Job], list[int]]], image_size: int | None, size: tuple[int, int], desc: str,
            batch_size: int, total: int | None, progress: bool, pixels: bool, files: bool,
            threads: int | None = None) -> Iterator[EncodedBatch]:
    """(files or None, labels, images or None) of each batch of jobs: what `decoded_batches` and `encoded_batches` give,
    on `threads` threads (default: one per usable core)."""
    workers = threads or usable_cpus()

    def work(out: torch.Tensor | None, kept: list[bytes] | None, batch: list[Job], start: int, stop: int) -> None:
        for i in range(start, stop):
            where, read = batch[i]
            with _refused(where):
                data = read()
            if kept is not None:
                kept[i] = data
            if out is not None:
                out[i] = torch.from_numpy(decode_image(where, data, image_size, size, desc)).permute(2, 0, 1)
            else:
                check_header(where, data, image_size, size, desc)

    def run() -> Iterator[EncodedBatch]:
        pending: collections.deque = collections.deque()
        source = iter(jobs)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            def submit() -> None:
                batch, labels = next(source, ([], []))
                if not batch:
                    return
                out = torch.empty((len(batch), 3, *size), dtype=torch.uint8) if pixels else None
                kept: list[bytes] | None = [b""] * len(batch) if files else None
                step = -(-len(batch) // workers)
                futures = [pool.submit(work, out, kept, batch, s, min(s + step, len(batch)))
                           for s in range(0, len(batch), step)]
                pending.append((kept, torch.tensor(labels, dtype=torch.int64), out, futures))

            try:
                for _ in range(AHEAD):
                    submit()
                while pending:
                    kept, labels, out, futures = pending.popleft()
                    submit()  # read the next batch while the pool decodes this one
                    for future in futures:
                        future.result()
                    yield kept, labels, out
            finally:  # a bad image, Ctrl-C or a consumer that stops early: nothing more is decoded
                for *_, futures in pending:
                    for future in futures:
                        future.cancel()

    batches = run() if total is None else _Counted(run(), -(-total // batch_size))
    verb = "decoding" if pixels else "reading"
    return iter(progress_bar(batches, f"{verb} {desc} ({batch_size} images a step)", disable=not progress))


class _Counted:
    """An iterator with the number of items it will give, for a progress bar's total."""

    def __init__(self, iterator: Iterator, count: int) -> None:
        self.iterator, self.count = iterator, count

    def __iter__(self) -> Iterator:
        return self.iterator

    def __len__(self) -> int:
        return self.count


# PIL modes with more than 8 bits per sample: converting them to RGB clips every value above 255
_WIDE_MODES = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def _decode(file: object, read: Callable[[], bytes], image_size: int | None) -> np.ndarray:
    """The image `read()` gives (`file` names it) as uint8 RGB [H, W, 3]; with `image_size`, shorter side resized
    to it, then center-cropped."""
    with _opened(file, read) as img:
        rgb = img if img.mode == "RGB" else img.convert("RGB")  # most files are RGB: skip convert's copy
        if image_size is not None and rgb.size != (image_size, image_size):
            rgb = TF.center_crop(TF.resize(rgb, image_size), [image_size, image_size])
        return np.array(rgb)  # a copy: np.asarray of a PIL image is read-only, which torch warns about


def decode_image(file: object, data: bytes, image_size: int | None, size: tuple[int, int], desc: str) -> np.ndarray:
    """The image file `data` as prepare-data stores a decoded row: uint8 RGB [H, W, 3] (`_decode`), which must come
    out H x W = `size` (the split's images are `desc`)."""
    image = _decode(file, lambda: data, image_size)
    _check_size(file, image.shape[:2], size, desc)
    return image


def check_header(file: object, data: bytes, image_size: int | None, size: tuple[int, int], desc: str) -> None:
    """What `decode_image` would refuse, found from the file's header alone (no pixel is decoded): no image, samples
    of more than 8 bits, a decompression bomb, and, without `image_size` (which gives every image its size), a size
    other than `size`."""
    with _opened(file, lambda: data) as img:
        w, h = img.size
    _check_size(file, (h, w) if image_size is None else (image_size, image_size), size, desc)


def _check_size(file: object, hw: tuple[int, int], size: tuple[int, int], desc: str) -> None:
    if tuple(hw) != tuple(size):
        (h, w), (eh, ew) = hw, size
        raise DataError(f"image {file} is {w}x{h} but {desc} images are expected to be {ew}x{eh}; "
                        "set dataset.image_size to resize every image to one square size")


@contextlib.contextmanager
def _opened(file: object, read: Callable[[], bytes]) -> Iterator[Image.Image]:
    """The image `read()` gives, opened (its header read, no pixel decoded yet), refused if its samples are wider than
    8 bits; a file that cannot be read or decoded, here or in the caller's block, is a DataError naming it."""
    with _refused(file):
        with Image.open(io.BytesIO(read())) as img:
            if img.mode in _WIDE_MODES:
                raise DataError(f"image {file} has {_WIDE_MODES[img.mode]}-bit samples (PIL mode {img.mode}); the pipeline "
                                "stores 8-bit images and does not reduce them silently: convert the dataset to 8 bits per "
                                "sample first (e.g. the top byte of each 16-bit value)")
            yield img


@contextlib.contextmanager
def _refused(file: object) -> Iterator[None]:
    """Reading or decoding the image `file` in this block: what fails is a DataError naming the file and the fix."""
    try:
        yield
    except Image.DecompressionBombError as e:  # raised when the header is read, before any pixel is decoded
        raise DataError(f"image {file} is refused as a possible decompression bomb ({e}); remove the file, or store it "
                        f"at fewer than {Image.MAX_IMAGE_PIXELS} pixels") from None
    except OSError as e:  # reading it: a FIFO, a device, a symlink loop, unreadable
        if e.errno is None:  # PIL's UnidentifiedImageError and truncated files are OSErrors without an errno
            raise DataError(f"cannot decode image {file}: {e}; remove or replace the file") from None
        raise DataError(f"cannot read image {file} ({e.strerror}); remove or replace it with an image file") from None
    except (SyntaxError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot decode image {file}: {e}; remove or replace the file") from None
