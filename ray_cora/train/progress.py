"""What a training run says while it runs (pure: no Ray, no torch).

Rank 0 of every Ray Train job prints through :class:`ProgressMeter`:

- a progress line every ``every_steps`` optimizer steps, and at least every ``every_s`` seconds
  (the time floor: a slow run, e.g. mT5-base at seconds per step, still shows life at least
  twice a minute in ``ray job logs -f``, and a fast run is not flooded by it)::

    train-mdpr: step 150/600 (25%) epoch 1/3 loss 0.4123 samples/s 412.3 lr 1.95e-05 elapsed 0:01:10 eta 0:03:30

  ``loss`` is rank 0's mean over the steps since the previous line (the window); ``samples/s`` is
  global (every worker's examples) over the window's training time (checkpoint saving and dev
  scoring are left out, see :meth:`ProgressMeter.pause_end`); ``eta`` is the remaining steps at this
  attempt's wall time per step so far (checkpoints and dev scoring included: they recur);
- a line at each epoch end (:meth:`ProgressMeter.epoch_line`), and :func:`resume_line` when a run
  goes on from a checkpoint.

The numbers of each line are also :meth:`ProgressMeter.window` metrics, which the loop reports to
Ray Train (``ray.train.report``) and to MLflow / TensorBoard when configured.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_LOG_EVERY_STEPS = 50
DEFAULT_LOG_EVERY_S = 30.0

_log = logging.getLogger("ray_cora.train")
_log.setLevel(logging.INFO)


def say(line: str) -> None:
    """Print one progress line from a Ray Train worker, once.

    Ray Train v2 configures the worker's root logger (the worker's stderr, which Ray streams to
    the driver and to ``ray job logs``, plus its ``logs/train/ray-train-app-worker-*.log``) and
    patches ``print`` to log *and* write to stdout, so a plain ``print`` shows every line twice at
    the driver. Without a configured root logger (Ray Train v1) the line is printed.
    """
    if logging.getLogger().handlers:
        _log.info(line)
        for handler in logging.getLogger().handlers:
            handler.flush()
    else:
        print(line, flush=True)


@dataclass(frozen=True)
class LogSettings:
    """How a run reports progress; plain values (they travel to every worker).

    ``job`` starts each line; ``run_uri`` is where the run's checkpoints go (named in the
    checkpoint, resume and final lines); ``mlflow_*``: MLflow logging from rank 0 when
    ``mlflow_tracking_uri`` is set. (TensorBoard is written on the driver's node by the Ray Train
    controller, see :mod:`ray_cora.train.tracking`.)
    """

    job: str = "train"
    every_steps: int = DEFAULT_LOG_EVERY_STEPS
    every_s: float = DEFAULT_LOG_EVERY_S
    run_uri: str = ""
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str | None = None


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``?`` when unknown).

    >>> format_duration(3725.4), format_duration(59.6), format_duration(float("nan"))
    ('1:02:05', '0:01:00', '?')
    """
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


class ProgressMeter:
    """Counts the steps one worker trains and writes rank 0's progress lines.

    ``start_step`` is where this attempt starts (a resumed run's checkpoint step): elapsed time,
    ETA and throughput are this attempt's. ``clock`` is injectable for tests.

    >>> t = [0.0]
    >>> meter = ProgressMeter(job="train-x", total_steps=10, steps_per_epoch=5, every_steps=4,
    ...                       every_s=30, clock=lambda: t[0])
    >>> for step in range(1, 5):
    ...     t[0] += 0.5
    ...     meter.add(loss=1.0 / step, samples=8)
    >>> meter.due(4)
    True
    >>> meter.line(meter.window(step=4, epoch=1, lr=1e-3))
    'train-x: step 4/10 (40%) epoch 1/2 loss 0.5208 samples/s 16.0 lr 1.00e-03 elapsed 0:00:02 eta 0:00:03'
    """

    def __init__(self, *, job: str, total_steps: int, steps_per_epoch: int, every_steps: int = DEFAULT_LOG_EVERY_STEPS,
                 every_s: float = DEFAULT_LOG_EVERY_S, start_step: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job, self.total_steps, self.steps_per_epoch = job, total_steps, max(1, steps_per_epoch)
        self.every_steps, self.every_s, self.start_step = every_steps, every_s, start_step
        self.clock = clock
        self.started = self._last_step_end = self._last_line = clock()
        self._losses: list[float] = []
        self._samples = 0
        self._train_s = 0.0
        self._epoch_losses: list[float] = []
        self.step = start_step

    @property
    def epochs(self) -> int:
        return max(1, math.ceil(self.total_steps / self.steps_per_epoch))

    def add(self, *, loss: float, samples: int) -> None:
        """One optimizer step done: its loss (this worker's) and the examples all workers trained."""
        now = self.clock()
        self._train_s += now - self._last_step_end
        self._last_step_end = now
        self._losses.append(loss)
        self._epoch_losses.append(loss)
        self._samples += samples
        self.step += 1

    def pause_end(self) -> None:
        """Call after work that is not training (checkpoint upload, dev scoring): the time since
        the last step is left out of samples/s (it still counts in elapsed and ETA)."""
        self._last_step_end = self.clock()

    def due(self, step: int) -> bool:
        """A line is due after ``step``: every ``every_steps`` steps, the last step, or when
        ``every_s`` seconds passed since the last line."""
        if step == self.total_steps or (self.every_steps and step % self.every_steps == 0):
            return True
        return bool(self.every_s) and self.clock() - self._last_line >= self.every_s and bool(self._losses)

    def step_due(self, step: int) -> bool:
        """The step-count part of :meth:`due` only: the same on every worker (they all call
        ``ray.train.report`` at these steps; the time floor differs between workers)."""
        return step == self.total_steps or bool(self.every_steps and step % self.every_steps == 0)

    def window(self, *, step: int, epoch: int, lr: float) -> dict[str, Any]:
        """The metrics of the steps since the previous window (then a new window starts)."""
        now = self.clock()
        done = step - self.start_step
        elapsed = now - self.started
        per_step = elapsed / done if done > 0 else float("nan")
        metrics = {
            "step": step, "epoch": epoch, "total_steps": self.total_steps,
            "loss": sum(self._losses) / len(self._losses) if self._losses else float("nan"),
            "samples_per_s": self._samples / self._train_s if self._train_s > 0 else 0.0,
            "lr": lr, "elapsed_s": elapsed, "eta_s": per_step * (self.total_steps - step),
        }
        self._losses, self._samples, self._train_s, self._last_line = [], 0, 0.0, now
        return metrics

    def line(self, metrics: dict[str, Any]) -> str:
        """One progress line from :meth:`window`'s metrics."""
        step, total = metrics["step"], self.total_steps
        return (f"{self.job}: step {step}/{total} ({100 * step // max(total, 1)}%) epoch {metrics['epoch']}/"
                f"{self.epochs} loss {metrics['loss']:.4f} samples/s {metrics['samples_per_s']:.1f} "
                f"lr {metrics['lr']:.2e} elapsed {format_duration(metrics['elapsed_s'])} "
                f"eta {format_duration(metrics['eta_s'])}")

    def epoch_line(self, *, epoch: int, step: int) -> str:
        """The line at an epoch end (its mean loss over the steps this attempt trained in it);
        the epoch's loss starts anew.

        >>> meter = ProgressMeter(job="j", total_steps=4, steps_per_epoch=2, clock=lambda: 90.0)
        >>> meter.add(loss=1.0, samples=2); meter.add(loss=0.5, samples=2)
        >>> meter.epoch_line(epoch=1, step=2)
        'j: epoch 1/2 done at step 2/4: mean loss 0.7500, elapsed 0:00:00'
        """
        losses, self._epoch_losses = self._epoch_losses, []
        mean = sum(losses) / len(losses) if losses else float("nan")
        return (f"{self.job}: epoch {epoch}/{self.epochs} done at step {step}/{self.total_steps}: mean loss "
                f"{mean:.4f}, elapsed {format_duration(self.clock() - self.started)}")


def resume_line(job: str, *, checkpoint: str, step: int, total_steps: int, steps_per_epoch: int) -> str:
    """What a run resumed from a checkpoint says: where, at which step, and what it skips.

    >>> print(resume_line("train-mdpr", checkpoint="s3://b/out/ray-train/step-00000006", step=6,
    ...                   total_steps=12, steps_per_epoch=4))
    train-mdpr: resumed from checkpoint s3://b/out/ray-train/step-00000006 at step 6/12 (epoch 2/3): skipping epoch 1 and the first 2 of 4 batches of epoch 2 (already trained)
    """
    per = max(1, steps_per_epoch)
    epoch, into = divmod(step, per)
    epochs = max(1, math.ceil(total_steps / per))
    if step >= total_steps:
        return (f"{job}: resumed from checkpoint {checkpoint} at step {step}/{total_steps}: every step is "
                "already trained; nothing to train")
    skipped = []
    if epoch:
        skipped.append("epoch 1" if epoch == 1 else f"epochs 1-{epoch}")
    if into:
        skipped.append(f"the first {into} of {per} batches of epoch {epoch + 1}")
    what = " and ".join(skipped) or "nothing"
    return (f"{job}: resumed from checkpoint {checkpoint} at step {step}/{total_steps} (epoch {epoch + 1}/"
            f"{epochs}): skipping {what} (already trained)")
