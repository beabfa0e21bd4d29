"""S3 faults through a fault-injecting TCP proxy in front of the moto server: connections reset after N bytes
of a request or of an answer, stalled answers, bursts of HTTP 500/503. Each fault is retried (the body of a
read included); one that outlasts the retries is exit 75 naming the URI and the cause, never a traceback; no
artifact is left with a manifest and missing files; a rerun through the healthy endpoint reuses what finished.
"""
from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import boto3
import pytest
from conftest import TINY

from infer_distill.cli import main
from infer_distill.dag.layout import Layout
from infer_distill.errors import ArtifactError, StoreUnavailable
from infer_distill.storage import open_artifact

SETS = sum((["--set", s] for s in TINY), [])
STALL_S = 3.0  # the longest a stalled connection is held; the client's read timeout is far shorter


class FaultProxy:
    """127.0.0.1:port -> the moto server. Each new connection takes the next fault of the schedule, then
    the rest are healthy:
        ("reset_request", n)   reset once n bytes of the client's requests have passed
        ("reset_response", n)  reset once n bytes of the server's answers have passed
        ("stall", n)           stop passing answers after n bytes (until the client gives up, at most STALL_S)
        ("status", code)       answer the first request with HTTP `code` itself, and close
    """

    def __init__(self, upstream: str) -> None:
        url = urlparse(upstream)
        self.upstream = (url.hostname, url.port)
        self.schedule: list[tuple[str, int]] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            fault = self.schedule.pop(0) if self.schedule else ("healthy", 0)
            threading.Thread(target=self._serve, args=(client, fault), daemon=True).start()

    def _serve(self, client: socket.socket, fault: tuple[str, int]) -> None:
        mode, arg = fault
        if mode == "status":
            self._answer(client, arg)
            return
        server = socket.create_connection(self.upstream)
        done = threading.Event()
        up = threading.Thread(target=self._pump, args=(client, server, arg if mode == "reset_request" else None, None, done))
        up.start()
        self._pump(server, client, arg if mode == "reset_response" else None, arg if mode == "stall" else None, done)
        up.join(STALL_S + 1)
        for s in (client, server):
            s.close()

    def _pump(self, src: socket.socket, dst: socket.socket, reset_after: int | None, stall_after: int | None,
              done: threading.Event) -> None:
        passed = 0
        src.settimeout(0.2)
        while not done.is_set():
            try:
                chunk = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            limit = reset_after if reset_after is not None else stall_after
            if limit is not None and passed + len(chunk) > limit:
                chunk = chunk[:max(0, limit - passed)]
                _send(dst, chunk)
                if reset_after is not None:
                    _reset(dst)
                    _reset(src)
                else:
                    done.wait(STALL_S)
                break
            passed += len(chunk)
            if not _send(dst, chunk):
                break
        done.set()

    @staticmethod
    def _answer(client: socket.socket, status: int) -> None:
        client.settimeout(2)
        head = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    break
                head += chunk
        reason = {500: "Internal Server Error", 503: "Service Unavailable"}[status]
        code = {500: "InternalError", 503: "SlowDown"}[status]
        body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
        with contextlib.suppress(OSError):
            client.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
                           "Connection: close\r\n\r\n".encode() + body)
            client.shutdown(socket.SHUT_WR)
            while client.recv(65536):  # drain the request body the client may still send
                pass
        client.close()


def _send(dst: socket.socket, chunk: bytes) -> bool:
    """Pass `chunk` on; False once the other side is gone."""
    try:
        dst.sendall(chunk)
        return True
    except OSError:
        return False


def _reset(s: socket.socket) -> None:
    try:  # SO_LINGER 0: close with a TCP reset, as a dropped connection or a killed load balancer does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass


@pytest.fixture
def proxy(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    p = FaultProxy(s3_env)
    # Short timeouts and few attempts keep each fault's cost to about a second.
    monkeypatch.setenv("INFER_S3_READ_TIMEOUT", "1")
    monkeypatch.setenv("INFER_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    yield p
    p.close()


def _through(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)


# ----------------------------------------------------------------------------------------
# One read or write at a time: each fault is retried, the body of a read included
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [("reset_response", 1500), ("stall", 1500), ("status", 503), ("status", 500)])
def test_a_read_survives_one_fault(s3_bucket: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, fault) -> None:
    payload = os.urandom(300_000)
    art = open_artifact(f"s3://{s3_bucket}/a")
    art.write({"big.bin": payload}, {"stage": "prepare-data"})
    manifest = art.read_manifest()
    _through(monkeypatch, proxy.endpoint)
    # the connection reading the body (manifest first, then the file) is the faulty one
    proxy.schedule = [("healthy", 0), fault]
    assert open_artifact(art.uri).read_manifest() == manifest
    assert open_artifact(art.uri).read_bytes("big.bin") == payload
    assert proxy.connections >= 2


@pytest.mark.parametrize("fault", [("reset_response", 1500), ("stall", 1500), ("status", 503)])
def test_a_ranged_read_survives_one_fault(s3_bucket: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch,
                                          fault) -> None:
    payload = os.urandom(300_000)
    art = open_artifact(f"s3://{s3_bucket}/a")
    art.write({"big.bin": payload}, {"stage": "prepare-data"})
    _through(monkeypatch, proxy.endpoint)
    proxy.schedule = [fault]  # the ranged GET's body is cut, stalled or refused: the GET is sent again
    assert open_artifact(art.uri).read_range("big.bin", 1000, 200_000) == payload[1000:201_000]
    assert proxy.connections >= 2


@pytest.mark.parametrize("fault", [("reset_request", 100_000), ("status", 503), ("reset_response", 10)])
def test_a_write_survives_one_fault(s3_bucket: str, s3_env: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch,
                                    fault) -> None:
    payload = os.urandom(300_000)
    _through(monkeypatch, proxy.endpoint)
    proxy.schedule = [fault]
    open_artifact(f"s3://{s3_bucket}/w").write({"big.bin": payload}, {"stage": "prepare-data"})
    assert proxy.connections >= 2  # the fault was met, and retried
    _through(monkeypatch, s3_env)
    assert open_artifact(f"s3://{s3_bucket}/w").read_bytes("big.bin") == payload


def test_a_streamed_multipart_write_survives_cut_parts(s3_bucket: str, s3_env: str, proxy: FaultProxy,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFER_S3_MULTIPART_THRESHOLD", str(5 * 1024 * 1024))
    chunks = [os.urandom(1024 * 1024) for _ in range(7)]
    _through(monkeypatch, proxy.endpoint)
    # every other connection cuts a request once 100 kB of it passed: only the parts are that long, each retried
    proxy.schedule = [("reset_request", 100_000), ("healthy", 0)] * 20
    open_artifact(f"s3://{s3_bucket}/w").write({"big.bin": iter(chunks)}, {"stage": "prepare-data"})
    _through(monkeypatch, s3_env)
    assert open_artifact(f"s3://{s3_bucket}/w").read_bytes("big.bin") == b"".join(chunks)
    client = boto3.session.Session().client("s3", endpoint_url=s3_env, region_name="us-east-1")
    assert client.head_object(Bucket=s3_bucket, Key="w/big.bin")["ETag"].strip('"').endswith("-2")


@pytest.mark.parametrize("fault, cause", [
    (("reset_response", 1500), "ResponseStreamingError"),
    (("stall", 1500), "ReadTimeoutError"),
    (("status", 503), "answered SlowDown after 3 attempts"),
])
def test_a_fault_that_outlasts_the_retries_is_an_outage_naming_uri_and_cause(
        s3_bucket: str, s3_env: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, fault, cause) -> None:
    art = open_artifact(f"s3://{s3_bucket}/a")
    art.write({"big.bin": os.urandom(300_000)}, {"stage": "prepare-data"})
    _through(monkeypatch, proxy.endpoint)
    proxy.schedule = [("healthy", 0)] + [fault] * 20
    reader = open_artifact(art.uri)
    reader.read_manifest()  # on the healthy connection, which stays open: every later GET takes a new one
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        reader.read_bytes("big.bin")
    assert time.monotonic() - started < 30
    assert art.uri in str(info.value) and cause in str(info.value)
    assert not isinstance(info.value, ArtifactError)


# ----------------------------------------------------------------------------------------
# Whole runs through the proxy
# ----------------------------------------------------------------------------------------


def _complete_artifacts(bucket: str, root: str) -> dict[str, str]:
    """Every artifact under the run root with a manifest, each file checked: uri -> created_at."""
    client = boto3.session.Session().client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    prefix = root[len(f"s3://{bucket}/"):]
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
            for o in page.get("Contents", [])]
    found = {}
    for key in keys:
        if key.endswith("/manifest.json"):
            art = open_artifact(f"s3://{bucket}/{key.removesuffix('/manifest.json')}")
            manifest = art.read_manifest()
            for name in manifest["files"]:
                art.read_bytes(name)  # listed -> present and intact, or this raises
            found[art.uri] = manifest["created_at"]
    return found


@pytest.mark.slow
def test_runs_through_faults_exit_0_or_75_and_a_healthy_rerun_reuses_what_finished(
        s3_bucket: str, s3_env: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    root = f"s3://{s3_bucket}/runs/faulty"
    argv = ["run", "--out", root, "--no-progress", *SETS]
    schedules = [
        # single faults, each retried (a healthy connection after each): the run goes through
        [fault for f in [("reset_response", 5000), ("status", 503), ("reset_request", 20_000), ("stall", 3000),
                         ("status", 500), ("reset_response", 200_000)] for fault in (f, ("healthy", 0))],
        # bursts longer than the retries: exit 75 part way (moto's server answers one request per connection,
        # so each fault hits one attempt of one request)
        [("status", 503)] * 12,
        [("reset_request", 150_000)] + [("reset_response", 1200)] * 12,
    ]
    codes = []
    for schedule in schedules:
        _through(monkeypatch, proxy.endpoint)
        proxy.schedule = list(schedule)
        codes.append(main(argv))
        err = capsys.readouterr().err
        assert codes[-1] in (0, 75), err
        assert "Traceback" not in err
        if codes[-1] == 75:
            assert root in err and "after 3 attempts" in err
        _through(monkeypatch, s3_env)
        _complete_artifacts(s3_bucket, root)  # none with a manifest and missing or damaged files
    assert codes == [0, 75, 75]

    _through(monkeypatch, s3_env)
    before = _complete_artifacts(s3_bucket, root)
    assert main(argv) == 0
    after = _complete_artifacts(s3_bucket, root)
    report = Layout(root).report
    assert {u: t for u, t in after.items() if u in before and u != report} == {u: t for u, t in before.items() if u != report}
