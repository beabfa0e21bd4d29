"""What the benchmark commands share: one data and teacher pool for many runs, machine facts.

A benchmark compares several runs of the pipeline (M = 1, 2, 3; ipc 10 and 50; ablations) that
differ after the teachers. Each run has its own root; their data and teachers live once in a
pool, written there by the executor (`executor.Walk.pool`: a location two runs share is run
once) and linked into every root, so a teacher is trained once per benchmark, and again only
when its settings change.
"""
from __future__ import annotations

import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from infer_distill import __version__
from infer_distill.config.schema import Config
from infer_distill.dag.layout import Layout

REPO = Path(__file__).resolve().parents[1]


def link_pool(cfg: Config, pool: str | Path, root: str | Path) -> None:
    """Link the pool's data and `cfg`'s teachers into run `root` (made there later, or already).

    The executor writes them at the pool (executor.Walk.pool); the links let every later step of
    the run, and a resumed run, find them under its own root. Local paths only.
    """
    pool_layout, run_layout = Layout(str(pool)), Layout(str(root))
    links = [(pool_layout.data, run_layout.data)] + [(pool_layout.teacher(a), run_layout.teacher(a)) for a in cfg.teachers.archs]
    for target, link in links:
        link_path = Path(link)
        link_path.parent.mkdir(parents=True, exist_ok=True)
        if link_path.is_symlink() or link_path.exists():
            if link_path.is_symlink() and Path(os.readlink(link_path)) == Path(target).resolve():
                continue
            if link_path.is_dir() and not link_path.is_symlink():
                raise FileExistsError(f"{link} is a directory, not a link into the pool {pool}: remove it or use a fresh root")
            link_path.unlink()
        link_path.symlink_to(Path(target).resolve(), target_is_directory=True)


def torch_threads(threads: int | None = None) -> int:
    """torch's intra-op threads (set them first when given)."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def source_info() -> dict:
    """Which code made a result: the git commit, whether the tree had uncommitted changes, the library version."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status), "infer_distill": __version__}


def machine_info(device: str) -> dict:
    """What ran the benchmark: CPU, cores, threads, GPU (name, memory, driver), library versions."""
    info = {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "infer_distill": __version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device,
            "gpu": None, "driver": None, "cuda": None}  # filled in below when a GPU ran it
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "gpu_multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version()})
        try:
            import subprocess
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


class GpuSampler:
    """GPU utilisation (nvidia-smi's percent of time a kernel ran, mean over the GPUs) sampled every
    `every_s` in a thread, so each stage's busy fraction can be read off its items' time spans."""

    def __init__(self, every_s: float = 1.0) -> None:
        import threading

        self.every_s, self.samples = every_s, []  # (seconds since start, utilisation %)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = 0.0

    def _query(self) -> float | None:
        import subprocess

        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10)
            values = [float(v) for v in out.stdout.split()]
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
        return sum(values) / len(values) if values else None

    def _loop(self) -> None:
        import time

        while not self.stop_event.wait(self.every_s):
            value = self._query()
            if value is not None:
                self.samples.append((time.time() - self.t0, value))

    def __enter__(self) -> GpuSampler:
        import time

        self.t0 = time.time()
        if self._query() is not None:  # no nvidia-smi: nothing to sample
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join()

    def busy_by_stage(self, steps: list[dict]) -> dict[str, float]:
        """Per stage: the mean utilisation over the samples taken while one of its items ran."""
        out = {}
        for stage in dict.fromkeys(s["stage"] for s in steps):
            spans = [(s["finished_at"] - s["seconds"], s["finished_at"]) for s in steps if s["stage"] == stage and not s["skipped"]]
            inside = [u for t, u in self.samples if any(a <= t <= b for a, b in spans)]
            if inside:
                out[stage] = round(sum(inside) / len(inside), 1)
        return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_s3_server(log_path: Path) -> Iterator[dict[str, str]]:
    """A moto S3 server (server mode: real HTTP) on a free port of 127.0.0.1 for as long as the block runs, its output in
    `log_path`: the environment its clients need. The benchmarks and the test suite's S3 fixtures share it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 120
        while True:
            try:
                direct.open(endpoint, timeout=10).close()
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer: it is up
            # (moto loads its backends on the first request: seconds, more on a busy machine; a direct opener, as
            # urlopen's global one keeps the proxies of the environment it was first built in)
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto S3 server did not start at {endpoint}:\n{log_path.read_text(errors='replace')}") from None
                time.sleep(0.1)
        yield {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def invocation(module: str, argv: list[str] | None) -> str:
    """The command line a results file records: `python -m <module>` and the arguments given (sys.argv's if None)."""
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


@contextmanager
def scratch_folder(given: Path | None, prefix: str) -> Iterator[Path]:
    """Where a benchmark generates its data: `given` (made if missing, kept afterwards), else a temporary folder removed
    when the block ends. SIGTERM becomes an exit, so the block's cleanup (the folder, a server it started) runs."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    work = given or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if given is None:
            shutil.rmtree(work, ignore_errors=True)
