"""Optional experiment tracking of the Ray Train jobs, through Ray Train's own integrations.

- **MLflow** (``mlflow_tracking_uri``, ``mlflow_experiment``): Ray's
  ``ray.air.integrations.mlflow.setup_mlflow`` on the workers, as Ray documents it for Ray Train:
  rank 0 opens the run (experiment created if missing, the job's options logged as parameters),
  the other ranks get a no-op module. Rank 0 logs each progress line's metrics and the dev scores
  at their step. Each attempt (a resumed run, a worker-group restart) is a new MLflow run of the
  experiment; steps continue where the checkpoint left off.
- **TensorBoard** (``tensorboard_dir``): a Ray Train ``UserCallback``, which runs in the Ray Train
  controller (on the driver's node, so a local folder is where ``tensorboard --logdir`` runs) and
  sees every ``ray.train.report``: it writes rank 0's reported metrics as scalars with
  ``tensorboardX`` (the writer Ray's own ``TBXLoggerCallback`` uses, installed with ``ray[train]``).
  Ray's ``TBXLoggerCallback`` itself is a Ray Tune logger callback, which the Ray Train v2
  ``RunConfig(callbacks=...)`` refuses (it takes ``ray.train.UserCallback`` only).

Both packages are optional: :func:`check_tracking` refuses, with one line, an option whose
package is missing, on the driver before Ray starts.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import ray.train
from ray.air.integrations.mlflow import setup_mlflow

from ray_cora.configs.train import TrainLoggingOptions
from ray_cora.errors import ConfigError
from ray_cora.train.progress import LogSettings

# Metrics that are counters or bookkeeping, not curves.
NOT_SCALARS = frozenset({"step", "epoch", "total_steps", "world_size", "resumed_from_step", "kept_score"})


def check_tracking(*, mlflow_tracking_uri: str | None, tensorboard_dir: str | None) -> None:
    """Refuse a tracking option whose optional package is not installed (one line, with the fix)."""
    if mlflow_tracking_uri and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("option 'mlflow_tracking_uri': MLflow logging needs the mlflow package, which is not "
                          "installed; `pip install mlflow-skinny` (or mlflow) on every node, or leave the option unset")
    if tensorboard_dir:
        if "://" in tensorboard_dir:
            raise ConfigError(f"option 'tensorboard_dir': {tensorboard_dir!r} is a URI; give a local folder on the "
                              "node you run the job from (the Ray Train controller writes it there)")
        if importlib.util.find_spec("tensorboardX") is None:
            raise ConfigError("option 'tensorboard_dir': TensorBoard logging needs the tensorboardX package, which "
                              "is not installed; `pip install tensorboardX`, or leave the option unset")


def log_settings(config: TrainLoggingOptions, job: str, run_uri: str = "") -> LogSettings:
    """The progress/tracking options of a job config, checked (an optional package that is asked
    for but missing is one :class:`ConfigError`)."""
    check_tracking(mlflow_tracking_uri=config.mlflow_tracking_uri, tensorboard_dir=config.tensorboard_dir)
    return LogSettings(job=job, every_steps=config.log_every_steps, every_s=config.log_every_s, run_uri=run_uri,
                       mlflow_tracking_uri=config.mlflow_tracking_uri, mlflow_experiment=config.mlflow_experiment)


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The curve-like numbers of a metrics dict (finite ints/floats, not counters).

    >>> scalars({"step": 4, "loss": 0.5, "lr": 1e-3, "eta_s": float("nan"), "dev_nll": 0.7, "name": "x"})
    {'loss': 0.5, 'lr': 0.001, 'dev_nll': 0.7}
    """
    out = {}
    for key, value in metrics.items():
        if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class MLflowRun:
    """Rank 0's MLflow run (``setup_mlflow``; a no-op on other ranks and when not configured)."""

    def __init__(self, settings: LogSettings, params: Mapping[str, Any]) -> None:
        self._mlflow = None
        if settings.mlflow_tracking_uri:
            self._mlflow = setup_mlflow(config=dict(params), tracking_uri=settings.mlflow_tracking_uri,
                                        experiment_name=settings.mlflow_experiment or settings.job,
                                        create_experiment_if_not_exists=True, run_name=settings.job,
                                        rank_zero_only=True)

    def log(self, metrics: Mapping[str, Any], *, step: int) -> None:
        if self._mlflow is not None:
            values = scalars(metrics)
            if values:
                self._mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None


class TensorBoardCallback(ray.train.UserCallback):
    """Writes rank 0's reported metrics (``ray.train.report``) to TensorBoard event files in
    ``logdir``, ``train/<metric>`` (``dev/<metric>`` for ``dev_*``) at the reported ``step``."""

    def __init__(self, logdir: str) -> None:
        self.logdir = os.path.abspath(os.path.expanduser(logdir))
        self._writer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"logdir": self.logdir, "_writer": None}  # built in the controller, not pickled

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics or "step" not in metrics[0]:
            return
        # tensorboardX's own synchronous writer, not its SummaryWriter: that one hands events to a
        # thread that writes them up to flush_secs later, and a UserCallback gets no end-of-run call
        # to close it, so the last points of a run could be lost.
        from tensorboardX.event_file_writer import EventsWriter  # optional package: only when asked for
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        if self._writer is None:
            os.makedirs(self.logdir, exist_ok=True)
            self._writer = EventsWriter(os.path.join(self.logdir, "events"))
        step = int(metrics[0]["step"])
        for key, value in scalars(metrics[0]).items():
            tag = f"dev/{key.removeprefix('dev_')}" if key.startswith("dev_") else f"train/{key}"
            self._writer.write_event(Event(wall_time=time.time(), step=step, summary=scalar(tag, value)))
        self._writer.flush()  # on disk now: a running TensorBoard shows it


def tracking_callbacks(tensorboard_dir: str | None) -> list[Any]:
    """The Ray Train ``RunConfig(callbacks=...)`` for the configured tracking."""
    return [TensorBoardCallback(tensorboard_dir)] if tensorboard_dir else []
