"""Keeping the best dev epoch (ray_cora.train.selection): CORA's rules, pure."""

from __future__ import annotations

import json

import pytest

from ray_cora.train.selection import DevTracker, SelectionRule


def _run(rule: SelectionRule, values: list[tuple[str, float]]) -> tuple[DevTracker, list[bool]]:
    tracker = DevTracker(rule)
    bests = [tracker.observe(epoch=e, step=10 * e, metrics={m: v}) for e, (m, v) in enumerate(values, start=1)]
    return tracker, bests


def test_lower_is_better_for_mdpr_nll_and_ties_keep_the_earlier_epoch():
    tracker, bests = _run(SelectionRule("nll", "min"), [("nll", 0.9), ("nll", 0.5), ("nll", 0.5), ("nll", 0.7)])
    assert bests == [True, True, False, False]
    assert tracker.kept == {"epoch": 2, "step": 20, "metric": "nll", "value": 0.5}
    assert tracker.order == 2 and [h["epoch"] for h in tracker.history] == [1, 2, 3, 4]


def test_higher_is_better_for_mgen_em():
    tracker, bests = _run(SelectionRule("em", "max"), [("em", 0.1), ("em", 0.4), ("em", 0.3)])
    assert bests == [True, True, False] and tracker.kept["epoch"] == 2


def test_cora_resets_the_best_when_average_rank_takes_over():
    # CORA's --val_av_rank_start_epoch 2 (0-based): epochs 1-2 NLL, 3 on average rank; the best NLL
    # epoch is forgotten at the switch, so epoch 3 is the new best whatever its number.
    rule = SelectionRule("nll", "min", switch_metric="avg_rank", switch_epoch=2)
    tracker = DevTracker(rule)
    scores = [{"nll": 0.3}, {"nll": 0.2}, {"avg_rank": 5.0}, {"avg_rank": 3.0}, {"avg_rank": 4.0}]
    bests = [tracker.observe(epoch=e, step=e, metrics=m) for e, m in enumerate(scores, start=1)]
    assert bests == [True, True, True, True, False]
    assert tracker.kept == {"epoch": 4, "step": 4, "metric": "avg_rank", "value": 3.0}
    assert [h["metric"] for h in tracker.history] == ["nll", "nll", "avg_rank", "avg_rank", "avg_rank"]
    assert tracker.order == 4  # the score Ray keeps checkpoints by only ever grows


def test_state_is_json_and_resumes_where_it_stopped():
    rule = SelectionRule("em", "max")
    first, _ = _run(rule, [("em", 0.2), ("em", 0.6)])
    resumed = DevTracker.from_state(rule, json.loads(json.dumps(first.state())))
    assert resumed.observe(epoch=3, step=30, metrics={"em": 0.5}) is False
    assert resumed.observe(epoch=4, step=40, metrics={"em": 0.7}) is True
    assert resumed.kept["epoch"] == 4 and resumed.order == 3 and len(resumed.history) == 4
    assert DevTracker.from_state(rule, None).kept is None


def test_missing_metric_and_bad_rules_fail_with_one_clear_line():
    with pytest.raises(ValueError, match="no 'avg_rank'"):
        DevTracker(SelectionRule("nll", "min", "avg_rank", 0)).observe(epoch=1, step=1, metrics={"nll": 1.0})
    with pytest.raises(ValueError, match="not 'min' or 'max'"):
        SelectionRule("em", "up")  # type: ignore[arg-type]
    nan = DevTracker(SelectionRule("nll", "min"))
    assert nan.observe(epoch=1, step=1, metrics={"nll": float("nan")}) is False  # never a best
