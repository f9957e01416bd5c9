"""Shards spread over Ray actors give exactly the single-process result."""

from __future__ import annotations

import numpy as np
import pytest

from ray_cora.index.sharded import ShardedIndex, commit_index, plan_shards, write_shard

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("num_actors", [1, 2, 3])
def test_distributed_search_equals_local(ray_local, tmp_path, num_actors):
    from ray_cora.pipelines.search import DistributedIndex

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((77, 8)).astype(np.float32)
    pids = [f"p{i}" for i in range(77)]
    shards = [write_shard(str(tmp_path), n, pids[s:e], vectors[s:e]) for n, s, e in plan_shards(77, 10)]
    commit_index(str(tmp_path), shards, encoder={"spec": "t", "dim": 8, "normalized": False})
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    distributed = DistributedIndex(str(tmp_path), num_actors=num_actors, actor_cpus=0.25)
    try:
        scores, got = distributed.search(queries, 12)
    finally:
        distributed.shutdown()
    local_scores, expected = ShardedIndex.open(str(tmp_path)).search(queries, 12)
    assert got == expected
    np.testing.assert_allclose(scores, local_scores, rtol=1e-6)
