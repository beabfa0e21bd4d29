"""Optional experiment tracking (`tracking.backend`): a run's config, curves and report in MLflow or TensorBoard.

Everything logged is read from the manifests the steps write, after each step (run or skipped, so a
resumed run logs the whole run again): the training loops know nothing of it, and tracking is in no
artifact's settings (config.PLACEMENT). Per step:

- train-teacher: `teacher/<arch>/train_loss` per epoch, `teacher/<arch>/test_acc`;
- synthesize-ufc: `synthesis/<subsets>/loss`, the mean loss over the shard's UFCs at iteration 0 and
  at the last iteration (the manifest records those two points, not every iteration);
- evaluate-student / evaluate-baseline: `student/<arch>/<mode>/seed<n>/` (`baseline/<name>/...`)
  `train_loss` and `test_acc` per epoch, `final_acc`, `best_acc`;
- report: report.md, report.html and the PNGs (MLflow: as artifacts under report/; TensorBoard:
  the Markdown as text, the PNGs as images).

MLflow writes to `MLFLOW_TRACKING_URI` when set (a tracking server), else to a local store under the
run root: `<out>/mlflow/mlflow.db` with the files in `<out>/mlflow/artifacts` (MLflow 3 keeps its
local store in SQLite; the plain-folder store is deprecated) or, for an S3 run root, ./mlflow.
TensorBoard writes event files under `<out>/tensorboard` (./tensorboard for an S3 run root). The
libraries are imported only by the backend that uses them. A tracking server that does not answer
is StoreUnavailable (exit 75: finished steps are kept, and a retry resumes after them).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import yaml

from .config import Config, ConfigError
from .metrics import BaselineMetrics, StudentMetrics, TeacherMetrics, UfcShardMetrics
from .store import StoreUnavailable, open_artifact

EXTRA = {"mlflow": "mlflow", "tensorboard": "tensorboard"}
REPORT_FILES = (".md", ".html", ".png")
EXPERIMENT = "infer-distill"


class Tracker(Protocol):
    def step(self, stage: str, uri: str, manifest: dict) -> None: ...
    def close(self, finished: bool) -> None: ...


def open_tracker(cfg: Config, out: str, name: str) -> Tracker | None:
    """The tracker of `cfg.tracking.backend` for a run under `out` (None for `none`), with the resolved config
    logged. A missing extra is refused here, before any work, naming the install command."""
    backend = cfg.tracking.backend
    if backend == "none":
        return None
    try:
        tracker = MlflowTracker(out, name) if backend == "mlflow" else TensorBoardTracker(out)
    except ImportError as e:
        raise ConfigError(f"tracking.backend={backend} needs the {backend} package ({e}): "
                          f"pip install 'infer-distill[{EXTRA[backend]}]', or set tracking.backend=none") from None
    tracker.config(cfg)
    return tracker


def local_folder(out: str, name: str) -> Path:
    """Where a backend keeps its files: `name` under a local run root, else under the working directory."""
    return (Path(out) if "://" not in out else Path.cwd()) / name


# ----------------------------------------------------------------------------------------
# What each step's manifest gives: (key, value, step) scalars and report files
# ----------------------------------------------------------------------------------------


def scalars(stage: str, manifest: dict) -> list[tuple[str, float, int]]:
    """The scalars of one step's manifest, as (key, value, step)."""
    if stage == "train-teacher":
        t = TeacherMetrics.from_manifest(manifest)
        prefix = f"teacher/{t.arch}"
        return [(f"{prefix}/train_loss", loss, epoch) for epoch, loss in enumerate(t.train_losses, 1)] + \
               [(f"{prefix}/test_acc", t.test_acc, len(t.train_losses))]
    if stage == "synthesize-ufc":
        u = UfcShardMetrics.from_manifest(manifest)
        ids = u.subset_ids
        key, last = f"synthesis/subsets {ids[0]}..{ids[-1]}/loss", manifest["settings"]["synthesis"]["iterations"]
        return [(key, _mean(u.initial_loss), 0), (key, _mean(u.final_loss), last)]
    if stage in ("evaluate-student", "evaluate-baseline"):
        s = StudentMetrics.from_manifest(manifest) if stage == "evaluate-student" else BaselineMetrics.from_manifest(manifest)
        kind = f"student/{s.arch}/{s.label_mode}" if isinstance(s, StudentMetrics) else f"baseline/{s.baseline}/{s.arch}"
        prefix = f"{kind}/seed{s.seed}"
        return [(f"{prefix}/train_loss", loss, epoch) for epoch, loss in enumerate(s.train_losses, 1)] + \
               [(f"{prefix}/test_acc", acc, epoch) for epoch, acc in s.curve] + \
               [(f"{prefix}/final_acc", s.final_acc, s.epochs),
                (f"{prefix}/best_acc", s.best_acc, s.best_epoch)]
    return []


def _mean(values: Any) -> float:
    """The mean of a nested list of numbers (the manifest's [subset, teacher, class batch] losses)."""
    flat = list(_leaves(values))
    return sum(flat) / len(flat)


def _leaves(values: Any):
    if isinstance(values, list):
        for v in values:
            yield from _leaves(v)
    else:
        yield float(values)


def report_files(stage: str, uri: str, manifest: dict) -> dict[str, bytes]:
    """The report's Markdown, HTML and PNG files, by name (nothing for other steps)."""
    if stage != "report":
        return {}
    art = open_artifact(uri)
    return {name: art.read_bytes(name) for name in sorted(manifest.get("files", {})) if name.endswith(REPORT_FILES)}


def _flat(node: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value if isinstance(value, str) else json.dumps(value)
    return out


# ----------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------


class MlflowTracker:
    """One MLflow run per `infer-distill run` (or `stage`): config as params and config.yaml, metrics, report/ files."""

    def __init__(self, out: str, name: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not self.uri:
            folder = local_folder(out, "mlflow").resolve()
            folder.mkdir(parents=True, exist_ok=True)
            self.uri, artifacts = f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()
        with self._answers():
            self.client = MlflowClient(self.uri)
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT, artifacts)
            self.run_id = self.client.create_run(experiment_id, run_name=name, tags={"infer_distill.out": out}).info.run_id

    @contextmanager
    def _answers(self) -> Iterator[None]:
        """MLflow's errors as the pipeline's: a server that does not answer is worth retrying (exit 75), a refusal is not."""
        from mlflow.exceptions import MlflowException
        from requests.exceptions import ConnectionError, Timeout

        try:
            yield
        except MlflowException as e:
            if isinstance(e.__context__, (ConnectionError, Timeout)):
                raise StoreUnavailable(f"the MLflow tracking server {self.uri} (MLFLOW_TRACKING_URI) did not answer: {e.message}; "
                                       "start it, or unset MLFLOW_TRACKING_URI to log to the run root") from None
            raise ConfigError(f"MLflow at {self.uri} refused the run's tracking: {e.message}") from None

    def config(self, cfg: Config) -> None:
        resolved = cfg.model_dump(mode="json")
        with self._answers():
            for key, value in _flat(resolved).items():
                self.client.log_param(self.run_id, key, value)
            self.client.log_text(self.run_id, yaml.safe_dump(resolved, sort_keys=False), "config.yaml")

    def step(self, stage: str, uri: str, manifest: dict) -> None:
        files = report_files(stage, uri, manifest)
        with self._answers(), tempfile.TemporaryDirectory() as tmp:
            for key, value, step in scalars(stage, manifest):
                self.client.log_metric(self.run_id, key, value, step=step)
            if files:
                for name, data in files.items():
                    (Path(tmp) / name).write_bytes(data)
                self.client.log_artifacts(self.run_id, tmp, "report")

    def close(self, finished: bool) -> None:
        with self._answers():
            self.client.set_terminated(self.run_id, status="FINISHED" if finished else "FAILED")


class TensorBoardTracker:
    """Event files under <out>/tensorboard: config and report as text, metrics as scalars, the PNGs as images."""

    def __init__(self, out: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(local_folder(out, "tensorboard")))

    def config(self, cfg: Config) -> None:
        text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()))  # a Markdown code block

    def step(self, stage: str, uri: str, manifest: dict) -> None:
        for key, value, step in scalars(stage, manifest):
            self.writer.add_scalar(key, value, step)
        for name, data in report_files(stage, uri, manifest).items():
            if name.endswith(".png"):
                import numpy as np
                from PIL import Image

                image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                self.writer.add_image(f"report/{name}", image, dataformats="HWC")
            elif name.endswith(".md"):
                self.writer.add_text(f"report/{name}", data.decode())
        self.writer.flush()

    def close(self, finished: bool) -> None:
        self.writer.close()
