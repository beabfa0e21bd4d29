"""The artifact protocol every stage follows: begin, read verified inputs, write with settings,
metrics and input digests; and what makes an artifact current.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from infer_distill import __version__, dag
from infer_distill.config.schema import Config
from infer_distill.dag.artifact_settings import diff_settings, fingerprint
from infer_distill.dag.metrics import StageMetrics
from infer_distill.dag.metrics import read as read_metrics
from infer_distill.data.sources import source_digest
from infer_distill.errors import ArtifactError
from infer_distill.models import architectures
from infer_distill.storage import open_artifact, read_file
from infer_distill.storage.artifact import Artifact

# ----------------------------------------------------------------------------------------
# Artifact helpers
# ----------------------------------------------------------------------------------------


Inputs = Mapping[str, str | list[str]]  # input name -> artifact URI, or a list of them (teachers, UFC shards, ...)


def manifest_digest(uri: str) -> str:
    """sha256 of an artifact's manifest: it names the artifact's every file (by sha256) and when it was made."""
    manifest = open_artifact(uri).read_manifest()
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def input_digests(inputs: Inputs) -> dict[str, str | list[str]]:
    """The manifest digest of every input (a list of them for a list of inputs)."""
    return {name: [manifest_digest(u) for u in uri] if isinstance(uri, list) else manifest_digest(uri)
            for name, uri in inputs.items()}


@dataclass
class _Output:
    """An artifact being made: where, since when, and from which inputs (digested before any of them is read)."""

    uri: str
    inputs: dict
    input_digests: dict
    started: float


def _begin(out: str, inputs: Inputs) -> _Output:
    """What every stage does first: check that the output is writable and record its inputs as they are now."""
    started = time.perf_counter()
    open_artifact(out).check_writable()
    return _Output(out, dict(inputs), input_digests(inputs), started)


def _write(out: _Output, cfg: Config, files: dict, metrics: StageMetrics | Callable[[], StageMetrics],
           read: dict | None = None, *, stage: str | None = None, **keys) -> dict:
    """Write the artifact of the step `metrics` belong to; `read`: what the stage read from outside the pipeline,
    as `sources` gives it. `metrics` may be a callable giving them once the files are stored (a stage that counts
    what it streamed): the step is then `stage`. `files`: as `Artifact.write` takes them."""
    stage = metrics.kind if isinstance(metrics, StageMetrics) else stage
    if stage is None:
        raise TypeError("_write: metrics given later (a callable) need the stage they are of")
    settings = dag.settings(cfg, stage, **keys)
    manifest = {
        "stage": stage,
        "fingerprint": fingerprint({**settings, "sources": read} if read else settings),
        "settings": settings,
        **({"sources": read} if read else {}),
        "seed": cfg.seed,
        "inputs": out.inputs,
        "input_digests": out.input_digests,
        **({"metrics": metrics.to_dict()} if isinstance(metrics, StageMetrics) else {}),
    }

    def finish() -> dict:
        later = {}
        if not isinstance(metrics, StageMetrics):
            made = metrics()
            if made.kind != stage:
                raise TypeError(f"_write: {made.kind!r} metrics for a {stage!r} artifact")
            later = {"metrics": made.to_dict()}
        return {
            **later,
            "elapsed_s": round(time.perf_counter() - out.started, 3),
            # microseconds: a remade input gets a manifest (and digest) of its own even within one second
            "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "infer_distill_version": __version__,
        }

    return open_artifact(out.uri).write(files, manifest, finish)


def load_input(uri: str, cfg: Config, stage: str, **keys) -> tuple[Artifact, dict]:
    """Open an input artifact and check it was made by `stage` with the settings `cfg` implies."""
    art = open_artifact(uri)
    manifest = art.read_manifest()
    if manifest.get("stage") != stage:
        raise ArtifactError(f"{uri} is a {manifest.get('stage')!r} artifact, but a {stage!r} artifact is needed here")
    expected = dag.settings(cfg, stage, **keys)
    if manifest.get("settings") != expected:
        diffs = diff_settings(expected, manifest.get("settings", {}))
        raise ArtifactError(
            f"{uri} was made with a different config:\n  " + "\n  ".join(diffs[:8])
            + f"\nRerun stage {stage!r} with this config, or point --out at a fresh location."
        )
    return art, manifest


def is_current(uri: str, cfg: Config, stage: str, inputs: Inputs | None = None, **keys) -> bool:
    """True if the artifact at `uri` can stand for running `stage` now, so a resumed run skips it.

    It must have these settings and the metrics its step's class (metrics.METRICS) reads, have read
    the sources there now (`sources`), every file must match its recorded size and sha256 (a
    safetensors file must also have a readable header), and
    the manifests of the inputs it was made from must be the ones now at `inputs`: the artifacts
    the stage would read (a walker may name more than the stage used); None: the locations the
    artifact records. So a corrupt or stale artifact is remade, and remaking a stage makes
    everything made from it stale, with no bookkeeping in the walker.
    """
    try:
        art, manifest = load_input(uri, cfg, stage, **keys)
        read_metrics(manifest, uri)  # its readers need its metrics whole: one another version wrote otherwise is remade
        if manifest.get("sources", {}) != sources(cfg, stage, **keys):
            return False
        for name, entry in manifest["files"].items():
            if not name.endswith(".safetensors"):
                art.verify(name, entry)  # in chunks: a split's images need not fit in memory
            elif not safetensors_header_ok(art.read_bytes(name)):
                return False
        recorded = manifest.get("input_digests")
        inputs = manifest.get("inputs", {}) if inputs is None else inputs
        if not isinstance(recorded, dict) or not set(recorded) <= set(inputs):
            return False
        return recorded == input_digests({name: inputs[name] for name in recorded})
    except ArtifactError:
        return False


def sources(cfg: Config, stage: str, **keys) -> dict:
    """What `stage` reads from outside the pipeline, by content: prepare-data the dataset source's file
    list (data.source_digest), train-teacher a pretrained weights file's sha256; {} where nothing is read
    (digits, torchvision's own weights, every later stage). Only the stage that reads a source computes
    this: a later stage learns of a change through its inputs' manifests, so its pod needs no dataset.
    """
    if stage == "prepare-data":
        digest = source_digest(cfg.dataset)
        return {"dataset": digest} if digest else {}
    if stage == "train-teacher":
        source = cfg.teachers.pretrained.get(keys["arch"])
        if source and source.startswith("s3://"):
            data = read_file(source)  # the whole object: S3 gives no sha256 of an object it did not store with one
            return {"pretrained_sha256": None if data is None else hashlib.sha256(data).hexdigest()}
        if source and not architectures.is_library_source(source):
            return {"pretrained_sha256": file_sha256(source)}
    return {}


def file_sha256(path: str) -> str | None:
    """sha256 of a local file, None if there is none; computed once per file version (path, size, times, inode)."""
    try:
        st = Path(path).expanduser().stat()
    except OSError:
        return None
    return _file_sha256(str(Path(path).expanduser().resolve()), (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev))


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, version: tuple) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


# Bytes per element of each safetensors dtype (the format's own names)
_SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                       "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def safetensors_header_ok(data: bytes) -> bool:
    """Whether `data` is a safetensors file a reader can load: its header (read alone, no tensor copied) is a
    JSON table whose tensors, by dtype and shape, tile the bytes after it exactly, as safetensors requires."""
    if len(data) < 8:
        return False
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        return False
    try:
        header = json.loads(data[8 : 8 + size])
        spans = []
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            shape = entry["shape"]
            if not all(isinstance(d, int) and d >= 0 for d in shape) or end - begin != math.prod(shape) * _SAFETENSORS_DTYPES[entry["dtype"]]:
                return False
            spans.append((begin, end))
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            return False
        position = end
    return position == len(data) - 8 - size


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
