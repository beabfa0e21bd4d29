"""One writer per run root: the lock `infer-distill run` holds while it walks the plan.

Locally it is a lock file, ROOT/.infer-distill.lock, created with O_EXCL; on S3 a lease object
at the same key, created with a conditional put (If-None-Match: *): of two runs that start
together exactly one gets it. It records owner, host, pid, started and heartbeat; a background
thread renews the heartbeat every INFER_LOCK_EXPIRY_S / 4 seconds.

A lock is stale, and the next run takes it over, when its heartbeat is older than
INFER_LOCK_EXPIRY_S seconds (default 600), or when it names a process of this host that no longer
runs: a killed run does not block the root for long. The takeover replaces exactly the lock it
read (S3: a put with If-Match on its ETag; locally: a rename, then a check of what was renamed).
Heartbeats compare the clocks of the hosts involved, so those must agree to well within the
expiry. `infer-distill run --force-unlock` removes a lock whatever its age.

A run refused because another holds the lock gets LockHeld, a StoreUnavailable (exit 75): the
condition passes when the other run ends, so a retry later is the right answer.
"""
from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from infer_distill.errors import ArtifactError, StoreUnavailable
from infer_distill.storage import open_artifact
from infer_distill.storage.local import LocalArtifact, NotRegularFile, read_regular
from infer_distill.storage.s3 import S3Artifact, _env_number, _error_code, _retrying

LOCK = ".infer-distill.lock"


class LockHeld(StoreUnavailable):
    """Another run holds the run root's lock."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def expiry_s() -> float:
    # at most a week: beyond, a typo (1e300) overflows the heartbeat's wait and the run would go on unguarded
    return _env_number("INFER_LOCK_EXPIRY_S", 600.0, float, "number of seconds", 7 * 24 * 3600)


def _owner() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        return str(os.getuid())


# ----------------------------------------------------------------------------------------
# Where the lock lives: a file, or an S3 object (read with a version to replace it conditionally)
# ----------------------------------------------------------------------------------------


class _LocalLease:
    def __init__(self, root: LocalArtifact) -> None:
        self.where = f"{root.uri}/{LOCK}"
        self.root, self.path = root.path, root.path / LOCK
        self.made: list[Path] = []  # the folders up to the root this lock created: removed on release if still empty

    def create(self, body: bytes) -> bool:
        for folder in reversed([self.root, *self.root.parents]):
            if not folder.is_dir():
                with contextlib.suppress(FileExistsError):
                    folder.mkdir()
                    self.made.append(folder)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        return True

    def read(self) -> tuple[bytes, Any] | None:
        try:
            data = read_regular(self.path)
        except FileNotFoundError:
            return None
        except NotRegularFile as e:  # never blocks on a FIFO where the lock should be
            raise ArtifactError(f"the lock {self.where} is {e.strerror}: remove it; no run of infer-distill made it") from None
        return data, data

    def replace(self, body: bytes, version: Any) -> bool:
        """Put `body` in place of the lock read as `version`, unless it changed since."""
        aside = self.path.with_name(f"{LOCK}.{uuid.uuid4().hex}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        if aside.read_bytes() != version:  # another run renewed or took it meanwhile: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink()
            return False
        aside.unlink()
        return self.create(body)

    def renew(self, body: bytes, version: Any) -> bool:
        # Renewed in place (an atomic rename over it), so the lock never goes missing for a moment.
        found = self.read()
        if found is None or found[1] != version:
            return False
        fresh = self.path.with_name(f"{LOCK}.{uuid.uuid4().hex}")
        fresh.write_bytes(body)
        os.replace(fresh, self.path)
        return True

    def delete(self, version: Any) -> None:
        found = self.read()
        if found is not None and (version is None or found[1] == version):
            self.path.unlink(missing_ok=True)

    def tidy(self) -> None:
        for folder in reversed(self.made):
            with contextlib.suppress(OSError):
                folder.rmdir()


class _S3Lease:
    def __init__(self, root: S3Artifact) -> None:
        self.art, self.key = root, root._key(LOCK)
        self.where = f"s3://{root.bucket}/{self.key}"

    def _put(self, body: bytes, **condition: str) -> bool:
        with self.art._errors("lock") as client:
            try:
                _retrying(lambda: client.put_object(Bucket=self.art.bucket, Key=self.key, Body=body, **condition))
                return True
            except Exception as e:
                # 412: the condition failed (it exists, or changed); 409: a concurrent conditional write won
                if _error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    return False
                raise

    def create(self, body: bytes) -> bool:
        return self._put(body, IfNoneMatch="*")

    def read(self) -> tuple[bytes, Any] | None:
        with self.art._errors("read the lock of") as client:
            try:
                answer = _retrying(lambda: client.get_object(Bucket=self.art.bucket, Key=self.key))
                return answer["Body"].read(), answer["ETag"]
            except Exception as e:
                if _error_code(e) in ("NoSuchKey", "404"):
                    return None
                raise

    def replace(self, body: bytes, version: Any) -> bool:
        return self._put(body, IfMatch=version)

    def renew(self, body: bytes, version: Any) -> bool:
        return self._put(body, IfMatch=version)

    def delete(self, version: Any) -> None:
        with self.art._errors("unlock") as client:
            if version is None:
                _retrying(lambda: client.delete_object(Bucket=self.art.bucket, Key=self.key))
                return
            try:
                _retrying(lambda: client.delete_object(Bucket=self.art.bucket, Key=self.key, IfMatch=version))
            except Exception as e:
                if _error_code(e) not in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                    raise

    def tidy(self) -> None:
        pass


def _lease(root: str) -> _LocalLease | _S3Lease:
    art = open_artifact(root)
    return _S3Lease(art) if isinstance(art, S3Artifact) else _LocalLease(art)


# ----------------------------------------------------------------------------------------
# Taking, renewing and releasing it
# ----------------------------------------------------------------------------------------


def _holder(raw: bytes) -> dict[str, Any]:
    try:
        found = json.loads(raw)
    except ValueError:
        found = None
    return found if isinstance(found, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    return (f"{holder.get('owner', '?')}@{holder.get('host', '?')} pid {holder.get('pid', '?')}, "
            f"since {holder.get('started', '?')} (last heartbeat {holder.get('heartbeat', '?')})")


_HELD: set[str] = set()  # tokens of the locks this process holds now


def _stale(holder: dict[str, Any], expiry: float) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        pid = holder["pid"]
        if pid == os.getpid():
            return holder.get("token") not in _HELD  # left by an earlier run of this process that could not release it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # it runs, as another user
    try:
        beat = datetime.fromisoformat(holder["heartbeat"])
    except (KeyError, TypeError, ValueError):
        return False  # unreadable: only --force-unlock removes it
    return (datetime.now(timezone.utc) - beat).total_seconds() > expiry


@contextlib.contextmanager
def run_lock(root: str, force_unlock: bool = False) -> Iterator[None]:
    """Hold the lock of run root `root` for the block; LockHeld if another live run holds it."""
    expiry = expiry_s()
    lease = _lease(root)
    me = {"owner": _owner(), "host": socket.gethostname(), "pid": os.getpid(), "started": _now(),
          "token": uuid.uuid4().hex}
    body = lambda: json.dumps({**me, "heartbeat": _now()}, indent=2).encode()  # noqa: E731
    if force_unlock:
        found = lease.read()
        if found is not None:
            print(f"--force-unlock: removed the lock {lease.where} of {_describe(_holder(found[0]))}", file=sys.stderr)
            lease.delete(None)
    version = _acquire(lease, body(), me["token"], expiry, root)
    _HELD.add(me["token"])
    stop = threading.Event()
    state = {"version": version}
    beat = threading.Thread(target=_heartbeat, args=(lease, body, state, stop, expiry / 4), daemon=True,
                            name="infer-distill-lock-heartbeat")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        _HELD.discard(me["token"])
        try:
            lease.delete(state["version"])
        except (ArtifactError, StoreUnavailable) as e:
            print(f"warning: could not release the lock {lease.where} ({e}); it expires {expiry:.0f}s after "
                  "its last heartbeat, or remove it with --force-unlock", file=sys.stderr)
        lease.tidy()


def _acquire(lease: _LocalLease | _S3Lease, body: bytes, token: str, expiry: float, root: str) -> Any:
    """Create the lock, or take over a stale one; returns the version held."""
    for _ in range(3):  # a lock released (or taken over) between our looks: look again
        if lease.create(body):
            return lease.read()[1]
        found = lease.read()
        if found is None:
            continue
        holder = _holder(found[0])
        if holder.get("token") == token:  # our create went through, its answer was lost
            return found[1]
        if not _stale(holder, expiry):
            raise LockHeld(
                f"run root {root} is locked by another run: {_describe(holder)}. It is released when that run "
                f"ends (or {expiry:.0f}s after its last heartbeat): try again later; if that run is dead, "
                f"run again with --force-unlock (lock: {lease.where})"
            )
        if lease.replace(body, found[1]):
            print(f"took over the stale lock {lease.where} of {_describe(holder)}", file=sys.stderr)
            return lease.read()[1]
    raise LockHeld(f"run root {root}: the lock {lease.where} keeps changing hands: another run is starting; try again later")


def _heartbeat(lease: _LocalLease | _S3Lease, body: Callable[[], bytes], state: dict[str, Any], stop: threading.Event,
               every: float) -> None:
    """Renew the lock every `every` seconds until `stop`; a renewal lost to an outage is tried again at the next beat."""
    while not stop.wait(every):
        try:
            fresh = body()
            if not lease.renew(fresh, state["version"]):
                print(f"warning: the lock {lease.where} was taken over by another run", file=sys.stderr)
                return
            state["version"] = lease.read()[1]
        except (ArtifactError, StoreUnavailable) as e:
            print(f"warning: could not renew the lock {lease.where}: {e}", file=sys.stderr)
