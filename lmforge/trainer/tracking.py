"""Experiment tracking: the loop's metric records sent to TensorBoard or MLflow, through their own libraries.

`MetricsLog` (trainer/metrics.py) hands every record it writes to metrics.jsonl to a tracker as
well, so the tracker sees exactly what the run folder keeps: step, losses, bits per byte, learning
rate, throughput, gradient norm and, for classifiers, every validation metric. Tags are the record
keys (`train_loss`, `val_loss`, `val_bpb`, `lr`, `tokens_per_s`, `grad_norm`, `val_accuracy`, ...).

- tensorboard: event files in RUN/tb (view with `tensorboard --logdir RUN/tb`).
- mlflow: a local store in RUN/mlflow.db (`mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db`),
  or the server in MLFLOW_TRACKING_URI when that is set. MLflow's plain-folder store is deprecated
  and refuses writes in current MLflow, so the local store is its SQLite file.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Protocol

from lmforge.errors import ConfigError

TRACKERS = ("tensorboard", "mlflow", "none")
TB_FOLDER = "tb"
MLFLOW_DB = "mlflow.db"
MLFLOW_RUN_FILE = "mlflow_run.json"  # the MLflow run id, so a resumed run logs into the same MLflow run


class Tracker(Protocol):
    def resume_at(self, step: int) -> None:
        """Called before logging when a run resumes from `step`: drop what was logged after it."""

    def log(self, record: dict) -> None:
        """One metrics record (with its 'step')."""

    def close(self, status: str = "FINISHED") -> None:
        """Flush; `status` is FINISHED or FAILED."""


def scalars(record: dict) -> dict[str, float]:
    """The record's finite numbers other than the step."""
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class TensorBoardTracker:
    """Event files written by torch's SummaryWriter (the `tensorboard` package's format)."""

    def __init__(self, run_dir: Path):
        self.folder = Path(run_dir) / TB_FOLDER
        self.writer = None
        self.purge_step: int | None = None

    def resume_at(self, step: int) -> None:
        # TensorBoard hides events at or after purge_step written before it: the resumed run's
        # curve replaces the part of the old one that came after the checkpoint.
        self.purge_step = step + 1

    def _open(self):
        if self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("config field 'train.track': tensorboard is not installed; "
                                  "pip install tensorboard, or set train.track none") from None
            self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=self.purge_step)
        return self.writer

    def log(self, record: dict) -> None:
        writer = self._open()
        step = int(record.get("step", 0))
        for key, value in scalars(record).items():
            writer.add_scalar(key, value, step)
        writer.flush()  # a dashboard reading the folder sees each record as it is written

    def close(self, status: str = "FINISHED") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MlflowTracker:
    """One MLflow run per lmforge run folder (experiment 'lmforge'; run name = the folder's name)."""

    def __init__(self, run_dir: Path, experiment: str = "lmforge"):
        self.run_dir = Path(run_dir)
        self.experiment = experiment
        self.client = None
        self.run_id: str | None = None
        self.resumed_from: int | None = None

    @staticmethod
    def tracking_uri(run_dir: Path) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(run_dir) / MLFLOW_DB).resolve()}"

    def resume_at(self, step: int) -> None:
        self.resumed_from = step

    def _open(self):
        if self.client is not None:
            return self.client
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("config field 'train.track': mlflow is not installed; "
                              "pip install 'lmforge[mlflow]', or set train.track tensorboard") from None
        import logging

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up chatter
        self.run_dir.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.tracking_uri(self.run_dir))
        saved = self.run_dir / MLFLOW_RUN_FILE
        if self.resumed_from is not None and saved.is_file():
            self.run_id = json.loads(saved.read_text(encoding="utf-8"))["run_id"]
            client.update_run(self.run_id, status="RUNNING")
        else:
            exp = client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(self.experiment)
            run = client.create_run(exp_id, run_name=self.run_dir.resolve().name,
                                    tags={"lmforge.run_dir": str(self.run_dir.resolve())})
            self.run_id = run.info.run_id
            from lmforge.atomic import atomic_write_json

            atomic_write_json(saved, {"run_id": self.run_id, "tracking_uri": self.tracking_uri(self.run_dir)})
        self.client = client
        return client

    def log(self, record: dict) -> None:
        from mlflow.entities import Metric

        client = self._open()
        now = int(time.time() * 1000)
        step = int(record.get("step", 0))
        metrics = [Metric(key, value, now, step) for key, value in scalars(record).items()]
        if metrics:
            client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str = "FINISHED") -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
            self.client = None


def make_tracker(kind: str, run_dir: Path) -> Tracker | None:
    """The tracker a config's `train.track` names; None for 'none'."""
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir)
    if kind == "mlflow":
        return MlflowTracker(run_dir)
    if kind == "none":
        return None
    raise ConfigError(f"config field 'train.track': {kind!r} is not one of {', '.join(TRACKERS)}")


def log_final(kind: str, run_dir: Path, metrics: dict[str, float], step: int = 0) -> None:
    """Log a finished run's summary figures (e.g. a classifier's test metrics) as one more record."""
    tracker = make_tracker(kind, run_dir)
    if tracker is None:
        return
    if isinstance(tracker, MlflowTracker) and (Path(run_dir) / MLFLOW_RUN_FILE).is_file():
        tracker.resume_at(step)  # the same MLflow run as the training records, if there is one
    try:
        tracker.log({"step": step, **metrics})
    finally:
        tracker.close()
