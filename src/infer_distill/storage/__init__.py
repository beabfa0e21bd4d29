"""Artifact storage: a local folder or an S3 prefix of files plus manifest.json
(storage.artifact), the local and S3 backends, and one run per root (storage.lock).
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from infer_distill.errors import ArtifactError
from infer_distill.storage.artifact import Artifact
from infer_distill.storage.local import LocalArtifact, NotRegularFile, read_regular
from infer_distill.storage.s3 import S3Artifact


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


def read_file(uri: str) -> bytes | None:
    """The bytes of one file outside any artifact (a pretrained teacher's weights): a local path or `s3://bucket/key`,
    read with the store's retries and errors, credentials from the environment; None where there is no such file."""
    if uri.startswith("s3://"):
        folder, _, name = uri.rstrip("/").rpartition("/")
        if folder in ("s3:", "s3:/"):
            raise ArtifactError(f"{uri!r} names a bucket, not a file: give s3://bucket/key")
        return _s3_artifact(folder)._get(name)
    try:  # never blocks on a FIFO or a device: what is not a regular file is no file
        return read_regular(Path(uri.removeprefix("file://")).expanduser())
    except (FileNotFoundError, NotADirectoryError, NotRegularFile):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink loop
            return None
        raise ArtifactError(f"cannot read {uri}: {e}") from e


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
