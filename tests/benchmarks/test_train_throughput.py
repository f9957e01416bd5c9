"""The training throughput benchmark runs: its smallest setting, one tiny mGEN run on 1 worker."""

from __future__ import annotations

import json

import pytest

from tests.support import load_benchmark


def test_markdown_table_has_a_row_per_run_and_the_speed_up():
    bench = load_benchmark("train_throughput")
    results = {"machine": "x86_64, 2 CPUs", "steps": 4, "setups": {"cpu_tiny_mdpr": [
        {"workers": 1, "global_batch": 8, "samples_per_s": 10.0, "samples_per_s_per_worker": 10.0},
        {"workers": 2, "global_batch": 16, "samples_per_s": 15.0, "samples_per_s_per_worker": 7.5}]}}
    md = bench.to_markdown(results)
    assert "| cpu_tiny_mdpr | 1 | 8 | 10.0 | 10.0 | 1.00x |" in md
    assert "| cpu_tiny_mdpr | 2 | 16 | 15.0 | 7.5 | 1.50x |" in md
    assert [s["model"] for s in bench.setups(gpu=True, quick=False)] == ["mdpr", "mgen"]


@pytest.mark.slow
def test_quick_benchmark_run_writes_json_and_markdown(ray_local, tmp_path):
    bench = load_benchmark("train_throughput")
    out = tmp_path / "train_throughput.json"
    results = bench.main(["--quick", "--models", "mgen", "--workers", "1", "--steps", "2",
                          "--results", str(out)])
    rows = json.loads(out.read_text())["setups"]["cpu_tiny_mgen"]
    assert rows == results["setups"]["cpu_tiny_mgen"] and len(rows) == 1
    assert rows[0]["workers"] == 1 and rows[0]["steps"] == 2 and rows[0]["samples_per_s"] > 0
    assert "| cpu_tiny_mgen | 1 |" in out.with_suffix(".md").read_text()
