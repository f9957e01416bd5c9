"""The Serve load benchmark: its arithmetic (paired per-round differences, speed-ups, verdicts, the
table) on made-up figures, and one tiny run of the whole thing (slow)."""

from __future__ import annotations

import json

import pytest

from tests.support import load_benchmark


def test_paired_differences_use_only_rounds_where_both_sides_answered():
    bench = load_benchmark("serve_load")
    rounds = [{"noop": 0.010, "ray_cora": 0.012}, {"noop": 0.020, "ray_cora": 0.021},
              {"noop": 0.010}, {"noop": 0.010, "ray_cora": 0.040}]
    assert bench.paired(rounds, "ray_cora", "noop") == {"rounds": 3, "median_minus_ms": 2.0, "median_ratio": 1.2}
    assert bench.paired([{"noop": 0.01}], "ray_cora", "noop")["median_minus_ms"] is None


def _window(rps: float, p50: float = 10.0) -> dict:
    return {"requests": 100, "errors": 0, "p50_ms": p50, "p95_ms": 2 * p50, "p99_ms": 3 * p50,
            "seconds": 1.0, "requests_per_s": rps, "load": "1.00 1.00 1.00"}


def _results() -> dict:
    p50 = {t: {"requests": 10, "errors": 0, "p50_ms": 5.0, "p95_ms": 6.0, "p99_ms": 7.0}
           for t in ("noop", "ray_cora", "ray_cora_unbatched", "ray_cora_sg2", "direct")}
    windows = {"32": {"ray_cora": [_window(100), _window(90)], "ray_cora_unbatched": [_window(40), _window(50)],
                      "noop": [_window(300)], "ray_cora_sg2": [_window(80)]}}
    results = {"load_before": "1.00 1.00 1.00", "load_after": "1.10 1.00 1.00", "windows": windows,
               "one_client": {"rounds": 10, "p50": p50, "load_after": "1.10 1.00 1.00",
                              "vs_noop": {t: {"rounds": 10, "median_minus_ms": m, "median_ratio": 1.1}
                                          for t, m in (("ray_cora", 2.5), ("ray_cora_unbatched", 2.4),
                                                       ("ray_cora_sg2", 8.0))},
                              "fanout": {"rounds": 10, "median_minus_ms": 5.5, "median_ratio": 1.3}}}
    bench = load_benchmark("serve_load")
    results["speedups"] = bench.speedups(windows)
    results["verdicts"] = bench.verdicts(results)
    return results


def test_speedups_pair_batched_and_unbatched_windows_of_the_same_repeat():
    results = _results()
    assert results["speedups"] == {"32": {"per_repeat": [2.5, 1.8], "median": 2.15}}
    verdicts = results["verdicts"]
    assert verdicts["p50_over_noop_ms"] == {"value": 2.5, "target": "<= 3.0", "met": True}
    assert verdicts["batched_speedup_32_clients"]["met"] is True
    assert verdicts["fanout_p50_ms"] == {"value": 5.5, "target": "<= 5.0", "met": False}


def test_markdown_has_the_comparison_rows_and_the_load():
    md = load_benchmark("serve_load").markdown(_results())
    assert "load average 1.00 1.00 1.00 before, 1.10 1.00 1.00 after" in md
    assert "| ray_cora | Ingress → Retriever | 5.0 | 6.0 | 2.5 | 1.1 |" in md
    assert "| 32 | ray_cora | 95.0 | 10.0 | 20.0 | 0 |" in md
    assert "| 32 | 2.5, 1.8 | 2.15 |" in md
    assert "| fanout_p50_ms | 5.5 | <= 5.0 | no |" in md


@pytest.mark.slow
def test_a_tiny_run_deploys_every_target_and_writes_the_results(ray_local, tmp_path):
    bench = load_benchmark("serve_load")
    results = bench.main(["--rounds", "3", "--clients", "4", "--seconds", "1", "--requests", "20",
                          "--repeats", "1", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "serve_load.json").read_text())
    assert written["verdicts"] == results["verdicts"]
    one = written["one_client"]
    assert one["rounds"] == 3 and all(one["p50"][t]["requests"] == 3 for t in one["p50"])
    assert set(written["windows"]["4"]) == set(bench.TARGETS)
    assert all(w[0]["errors"] == 0 and w[0]["requests"] > 0 for w in written["windows"]["4"].values())
    assert "| ray_cora_sg2 |" in (tmp_path / "serve_load.md").read_text()
