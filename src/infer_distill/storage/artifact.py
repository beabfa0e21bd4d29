"""Artifact store: where every pipeline stage reads its inputs and writes its outputs.

An artifact is a "directory" of files -- a local directory or an S3 key prefix -- plus a
`manifest.json` that is written LAST and so acts as the commit marker: an artifact exists iff
its manifest does. The manifest records, for every file, its size and sha256 (and, for tensor
files, each tensor's dtype and shape), together with whatever the producing stage put in it
(its `stage`, config, metrics, ...) and `schema_version`.

What holds:
- atomic: a crashed or failed write never leaves something that reads as a valid artifact
  (locally the new directory is renamed into place; on S3 the manifest goes away first and
  comes back last). Staging folders a crash leaves beside a local artifact
  (`.NAME.tmp-*`, `.NAME.old-*`) are removed by the next write of that artifact;
- never deletes what it did not write: a write replaces only an artifact of the same stage
  (`Artifact.check_replaceable`). A location holding anything else -- a folder or prefix without
  a manifest, files the manifest does not list, another stage's artifact -- is refused
  (ArtifactError), so a user's folder at an artifact's path survives a run;
- self-describing: a reader learns what is there, and what made it, from the manifest alone;
  a manifest entry without a size or sha256 reads as no artifact, so a rerun remakes it;
- safe: tensors are stored with safetensors and loaded without pickle, and every read of a
  whole file is checked against the recorded size and sha256, so truncation or corruption is
  an error, not silently wrong numbers. A ranged read (`read_range`: some bytes of one file)
  checks only that the bytes are there; its caller verifies them against digests of its own
  that it read verified (data.splits keeps a sha256 per block of rows beside its images), and
  `verify` checks a file of any size against the manifest without holding it in memory;
- streamed: a file may be written from an iterable of byte chunks, produced lazily and consumed
  once, in order (its size and sha256 computed as they pass), or from a callable called when its
  turn comes (after the files before it were stored), and `finish` completes the manifest after
  the last file (a stage that learns its metrics from the rows it wrote). Memory is bounded by a
  chunk locally and on S3 by the part being filled and the one being sent (a chunk larger than a
  part is cut into parts), never by the file; a file smaller than the multipart threshold is
  one PUT. An exception the producer of a file raises comes out of `write` as it was raised,
  and the write stores nothing;
- every store failure classified: refused input (bad URI, bad settings, missing bucket,
  credentials) is an ArtifactError (exit 2); a store that does not answer, cuts a connection,
  times out, truncates a body, throttles or fails (HTTP 5xx) is retried -- the body of a read,
  whole or ranged, included -- and then a StoreUnavailable naming the URI and the cause (exit 75).
  A multipart upload a failed or interrupted write leaves behind is aborted (with retries); one
  that cannot be aborted is named in the error.

S3 settings, from the environment (checked by `check_writable`, the preflight of every run):
    AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, credentials    as for any boto3 client (the endpoint
                                   http(s)://host[:port], without credentials in it)
    AWS_MAX_ATTEMPTS               attempts per request, the first included (default 6, at most 100)
    INFER_S3_CONNECT_TIMEOUT       seconds to wait for a connection (default 10, at most 3600)
    INFER_S3_READ_TIMEOUT          seconds to wait for a byte of an answer (default 60, at most 3600)
    INFER_S3_MULTIPART_THRESHOLD   bytes from which a file is uploaded in parts (default 64 MiB, at most 5 GiB);
                                   a part holds as many, at least 5 MiB (S3's least part), and a
                                   file of more than 1,000 parts takes parts of 2, 3, ... times
                                   that past each 1,000th, so that S3's 10,000 parts hold 55,000
                                   times it (3.4 TiB at the default)

A manifest is read only up to MANIFEST_MAX_BYTES and MANIFEST_MAX_DEPTH levels of nesting, and a
local file only when it is a regular file (or a link to one): a FIFO or device in an artifact's
place is refused by name, never read or waited on.

    open_artifact("runs/r1/teacher").write({"model.safetensors": state_dict}, {"stage": "train-teacher", ...})
    open_artifact("s3://bucket/runs/r1/teacher").read_tensors("model.safetensors")
    art.write({"rows.bin": (chunk for chunk in produced()), "rows.digests": lambda: digests}, {"stage": ...},
              finish=lambda: {"metrics": counted})
    art.read_range("rows.bin", start, length)
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from infer_distill.errors import ArtifactError

if TYPE_CHECKING:  # torch is imported by the code that reads or writes tensors: the CLI's plan and config stay free of it
    import torch


SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# S3: written before a rewrite starts and removed after its manifest, so an interrupted write of
# the pipeline's own artifact (keys, no manifest) is told apart from keys someone else put there.
PENDING = ".write-in-progress.json"
# A manifest is read whole and parsed before anything is checked: these bound what a manifest altered by hand (or
# not written here) can cost. The pipeline's own are a few kB and nest about 6 levels deep.
MANIFEST_MAX_BYTES = 16 * 1024 * 1024
MANIFEST_MAX_DEPTH = 64
_TOO_DEEP = object()
_DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
_MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum size of a (non-final) multipart part
_CREDENTIALS_HINT = (
    "no valid S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(from a Kubernetes Secret on a cluster)"
)
_MOVE_IT = "move it away (or delete it yourself if it is not needed), or choose another --out"

# What `Artifact.write` stores as one file: its bytes, tensors (as safetensors), an iterable of byte chunks
# (consumed once, in order), or a callable returning one of those, called when the file's turn comes.
FileValue = "bytes | Mapping[str, torch.Tensor] | Iterable[bytes] | Callable[[], FileValue]"
# The bytes `verify` reads at once
_VERIFY_CHUNK = 8 * 1024 * 1024


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Artifact(ABC):
    uri: str

    # --- backend -------------------------------------------------------------------------
    @abstractmethod
    def _get(self, name: str, limit: int | None = None) -> bytes | None:
        """The file's content, or None if it does not exist; ArtifactError if it is longer than `limit` bytes."""

    @abstractmethod
    def _read_range(self, name: str, start: int, length: int) -> bytes | None:
        """Bytes [start, start + length) of the file, fewer where it ends sooner; None if it does not exist."""

    @abstractmethod
    def _size(self, name: str) -> int | None:
        """The file's size in bytes, or None if there is no file of that name."""

    @abstractmethod
    def _put_all(self, items: Iterable[tuple[str, Iterable[memoryview]]], stage: Any) -> None:
        """Store the files in order (manifest.json is always the last item) of a `stage` artifact, atomically.

        Each file comes as its chunks of bytes, which must be consumed whole, in order, before the next
        item is asked for: a file's manifest entry is complete only once its last chunk has passed."""

    @abstractmethod
    def _resident(self) -> dict[str, Any] | str | None:
        """What the location holds: None (nothing), the manifest of an artifact -- or, on S3, the record
        of a write in progress -- as a dict, or a description of anything else."""

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def children(self) -> list[Artifact]:
        """The artifacts one level below this location (folders holding a manifest.json), by name."""

    @abstractmethod
    def check_writable(self) -> None:
        """Refuse (ArtifactError) a location that cannot be written, or settings that would fail the
        first write; leaves nothing behind."""

    # --- shared logic --------------------------------------------------------------------
    def check_replaceable(self, stage: Any) -> None:
        """Refuse (ArtifactError) to write a `stage` artifact where something else lives.

        Only nothing (or an empty folder) or an artifact the same stage made may be replaced: a folder
        or prefix without a manifest, with files its manifest does not list, or holding another
        stage's artifact was not written here, and a write never deletes what it did not write.
        """
        found = self._resident()
        if found is None or (isinstance(found, dict) and found.get("stage") == stage):
            return
        what = found if isinstance(found, str) else f"a {found.get('stage')!r} artifact"
        raise ArtifactError(
            f"refusing to write the {stage!r} artifact at {self.uri}: that location holds {what}, which this "
            f"pipeline did not write there (it replaces only its own {stage!r} artifact): {_MOVE_IT}"
        )

    def write(self, files: Mapping[str, FileValue], manifest: Mapping[str, Any],
              finish: Callable[[], Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """Write `files` and then `manifest`, with `files` (per-file entries) and `schema_version` set.

        Afterwards the artifact is exactly `files`: its manifest lists nothing else. Refused
        (`check_replaceable`) unless the location is empty or holds an artifact of the same
        `manifest["stage"]`. A local directory is replaced as a whole; on S3 the new files
        overwrite keys of the same name, and keys of an earlier write that are not in `files`
        stay in the bucket, unlisted, so no read ever returns them.

        Files are stored in the order of `files`, one at a time (see `FileValue`): a callable is called
        when its turn comes, so it may return what the files before it produced (a digest of their
        rows). `finish()`, called after the last file, returns keys that complete the manifest (the
        metrics of what streamed by); it may not set `stage`, `files` or `schema_version`.
        Returns the manifest as written.
        """
        for name in files:
            _check_name(self.uri, name)
        out: dict[str, Any] = json.loads(self._dumps(dict(manifest)))  # deep copy; fails before any I/O
        entries: dict[str, Any] = {}
        out.update(files=entries, schema_version=SCHEMA_VERSION)
        self.check_replaceable(out.get("stage"))

        def items() -> Iterator[tuple[str, Iterable[memoryview]]]:
            # One file at a time, so only one serialised file (or one chunk of a streamed one) is in memory at once.
            for name, value in files.items():
                chunks, tensors = self._chunks(name, value)
                yield name, self._counted(name, chunks, tensors, entries)
                if name not in entries:  # a backend that moved on before the last chunk: never a manifest of it
                    raise ArtifactError(f"artifact {self.uri}: {name!r} was not stored whole")
            if finish is not None:
                extra = json.loads(self._dumps(dict(_produced(finish))))
                taken = sorted(set(extra) & {"stage", "files", "schema_version"})
                if taken:
                    raise ArtifactError(f"artifact {self.uri}: finish() may not set {', '.join(taken)}")
                out.update(extra)
            yield MANIFEST, [memoryview(self._dumps(out).encode())]

        try:
            self._put_all(items(), out.get("stage"))
        except _ProducerFailed as e:  # the producer's own exception, not a failure of the store
            for note in getattr(e, "__notes__", ()):  # what the store could not undo (an upload left to abort)
                e.original.add_note(note)
            raise e.original from None
        return out

    def _chunks(self, name: str, value: FileValue) -> tuple[Iterable[Any], dict[str, Any] | None]:
        """What `value` stores, as chunks of bytes, and the tensors' description of a tensor file."""
        if callable(value) and not isinstance(value, Mapping):
            value = _produced(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return [value], None
        if isinstance(value, Mapping):
            return self._serialised(name, value)
        if isinstance(value, Iterable) and not isinstance(value, str):
            return value, None
        raise ArtifactError(
            f"artifact {self.uri}: file {name!r} must be bytes, a dict of str -> torch.Tensor, an iterable of byte chunks "
            f"or a callable returning one of those, got {type(value).__name__}"
        )

    def _counted(self, name: str, chunks: Iterable[Any], tensors: dict[str, Any] | None,
                 entries: dict[str, Any]) -> Iterator[memoryview]:
        """`chunks` as flat byte views, sized and hashed as they pass; the file's entry once the last has."""
        digest, size = hashlib.sha256(), 0
        source = _produced(lambda: iter(chunks))
        while True:
            try:
                chunk = next(source)
            except StopIteration:
                break
            except Exception as e:  # raised by the producer: it comes out of write() as it was
                raise _ProducerFailed(e) from e
            try:
                view = memoryview(chunk).cast("B")
            except TypeError:
                raise ArtifactError(f"artifact {self.uri}: a chunk of {name!r} is {type(chunk).__name__}, not contiguous "
                                    "bytes") from None
            digest.update(view)
            size += len(view)
            yield view
        entries[name] = {"sha256": digest.hexdigest(), "bytes": size, **({"tensors": tensors} if tensors is not None else {})}

    def read_manifest(self) -> dict[str, Any]:
        raw = self._get(MANIFEST, MANIFEST_MAX_BYTES)
        if raw is None:
            raise ArtifactError(
                f"no artifact at {self.uri} (manifest.json missing): run the stage that produces it first"
            )
        try:
            manifest = json.loads(raw)
        except ValueError as e:
            raise ArtifactError(
                f"artifact {self.uri}: manifest.json is not valid JSON ({e}): re-run the stage that produces it"
            ) from e
        except RecursionError:  # nested beyond what the parser recurses into: far beyond the depth refused below
            manifest = _TOO_DEEP
        if manifest is _TOO_DEEP or _depth(manifest) > MANIFEST_MAX_DEPTH:
            raise ArtifactError(
                f"artifact {self.uri}: manifest.json nests deeper than {MANIFEST_MAX_DEPTH} levels (not one this pipeline "
                "wrote): re-run the stage that produces it"
            )
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"artifact {self.uri} has schema_version {version!r}, this version of "
                f"infer_distill reads {SCHEMA_VERSION}: re-run the stage that produces it"
            )
        if not isinstance(manifest.get("files"), dict):
            raise ArtifactError(
                f"artifact {self.uri}: manifest.json has no 'files' table: re-run the stage that produces it"
            )
        for name, entry in manifest["files"].items():
            if not _valid_entry(entry):
                raise ArtifactError(
                    f"artifact {self.uri}: manifest.json's entry for {name!r} has no valid 'bytes' and 'sha256' "
                    "(or no valid 'tensors': name -> dtype and shape; altered by hand or by another tool): re-run the "
                    "stage that produces it"
                )
        return manifest

    def check_files(self, manifest: Mapping[str, Any]) -> None:
        """Every file `manifest` lists is there with its recorded size (one stat or HEAD each, nothing read):
        a reader that uses some of the files still refuses an artifact that lost others."""
        for name, entry in manifest["files"].items():
            size = self._size(name)
            if size is None:
                raise ArtifactError(f"artifact {self.uri}: file {name!r} listed in manifest.json is missing: "
                                    "re-run the stage that produces it")
            if size != entry["bytes"]:
                raise ArtifactError(f"artifact {self.uri}: file {name!r} has {size} bytes, manifest.json says "
                                    f"{entry['bytes']} (truncated or altered): re-run the stage that produces it")

    def read_range(self, name: str, start: int, length: int) -> bytes:
        """Bytes [start, start + length) of the file `name`: one request (a ranged GET, a pread), the manifest not read.

        The bytes are NOT verified here: the caller checks them against digests it read verified (or
        calls `verify`). ArtifactError if the file is missing or ends before start + length.
        """
        if type(start) is not int or type(length) is not int or start < 0 or length < 0:
            raise ValueError(f"read_range({name!r}, {start!r}, {length!r}): start and length must be ints >= 0")
        data = self._read_range(name, start, length) if length else b"" if self._size(name) is not None else None
        fix = "re-run the stage that produces it"
        if data is None:
            raise ArtifactError(f"artifact {self.uri}: file {name!r} is missing: {fix}")
        if len(data) != length:
            raise ArtifactError(f"artifact {self.uri}: file {name!r} ends before byte {start + length:,} (truncated or "
                                f"altered): {fix}")
        return data

    def verify(self, name: str, entry: Mapping[str, Any]) -> None:
        """Check the file `name` against its manifest `entry` (size, sha256), reading it in chunks: memory is
        bounded by a chunk, not the file. ArtifactError naming the file if it differs."""
        fix = "re-run the stage that produces it"
        size = self._size(name)
        if size is None:
            raise ArtifactError(f"artifact {self.uri}: file {name!r} listed in manifest.json is missing: {fix}")
        if size != entry["bytes"]:
            raise ArtifactError(f"artifact {self.uri}: file {name!r} has {size} bytes, manifest.json says {entry['bytes']} "
                                f"(truncated or altered): {fix}")
        digest = hashlib.sha256()
        for start in range(0, size, _VERIFY_CHUNK):
            digest.update(self.read_range(name, start, min(_VERIFY_CHUNK, size - start)))
        if digest.hexdigest() != entry["sha256"]:
            raise ArtifactError(f"artifact {self.uri}: file {name!r} does not match its sha256 in manifest.json (corrupted): {fix}")

    def read_bytes(self, name: str) -> bytes:
        listed = self.read_manifest()["files"]
        entry = listed.get(name)
        if entry is None:
            raise ArtifactError(
                f"artifact {self.uri} has no file {name!r} (it has {sorted(listed)}): "
                "re-run the stage that produces it with the current code"
            )
        data = self._get(name)
        fix = "re-run the stage that produces it"
        if data is None:
            raise ArtifactError(f"artifact {self.uri}: file {name!r} listed in manifest.json is missing: {fix}")
        if len(data) != entry["bytes"]:
            raise ArtifactError(
                f"artifact {self.uri}: file {name!r} has {len(data)} bytes, manifest.json says {entry['bytes']} "
                f"(truncated or altered): {fix}"
            )
        if sha256_bytes(data) != entry["sha256"]:
            raise ArtifactError(
                f"artifact {self.uri}: file {name!r} does not match its sha256 in manifest.json (corrupted): {fix}"
            )
        return data

    def read_tensors(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        data = self.read_bytes(name)
        try:
            tensors = load(data)
        except Exception as e:  # safetensors raises its own SafetensorError type
            raise ArtifactError(f"artifact {self.uri}: file {name!r} is not a safetensors file: {e}") from e
        recorded = self.read_manifest()["files"][name].get("tensors")
        if recorded is not None:  # what the manifest says is stored must be what is: a reader trusts either
            stored = {k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)} for k, t in tensors.items()}
            if stored != recorded:
                diff = sorted(k for k in set(stored) | set(recorded) if stored.get(k) != recorded.get(k))
                k = diff[0]
                raise ArtifactError(
                    f"artifact {self.uri}: file {name!r} does not hold the tensors manifest.json lists: tensor {k!r} is "
                    f"{stored.get(k, 'absent')} in the file, {recorded.get(k, 'absent')} in the manifest "
                    f"({len(diff)} such tensors): re-run the stage that produces it"
                )
        return tensors

    def read_text(self, name: str) -> str:
        try:
            return self.read_bytes(name).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ArtifactError(f"artifact {self.uri}: file {name!r} is not UTF-8 text (offset {e.start}): re-run the stage "
                                "that produces it") from None

    def _serialised(self, name: str, value: Mapping[Any, Any]) -> tuple[list[Any], dict[str, Any]]:
        """A mapping of tensors as the chunks of a safetensors file, and the manifest's description of its tensors."""
        import torch  # (a mapping of tensors comes from code that has imported torch already)

        if not all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in value.items()):
            raise ArtifactError(f"artifact {self.uri}: file {name!r} must map str -> torch.Tensor")
        tensors = {k: t.detach().cpu().contiguous() for k, t in value.items()}
        try:
            chunks = safetensors_chunks(tensors)
        except Exception as e:
            raise ArtifactError(f"artifact {self.uri}: cannot serialise tensors of {name!r}: {e}") from e
        return chunks, {k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)} for k, t in tensors.items()}

    def _dumps(self, manifest: dict[str, Any]) -> str:
        try:
            return json.dumps(manifest, indent=2, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"artifact {self.uri}: manifest is not JSON-serialisable: {e}") from e

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class _ProducerFailed(Exception):
    """An exception the producer of a file's bytes raised while the backend stored it: carried through the backend's
    own handling of store failures (which aborts what it began), then raised by `write` as it was."""

    def __init__(self, original: Exception) -> None:
        super().__init__(original)
        self.original = original


def _produced(make: Callable[[], Any]) -> Any:
    """make(), an exception it raises marked as the producer's."""
    try:
        return make()
    except Exception as e:
        raise _ProducerFailed(e) from e


def _check_name(uri: str, name: str) -> None:
    # Flat names only: keeps local and S3 layouts identical and rules out path escapes.
    if not isinstance(name, str) or name in ("", ".", "..", MANIFEST, PENDING) or "/" in name or "\\" in name:
        raise ArtifactError(
            f"artifact {uri}: invalid file name {name!r}: use a plain file name other than {MANIFEST}"
        )


def _valid_entry(entry: Any) -> bool:
    return (isinstance(entry, dict) and type(entry.get("bytes")) is int and entry["bytes"] >= 0
            and isinstance(entry.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is not None
            and _valid_tensors(entry.get("tensors", {})))


def _valid_tensors(tensors: Any) -> bool:
    """A manifest entry's `tensors`: name -> {"dtype": str, "shape": [non-negative ints]}."""
    return isinstance(tensors, dict) and all(
        isinstance(meta, dict) and set(meta) == {"dtype", "shape"} and isinstance(meta["dtype"], str)
        and isinstance(meta["shape"], list) and all(type(n) is int and n >= 0 for n in meta["shape"])
        for meta in tensors.values())


def _depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (a scalar: 0), counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def _parsed(raw: bytes, where: str) -> dict[str, Any] | str:
    """A manifest (or S3 write record) as a dict, or a description of what else it is."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = None
    return value if isinstance(value, dict) else f"a {where} that is not an infer-distill manifest"


def safetensors_chunks(tensors: Mapping[str, Any]) -> list[Any]:
    """The bytes `safetensors.torch.save(tensors)` returns, as chunks: the header, then a view of each tensor's own
    memory, so writing a file of tensors never holds a second copy of them (a distilled set of ImageNet at ipc 50 is
    gigabytes). The order of the tensors in the file is the library's (it sorts them by dtype, then name): read from the
    header it writes for empty tensors of the same names and dtypes. `tensors`: contiguous CPU tensors."""
    import torch
    from safetensors.torch import save

    empty = save({k: torch.empty(0, dtype=t.dtype) for k, t in tensors.items()})
    layout = json.loads(empty[8:8 + struct.unpack("<Q", empty[:8])[0]])
    header: dict[str, Any] = {}
    views, offset = [], 0
    for name, entry in layout.items():
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": entry["dtype"], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
        if size:
            views.append(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the tensors begin 8-byte aligned, as the library pads its header
    return [struct.pack("<Q", len(text)) + text, *views]
