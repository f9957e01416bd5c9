"""Shard arithmetic and the sharded index against brute-force numpy top-k."""

from __future__ import annotations

import numpy as np
import pytest

from ray_cora import storage
from ray_cora.errors import ChecksumError, ConfigError, StorageError
from ray_cora.index.sharded import (
    IndexSpec,
    ShardedIndex,
    commit_index,
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
