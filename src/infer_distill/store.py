"""Artifact store: where every pipeline stage reads its inputs and writes its outputs.

An artifact is a "directory" of files -- a local directory or an S3 key prefix -- plus a
`manifest.json` that is written LAST and so acts as the commit marker: an artifact exists iff
its manifest does. The manifest records, for every file, its size and sha256 (and, for tensor
files, each tensor's dtype and shape), together with whatever the producing stage put in it
(config, metrics, ...) and `schema_version`.

Why this layout:
- atomic: a crashed or failed write never leaves something that reads as a valid artifact
  (locally the new directory is renamed into place; on S3 the manifest goes away first and
  comes back last);
- self-describing: a reader learns what is there, and what made it, from the manifest alone;
- safe: tensors are stored with safetensors and loaded without pickle, and every read is
  checked against the recorded size and sha256, so truncation or corruption is an error,
  not silently wrong numbers.

    open_artifact("runs/r1/teacher").write({"model.safetensors": state_dict}, {...})
    open_artifact("s3://bucket/runs/r1/teacher").read_tensors("model.safetensors")
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the code that reads or writes tensors: the CLI's plan and config stay free of it
    import torch

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
_MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum size of a (non-final) multipart part
_CREDENTIALS_HINT = (
    "no valid S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(from a Kubernetes Secret on a cluster)"
)

FileValue = "bytes | Mapping[str, torch.Tensor]"


class ArtifactError(RuntimeError):
    """A store failure that trying again cannot fix; the message names the artifact URI (and file) and the fix."""


class StoreUnavailable(RuntimeError):
    """The object store did not answer, or answered that it is busy or failing (network errors,
    timeouts, HTTP 5xx, throttling), after boto3's own retries: trying again later may succeed.

    Not an ArtifactError, so no caller mistakes an outage for a missing or invalid artifact.
    """


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def open_artifact(uri: str | os.PathLike[str]) -> Artifact:
    """A local path (optionally `file://...`) or `s3://bucket/key/prefix`."""
    text = os.fspath(uri)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://"):].strip("/").partition("/")
        if not bucket:
            raise ArtifactError(f"artifact URI {text!r} has no bucket: use s3://bucket/key/prefix")
        prefix = prefix.strip("/")
        return S3Artifact(f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}", bucket, prefix)
    if "://" in text and not text.startswith("file://"):
        raise ArtifactError(f"unsupported artifact URI {text!r}: use a local path or s3://bucket/prefix")
    path = text.removeprefix("file://")
    if not path:
        raise ArtifactError("empty artifact URI: give a local path or s3://bucket/prefix")
    # Keep the URI as given (minus trailing slashes) so messages echo what the user typed.
    text = text.rstrip("/") if path.rstrip("/") else text
    return LocalArtifact(text, Path(path))


class Artifact(ABC):
    uri: str

    # --- backend -------------------------------------------------------------------------
    @abstractmethod
    def _get(self, name: str) -> bytes | None:
        """The file's content, or None if it does not exist."""

    @abstractmethod
    def _put_all(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Store the files in order (manifest.json is always the last item), atomically."""

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def children(self) -> list[Artifact]:
        """The artifacts one level below this location (folders holding a manifest.json), by name."""

    @abstractmethod
    def check_writable(self) -> None: ...

    # --- shared logic --------------------------------------------------------------------
    def write(self, files: Mapping[str, FileValue], manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Write `files` and then `manifest`, with `files` (per-file entries) and `schema_version` set.

        Afterwards the artifact is exactly `files`: its manifest lists nothing else. A local
        directory is replaced as a whole (with anything nested under it); on S3 the new files
        overwrite keys of the same name, and keys of an earlier write that are not in `files`
        stay in the bucket, unlisted, so no read ever returns them.
        Returns the manifest as written.
        """
        for name in files:
            _check_name(self.uri, name)
        out: dict[str, Any] = json.loads(self._dumps(dict(manifest)))  # deep copy; fails before any I/O
        entries: dict[str, Any] = {}
        out.update(files=entries, schema_version=SCHEMA_VERSION)

        def items() -> Iterator[tuple[str, bytes]]:
            # Encoded one file at a time, so only one serialised file is in memory at once.
            for name, value in files.items():
                data, entry = self._encode(name, value)
                entries[name] = entry
                yield name, data
            yield MANIFEST, self._dumps(out).encode()

        self._put_all(items())
        return out

    def read_manifest(self) -> dict[str, Any]:
        raw = self._get(MANIFEST)
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
        return manifest

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
            return load(data)
        except Exception as e:  # safetensors raises its own SafetensorError type
            raise ArtifactError(f"artifact {self.uri}: file {name!r} is not a safetensors file: {e}") from e

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

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
    if not isinstance(name, str) or name in ("", ".", "..", MANIFEST) or "/" in name or "\\" in name:
        raise ArtifactError(
            f"artifact {uri}: invalid file name {name!r}: use a plain file name other than {MANIFEST}"
        )


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
        # write() stages a sibling temp dir and renames it in, so the parent must be writable.
        probe = self.path.parent / f".{self.path.name}.probe-{uuid.uuid4().hex}"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ArtifactError(
                f"output location {self.uri} is not writable: {e.strerror or e}; choose another --out"
            ) from e

    def _get(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise ArtifactError(f"artifact {self.uri}: cannot read {name!r}: {e}") from e

    def _put_all(self, items: Iterable[tuple[str, bytes]]) -> None:
        parent, tag = self.path.parent, uuid.uuid4().hex
        tmp = parent / f".{self.path.name}.tmp-{tag}"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            for name, data in items:
                with open(tmp / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(tmp)
            if self.path.exists():
                # No atomic directory swap in POSIX rename: move the old one aside first.
                old = parent / f".{self.path.name}.old-{tag}"
                os.rename(self.path, old)
                try:
                    os.rename(tmp, self.path)
                except OSError:
                    os.rename(old, self.path)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, self.path)
            _fsync_dir(parent)
        except OSError as e:
            raise ArtifactError(f"cannot write artifact {self.uri}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # no-op once renamed into place


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------
# S3 (and S3-compatible stores such as MinIO, via AWS_ENDPOINT_URL)
# ----------------------------------------------------------------------------------------

_MAX_ATTEMPTS = 6  # the first try and 5 retries, in boto3's standard mode (backoff with jitter)
# Error codes S3 and compatible stores use for "busy, slow down" (besides any HTTP 5xx).
_BUSY_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
               "RequestTimeout", "ServiceUnavailable", "InternalError"}


# Everything that decides which client to build; a changed value gives a fresh client.
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
)


def _s3_client() -> Any:
    return _cached_client(tuple(os.environ.get(k) for k in _CLIENT_ENV))


@functools.lru_cache(maxsize=8)
def _cached_client(env: tuple[str | None, ...]) -> Any:
    import boto3  # imported lazily: local-only runs never pay for boto3
    from botocore.config import Config

    settings = dict(zip(_CLIENT_ENV, env))
    # A session per client: boto3's default session is not thread-safe and would cache credentials.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings["AWS_ENDPOINT_URL"] or None,
        region_name=settings["AWS_DEFAULT_REGION"] or "us-east-1",
        config=Config(retries={"total_max_attempts": _MAX_ATTEMPTS, "mode": "standard"}, connect_timeout=10, read_timeout=60),
    )


def _error_code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


class S3Artifact(Artifact):
    def __init__(self, uri: str, bucket: str, prefix: str) -> None:
        self.uri, self.bucket, self.prefix = uri, bucket, prefix

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[Any]:
        """Yield a client; turn any S3 failure into a StoreUnavailable (an outage: try again later) or
        an ArtifactError (anything else), saying what to fix."""
        from botocore.exceptions import (
            BotoCoreError, ClientError, HTTPClientError, IncompleteReadError,
            NoCredentialsError, PartialCredentialsError,
        )
        from botocore.exceptions import ConnectionError as ConnectionFailed

        client = _s3_client()
        endpoint = client.meta.endpoint_url
        try:
            yield client
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise ArtifactError(f"cannot {doing} {self.uri}: {_CREDENTIALS_HINT}") from e
        except (ConnectionFailed, HTTPClientError, IncompleteReadError) as e:  # refused, reset, timed out, cut short
            raise StoreUnavailable(
                f"cannot {doing} {self.uri}: S3 endpoint {endpoint} is unreachable ({type(e).__name__}, "
                f"after {_MAX_ATTEMPTS} attempts): check AWS_ENDPOINT_URL and that the S3 service is running"
            ) from e
        except ClientError as e:
            code = _error_code(e)
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500 or code in _BUSY_CODES:
                raise StoreUnavailable(
                    f"cannot {doing} {self.uri}: S3 endpoint {endpoint} answered {code or status} "
                    f"after {_MAX_ATTEMPTS} attempts (the service is failing or throttling): try again later"
                ) from e
            if code in ("NoSuchBucket", "404"):
                raise ArtifactError(
                    f"S3 bucket '{self.bucket}' does not exist at endpoint {endpoint}: create it "
                    f"(e.g. aws s3 mb s3://{self.bucket}) or fix the --out URI"
                ) from e
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"):
                # Only the error code: messages may echo request details, never print credentials.
                raise ArtifactError(
                    f"cannot {doing} {self.uri} at endpoint {endpoint} ({code}): {_CREDENTIALS_HINT}, "
                    f"with access to bucket '{self.bucket}'"
                ) from e
            raise ArtifactError(f"cannot {doing} {self.uri} at endpoint {endpoint}: {e}") from e
        except BotoCoreError as e:
            raise ArtifactError(f"cannot {doing} {self.uri} at endpoint {endpoint}: {e}") from e

    def check_writable(self) -> None:
        with self._errors("write to") as client:
            client.head_bucket(Bucket=self.bucket)

    def exists(self) -> bool:
        with self._errors("read") as client:
            try:
                client.head_object(Bucket=self.bucket, Key=self._key(MANIFEST))
                return True
            except Exception as e:
                if _error_code(e) in ("404", "NoSuchKey"):
                    return False
                raise

    def children(self) -> list[Artifact]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        names = set()
        with self._errors("list") as client:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    name, _, rest = obj["Key"][len(prefix):].partition("/")
                    if rest == MANIFEST:
                        names.add(name)
        return [S3Artifact(f"{self.uri}/{n}", self.bucket, prefix + n) for n in sorted(names)]

    def _get(self, name: str) -> bytes | None:
        with self._errors("read") as client:
            try:
                return client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
            except Exception as e:
                if _error_code(e) == "NoSuchKey":
                    return None
                raise

    def _put_all(self, items: Iterable[tuple[str, bytes]]) -> None:
        from boto3.s3.transfer import TransferConfig

        threshold = _multipart_threshold()
        transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=max(threshold, _MIN_PART_SIZE))
        with self._errors("write") as client:
            # No manifest while files change: a half-rewritten artifact must never read as valid.
            client.delete_object(Bucket=self.bucket, Key=self._key(MANIFEST))
            for name, data in items:
                client.upload_fileobj(io.BytesIO(data), self.bucket, self._key(name), Config=transfer)


def _multipart_threshold() -> int:
    raw = os.environ.get("INFER_S3_MULTIPART_THRESHOLD")
    if raw is None:
        return _DEFAULT_MULTIPART_THRESHOLD
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ArtifactError(f"INFER_S3_MULTIPART_THRESHOLD={raw!r} is not a positive number of bytes: fix or unset it")
    return value
