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
- safe: tensors are stored with safetensors and loaded without pickle, and every read is
  checked against the recorded size and sha256, so truncation or corruption is an error,
  not silently wrong numbers;
- every store failure classified: refused input (bad URI, bad settings, missing bucket,
  credentials) is an ArtifactError (exit 2); a store that does not answer, cuts a connection,
  times out, truncates a body, throttles or fails (HTTP 5xx) is retried -- the body of a read
  included -- and then a StoreUnavailable naming the URI and the cause (exit 75). A multipart
  upload a failed write leaves behind is aborted (with retries); one that cannot be aborted is
  named in the error.

S3 settings, from the environment (checked by `check_writable`, the preflight of every run):
    AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, credentials    as for any boto3 client (the endpoint
                                   http(s)://host[:port], without credentials in it)
    AWS_MAX_ATTEMPTS               attempts per request, the first included (default 6, at most 100)
    INFER_S3_CONNECT_TIMEOUT       seconds to wait for a connection (default 10, at most 3600)
    INFER_S3_READ_TIMEOUT          seconds to wait for a byte of an answer (default 60, at most 3600)
    INFER_S3_MULTIPART_THRESHOLD   bytes from which a file is uploaded in parts (default 64 MiB, at most 5 GiB)

A manifest is read only up to MANIFEST_MAX_BYTES and MANIFEST_MAX_DEPTH levels of nesting, and a
local file only when it is a regular file (or a link to one): a FIFO or device in an artifact's
place is refused by name, never read or waited on.

    open_artifact("runs/r1/teacher").write({"model.safetensors": state_dict}, {"stage": "train-teacher", ...})
    open_artifact("s3://bucket/runs/r1/teacher").read_tensors("model.safetensors")
"""
from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
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

FileValue = "bytes | Mapping[str, torch.Tensor]"


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Artifact(ABC):
    uri: str

    # --- backend -------------------------------------------------------------------------
    @abstractmethod
    def _get(self, name: str, limit: int | None = None) -> bytes | None:
        """The file's content, or None if it does not exist; ArtifactError if it is longer than `limit` bytes."""

    @abstractmethod
    def _size(self, name: str) -> int | None:
        """The file's size in bytes, or None if there is no file of that name."""

    @abstractmethod
    def _put_all(self, items: Iterable[tuple[str, bytes]], stage: Any) -> None:
        """Store the files in order (manifest.json is always the last item) of a `stage` artifact, atomically."""

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

    def write(self, files: Mapping[str, FileValue], manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Write `files` and then `manifest`, with `files` (per-file entries) and `schema_version` set.

        Afterwards the artifact is exactly `files`: its manifest lists nothing else. Refused
        (`check_replaceable`) unless the location is empty or holds an artifact of the same
        `manifest["stage"]`. A local directory is replaced as a whole; on S3 the new files
        overwrite keys of the same name, and keys of an earlier write that are not in `files`
        stay in the bucket, unlisted, so no read ever returns them.
        Returns the manifest as written.
        """
        for name in files:
            _check_name(self.uri, name)
        out: dict[str, Any] = json.loads(self._dumps(dict(manifest)))  # deep copy; fails before any I/O
        entries: dict[str, Any] = {}
        out.update(files=entries, schema_version=SCHEMA_VERSION)
        self.check_replaceable(out.get("stage"))

        def items() -> Iterator[tuple[str, bytes]]:
            # Encoded one file at a time, so only one serialised file is in memory at once.
            for name, value in files.items():
                data, entry = self._encode(name, value)
                entries[name] = entry
                yield name, data
            yield MANIFEST, self._dumps(out).encode()

        self._put_all(items(), out.get("stage"))
        return out

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

    def _encode(self, name: str, value: FileValue) -> tuple[bytes, dict[str, Any]]:
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            return data, {"sha256": sha256_bytes(data), "bytes": len(data)}
        if isinstance(value, Mapping):
            import torch  # (a mapping of tensors comes from code that has imported torch already)
            from safetensors.torch import save

            if all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in value.items()):
                tensors = {k: t.detach().cpu().contiguous() for k, t in value.items()}
                try:
                    data = save(tensors)
                except Exception as e:
                    raise ArtifactError(f"artifact {self.uri}: cannot serialise tensors of {name!r}: {e}") from e
                meta = {k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)} for k, t in tensors.items()}
                return data, {"sha256": sha256_bytes(data), "bytes": len(data), "tensors": meta}
        raise ArtifactError(
            f"artifact {self.uri}: file {name!r} must be bytes or a dict of str -> torch.Tensor, "
            f"got {type(value).__name__}"
        )

    def _dumps(self, manifest: dict[str, Any]) -> str:
        try:
            return json.dumps(manifest, indent=2, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"artifact {self.uri}: manifest is not JSON-serialisable: {e}") from e

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


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
