"""Artifacts in local folders: written in a staging folder and renamed into place.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infer_distill.errors import ArtifactError
from infer_distill.storage.artifact import MANIFEST, MANIFEST_MAX_BYTES, Artifact, _parsed

if TYPE_CHECKING:  # torch is imported by the code that reads or writes tensors: the CLI's plan and config stay free of it
    pass


# ----------------------------------------------------------------------------------------
# Reading a file that may not be one: FIFOs, devices, symlink loops
# ----------------------------------------------------------------------------------------

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a stat mode says a path is, in words: "a regular file", "a FIFO (named pipe)", ..."""
    return next((kind for test, kind in _KINDS if test(mode)), "a regular file" if stat.S_ISREG(mode) else "not a file")


class NotRegularFile(OSError):
    """A path that is not a regular file (a FIFO, a device, a directory), or one larger than the reader accepts."""


def read_regular(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of the regular file at `path`, a symlink to one followed.

    Reading never blocks on what is not a file: the path is opened without blocking and checked
    with fstat before a byte is read, so a FIFO, a device (/dev/urandom, /dev/zero never end) or a
    directory raises NotRegularFile naming what it is, and so does a file over `limit` bytes; a
    symlink loop raises the OSError ELOOP of the open.
    """
    with _regular(path, limit) as fd, os.fdopen(fd, "rb", closefd=False) as f:
        return f.read()


def read_regular_range(path: str | os.PathLike[str], start: int, length: int) -> bytes:
    """Bytes [start, start + length) of the regular file at `path` (fewer where it ends sooner), as safely as
    `read_regular` reads a whole one: positioned reads (pread) of an fstat-checked descriptor."""
    parts, end = [], start + length
    with _regular(path) as fd:
        while start < end:
            part = os.pread(fd, end - start, start)
            if not part:
                break
            parts.append(part)
            start += len(part)
    return b"".join(parts)


@contextlib.contextmanager
def _regular(path: str | os.PathLike[str], limit: int | None = None) -> Iterator[int]:
    """A blocking descriptor of the regular file at `path`, opened without blocking and checked before it is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, f"{file_kind(st.st_mode)}, not a regular file", os.fspath(path))
        if limit is not None and st.st_size > limit:
            raise NotRegularFile(errno.EFBIG, f"{st.st_size:,} bytes, over the limit of {limit:,}", os.fspath(path))
        os.set_blocking(fd, True)
        yield fd
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------
# Local directories
# ----------------------------------------------------------------------------------------


class LocalArtifact(Artifact):
    def __init__(self, uri: str, path: Path) -> None:
        self.uri = uri
        # abspath normalises "." and "..", so the artifact always has a real name and parent.
        self.path = Path(os.path.abspath(path.expanduser()))

    def exists(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def children(self) -> list[Artifact]:
        if not self.path.is_dir():
            return []
        # Names starting with "." are write()'s staging directories, never artifacts.
        return [LocalArtifact(f"{self.uri}/{p.name}", p) for p in sorted(self.path.iterdir())
                if not p.name.startswith(".") and (p / MANIFEST).is_file()]

    def check_writable(self) -> None:
        # write() stages a sibling folder and renames it in; the folders on the way do not exist yet
        # when a run starts. Creating a file in the nearest one that does is what creating them takes,
        # and probing with a file makes no folder: a refused run leaves none behind, and runs starting
        # side by side never see a folder another one's check made and removed.
        existing = next(p for p in self.path.parents if os.path.lexists(p))
        probe = existing / f".{self.path.name}.probe-{uuid.uuid4().hex}"
        try:
            if not existing.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ArtifactError(
                f"output location {self.uri} is not writable: {e.strerror or e}; choose another --out"
            ) from e

    def _resident(self) -> dict[str, Any] | str | None:
        # A link to an artifact counts as one (a write replaces the link, never what it points to).
        if self.path.exists() and not self.path.is_dir():
            return "a file, not a folder"
        try:
            entries = set(os.listdir(self.path))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ArtifactError(f"cannot read the folder {self.uri}: {e}") from e
        if not entries:
            return None
        if MANIFEST not in entries:
            return f"a folder without a manifest.json ({len(entries)} entries, e.g. {sorted(entries)[0]!r})"
        found = _parsed(self._get(MANIFEST, MANIFEST_MAX_BYTES) or b"", "manifest.json")
        if isinstance(found, dict):
            listed = found.get("files") if isinstance(found.get("files"), dict) else {}
            unlisted = sorted(entries - {MANIFEST} - set(listed))
            if unlisted:
                return f"files its manifest.json does not list ({', '.join(map(repr, unlisted[:5]))})"
        return found

    def _get(self, name: str, limit: int | None = None) -> bytes | None:
        try:
            return read_regular(self.path / name, limit)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:  # a FIFO or device in its place, a symlink loop, too large: never read, never blocked on
            raise ArtifactError(f"artifact {self.uri}: cannot read {name!r} ({e.strerror}): move it away and re-run the "
                                "stage that produces it") from e

    def _read_range(self, name: str, start: int, length: int) -> bytes | None:
        try:
            return read_regular_range(self.path / name, start, length)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:  # a FIFO or device in its place, a symlink loop: never read, never blocked on
            raise ArtifactError(f"artifact {self.uri}: cannot read {name!r} ({e.strerror}): move it away and re-run the "
                                "stage that produces it") from e

    def _size(self, name: str) -> int | None:
        try:
            st = os.stat(self.path / name)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise ArtifactError(f"artifact {self.uri}: cannot read {name!r} ({e.strerror}): move it away and re-run the "
                                "stage that produces it") from e
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"artifact {self.uri}: {name!r} is {file_kind(st.st_mode)}, not a file: move it away and "
                                "re-run the stage that produces it")
        return st.st_size

    def _put_all(self, items: Iterable[tuple[str, Iterable[memoryview]]], stage: Any) -> None:
        parent, tag = self.path.parent, uuid.uuid4().hex
        tmp = parent / f".{self.path.name}.tmp-{tag}"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._remove_staging()
            tmp.mkdir()
            for name, chunks in items:
                with open(tmp / name, "wb") as f:
                    for chunk in chunks:  # appended as they come: a streamed file is never whole in memory
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(tmp)
            if os.path.lexists(self.path):
                # No atomic directory swap in POSIX rename: move the old one aside first.
                old = parent / f".{self.path.name}.old-{tag}"
                os.rename(self.path, old)
                try:
                    os.rename(tmp, self.path)
                except OSError:
                    os.rename(old, self.path)
                    raise
                old.unlink() if old.is_symlink() else shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, self.path)
            _fsync_dir(parent)
        except OSError as e:
            raise ArtifactError(f"cannot write artifact {self.uri}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # no-op once renamed into place

    def _remove_staging(self) -> None:
        """The staging folders (and probe files) earlier writes of this artifact left when they were killed."""
        staging = re.compile(rf"\.{re.escape(self.path.name)}\.(tmp|old|probe)-[0-9a-f]{{32}}")
        for p in self.path.parent.iterdir():
            if staging.fullmatch(p.name):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
