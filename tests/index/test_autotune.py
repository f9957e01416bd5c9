"""tune-index: the search-time parameter chosen is the cheapest that reaches the recall target
(the next cheaper one does not), the choice becomes the index's default, and a budget or an
unreachable target is reported as not met."""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest

from ray_cora import cli, storage
from ray_cora.demo import DEMO_QUESTIONS
from ray_cora.errors import ConfigError
from ray_cora.index.autotune import TUNING_PATH, TuneTarget, candidate_values, recall_at_k, record_tuning, tune
from ray_cora.index.sharded import IndexSpec, ShardedIndex, write_index

DIM = 32
ENCODER = {"spec": "test", "dim": DIM, "normalized": True}


def _clustered(n, seed=0, clusters=25):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    x = centres[rng.integers(0, clusters, n)] + 0.45 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
    vectors = _clustered(4000)
    # Held-out queries near the corpus (corpus vectors with fresh noise), as real questions are.
    queries = vectors[np.random.default_rng(2).choice(len(vectors), 150, replace=False)] + \
        0.05 * np.random.default_rng(3).standard_normal((150, DIM)).astype(np.float32)
    return vectors, np.ascontiguousarray(queries, dtype=np.float32)


def _index(tmp_path, vectors, factory, **spec):
    write_index(str(tmp_path), vectors, [f"p{i}" for i in range(len(vectors))], shard_size=1500,
                encoder=ENCODER, spec=IndexSpec(index_factory=factory, **spec))
    return ShardedIndex.open(str(tmp_path))


def test_chosen_nprobe_is_the_cheapest_reaching_the_target_and_becomes_the_default(tmp_path, corpus):
    vectors, queries = corpus
    index = _index(tmp_path, vectors, "IVF64,Flat", ivf_nprobe=1)
    target = TuneTarget(k=20, recall=0.9, repeats=1)
    tuning = tune(index, queries, target)
    chosen = tuning.chosen.params["nprobe"]
    assert tuning.met and tuning.knob == "nprobe" and chosen > 1

    # Checked independently of the sweep: IVF-Flat searched exhaustively is exact search.
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :20]
    at = {n: recall_at_k(index.search_rows(queries, 20, nprobe=n)[1], exact, 20) for n in (chosen // 2, chosen)}
    assert at[chosen] >= 0.9 > at[chosen // 2]
    assert [p.params["nprobe"] for p in tuning.points] == candidate_values("nprobe", 64, 20)[:len(tuning.points)]

    manifest = record_tuning(str(tmp_path), tuning)
    assert manifest["search_params"]["nprobe"] == chosen and manifest["tuning"]["met"] is True
    assert manifest["files"][TUNING_PATH]["sha256"]
    saved = json.loads(storage.Artifact(str(tmp_path)).read_bytes(TUNING_PATH))  # checksum verified
    assert saved["chosen"]["params"] == {"nprobe": chosen} and len(saved["points"]) == len(tuning.points)
    reopened = ShardedIndex.open(str(tmp_path))  # every shard still verifies against the new manifest
    assert reopened.search_defaults["nprobe"] == chosen
    np.testing.assert_array_equal(reopened.search_rows(queries, 20)[1],
                                  reopened.search_rows(queries, 20, nprobe=chosen)[1])


def test_unreachable_target_and_budget_are_reported_not_met(tmp_path, corpus):
    vectors, queries = corpus
    index = _index(tmp_path, vectors, "IVF16,PQ8x4", ivf_nprobe=1)
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    # Against exact truth, 4-bit PQ codes cannot reach recall 1.0 whatever nprobe is.
    tuning = tune(index, queries, TuneTarget(k=10, recall=1.0, repeats=1), truth=exact)
    assert not tuning.met and tuning.truth == "exact" and "no value reaches" in tuning.reason
    assert [p.params["nprobe"] for p in tuning.points] == [1, 2, 4, 8, 16]
    assert tuning.chosen.recall == max(p.recall for p in tuning.points) < 1.0

    # A budget no search meets: the sweep stops at the first value and says a smaller index is needed.
    slow = tune(index, queries, TuneTarget(k=10, recall=0.5, max_ms_per_query=1e-9, repeats=1))
    assert not slow.met and len(slow.points) == 1 and "over the budget" in slow.reason


def test_hnsw_and_opq_exhaustive_reference_and_flat_has_no_knob(tmp_path, corpus):
    vectors, queries = corpus
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    hnsw = _index(tmp_path / "hnsw", vectors, "HNSW8", hnsw_ef_search=10)
    # HNSW's exhaustive reference scans its stored (flat) vectors: exact search.
    np.testing.assert_array_equal(np.sort(hnsw.exhaustive_rows(queries, 10)[1], axis=1), np.sort(exact, axis=1))
    tuning = tune(hnsw, queries, TuneTarget(k=10, recall=0.99, repeats=1))
    assert tuning.knob == "efSearch" and tuning.met and tuning.chosen.params["efSearch"] >= 10

    opq = _index(tmp_path / "opq", vectors, "OPQ8,IVF16,PQ8", ivf_nprobe=1)
    # Through the OPQ rotation, the exhaustive reference is the search with every list probed.
    np.testing.assert_array_equal(opq.exhaustive_rows(queries, 10)[1], opq.search_rows(queries, 10, nprobe=16)[1])
    assert opq.search_knob == ("nprobe", 16)

    flat = _index(tmp_path / "flat", vectors, "Flat")
    flat_tuning = tune(flat, queries, TuneTarget(k=10, recall=0.99, repeats=1))
    assert flat_tuning.knob is None and flat_tuning.chosen.recall == 1.0 and flat_tuning.met


def test_bad_targets_and_queries_are_one_line_errors(tmp_path, corpus):
    vectors, queries = corpus
    with pytest.raises(ConfigError, match="recall target"):
        TuneTarget(recall=1.5)
    index = _index(tmp_path, vectors[:500], "IVF4,Flat")
    with pytest.raises(ConfigError, match=r"\(n, 32\)"):
        tune(index, queries[:, :8])


def test_tune_index_job_encodes_held_out_questions_and_records_the_choice(tmp_path, demo_ivf_index):
    """The job end to end on real mUSE vectors: the demo corpus indexed as IVF, tuned with the demo
    questions encoded as retrieve encodes them."""
    out = tmp_path / "ivf"
    shutil.copytree(demo_ivf_index, out)
    faiss.omp_set_num_threads(1)
    assert cli.run_job("tune-index", ["--index", str(out), "--questions", str(DEMO_QUESTIONS), "--k", "10",
                                      "--recall", "0.999", "--repeats", "1"]) == 0
    manifest = storage.Artifact(str(out)).manifest
    # IVF-Flat probed everywhere is exact, so recall 0.999 needs (nearly) every list: more than 1.
    assert manifest["tuning"]["met"] and manifest["search_params"]["nprobe"] > 1
    assert manifest["tuning"]["chosen"] == {"nprobe": manifest["search_params"]["nprobe"]}

    vectors_file = tmp_path / "q.npy"
    np.save(vectors_file, _clustered(7) @ np.random.default_rng(0).standard_normal((DIM, 512)).astype(np.float32))
    before = storage.read_bytes(str(out / "manifest.json"))
    assert cli.run_job("tune-index", ["--index", str(out), "--query-vectors", str(vectors_file), "--k", "5",
                                      "--dry-run", "--repeats", "1"]) == 0
    assert storage.read_bytes(str(out / "manifest.json")) == before  # a dry run changes nothing
    assert cli.run_job("tune-index", ["--index", str(out)]) == 2  # neither questions nor vectors: one line
