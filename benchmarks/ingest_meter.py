"""One listing of an ImageFolder tree, measured from inside its own process: wall and CPU seconds, memory.

    python -m benchmarks.ingest_meter OUT.json open|digest ROOT

imports the data layer (torch with it, as prepare-data has it), then resets the process's peak
resident memory to what it holds now (`/proc/self/clear_refs`, so the peak is that of the listing
alone, not of the imports) and runs one of:

- open: `open_source` of an imagefolder config rooted at ROOT (the walk and the per-class lists),
  the source held open until measured;
- digest: `source_digest` of that config (one stat per file).

OUT.json: the files listed, wall and CPU seconds (user + system) of the call, the resident memory
before it, its peak during it and what stayed resident after it (the source still held).
"""
from __future__ import annotations

import json
import resource
import sys
import time


def _status(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _cpu_s() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def main(argv: list[str]) -> int:
    out, what, root = argv
    from infer_distill.config.schema import DatasetConfig
    from infer_distill.data.sources import open_source, source_digest

    cfg = DatasetConfig(name="imagefolder", root=root)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the memory resident now
    rss_before = _status("VmRSS")
    cpu0, t0 = _cpu_s(), time.perf_counter()
    if what == "open":
        source = open_source(cfg)
        files = source.split("train").count + source.split("test").count
    elif what == "digest":
        source = None
        files = source_digest(cfg)["files"]
    else:
        raise SystemExit(f"ingest_meter: {what!r} is neither open nor digest")
    wall_s, cpu_s = time.perf_counter() - t0, _cpu_s() - cpu0
    record = {"files": files, "wall_s": round(wall_s, 6), "cpu_s": round(cpu_s, 6), "rss_before_bytes": rss_before,
              "peak_increase_bytes": _status("VmHWM") - rss_before, "retained_increase_bytes": _status("VmRSS") - rss_before}
    if source is not None:
        source.close()
    with open(out, "w") as f:
        json.dump(record, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
