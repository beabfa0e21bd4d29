"""Optional experiment tracking (`tracking.backend`): a run's config, curves and report in MLflow or TensorBoard.

Everything logged is read from the manifests the steps write, after each step (run or skipped, so a
resumed run logs the whole run again): the training loops know nothing of it, and tracking is in no
artifact's settings (config.PLACEMENT). Per step:

- train-teacher: `teacher/<arch>/train_loss` per epoch, `teacher/<arch>/test_acc`;
- synthesize-ufc: `synthesis/<subsets>/loss`, the mean loss over the shard's UFCs at iteration 0 and
  at the last iteration (the manifest records those two points, not every iteration);
- every student (evaluate-student, -baseline, -method, -full-data): `student/<arch>/<mode>/seed<n>/`
  (`baseline/<name>/<arch>/...`, `method/<method>/<score>/<protocol>/<arch>/...`, `full_data/<arch>/...`)
  `train_loss` and `test_acc` per epoch, `final_acc`, `best_acc`;
- the final step (the report): report.md, report.html and the PNGs (MLflow: as artifacts under
  report/; TensorBoard: the Markdown as text, the PNGs as images).

Each step's metrics class (dag.metrics) says which scalars it has (`scalars`).

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
from typing import Protocol

import yaml

from infer_distill.config.schema import Config
from infer_distill.dag.metrics import read
from infer_distill.dag.steps import STEPS
from infer_distill.errors import ConfigError, StoreUnavailable
from infer_distill.storage import open_artifact

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
    """The scalars of one step's manifest, as (key, value, step): what its metrics class says to track."""
    return read(manifest).scalars(manifest.get("settings", {}))


def report_files(stage: str, uri: str, manifest: dict) -> dict[str, bytes]:
    """The Markdown, HTML and PNG files of the run's final step (the report); nothing for other steps."""
    if not STEPS[stage].final:
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


@contextmanager
def tracked(cfg: Config, out: str, name: str) -> Iterator[Tracker | None]:
    """The run's tracker (None without tracking.backend), closed as finished or failed."""
    tracker = open_tracker(cfg, out, name)
    try:
        yield tracker
    except BaseException:
        if tracker is not None:
            tracker.close(finished=False)
        raise
    if tracker is not None:
        tracker.close(finished=True)
