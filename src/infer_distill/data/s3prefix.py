"""A dataset root under an S3 prefix (`dataset.root: s3://bucket/prefix`), as the folder sources and the WebDataset
source read it: the run's S3 client (credentials and endpoint from the environment), its retries and its errors (an
outage is StoreUnavailable, a refusal names dataset.root and what to fix); listings a page of 1,000 keys at a time,
whole objects, and objects as streams resumed where a connection broke off.
"""
from __future__ import annotations

import errno
import io
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from infer_distill.errors import DataError
from infer_distill.runtime.progress import progress_bar


class S3Prefix:
    """An S3 prefix, read with the run's S3 client, its retries, and its errors."""

    def __init__(self, root: str) -> None:
        from infer_distill.storage import _s3_artifact

        self.art = _s3_artifact(root.rstrip("/"))
        self.uri, self.bucket, self.prefix = self.art.uri, self.art.bucket, self.art.prefix

    def where(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.art._key(name)}"

    @contextmanager
    def _client(self, doing: str) -> Iterator[Any]:
        from infer_distill.storage.s3 import _error_code

        # "cannot list dataset.root s3://...: <why>: <the fix>"
        with self.art._errors(f"{doing} dataset.root") as client:
            try:
                yield client
            except Exception as e:
                if _error_code(e) == "NoSuchBucket":
                    raise DataError(f"dataset.root {self.uri}: bucket {self.bucket!r} does not exist at "
                                    f"{client.meta.endpoint_url}: fix dataset.root (or AWS_ENDPOINT_URL)") from None
                raise

    def objects(self, under: str, progress: bool = True) -> Iterator[tuple[str, int, str]]:
        """(name relative to the prefix, size, ETag) of every object whose name starts with `under` ("" for all), in
        key order: a ListObjectsV2 request per 1,000 keys (ImageNet's training split: some 1,300), each retried on
        its own, so a failure late in a long listing costs one page; a listing of several pages shows progress."""
        from infer_distill.storage.s3 import _retrying

        start, skip = self.art._key(under), len(self.art._key(""))

        def pages() -> Iterator[dict]:
            token: dict[str, str] = {}
            while True:
                page = _retrying(lambda: client.list_objects_v2(Bucket=self.bucket, Prefix=start, **token))
                yield page
                if not page.get("IsTruncated"):
                    return
                token = {"ContinuationToken": page["NextContinuationToken"]}

        with self._client("list") as client:
            listed = pages()
            first = next(listed)
            shown = progress_bar(itertools.chain([first], listed), f"listing {self.where(under)} (1,000 keys a page)",
                                 disable=not (progress and first.get("IsTruncated")))
            count = 0
            for page in shown:
                for obj in page.get("Contents", []):
                    yield obj["Key"][skip:], obj["Size"], obj.get("ETag", "")
                count += page.get("KeyCount", 0)
                shown.set_postfix(keys=f"{count:,}")

    def listing(self, names: list[str]) -> dict[str, tuple[int, str]]:
        """{name: (size, ETag)} of those of `names` that exist: one listing of the names they all start with."""
        wanted = set(names)
        return {name: (size, etag) for name, size, etag in self.objects(os.path.commonprefix(names)) if name in wanted}

    def top_level(self) -> list[str]:
        """The names directly under the prefix, as a refusal shows them: "folder/" for a common prefix, an object's
        name; at most one page (1,000)."""
        from infer_distill.storage.s3 import _retrying

        start, skip = self.art._key(""), len(self.art._key(""))
        with self._client("list") as client:
            page = _retrying(lambda: client.list_objects_v2(Bucket=self.bucket, Prefix=start, Delimiter="/"))
        return sorted([p["Prefix"][skip:] for p in page.get("CommonPrefixes", [])] +
                      [o["Key"][skip:] for o in page.get("Contents", [])])

    def is_object(self) -> bool:
        """Whether the root names an object itself (a file where the prefix of a folder was meant)."""
        from infer_distill.storage.s3 import _retrying

        if not self.prefix:
            return False
        with self._client("list") as client:
            # a key sorts before every longer key it starts: the first key listed is the root's, if it is an object
            page = _retrying(lambda: client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1))
        return any(o["Key"] == self.prefix for o in page.get("Contents", []))

    def get(self, name: str, limit: int) -> bytes:
        """The object `name` whole, one GET (retried as the store's reads are): an OSError as reading a file raises
        where it is gone (ENOENT) or holds over `limit` bytes (EFBIG; never more than limit + 1 bytes are read)."""
        data = self.art._fetch(name, None, limit + 1)
        if data is None:
            raise OSError(errno.ENOENT, "no such object: removed since the prefix was listed", self.where(name))
        if len(data) > limit:
            raise OSError(errno.EFBIG, f"over the limit of {limit:,} bytes", self.where(name))
        return data

    def read_small(self, name: str, limit: int) -> bytes | None:
        try:
            return self.art._get(name, limit)
        except Exception as e:
            from infer_distill.storage.s3 import _error_code

            if _error_code(e.__cause__ or e) == "NoSuchBucket":
                raise DataError(f"dataset.root {self.uri}: bucket {self.bucket!r} does not exist: fix "
                                "dataset.root (or AWS_ENDPOINT_URL)") from None
            raise

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        with self._client("read") as client:
            yield io.BufferedReader(_S3Body(client, self.bucket, self.art._key(name)), 1024 * 1024)


# Bytes per read of an S3 body: a read cut off loses what it had read, so a broken connection costs at most this much
# again, and a connection that breaks again and again still moves forward by it
_S3_READ = 64 * 1024


class _S3Body(io.RawIOBase):
    """The body of one S3 object as a stream: a GET, and where it breaks off (a cut or stalled connection), a GET of
    the rest from the byte reached (a Range request), as often as the store's retries allow."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.pos, self.body = 0, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from infer_distill.storage.s3 import _backoff, _max_attempts, _retrying, _transient

        attempt = 1
        while True:
            try:
                if self.body is None:
                    extra = {"Range": f"bytes={self.pos}-"} if self.pos else {}
                    self.body = _retrying(lambda: self.client.get_object(Bucket=self.bucket, Key=self.key, **extra)["Body"])
                data = self.body.read(min(len(buffer), _S3_READ))
            except Exception as e:
                if attempt >= _max_attempts() or not _transient(e):
                    raise
                self.body = None
                _backoff(attempt)
                attempt += 1
                continue
            buffer[:len(data)] = data
            self.pos += len(data)
            return len(data)

    def close(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None
        super().close()
