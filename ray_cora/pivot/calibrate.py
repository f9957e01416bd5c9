"""Calibrated abstention: the smallest score threshold whose answered set reaches a target precision.

Answering only when ``score >= threshold``, precision is the share of answered questions that are
correct and coverage the share answered. Lower thresholds answer more, so the smallest threshold
that still reaches the target keeps the most answers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ray_cora.errors import ConfigError
from ray_cora.metrics.qa import exact_match


@dataclass(frozen=True)
class Calibration:
    threshold: float | None  # None: no threshold reaches the target
    target_precision: float
    precision: float | None
    coverage: float
    num_examples: int
    precision_without_threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


def calibrated_threshold(data: bytes, source: str) -> float:
    """The threshold a ``calibration.json`` (from ``ray-cora pivot calibrate``) records; anything
    else in the file is a :class:`ConfigError` naming it.

    >>> calibrated_threshold(b'{"threshold": 0.5, "target_precision": 0.8}', "calibration.json")
    0.5
    """
    redo = "rerun `ray-cora pivot calibrate`, or pass --threshold"
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        where = f"{source}:{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else source
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise ConfigError(f"{where}: not a calibration file ({reason}): {redo}") from None
    if not isinstance(payload, dict) or "threshold" not in payload:
        raise ConfigError(f"{source}: not a calibration file (no 'threshold' field): {redo}")
    threshold = payload["threshold"]
    if threshold is None:
        raise ConfigError(f"{source}: calibration found no threshold reaching precision "
                          f"{payload.get('target_precision')}; pass --threshold or recalibrate")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ConfigError(f"{source}: field 'threshold' must be a finite number, got {threshold!r}: {redo}")
    return float(threshold)


def pick_threshold(scores: Sequence[float], correct: Sequence[bool], *,
                   target_precision: float = 0.8) -> Calibration:
    """Smallest ``t`` among the scores such that precision of ``{score >= t}`` >= target.

    >>> pick_threshold([0.9, 0.8, 0.7, 0.6], [True, True, False, True], target_precision=0.75).threshold
    0.6
    >>> pick_threshold([0.9, 0.8, 0.7, 0.6], [True, True, False, False], target_precision=0.75).threshold
    0.8
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    if s.shape != c.shape or s.ndim != 1:
        raise ValueError(f"scores and correct must be equally long lists, got {s.shape} and {c.shape}")
    if not 0 < target_precision <= 1:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    n = len(s)
    if n == 0:
        return Calibration(None, target_precision, None, 0.0, 0, 0.0)
    order = np.argsort(-s, kind="stable")
    s_sorted, c_sorted = s[order], c[order]
    # Only the last position of each run of equal scores is a valid cut: a threshold answers
    # every example with that score or more.
    last_of_run = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    answered = np.arange(1, n + 1)
    precision = np.cumsum(c_sorted) / answered
    ok = np.flatnonzero(last_of_run & (precision >= target_precision - 1e-12))
    overall = float(c.mean())
    if not len(ok):
        return Calibration(None, target_precision, None, 0.0, n, overall)
    cut = int(ok[-1])  # the deepest cut: the smallest threshold
    return Calibration(float(s_sorted[cut]), target_precision, float(precision[cut]),
                       float(answered[cut] / n), n, overall)


def answer_is_correct(prediction: str, answers: Sequence[str], lang: str) -> bool:
    """Exact match after the XOR-TyDi / CORA scorer's normalisation (:mod:`ray_cora.metrics.qa`)."""
    return bool(exact_match(prediction, list(answers), lang))
