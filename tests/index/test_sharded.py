"""Shard arithmetic and the sharded index against brute-force numpy top-k."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from ray_cora import storage
from ray_cora.errors import ChecksumError, ConfigError, StorageError
from ray_cora.index.sharded import (
    IndexSpec,
    ShardedIndex,
    check_shard_entries,
    commit_index,
    faiss_header_ntotal,
    merge_topk,
    plan_shards,
    write_shard,
)


@pytest.mark.parametrize("num_vectors", list(range(0, 60)) + [97, 128, 499, 500])
@pytest.mark.parametrize("shard_size", [1, 2, 7, 17, 64, 500])
def test_plan_covers_every_vector_exactly_once(num_vectors, shard_size):
    plan = plan_shards(num_vectors, shard_size)
    covered = [i for _, start, end in plan for i in range(start, end)]
    assert covered == list(range(num_vectors))
    assert [n for n, _, _ in plan] == list(range(len(plan)))
    assert all(0 < end - start <= shard_size for _, start, end in plan)


def _corpus(n, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors, [f"p{i}" for i in range(n)]


def _build(root, vectors, pids, shard_size, spec=IndexSpec()):
    shards = [write_shard(root, n, pids[s:e], vectors[s:e], spec, langs=["en"] * (e - s))
              for n, s, e in plan_shards(len(pids), shard_size)]
    return commit_index(root, shards, encoder={"spec": "test", "dim": vectors.shape[1], "normalized": False},
                        spec=spec)


def _brute_force(vectors, pids, queries, k):
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), [[pids[j] for j in row] for row in order]


@pytest.mark.parametrize("n, shard_size, k", [(103, 17, 10), (40, 5, 40), (9, 100, 20), (64, 1, 3)])
def test_flat_sharded_search_equals_brute_force(storage_root, n, shard_size, k):
    vectors, pids = _corpus(n)
    manifest = _build(storage_root, vectors, pids, shard_size)
    assert manifest["num_vectors"] == n and len(manifest["shards"]) == len(plan_shards(n, shard_size))
    queries = _corpus(7, seed=1)[0]
    index = ShardedIndex.open(storage_root)
    scores, got = index.search(queries, k)
    expected_scores, expected = _brute_force(vectors, pids, queries, k)
    assert got == expected
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_mmap_open_gives_the_same_results(storage_root):
    vectors, pids = _corpus(50)
    _build(storage_root, vectors, pids, 12)
    queries = _corpus(3, seed=2)[0]
    assert ShardedIndex.open(storage_root, mmap=True).search(queries, 5)[1] == \
        ShardedIndex.open(storage_root).search(queries, 5)[1]


def test_hnsw_and_ivfpq_find_exact_neighbours_of_indexed_vectors(tmp_path):
    vectors, pids = _corpus(600, dim=16)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for spec in (IndexSpec("hnsw", hnsw_m=16), IndexSpec("ivfpq", ivf_nlist=8, pq_m=8, pq_nbits=6, ivf_nprobe=8)):
        root = str(tmp_path / spec.index_type)
        manifest = _build(root, vectors, pids, 300, spec)
        assert manifest["index_type"] == spec.index_type
        top1 = ShardedIndex.open(root).search(vectors[:50], 1)[1]
        hits = sum(row[0] == pids[i] for i, row in enumerate(top1))
        assert hits >= 45, (spec.index_type, hits)


def test_ivfpq_too_small_shard_is_a_clear_error(tmp_path):
    vectors, pids = _corpus(20)
    with pytest.raises(ConfigError, match="at least 256 vectors"):
        write_shard(str(tmp_path), 0, pids, vectors, IndexSpec("ivfpq", pq_m=8))


def test_tampered_shard_is_refused(tmp_path):
    vectors, pids = _corpus(30)
    manifest = _build(str(tmp_path), vectors, pids, 10)
    storage.write_bytes(str(tmp_path / manifest["shards"][1]["ids"]), b"not parquet")
    with pytest.raises(ChecksumError, match="shard-00001.ids.parquet"):
        ShardedIndex.open(str(tmp_path))


def test_uncommitted_index_is_not_opened(tmp_path):
    vectors, pids = _corpus(10)
    write_shard(str(tmp_path), 0, pids, vectors)
    with pytest.raises(StorageError, match="never committed"):
        ShardedIndex.open(str(tmp_path))


def test_merge_handles_empty_slots_and_ties():
    a = (np.array([[1.0, 0.5, 0.0]]), np.array([[0, 1, -1]]), np.array(["a0", "a1"]))
    b = (np.array([[1.0, 0.7]]), np.array([[0, 1]]), np.array(["b0", "b1"]))
    scores, pids = merge_topk([a, b], k=4)
    assert pids == [["a0", "b0", "b1", "a1"]]
    np.testing.assert_allclose(scores, [[1.0, 1.0, 0.7, 0.5]])
    scores, pids = merge_topk([a], k=5)
    assert pids == [["a0", "a1"]] and scores.shape == (1, 3) and np.isneginf(scores[0, 2])


def _edit_vector_in_place(path, vectors_size: int) -> None:
    """Change one float of the last stored vector without changing the file's length."""
    with open(path, "r+b") as f:
        f.seek(-vectors_size, 2)  # IndexFlat stores its vectors last but for a short trailer
        data = f.read(4)
        f.seek(-vectors_size, 2)
        f.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_same_length_edit_of_a_local_shard_is_detected(tmp_path, monkeypatch, mmap):
    vectors, pids = _corpus(30)
    root = tmp_path / "index"
    manifest = _build(str(root), vectors, pids, 10)
    monkeypatch.setattr(storage, "SETTLE_NS", 0)  # as for a shard written long ago: remembered once verified
    ShardedIndex.open(str(root), mmap=mmap, cache_dir=str(tmp_path / "cache"))
    shard = root / manifest["shards"][2]["index"]
    size = shard.stat().st_size
    time.sleep(0.05)
    _edit_vector_in_place(shard, 200)
    assert shard.stat().st_size == size
    with pytest.raises(ChecksumError, match=r"shard-00002.faiss: checksum mismatch"):
        ShardedIndex.open(str(root), mmap=mmap, cache_dir=str(tmp_path / "cache"))


def test_marker_count_edited_to_zero_is_refused_before_commit(tmp_path):
    """What the embed job's shard markers hold: an entry per shard; one edited to ``count: 0``
    (paths kept or cleared) would drop a written shard from the committed index."""
    vectors, pids = _corpus(30)
    entries = [{**write_shard(str(tmp_path), n, pids[s:e], vectors[s:e]), "number": n}
               for n, s, e in plan_shards(30, 10)]
    encoder = {"spec": "test", "dim": 16, "normalized": False}
    check_shard_entries(str(tmp_path), entries)  # as written: consistent
    edited = [dict(e) for e in entries]
    edited[1]["count"] = 0
    with pytest.raises(StorageError, match=r"shard 1 says 0 vectors but shards/shard-00001.faiss exists"):
        check_shard_entries(str(tmp_path), edited)
    edited[1].update(index=None, ids=None)
    with pytest.raises(StorageError, match=r"shard 1 says 0 vectors but shards/shard-00001.faiss exists"):
        check_shard_entries(str(tmp_path), edited)
    edited[1] = {**entries[1], "count": 7}
    with pytest.raises(StorageError, match=r"shard 1 says 7 vectors, but the FAISS index holds 10 and its ids "
                                           r"file 10 rows"):
        commit_index(str(tmp_path), edited, encoder=encoder)
    assert not (tmp_path / "manifest.json").exists()
    assert commit_index(str(tmp_path), entries, encoder=encoder)["num_vectors"] == 30


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW8", "IVF4,PQ4x4", "OPQ4,IVF4,PQ4x4", "SQ8"])
def test_faiss_header_gives_ntotal_for_every_index_type(factory):
    import faiss

    vectors, _ = _corpus(300)
    index = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors[:123])
    assert faiss_header_ntotal(faiss.serialize_index(index).tobytes()[:16]) == (16, 123)


def test_manifest_shard_path_outside_the_index_is_refused(tmp_path):
    vectors, pids = _corpus(20)
    root = tmp_path / "index"
    manifest = _build(str(root), vectors, pids, 10)
    outside = tmp_path / "elsewhere.faiss"
    outside.write_bytes((root / manifest["shards"][0]["index"]).read_bytes())
    for path in (str(outside), "../elsewhere.faiss"):
        files = {**manifest["files"], path: manifest["files"][manifest["shards"][0]["index"]]}
        shards = [{**manifest["shards"][0], "index": path}, manifest["shards"][1]]
        (root / "manifest.json").write_text(json.dumps({**manifest, "files": files, "shards": shards}))
        with pytest.raises(StorageError, match=r"manifest.json: field files\[.*elsewhere.faiss'\] .*(absolute|'\.\.')"):
            ShardedIndex.open(str(root))


def test_open_turns_on_blas_for_query_batches_and_results_stay_exact(tmp_path, monkeypatch):
    """faiss-cpu's default (128000) scans a batch of fewer queries one by one, ~13x slower for 200
    queries (docs/results/search_scale.md); opening an index sets FAISS's older threshold, 20, and
    a batch above it (the sgemm path) still gives the brute-force top-k."""
    import faiss

    monkeypatch.setattr(faiss.cvar, "distance_compute_blas_threshold", 128000)
    vectors, pids = _corpus(300, dim=32)
    _build(tmp_path, vectors, pids, 70)
    index = ShardedIndex.open(tmp_path)
    assert faiss.cvar.distance_compute_blas_threshold == 20
    queries = _corpus(64, dim=32, seed=3)[0]
    scores, got = index.search(queries, 10)
    expected_scores, expected = _brute_force(vectors, pids, queries, 10)
    assert got == expected
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)
