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
    AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, credentials    as for any boto3 client
    AWS_MAX_ATTEMPTS               attempts per request, the first included (default 6)
    INFER_S3_CONNECT_TIMEOUT       seconds to wait for a connection (default 10)
    INFER_S3_READ_TIMEOUT          seconds to wait for a byte of an answer (default 60)
    INFER_S3_MULTIPART_THRESHOLD   bytes from which a file is uploaded in parts (default 64 MiB)

    open_artifact("runs/r1/teacher").write({"model.safetensors": state_dict}, {"stage": "train-teacher", ...})
    open_artifact("s3://bucket/runs/r1/teacher").read_tensors("model.safetensors")
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import random
import re
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the code that reads or writes tensors: the CLI's plan and config stay free of it
    import torch

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# S3: written before a rewrite starts and removed after its manifest, so an interrupted write of
# the pipeline's own artifact (keys, no manifest) is told apart from keys someone else put there.
PENDING = ".write-in-progress.json"
_DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
_MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum size of a (non-final) multipart part
_CREDENTIALS_HINT = (
    "no valid S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(from a Kubernetes Secret on a cluster)"
)
_MOVE_IT = "move it away (or delete it yourself if it is not needed), or choose another --out"

FileValue = "bytes | Mapping[str, torch.Tensor]"


class ArtifactError(RuntimeError):
    """A store failure that trying again cannot fix; the message names the artifact URI (and file) and the fix."""


class StoreUnavailable(RuntimeError):
    """The object store did not answer, or answered that it is busy or failing (network errors,
    timeouts, cut or truncated answers, HTTP 5xx, throttling), after every retry: trying again later may succeed.

    Not an ArtifactError, so no caller mistakes an outage for a missing or invalid artifact.
    """


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def open_artifact(uri: str | os.PathLike[str]) -> Artifact:
    """A local path (optionally `file://...`) or `s3://bucket/key/prefix`."""
    text = os.fspath(uri)
    if text.startswith("s3://"):
        return _s3_artifact(text)
    if "://" in text and not text.startswith("file://"):
        raise ArtifactError(f"unsupported artifact URI {text!r}: use a local path or s3://bucket/prefix")
    path = text.removeprefix("file://")
    if not path:
        raise ArtifactError("empty artifact URI: give a local path or s3://bucket/prefix")
    # Keep the URI as given (minus trailing slashes) so messages echo what the user typed.
    text = text.rstrip("/") if path.rstrip("/") else text
    return LocalArtifact(text, Path(path))


# S3's rules for bucket names (general purpose buckets); MinIO and other compatible stores share them.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")


def _s3_artifact(text: str) -> S3Artifact:
    bucket, _, prefix = text[len("s3://"):].partition("/")
    if not bucket:
        raise ArtifactError(
            f"artifact URI {text!r} has no bucket (nothing between 's3://' and the next '/'): use s3://bucket/key/prefix"
        )
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket or _IP_ADDRESS.fullmatch(bucket):
        raise ArtifactError(
            f"artifact URI {text!r}: {bucket!r} is not a valid S3 bucket name (3-63 characters: lowercase letters, "
            "digits, '.' and '-', starting and ending with a letter or digit): fix the bucket in the URI"
        )
    prefix = prefix.strip("/")
    if "//" in prefix:
        raise ArtifactError(f"artifact URI {text!r} has an empty path segment ('//'): remove the doubled '/'")
    return S3Artifact(f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}", bucket, prefix)


class Artifact(ABC):
    uri: str

    # --- backend -------------------------------------------------------------------------
    @abstractmethod
    def _get(self, name: str) -> bytes | None:
        """The file's content, or None if it does not exist."""

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
        for name, entry in manifest["files"].items():
            if not _valid_entry(entry):
                raise ArtifactError(
                    f"artifact {self.uri}: manifest.json's entry for {name!r} has no valid 'bytes' and 'sha256' "
                    "(altered by hand or by another tool): re-run the stage that produces it"
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
    if not isinstance(name, str) or name in ("", ".", "..", MANIFEST, PENDING) or "/" in name or "\\" in name:
        raise ArtifactError(
            f"artifact {uri}: invalid file name {name!r}: use a plain file name other than {MANIFEST}"
        )


def _valid_entry(entry: Any) -> bool:
    return (isinstance(entry, dict) and type(entry.get("bytes")) is int and entry["bytes"] >= 0
            and isinstance(entry.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is not None)


def _parsed(raw: bytes, where: str) -> dict[str, Any] | str:
    """A manifest (or S3 write record) as a dict, or a description of what else it is."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else f"a {where} that is not an infer-distill manifest"


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
        found = _parsed(self._get(MANIFEST) or b"", "manifest.json")
        if isinstance(found, dict):
            listed = found.get("files") if isinstance(found.get("files"), dict) else {}
            unlisted = sorted(entries - {MANIFEST} - set(listed))
            if unlisted:
                return f"files its manifest.json does not list ({', '.join(map(repr, unlisted[:5]))})"
        return found

    def _get(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise ArtifactError(f"artifact {self.uri}: cannot read {name!r}: {e}") from e

    def _put_all(self, items: Iterable[tuple[str, bytes]], stage: Any) -> None:
        parent, tag = self.path.parent, uuid.uuid4().hex
        tmp = parent / f".{self.path.name}.tmp-{tag}"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._remove_staging()
            tmp.mkdir()
            for name, data in items:
                with open(tmp / name, "wb") as f:
                    f.write(data)
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


# ----------------------------------------------------------------------------------------
# S3 (and S3-compatible stores such as MinIO, via AWS_ENDPOINT_URL)
# ----------------------------------------------------------------------------------------

# Error codes S3 and compatible stores use for "busy, slow down" (besides any HTTP 5xx).
_BUSY_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
               "RequestTimeout", "ServiceUnavailable", "InternalError"}


# Everything that decides which client to build; a changed value gives a fresh client.
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
    "AWS_MAX_ATTEMPTS", "INFER_S3_CONNECT_TIMEOUT", "INFER_S3_READ_TIMEOUT",
)


def _env_number(name: str, default: float, kind: Callable[[str], float], what: str) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if not value > 0 or value == float("inf"):
        raise ArtifactError(f"{name}={raw!r} is not a positive {what}: fix or unset it")
    return value


def _max_attempts() -> int:
    return _env_number("AWS_MAX_ATTEMPTS", 6, int, "whole number of attempts")


def _multipart_threshold() -> int:
    return _env_number("INFER_S3_MULTIPART_THRESHOLD", _DEFAULT_MULTIPART_THRESHOLD, int, "number of bytes")


def _s3_client() -> Any:
    return _cached_client(tuple(os.environ.get(k) for k in _CLIENT_ENV))


@functools.lru_cache(maxsize=8)
def _cached_client(env: tuple[str | None, ...]) -> Any:
    import boto3  # imported lazily: local-only runs never pay for boto3
    from botocore.config import Config

    settings = dict(zip(_CLIENT_ENV, env))
    config = Config(
        retries={"total_max_attempts": _max_attempts(), "mode": "standard"},
        connect_timeout=_env_number("INFER_S3_CONNECT_TIMEOUT", 10, float, "number of seconds"),
        read_timeout=_env_number("INFER_S3_READ_TIMEOUT", 60, float, "number of seconds"),
    )
    # A session per client: boto3's default session is not thread-safe and would cache credentials.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings["AWS_ENDPOINT_URL"] or None,
        region_name=settings["AWS_DEFAULT_REGION"] or "us-east-1",
        config=config,
    )


def _error_code(e: BaseException) -> str:
    # botocore's transport errors (ReadTimeoutError, ConnectionClosedError, ...) carry no answer: response is None.
    response = getattr(e, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _unretried(e: BaseException) -> bool:
    """A transport failure boto3 lets through without retrying it: raised raw by urllib3 or the socket
    while the body of an answer boto3 reads itself (a listing, an error) was cut short or stalled."""
    import urllib3
    from botocore.exceptions import BotoCoreError

    return not isinstance(e, BotoCoreError) and isinstance(e, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _transient(e: BaseException) -> bool:
    """A failure trying again may cure: the connection, the answer's transport, or a busy or failing service."""
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
    from botocore.exceptions import ConnectionError as ConnectionFailed

    if isinstance(e, (ConnectionFailed, HTTPClientError, IncompleteReadError)) or _unretried(e):
        return True
    if isinstance(e, ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or _error_code(e) in _BUSY_CODES
    return False


def _retrying(call: Callable[[], Any]) -> Any:
    """call(), tried again (with backoff) while it fails in a way boto3 does not retry, as often as boto3 tries a request.

    boto3 retries each request it sends, but not every failure while an answer's body is read: those
    are retried here, the whole call again, so every transport failure gets the same attempts."""
    attempt = 1
    while True:
        try:
            return call()
        except Exception as e:
            if attempt >= _max_attempts() or not _unretried(e):
                raise
        _backoff(attempt)
        attempt += 1


def _backoff(attempt: int) -> None:
    """Sleep before retry number `attempt` (1, 2, ...): exponential with full jitter, as boto3's standard mode."""
    time.sleep(random.uniform(0, min(20.0, 2.0 ** (attempt - 1))))


class S3Artifact(Artifact):
    def __init__(self, uri: str, bucket: str, prefix: str) -> None:
        self.uri, self.bucket, self.prefix = uri, bucket, prefix

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[Any]:
        """Yield a client; turn any S3 failure into a StoreUnavailable (an outage: try again later) or
        an ArtifactError (anything else), saying what to fix."""
        import urllib3
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
        from botocore.exceptions import ConnectionError as ConnectionFailed

        client = _s3_client()
        endpoint = client.meta.endpoint_url
        try:
            yield client
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise ArtifactError(f"cannot {doing} {self.uri}: {_CREDENTIALS_HINT}") from e
        except (BotoCoreError, ClientError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as e:
            notes = "".join(f"; {note}" for note in getattr(e, "__notes__", ()))
            if _transient(e):
                attempts = f"after {_max_attempts()} attempts"
                if isinstance(e, ClientError):
                    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                    cause = f"answered {_error_code(e) or status} {attempts} (the service is failing or throttling)"
                elif isinstance(e, ConnectionFailed):
                    cause = f"is unreachable ({type(e).__name__}, {attempts})"
                else:
                    cause = f"cut, stalled or truncated its answer ({type(e).__name__}, {attempts}: {e})"
                raise StoreUnavailable(
                    f"cannot {doing} {self.uri}: S3 endpoint {endpoint} {cause}: check AWS_ENDPOINT_URL and "
                    f"that the S3 service is running, or try again later{notes}"
                ) from e
            code = _error_code(e)
            if code in ("NoSuchBucket", "404"):
                raise ArtifactError(
                    f"S3 bucket '{self.bucket}' does not exist at endpoint {endpoint}: create it "
                    f"(e.g. aws s3 mb s3://{self.bucket}) or fix the --out URI{notes}"
                ) from e
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"):
                # Only the error code: messages may echo request details, never print credentials.
                raise ArtifactError(
                    f"cannot {doing} {self.uri} at endpoint {endpoint} ({code}): {_CREDENTIALS_HINT}, "
                    f"with access to bucket '{self.bucket}'{notes}"
                ) from e
            raise ArtifactError(f"cannot {doing} {self.uri} at endpoint {endpoint}: {e}{notes}") from e

    def check_writable(self) -> None:
        _multipart_threshold()  # a bad value fails here, not at the first large file hours later
        with self._errors("write to") as client:
            _retrying(lambda: client.head_bucket(Bucket=self.bucket))

    def exists(self) -> bool:
        with self._errors("read") as client:
            try:
                _retrying(lambda: client.head_object(Bucket=self.bucket, Key=self._key(MANIFEST)))
                return True
            except Exception as e:
                if _error_code(e) in ("404", "NoSuchKey"):
                    return False
                raise

    def children(self) -> list[Artifact]:
        prefix = f"{self.prefix}/" if self.prefix else ""

        def names() -> set[str]:
            found = set()
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    name, _, rest = obj["Key"][len(prefix):].partition("/")
                    if rest == MANIFEST:
                        found.add(name)
            return found

        with self._errors("list") as client:
            return [S3Artifact(f"{self.uri}/{n}", self.bucket, prefix + n) for n in sorted(_retrying(names))]

    def _get(self, name: str) -> bytes | None:
        with self._errors("read") as client:
            attempt = 1
            while True:
                try:
                    body = _retrying(lambda: client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"])
                except Exception as e:
                    if _error_code(e) == "NoSuchKey":
                        return None
                    raise
                # The body streams after boto3 has returned: a cut, stalled or truncated one is
                # retried here, the whole GET again.
                try:
                    return body.read()
                except Exception as e:
                    if attempt >= _max_attempts() or not _transient(e):
                        raise
                _backoff(attempt)
                attempt += 1

    def _resident(self) -> dict[str, Any] | str | None:
        for name in (MANIFEST, PENDING):
            raw = self._get(name)
            if raw is not None:
                return _parsed(raw, name)
        with self._errors("list") as client:
            listed = _retrying(lambda: client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1))
        if listed.get("KeyCount", 0):
            return f"objects without a manifest.json (e.g. {listed['Contents'][0]['Key']!r})"
        return None

    def _put_all(self, items: Iterable[tuple[str, bytes]], stage: Any) -> None:
        from boto3.s3.transfer import TransferConfig

        threshold = _multipart_threshold()
        transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=max(threshold, _MIN_PART_SIZE))
        pending = json.dumps({"stage": stage}).encode()
        with self._errors("write") as client:
            _retrying(lambda: client.put_object(Bucket=self.bucket, Key=self._key(PENDING), Body=pending))
            # No manifest while files change: a half-rewritten artifact must never read as valid.
            _retrying(lambda: client.delete_object(Bucket=self.bucket, Key=self._key(MANIFEST)))
            for name, data in items:
                key = self._key(name)
                try:
                    _retrying(lambda: client.upload_fileobj(io.BytesIO(data), self.bucket, key, Config=transfer))
                except Exception as e:
                    if len(data) >= threshold:
                        self._abort_uploads(client, key, e)
                    raise
            _retrying(lambda: client.delete_object(Bucket=self.bucket, Key=self._key(PENDING)))

    def _abort_uploads(self, client: Any, key: str, failure: Exception) -> None:
        """Abort the multipart uploads a failed upload of `key` left (boto3 tries its own abort once and
        ignores its failure): retried; one that cannot be aborted is named in the error."""
        left: list[str] = []

        def abort() -> None:
            left[:] = [u["UploadId"] for u in client.list_multipart_uploads(Bucket=self.bucket, Prefix=key).get("Uploads", [])
                       if u["Key"] == key]
            for upload_id in left:
                client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

        try:
            _retrying(abort)  # boto3 retries each request of it
        except Exception as e:
            failure.add_note(
                f"the multipart upload of s3://{self.bucket}/{key} (id {', '.join(left) or 'unknown'}) could not be "
                f"aborted ({type(e).__name__}) and keeps its parts stored: abort it (aws s3api list-multipart-uploads "
                f"--bucket {self.bucket} --prefix {key}) or let a bucket lifecycle rule remove incomplete uploads"
            )
