"""GPU search: what goes where is decided (and refused) before anything is copied; on a GPU, the
search gives the CPU index's top-k. The GPU tests are marked and skip without faiss-gpu and a GPU."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from ray_cora.errors import ConfigError
from ray_cora.index.gpu import describe, placement_line, plan_gpu_placement
from ray_cora.index.sharded import IndexSpec, ShardedIndex, write_index

GiB = 2 ** 30
HAS_GPU = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def test_flat_goes_to_gpu_as_fp16_when_it_fits_and_is_refused_naming_sizes_when_not():
    # CORA's 43.6M x 768 in fp16 is 62 GiB: it fits an H200's 139 GiB, not a 40 GiB card.
    h200 = plan_gpu_placement("flat", 43_600_000, 4 * 768, 768, free_bytes=139 * GiB)
    assert (h200.form, h200.storage, h200.bytes) == ("GpuIndexFlatIP", "fp16", 43_600_000 * 768 * 2)
    fp32 = plan_gpu_placement("flat", 10_000_000, 4 * 768, 768, free_bytes=139 * GiB, fp16=False)
    assert fp32.storage == "fp32" and fp32.bytes == 2 * plan_gpu_placement(
        "flat", 10_000_000, 4 * 768, 768, free_bytes=139 * GiB).bytes
    with pytest.raises(ConfigError, match=r"needs 62\.4 GiB on GPU 0 .* but 40\.0 GiB is free.*search-actors"):
        plan_gpu_placement("flat", 43_600_000, 4 * 768, 768, free_bytes=40 * GiB)


def test_ivf_pq_takes_its_codes_and_hnsw_has_no_gpu_form(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    write_index(str(tmp_path / "pq"), vectors, [str(i) for i in range(2000)], shard_size=1000,
                encoder={"spec": "t", "dim": 32, "normalized": False}, spec=IndexSpec(index_factory="IVF8,PQ8x8"))
    merged = ShardedIndex.open(str(tmp_path / "pq")).merged
    kind, count, per_vector = describe(merged)
    assert (kind, count, per_vector) == ("ivf-pq", 2000, 8 + 8)
    place = plan_gpu_placement(kind, count, per_vector, 32, free_bytes=GiB)
    assert place.form == "GpuIndexIVFPQ" and place.bytes == 2000 * 16 and "fp16 lookup tables" in place.storage
    assert describe(faiss.IndexFlatIP(32))[0] == "flat"
    hnsw = faiss.IndexHNSWFlat(32, 8, faiss.METRIC_INNER_PRODUCT)
    with pytest.raises(ConfigError, match="no GPU form of a IndexHNSWFlat"):
        plan_gpu_placement(*describe(hnsw), 32, free_bytes=GiB)
    assert placement_line({"device": "cpu"}).startswith("cpu")


def test_gpu_without_faiss_gpu_is_one_clear_line(tmp_path):
    if HAS_GPU:
        pytest.skip("this machine has faiss-gpu and a GPU")
    vectors = np.eye(8, dtype=np.float32)
    write_index(str(tmp_path), vectors, [str(i) for i in range(8)], shard_size=4,
                encoder={"spec": "t", "dim": 8, "normalized": True})
    with pytest.raises(ConfigError, match=r"ray-cora\[gpu\]"):
        ShardedIndex.open(str(tmp_path), use_gpu=True)


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,PQ8x8"])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs faiss-gpu and a CUDA GPU")
def test_gpu_search_gives_the_cpu_top_k(tmp_path, factory):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.01
    write_index(str(tmp_path), vectors, [str(i) for i in range(5000)], shard_size=2000,
                encoder={"spec": "t", "dim": 64, "normalized": True},
                spec=IndexSpec(index_factory=factory, ivf_nprobe=4))
    cpu = ShardedIndex.open(str(tmp_path))
    gpu = ShardedIndex.open(str(tmp_path), use_gpu=True)
    assert gpu.placement["device"] == "gpu:0" and gpu.placement["storage"].startswith(("fp16", "codes"))
    for nprobe in (1, 16):  # the per-call nprobe reaches the GPU index
        cpu_rows = cpu.search_rows(queries, 10, nprobe=nprobe)[1]
        gpu_rows = gpu.search_rows(queries, 10, nprobe=nprobe)[1]
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cpu_rows, gpu_rows)])
        assert overlap >= 0.95  # fp16 storage / lookup tables may swap near-ties
    assert not np.array_equal(gpu.search_rows(queries, 10, nprobe=1)[1], gpu.search_rows(queries, 10, nprobe=16)[1]) \
        or factory == "Flat"
