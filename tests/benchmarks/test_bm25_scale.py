"""The BM25-scale benchmark runs at a tiny size, writes its JSON and Markdown, and its old-code
copies still agree with the library (the before/after it reports compares like with like)."""

from __future__ import annotations

import json

import numpy as np

from ray_cora.index.lexical import build_part
from tests.support import load_benchmark


def test_synthetic_corpus_is_zipfian_seeded_and_its_own_tokens():
    bench = load_benchmark("bm25_scale")
    vocab = bench.vocabulary(500, seed=1)
    assert len(set(vocab)) == 500 and vocab == bench.vocabulary(500, seed=1)
    assert all(w.isalpha() and w.islower() for w in vocab) and len(vocab[0]) <= len(vocab[-1])
    probs = bench.zipf_probabilities(500, 1.0)
    ids = bench.passage_word_ids(0, 400, 100, probs, seed=1)
    assert ids.shape == (400, 100) and np.array_equal(ids, bench.passage_word_ids(0, 400, 100, probs, seed=1))
    counts = np.bincount(ids.ravel(), minlength=500)
    assert counts[0] > 20 * counts[100:].mean()  # a few very common terms
    questions = bench.question_word_ids(200, 8, probs, seed=1)
    assert (questions < 5).any() and (questions >= 250).any()  # common and rare terms


def test_the_copied_old_build_gives_the_same_arrays():
    bench = load_benchmark("bm25_scale")
    vocab = np.array(bench.vocabulary(300, seed=2), dtype=object)
    terms = bench.as_terms(bench.passage_word_ids(3, 50, 20, bench.zipf_probabilities(300, 1.0), seed=2), vocab)
    pids = [f"p{i}" for i in range(50)]
    assert bench._same_arrays(bench.build_part_before(pids, terms), build_part(pids, terms))


def test_tiny_run_writes_results_equal_to_bm25s(tmp_path):
    bench = load_benchmark("bm25_scale")
    out = tmp_path / "bm25_scale.json"
    results = bench.main(["--sizes", "600,1200", "--shard-size", "250,1000", "--vocab", "800", "--queries", "15",
                          "--repeats", "2", "--build-sample", "300", "--tokenize-sample", "100", "--k", "20",
                          "--results", str(out)])
    saved = json.loads(out.read_text())
    assert saved["build"]["same_arrays"] is True
    memory = saved["build"]["terms_bytes_per_passage"]
    assert memory["part_builder"] < memory["python_lists"]
    # 600 is cut by 250 only; 1,200 by 250 and by 1,000 (the same passages, one bm25s for both)
    assert [(s["n"], s["shard_size"], s["parts"]) for s in saved["sizes"]] == [(600, 250, 3), (1200, 250, 5),
                                                                                (1200, 1000, 2)]
    for size in saved["sizes"]:
        assert size["equal_to_bm25s"] == {"before": 1.0, "after": 1.0} and size["after_identical_to_before"] == 1.0
        assert size["qps"]["after"]["min"] <= size["qps"]["after"]["median"] <= size["qps"]["after"]["max"]
        assert size["bytes"] > 0 and size["p50_ms"]["after"] <= size["p95_ms"]["after"]
    assert [(p["from_n"], p["shard_size"], p["parts"]) for p in saved["projection"]] == [(1200, 250, 84_000),
                                                                                         (1200, 1000, 21_000)]
    md = out.with_suffix(".md").read_text()
    assert "| 1,200 | 1,000 | 2 |" in md and md.count("Projection, not measured") == 2
    assert results["sizes"] == saved["sizes"]
