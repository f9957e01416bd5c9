"""The search-scale benchmark runs at a tiny size and writes its JSON, Markdown and plot."""

from __future__ import annotations

import json

from tests.support import load_benchmark


def test_tiny_run_writes_results_for_flat_and_ivfpq(tmp_path):
    bench = load_benchmark("search_scale")
    out = tmp_path / "search_scale.json"
    results = bench.main(["--sizes", "3000", "--dim", "32", "--clusters", "8", "--shard-size", "1000",
                          "--nlist", "8", "--pq", "8x4", "--nprobe", "8", "--queries", "20", "--repeats", "2",
                          "--results", str(out)])
    saved = json.loads(out.read_text())
    [size] = saved["sizes"]
    assert size["n"] == 3000 and set(size["indexes"]) == {"Flat", "IVF8,PQ8x4"}
    flat = size["indexes"]["Flat"]["k"]["100"]
    assert flat["recall"] == {"raw": 1.0, "sharded": 1.0, "apart": 1.0, "apart-threads": 1.0}
    ivf = size["indexes"]["IVF8,PQ8x4"]["k"]["10"]
    # One trained index, every list probed: the sharded index finds what the raw one finds.
    assert ivf["recall"]["sharded"] == ivf["recall"]["raw"]
    assert set(ivf["ratio_vs_raw"]) == {"sharded", "apart", "apart-threads"}
    assert ivf["ratio_vs_raw"]["sharded"]["min"] <= ivf["ratio_vs_raw"]["sharded"]["median"]
    md = out.with_suffix(".md").read_text()
    assert "| 3,000 | IVF8,PQ8x4 | 10 |" in md and "| 3,000 | Flat | 100 |" in md
    assert results["plot"] == out.with_suffix(".png").exists()
