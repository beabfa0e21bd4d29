"""Artifacts under an S3 prefix (and S3-compatible stores such as MinIO, via AWS_ENDPOINT_URL): the client,
its settings from the environment, and retries that tell an outage (StoreUnavailable) from a refusal.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the code that reads or writes tensors: the CLI's plan and config stay free of it
    pass

from infer_distill.errors import ArtifactError, StoreUnavailable
from infer_distill.storage.artifact import (
    _CREDENTIALS_HINT,
    _DEFAULT_MULTIPART_THRESHOLD,
    _MIN_PART_SIZE,
    MANIFEST,
    MANIFEST_MAX_BYTES,
    PENDING,
    Artifact,
    _parsed,
)

# Error codes S3 and compatible stores use for "busy, slow down" (besides any HTTP 5xx).
_BUSY_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
               "RequestTimeout", "ServiceUnavailable", "InternalError"}


# Everything that decides which client to build; a changed value gives a fresh client.
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
    "AWS_MAX_ATTEMPTS", "INFER_S3_CONNECT_TIMEOUT", "INFER_S3_READ_TIMEOUT",
)


def _env_number(name: str, default: float, kind: Callable[[str], float], what: str, most: float) -> Any:
    """The number environment variable `name` holds (`default` when unset): above 0 and at most `most`, since a
    larger one is a typo that would stall or break a run (a timeout of 1e308 s overflows the socket's)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if not value > 0 or not value <= most:  # NaN and infinity fail one or the other
        raise ArtifactError(f"{name}={raw!r} is not a positive {what} of at most {most:g}: fix or unset it "
                            f"(default {default:g})")
    return value


def _max_attempts() -> int:
    return _env_number("AWS_MAX_ATTEMPTS", 6, int, "whole number of attempts", 100)


def _multipart_threshold() -> int:
    # S3 takes parts of at most 5 GiB, and the threshold is the part size
    return _env_number("INFER_S3_MULTIPART_THRESHOLD", _DEFAULT_MULTIPART_THRESHOLD, int, "number of bytes", 5 * 1024**3)


# S3's most parts of one upload
_MAX_PARTS = 10_000


def _part_size(threshold: int, sent: int) -> int:
    """The size of the next part of an upload that has sent `sent` parts: the threshold (at least S3's least part),
    times 2 past the 1,000th part, 3 past the 2,000th, ..., so that 10,000 parts hold 55,000 times it (at most 5 GiB)."""
    return min(max(threshold, _MIN_PART_SIZE) * (1 + sent // 1000), 5 * 1024**3)


def _timeout(name: str, default: float) -> float:
    return _env_number(name, default, float, "number of seconds", 3600)


def _masked(url: str) -> str:
    """`url` with any user name and password in it replaced by ***, so a message never prints a credential."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}" if sep else ("***" if "@" in url else url)


def _endpoint_url(raw: str | None) -> str | None:
    """AWS_ENDPOINT_URL checked as boto3 would need it, before a client is built: http(s)://host[:port][/path]."""
    if not raw:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(raw)
    except ValueError:  # an unbalanced [ of an IPv6 address
        parts = None
    try:
        port = parts.port if parts else None
    except ValueError:  # not a number from 0 to 65535
        port = -1
    problem = ("is not a URL: give http://host:port or https://host"
               if parts is None or parts.scheme not in ("http", "https") or any(c.isspace() for c in raw)
               else "has no host: give http://host:port or https://host" if not parts.hostname
               else "holds credentials: remove them from the URL and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
               if parts.username is not None or parts.password is not None
               else "has no valid port: give a port from 1 to 65535 (http://host:9000), or none" if port in (-1, 0)
               else None)
    if problem:
        raise ArtifactError(f"AWS_ENDPOINT_URL={_masked(raw)!r} {problem} (or unset it for AWS itself)")
    return raw


# Connections the client keeps open, at least
_POOL_CONNECTIONS = 64


def _s3_client() -> Any:
    return _cached_client(tuple(os.environ.get(k) for k in _CLIENT_ENV))


@functools.lru_cache(maxsize=8)
def _cached_client(env: tuple[str | None, ...]) -> Any:
    import boto3  # imported lazily: local-only runs never pay for boto3
    from botocore.config import Config

    settings = dict(zip(_CLIENT_ENV, env))
    config = Config(
        retries={"total_max_attempts": _max_attempts(), "mode": "standard"},
        connect_timeout=_timeout("INFER_S3_CONNECT_TIMEOUT", 10),
        read_timeout=_timeout("INFER_S3_READ_TIMEOUT", 60),
        # A connection for each thread that may send a request at once: a folder source on S3 GETs its images on its
        # decoding threads, 32 or one per usable core (botocore keeps 10 by default, and discards and warns beyond them)
        max_pool_connections=max(_POOL_CONNECTIONS, os.cpu_count() or 1),
    )
    # A session per client: boto3's default session is not thread-safe and would cache credentials.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=_endpoint_url(settings["AWS_ENDPOINT_URL"]),
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

    def _size(self, name: str) -> int | None:
        with self._errors("read") as client:
            try:
                return _retrying(lambda: client.head_object(Bucket=self.bucket, Key=self._key(name)))["ContentLength"]
            except Exception as e:
                if _error_code(e) in ("404", "NoSuchKey"):
                    return None
                raise

    def _get(self, name: str, limit: int | None = None) -> bytes | None:
        data = self._fetch(name, None, None if limit is None else limit + 1)
        if data is not None and limit is not None and len(data) > limit:
            raise ArtifactError(f"artifact {self.uri}: cannot read {name!r} (over the limit of {limit:,} "
                                "bytes): move it away and re-run the stage that produces it")
        return data

    def _read_range(self, name: str, start: int, length: int) -> bytes | None:
        data = self._fetch(name, f"bytes={start}-{start + length - 1}", length + 1)
        if data is not None and len(data) > length:  # a store that ignored the Range: never more than was asked
            raise ArtifactError(f"artifact {self.uri}: reading bytes {start:,}-{start + length - 1:,} of {name!r}, S3 "
                                "answered more than the range (Range requests unsupported?): use an S3 store that "
                                "answers them")
        return data

    def _fetch(self, name: str, byte_range: str | None, most: int | None) -> bytes | None:
        """One GET of the object (of `byte_range` of it, an HTTP Range): its first `most` bytes (all: None), None if
        there is no such object, b"" where the range starts at or past its end."""
        ranged = {} if byte_range is None else {"Range": byte_range}
        with self._errors("read") as client:
            attempt = 1
            while True:
                try:
                    body = _retrying(lambda: client.get_object(Bucket=self.bucket, Key=self._key(name), **ranged)["Body"])
                except Exception as e:
                    if _error_code(e) == "NoSuchKey":
                        return None
                    if _error_code(e) == "InvalidRange":  # the range starts past the end: the reader says the file is short
                        return b""
                    raise
                # The body streams after boto3 has returned: a cut, stalled or truncated one is
                # retried here, the whole GET again.
                try:
                    data = body.read() if most is None else body.read(most)
                except Exception as e:
                    if attempt >= _max_attempts() or not _transient(e):
                        raise
                else:
                    if most is not None and len(data) >= most:
                        body.close()
                    return data
                _backoff(attempt)
                attempt += 1

    def _resident(self) -> dict[str, Any] | str | None:
        for name in (MANIFEST, PENDING):
            raw = self._get(name, MANIFEST_MAX_BYTES)
            if raw is not None:
                return _parsed(raw, name)
        with self._errors("list") as client:
            listed = _retrying(lambda: client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1))
        if listed.get("KeyCount", 0):
            return f"objects without a manifest.json (e.g. {listed['Contents'][0]['Key']!r})"
        return None

    def _put_all(self, items: Iterable[tuple[str, Iterable[memoryview]]], stage: Any) -> None:
        threshold = _multipart_threshold()
        pending = json.dumps({"stage": stage}).encode()
        with self._errors("write") as client:
            _retrying(lambda: client.put_object(Bucket=self.bucket, Key=self._key(PENDING), Body=pending))
            # No manifest while files change: a half-rewritten artifact must never read as valid.
            _retrying(lambda: client.delete_object(Bucket=self.bucket, Key=self._key(MANIFEST)))
            for name, chunks in items:
                self._upload(client, self._key(name), chunks, threshold)
            _retrying(lambda: client.delete_object(Bucket=self.bucket, Key=self._key(PENDING)))

    def _upload(self, client: Any, key: str, chunks: Iterable[memoryview], threshold: int) -> None:
        """Store `chunks` at `key` as they come: one PUT if they total less than `threshold` bytes, else a multipart
        upload whose parts are sent as they fill, so memory holds a part, never the file. A failure or an interruption
        (the producer's included) aborts the upload."""
        buffer, parts, upload_id = bytearray(), [], None

        def send(size: int) -> None:
            if len(parts) >= _MAX_PARTS:
                raise ArtifactError(f"cannot write s3://{self.bucket}/{key}: over {_MAX_PARTS:,} parts "
                                    f"(INFER_S3_MULTIPART_THRESHOLD={threshold}): raise INFER_S3_MULTIPART_THRESHOLD")
            with memoryview(buffer) as whole:  # one copy of the part: its body
                body, number = bytes(whole[:size]), len(parts) + 1
            answer = _retrying(lambda: client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                          PartNumber=number, Body=body))
            parts.append({"ETag": answer["ETag"], "PartNumber": number})
            del buffer[:size]

        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:  # a chunk larger than a part is taken a part at a time: the buffer never exceeds one
                    size = _part_size(threshold, len(parts))
                    take = size - len(buffer)  # > 0: a full buffer is sent (size >= threshold) before this
                    buffer += view[:take]
                    view = view[take:]
                    if upload_id is None and len(buffer) >= threshold:
                        upload_id = _retrying(lambda: client.create_multipart_upload(Bucket=self.bucket, Key=key))["UploadId"]
                    if upload_id is not None and len(buffer) >= size:
                        send(size)
            if upload_id is None:
                body = bytes(buffer)
                _retrying(lambda: client.put_object(Bucket=self.bucket, Key=key, Body=body))
                return
            if buffer or not parts:  # the last part may be smaller than S3's least
                send(len(buffer))
            _retrying(lambda: client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                               MultipartUpload={"Parts": parts}))
        except BaseException as e:  # an interruption (SIGTERM) too: no upload is left to keep its parts stored
            if upload_id is not None:
                self._abort_uploads(client, key, e)
            raise

    def _abort_uploads(self, client: Any, key: str, failure: BaseException) -> None:
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
