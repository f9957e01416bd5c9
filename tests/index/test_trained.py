"""One trained index per corpus: shards share its quantizer, search equals one index over all
vectors, factory strings and search-time parameters round-trip, older manifests still open."""

from __future__ import annotations

import json
import pickle

import faiss
import numpy as np
import pytest

from ray_cora.errors import ChecksumError, ConfigError, StorageError
from ray_cora.index.sharded import IndexSpec, ShardedIndex, commit_index, plan_shards, write_index, write_shard
from ray_cora.index.spec import search_parameters
from ray_cora.index.trained import (
    TRAINED_PATH,
    VectorSampler,
    read_trained_index,
    training_sample_size,
)

ENCODER = {"spec": "test", "dim": 32, "normalized": True}


def _clustered(n, dim=32, clusters=20, seed=0):
    """Unit vectors around a few random centres: what IVF is for (uniform noise has no lists)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [f"p{i}" for i in range(n)]


def _exact(vectors, queries, k):
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def _recall(got, expected_rows, pids):
    return np.mean([len(set(g) & {pids[j] for j in e}) / len(e) for g, e in zip(got, expected_rows)])


def _one_index(trained_index, vectors):
    """The reference: one FAISS index with every vector, added to the same trained index."""
    index = faiss.clone_index(trained_index)
    index.add(vectors)
    return index


def _centroids(index):
    ivf = faiss.extract_index_ivf(index)
    return faiss.rev_swig_ptr(faiss.downcast_index(ivf.quantizer).get_xb(), ivf.nlist * ivf.d).copy()


def test_trained_index_is_written_once_and_every_shard_shares_its_quantizer_and_codebook(tmp_path):
    vectors, pids = _clustered(1300)
    spec = IndexSpec(index_factory="IVF8,PQ8x4", ivf_nprobe=2, train_size=900, train_seed=3)
    manifest = write_index(str(tmp_path), vectors, pids, shard_size=400, encoder=ENCODER, spec=spec)
    entry = manifest["trained"]
    assert entry["path"] == TRAINED_PATH and manifest["files"][TRAINED_PATH]["sha256"] == entry["sha256"]
    assert entry["train"]["sample_size"] == 900 and entry["train"]["seed"] == 3
    assert entry["train"]["num_vectors"] == 1300 and "256" in entry["train"]["rule"]
    trained = read_trained_index(str(tmp_path), entry).index
    assert trained.ntotal == 0 and trained.is_trained
    for shard in manifest["shards"]:
        assert shard["trained_sha256"] == entry["sha256"]
        index = faiss.read_index(str(tmp_path / shard["index"]))
        np.testing.assert_array_equal(_centroids(index), _centroids(trained))
        pq_shard, pq_trained = (faiss.downcast_index(faiss.extract_index_ivf(i)).pq for i in (index, trained))
        np.testing.assert_array_equal(faiss.vector_to_array(pq_shard.centroids),
                                      faiss.vector_to_array(pq_trained.centroids))
    # trained.faiss is checked against its manifest entry: a different file is refused.
    (tmp_path / TRAINED_PATH).write_bytes(faiss.serialize_index(faiss.IndexFlatIP(32)).tobytes())
    with pytest.raises(ChecksumError, match="another trained index"):
        read_trained_index(str(tmp_path), entry)


@pytest.mark.parametrize("factory", ["IVF8,PQ8x4", "IVF8,Flat", "OPQ8,IVF8,PQ8x4", "IVF8,SQfp16"])
def test_sharded_ivf_search_equals_one_index_from_the_same_trained_index(tmp_path, factory):
    vectors, pids = _clustered(1111)
    spec = IndexSpec(index_factory=factory, ivf_nprobe=3)
    manifest = write_index(str(tmp_path), vectors, pids, shard_size=250, encoder=ENCODER, spec=spec)
    reference = _one_index(read_trained_index(str(tmp_path), manifest["trained"]).index, vectors)
    queries = _clustered(40, seed=1)[0]
    want_scores, want_rows = reference.search(queries, 10, params=search_parameters(reference, nprobe=3))

    merged = ShardedIndex.open(str(tmp_path))
    assert merged.merged is not None  # one IndexIVF: one quantizer probe for all shards
    scores, got = merged.search(queries, 10)
    assert got == [[pids[r] for r in row if r >= 0] for row in want_rows]
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)

    # Searched shard by shard instead (as mmap and serve's shard groups do): the same scores and,
    # above each query's k-th score, the same passages (equal PQ codes tie at the k-th place).
    apart = ShardedIndex.open(str(tmp_path), merge=False)
    assert apart.merged is None
    apart_scores, apart_got = apart.search(queries, 10)
    np.testing.assert_allclose(apart_scores, want_scores, rtol=1e-5, atol=1e-6)
    for got_row, want_row, row_scores in zip(apart_got, want_rows, want_scores):
        above = row_scores > row_scores[-1] + 1e-6
        assert {p for p, a in zip(got_row, above) if a} == {pids[r] for r, a in zip(want_row, above) if a}
    mmapped_scores, _ = ShardedIndex.open(str(tmp_path), mmap=True).search(queries, 10)
    np.testing.assert_allclose(mmapped_scores, want_scores, rtol=1e-5, atol=1e-6)


def test_per_call_nprobe_changes_results_and_nprobe_nlist_is_exact(tmp_path):
    vectors, pids = _clustered(2000, clusters=40)
    spec = IndexSpec(index_factory="IVF16,Flat", ivf_nprobe=1)
    write_index(str(tmp_path), vectors, pids, shard_size=600, encoder=ENCODER, spec=spec)
    queries = _clustered(60, clusters=40, seed=5)[0]
    exact = _exact(vectors, queries, 10)
    for merge in (True, False):
        index = ShardedIndex.open(str(tmp_path), merge=merge)
        assert index.search_defaults == {"nprobe": 1, "efSearch": 128}
        default = _recall(index.search(queries, 10)[1], exact, pids)
        assert _recall(index.search(queries, 10, nprobe=1)[1], exact, pids) == default
        full = _recall(index.search(queries, 10, nprobe=16)[1], exact, pids)
        assert full == 1.0 and default < 0.95, (merge, default)
        # The per-call value does not stick: the next call gets the default again.
        assert _recall(index.search(queries, 10)[1], exact, pids) == default


def test_factory_strings_round_trip_through_the_manifest(tmp_path):
    vectors, pids = _clustered(700)
    cases = {"Flat": faiss.IndexFlat, "HNSW8": faiss.IndexHNSWFlat, "IVF4,SQ8": faiss.IndexIVFScalarQuantizer,
             "OPQ8,IVF8,PQ8x4": faiss.IndexPreTransform}
    for factory, kind in cases.items():
        root = tmp_path / factory.replace(",", "_")
        spec = IndexSpec(index_factory=factory, ivf_nprobe=4, hnsw_ef_search=40)
        write_index(str(root), vectors, pids, shard_size=300, encoder=ENCODER, spec=spec)
        manifest = json.loads((root / "manifest.json").read_text())
        assert manifest["index_factory"] == factory
        assert IndexSpec.from_dict(manifest["index_params"]) == spec
        assert manifest["search_params"] == {"nprobe": 4, "efSearch": 40}
        assert ("trained" in manifest) == (factory not in ("Flat", "HNSW8"))
        shard = faiss.read_index(str(root / manifest["shards"][0]["index"]))
        assert isinstance(faiss.downcast_index(shard), kind), factory
        if "PQ" not in factory:  # 4-bit PQ codes are too coarse to find each vector itself
            top1 = ShardedIndex.open(str(root)).search(vectors[:30], 1)[1]
            assert sum(row[0] == pids[i] for i, row in enumerate(top1)) >= 27, factory


def test_shorthands_map_to_factory_strings_and_unknown_names_say_what_to_use():
    assert IndexSpec("flat").factory_string() == "Flat"
    assert IndexSpec("hnsw", hnsw_m=16).factory_string() == "HNSW16"
    assert IndexSpec("ivfpq", ivf_nlist=64, pq_m=16, pq_nbits=8).factory_string() == "IVF64,PQ16x8"
    with pytest.raises(ConfigError, match="index_factory"):
        IndexSpec("ivf_flat")
    with pytest.raises(ConfigError, match="FAISS cannot build index_factory 'IVF8,PQ5'"):
        training_sample_size("IVF8,PQ5", 32, 10_000)
    with pytest.raises(ConfigError, match="at least 240 vectors"):
        training_sample_size("IVF8,Flat", 32, 100)


def test_an_old_flat_manifest_still_opens(tmp_path):
    """Manifests written before index_factory/search_params/trained existed: flat shards, searched
    (and merged) as before."""
    vectors, pids = _clustered(90)
    shards = [write_shard(str(tmp_path), n, pids[s:e], vectors[s:e]) for n, s, e in plan_shards(90, 40)]
    commit_index(str(tmp_path), shards, encoder=ENCODER)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for key in ("index_factory", "search_params"):
        del manifest[key]
    manifest["index_params"] = {k: manifest["index_params"][k] for k in
                                ("index_type", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nlist",
                                 "pq_m", "pq_nbits", "ivf_nprobe")}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    index = ShardedIndex.open(str(tmp_path))
    assert index.merged is not None and index.search_defaults == {"nprobe": 32, "efSearch": 128}
    queries = _clustered(5, seed=9)[0]
    assert index.search(queries, 7)[1] == [[pids[j] for j in row] for row in _exact(vectors, queries, 7)]


def test_vector_sampler_is_uniform_seeded_and_keeps_what_it_needs():
    stream = [np.arange(s, s + 97, dtype=np.float32)[:, None] for s in range(0, 9700, 97)]
    samples = []
    for seed in (0, 0, 1):
        sampler = VectorSampler(500, seed)
        for batch in stream:
            sampler.add(batch)
        samples.append(sampler.sample()[:, 0])
        assert sampler.seen == 9700 and sampler._buffered <= 1000
    assert np.array_equal(samples[0], samples[1]) and not np.array_equal(samples[0], samples[2])
    assert len(set(samples[0].tolist())) == 500
    # Uniform over the stream: each tenth of it holds about a tenth of the sample.
    counts = np.bincount((samples[0] // 970).astype(int), minlength=10)
    assert counts.min() > 25 and counts.max() < 80, counts


def test_import_trains_once_from_a_sample_of_all_files(tmp_path):
    """import-embeddings with an IVF type: one trained.faiss from a sample of every file, shards
    sharing it, search equal to one index over all vectors."""
    from ray_cora.cli import main

    vectors, _ = _clustered(900)
    ids = [f"en_{i}" for i in range(900)]
    for n, (s, e) in enumerate([(0, 500), (500, 900)]):
        (tmp_path / f"wiki_emb_en_{n}").write_bytes(pickle.dumps(list(zip(ids[s:e], vectors[s:e]))))
    out = tmp_path / "index"
    assert main(["import-embeddings", "--inputs", str(tmp_path / "wiki_emb_en_*"), "--out", str(out),
                 "--encoder", "dpr:mDPR_biencoder_best.cpt", "--shard-size", "300", "--index-factory", "IVF4,Flat",
                 "--ivf-nprobe", "2", "--train-size", "400"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trained"]["train"] == {**manifest["trained"]["train"], "sample_size": 400, "num_vectors": 900}
    assert {s["trained_sha256"] for s in manifest["shards"]} == {manifest["trained"]["sha256"]}
    reference = _one_index(read_trained_index(str(out), manifest["trained"]).index, vectors)
    queries = _clustered(20, seed=4)[0]
    _, rows = reference.search(queries, 5, params=search_parameters(reference, nprobe=2))
    assert ShardedIndex.open(str(out)).search(queries, 5)[1] == [[ids[r] for r in row] for row in rows]


@pytest.mark.parametrize("path", ["/etc/hostname", "../trained.faiss"])
def test_trained_index_path_outside_the_index_is_refused(tmp_path, path):
    """The entry comes from trained.json or the manifest: it may not point out of the index folder."""
    root = tmp_path / "index"
    (tmp_path / "trained.faiss").write_bytes(b"x")
    with pytest.raises(StorageError, match=r"the trained index path .* (is an absolute path|leaves the artifact)"):
        read_trained_index(str(root), {"path": path, "sha256": "0" * 64})
