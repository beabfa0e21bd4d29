"""One `infer-distill` command, measured from inside its own process: S3 bytes, peak memory, CPU time.

    python -m benchmarks.scale_meter OUT.json stage <name> --config ... --root s3://...

runs `infer-distill` (the CLI's `main`, exactly what `python -m infer_distill` runs) in this
process with botocore event handlers registered in every session it opens, then writes OUT.json:
the exit code; the process's peak resident memory (`ru_maxrss`) and CPU seconds (user + system,
of this process and of any it waited for); the wall seconds from this module's start; and every
S3 request by operation, with the bytes of object bodies received (GET: the length of each answer's
body, the whole object or the requested range) and sent (PUT and multipart parts), per key. It
imports nothing of the library before the command runs, so the memory is the command's own.
"""
from __future__ import annotations

import json
import resource
import sys
import threading
import time

T0 = time.perf_counter()


class S3Counter:
    """What the S3 clients of this process sent and received, request by request (thread-safe: uploads use threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}      # operation -> successful calls
        self.read: dict[str, int] = {}          # key -> body bytes received
        self.written: dict[str, int] = {}       # key -> body bytes sent

    def before(self, params: dict, context: dict, **_: object) -> None:
        """Before a request is built: remember its key and the size of the body it sends."""
        context["scale_meter_key"] = params.get("Key") or params.get("Prefix") or ""
        body = params.get("Body")
        if body is not None:
            context["scale_meter_sent"] = _length(body)

    def after(self, http_response: object, parsed: dict, model: object, context: dict, **_: object) -> None:
        if getattr(http_response, "status_code", 500) >= 300:
            return
        key = context.get("scale_meter_key", "")
        with self.lock:
            op = model.name  # type: ignore[attr-defined]
            self.requests[op] = self.requests.get(op, 0) + 1
            if op == "GetObject":
                self.read[key] = self.read.get(key, 0) + int(parsed.get("ContentLength") or 0)
            if "scale_meter_sent" in context:
                self.written[key] = self.written.get(key, 0) + context["scale_meter_sent"]

    def install(self) -> None:
        """Register in every botocore session created from now on (botocore registers its BUILTIN_HANDLERS in each)."""
        from botocore import handlers

        handlers.BUILTIN_HANDLERS.extend([("before-parameter-build.s3", self.before), ("after-call.s3", self.after)])


def _length(body: object) -> int:
    """Bytes a request body will send: bytes, a sized chunk (s3transfer's), or a seekable file from where it stands."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return len(body)
    if isinstance(body, str):
        return len(body.encode())
    if hasattr(body, "__len__"):
        return len(body)  # type: ignore[arg-type]
    here = body.tell()  # type: ignore[attr-defined]
    end = body.seek(0, 2)  # type: ignore[attr-defined]
    body.seek(here)  # type: ignore[attr-defined]
    return end - here


def main(argv: list[str]) -> int:
    out, command = argv[0], argv[1:]
    counter = S3Counter()
    counter.install()
    from infer_distill.cli import main as cli_main

    try:
        code = cli_main(command)
    except SystemExit as e:  # argparse's refusals
        code = e.code if isinstance(e.code, int) else 1
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with counter.lock:
        record = {
            "exit_code": code, "wall_s": round(time.perf_counter() - T0, 3),
            "peak_rss_bytes": me.ru_maxrss * 1024,  # Linux: KiB
            "cpu_s": round(me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime, 3),
            "s3_requests": dict(counter.requests), "s3_read": dict(counter.read), "s3_written": dict(counter.written),
        }
    with open(out, "w") as f:
        json.dump(record, f)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
