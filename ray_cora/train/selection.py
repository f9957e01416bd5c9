"""Which checkpoint to keep: the epoch with the best dev score, as CORA keeps it (pure, no Ray).

- mDPR (AkariAsai/CORA ``mDPR/train_dense_encoder.py``, ``BiEncoderTrainer.validate_and_save``):
  at each epoch end, the NLL on the dev file before ``--val_av_rank_start_epoch``, the average rank
  of the positive from that epoch on; lower is better; the best is forgotten at the switch (the two
  numbers are not comparable), so the kept checkpoint is the best average-rank epoch once there is one.
- mGEN (``mGEN/callbacks_rag.py``, ``get_checkpoint_callback``): ``ModelCheckpoint(monitor="val_em",
  mode="max")``.

:class:`DevTracker` holds the per-epoch history and the best so far; its :meth:`~DevTracker.state`
is JSON (it travels in every checkpoint's ``progress.json`` and is restored on resume).
:attr:`DevTracker.order` counts new bests: the Ray layer reports it as the checkpoint score of a
new best's checkpoint (and 0 on every other checkpoint), so Ray Train's ``CheckpointConfig(
num_to_keep=1, checkpoint_score_attribute=..., checkpoint_score_order="max")`` keeps exactly the
best checkpoint plus the latest one (Ray never deletes the latest).

Epochs are counted from 1 here, as ``progress.json`` counts them. ``switch_epoch`` is the number
of epochs scored by the first metric, which is what CORA's 0-based ``--val_av_rank_start_epoch``
means: with 30, epochs 1-30 are scored by NLL and epochs 31 on by average rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["min", "max"]


@dataclass(frozen=True)
class SelectionRule:
    """The dev metric that scores an epoch, and which way is better.

    >>> rule = SelectionRule("nll", "min", switch_metric="avg_rank", switch_epoch=2)
    >>> [rule.metric_at(e) for e in (1, 2, 3)]
    ['nll', 'nll', 'avg_rank']
    """

    metric: str
    mode: Mode
    switch_metric: str | None = None
    switch_epoch: int | None = None  # epochs scored by ``metric``; later ones by ``switch_metric``

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"selection mode {self.mode!r} is not 'min' or 'max'")
        if (self.switch_metric is None) != (self.switch_epoch is None):
            raise ValueError("give switch_metric and switch_epoch together (or neither)")

    def metric_at(self, epoch: int) -> str:
        if self.switch_metric is not None and epoch > self.switch_epoch:
            return self.switch_metric
        return self.metric

    def better(self, value: float, best: float) -> bool:
        # Strictly better: a tie keeps the earlier epoch, as CORA's ``<``. (CORA's
        # ``value < (best or value + 1)`` also replaces a best of exactly 0.0; not copied.)
        return value < best if self.mode == "min" else value > best


class DevTracker:
    """Per-epoch dev results and the best epoch under a :class:`SelectionRule`.

    >>> t = DevTracker(SelectionRule("em", "max"))
    >>> [t.observe(epoch=e, step=10 * e, metrics={"em": v}) for e, v in ((1, 0.2), (2, 0.5), (3, 0.4))]
    [True, True, False]
    >>> t.kept
    {'epoch': 2, 'step': 20, 'metric': 'em', 'value': 0.5}
    >>> DevTracker.from_state(t.rule, t.state()).kept == t.kept
    True
    """

    def __init__(self, rule: SelectionRule) -> None:
        self.rule = rule
        self.history: list[dict[str, Any]] = []
        self.kept: dict[str, Any] | None = None
        self.order = 0  # new bests so far (the checkpoint score Ray orders by)

    def observe(self, *, epoch: int, step: int, metrics: Mapping[str, float]) -> bool:
        """Record ``metrics`` of the checkpoint at the end of ``epoch``; True when it is the new best."""
        metric = self.rule.metric_at(epoch)
        if metric not in metrics:
            raise ValueError(f"dev metrics of epoch {epoch} have no {metric!r} (got {sorted(metrics)})")
        value = float(metrics[metric])
        if self.kept is not None and self.kept["metric"] != metric:
            self.kept = None  # CORA: `if epoch == args.val_av_rank_start_epoch: self.best_validation_result = None`
        best = math.isfinite(value) and (self.kept is None or self.rule.better(value, self.kept["value"]))
        if best:
            self.order += 1
            self.kept = {"epoch": epoch, "step": step, "metric": metric, "value": value}
        self.history.append({"epoch": epoch, "step": step, "metric": metric, "value": value, "best": best,
                             "metrics": {k: float(v) for k, v in metrics.items()}})
        return best

    def state(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "kept": dict(self.kept) if self.kept else None,
                "order": self.order}

    @classmethod
    def from_state(cls, rule: SelectionRule, state: Mapping[str, Any] | None) -> DevTracker:
        tracker = cls(rule)
        if state:
            tracker.history = [dict(h) for h in state.get("history", [])]
            tracker.kept = dict(state["kept"]) if state.get("kept") else None
            tracker.order = int(state.get("order", 0))
        return tracker
