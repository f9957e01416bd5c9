"""A sharded FAISS index on any storage URI, and exact top-k search across its shards (pure, no Ray).

Layout under the index URI::

    manifest.json                     written last: the commit point
    shards/shard-00000.faiss          a FAISS index over the shard's vectors
    shards/shard-00000.ids.parquet    row -> pid (and lang)

``manifest.json`` records ``format_version``, ``encoder`` {spec, dim, normalized}, ``metric``,
``index_type``, ``num_vectors``, ``per_language`` (vectors per passage language, when the shards
record languages) and ``shards``: [{index, ids, count, sha256: {index, ids}, lang_counts}] with paths
relative to the manifest. A passage's language lives with its pid in the ids file, so a corpus
without a language column (CORA's ``all_w100.tsv``) gets it back from the index.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_cora import storage
from ray_cora.errors import ConfigError, StorageError

# faiss is imported inside the functions that use it (0.6 s cold here): IndexSpec and the manifest
# helpers are imported by every job config and by `ray-cora --help`.

INDEX_KIND = "sharded-index"
IndexType = Literal["flat", "ivfpq", "hnsw"]


def plan_shards(num_vectors: int, shard_size: int) -> list[tuple[int, int, int]]:
    """``(shard_number, start, end)`` covering ``range(num_vectors)`` exactly, in order.

    Unlike ``int(len / num_shards)`` slicing, the last shard takes the remainder, so no trailing
    vector is ever dropped.

    >>> plan_shards(5, 2)
    [(0, 0, 2), (1, 2, 4), (2, 4, 5)]
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if num_vectors < 0:
        raise ValueError(f"num_vectors must be >= 0, got {num_vectors}")
    return [(n, start, min(start + shard_size, num_vectors))
            for n, start in enumerate(range(0, num_vectors, shard_size))]


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index each shard gets; parameters are recorded in the manifest."""

    index_type: IndexType = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int = 1024
    pq_m: int = 64
    pq_nbits: int = 8
    ivf_nprobe: int = 32

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def build_faiss_index(vectors: np.ndarray, spec: IndexSpec = IndexSpec()):
    """An inner-product FAISS index over ``vectors`` (n, dim) float32."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if spec.index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.hnsw_ef_construction
        index.hnsw.efSearch = spec.hnsw_ef_search
    elif spec.index_type == "ivfpq":
        if dim % spec.pq_m:
            raise ConfigError(f"ivfpq: pq_m={spec.pq_m} must divide the vector dimension {dim}")
        nlist = max(1, min(spec.ivf_nlist, n // 39))  # FAISS wants ~39 training points per list
        if n < 2 ** spec.pq_nbits:
            raise ConfigError(f"ivfpq needs at least {2 ** spec.pq_nbits} vectors per shard to train "
                              f"(pq_nbits={spec.pq_nbits}), this shard has {n}: raise the shard size "
                              "or use index_type flat/hnsw")
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, spec.pq_m, spec.pq_nbits,
                                 faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(spec.ivf_nprobe, nlist)
    else:
        raise ConfigError(f"unknown index_type {spec.index_type!r}; use flat, ivfpq or hnsw")
    index.add(vectors)
    return index


def shard_paths(number: int) -> tuple[str, str]:
    return f"shards/shard-{number:05d}.faiss", f"shards/shard-{number:05d}.ids.parquet"


def write_shard(root: str | storage.Location, number: int, pids: Sequence[str], vectors: np.ndarray,
                spec: IndexSpec = IndexSpec(), langs: Sequence[str] | None = None) -> dict[str, Any]:
    """Build and write one shard; returns its manifest entry (paths, count, sha256)."""
    import faiss

    if len(pids) != len(vectors):
        raise ValueError(f"shard {number}: {len(pids)} pids but {len(vectors)} vectors")
    root = root if isinstance(root, storage.Location) else storage.resolve(root)
    index_path, ids_path = shard_paths(number)
    index_bytes = faiss.serialize_index(build_faiss_index(vectors, spec)).tobytes()
    columns = {"pid": pa.array([str(p) for p in pids], pa.string())}
    if langs is not None:
        columns["lang"] = pa.array([str(l) for l in langs], pa.string())
    ids_buffer = io.BytesIO()
    pq.write_table(pa.table(columns), ids_buffer)
    writer = storage.ArtifactWriter(root, kind=INDEX_KIND)
    writer.write_bytes(index_path, index_bytes)
    writer.write_bytes(ids_path, ids_buffer.getvalue())
    entry = {"index": index_path, "ids": ids_path, "count": len(pids),
             "sha256": {"index": writer.files[index_path]["sha256"],
                        "ids": writer.files[ids_path]["sha256"]},
             "size": {"index": writer.files[index_path]["size"], "ids": writer.files[ids_path]["size"]}}
    if langs is not None:
        entry["lang_counts"] = dict(sorted(Counter(str(l) for l in langs).items()))
    return entry


def commit_index(root: str | storage.Location, shards: Sequence[dict[str, Any]], *, encoder: dict[str, Any],
                 spec: IndexSpec = IndexSpec(), config: dict | None = None,
                 extra: dict | None = None) -> dict[str, Any]:
    """Write ``manifest.json`` over already-written shards (sorted by shard path): the commit."""
    writer = storage.ArtifactWriter(root, kind=INDEX_KIND, config=config)
    ordered = sorted(shards, key=lambda s: s["index"])
    for shard in ordered:
        for role in ("index", "ids"):
            writer.add_existing(shard[role], size=shard["size"][role], sha256=shard["sha256"][role])
    per_language = language_counts(ordered)
    return writer.commit({
        "encoder": encoder, "metric": "inner_product", "index_type": spec.index_type,
        "index_params": spec.to_dict(), "num_vectors": sum(s["count"] for s in ordered),
        **({"per_language": per_language} if per_language else {}), "shards": ordered, **(extra or {})})


def iter_index_langs(uri: str) -> Iterator[pa.Table]:
    """The ``pid, lang`` the committed index at ``uri`` recorded, one Arrow table per shard (shards
    written without languages are skipped), each checked against its sha256: what a passage store
    fills ``und`` passages from (``known_langs`` of
    :func:`ray_cora.data.passage_store.build_passage_store`)."""
    artifact = storage.Artifact(uri, kind=INDEX_KIND)
    for entry in artifact.manifest["shards"]:
        table = pq.read_table(io.BytesIO(artifact.read_bytes(entry["ids"])))
        if "lang" in table.column_names:
            yield table.select(["pid", "lang"])


def language_counts(shards: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Vectors per language over shard entries that carry ``lang_counts`` (as :func:`write_shard` makes).

    >>> language_counts([{"lang_counts": {"en": 2}}, {"lang_counts": {"en": 1, "und": 4}}, {}])
    {'en': 3, 'und': 4}
    """
    total: dict[str, int] = {}
    for shard in shards:
        for lang, count in (shard.get("lang_counts") or {}).items():
            total[lang] = total.get(lang, 0) + count
    return dict(sorted(total.items()))


@dataclass
class _Shard:
    index: Any
    pids: np.ndarray
    langs: np.ndarray | None


@dataclass
class ShardedIndex:
    """A committed sharded index, opened from its manifest; exact top-k merge across shards.

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> vecs = np.eye(4, dtype="float32")
    >>> shards = [write_shard(root, n, [f"p{i}" for i in range(s, e)], vecs[s:e])
    ...           for n, s, e in plan_shards(4, 3)]
    >>> _ = commit_index(root, shards, encoder={"spec": "test", "dim": 4, "normalized": True})
    >>> ShardedIndex.open(root).search(vecs[[3]], k=2)[1][0][0]
    'p3'
    """

    manifest: dict[str, Any]
    shards: list[_Shard] = field(repr=False)
    threads: int = 0

    @classmethod
    def open(cls, uri: str, *, verify: bool = True, mmap: bool = False, cache_dir: str | None = None,
             use_gpu: bool = False, threads: int = 0, shards: Sequence[int] | None = None) -> "ShardedIndex":
        """Open the index's shards (all, or the positions in ``shards``); ``verify`` checks sha256s,
        ``mmap`` memory-maps the FAISS files (remote shards are first copied to ``cache_dir``), so an
        index larger than RAM is searchable."""
        import faiss

        artifact = storage.Artifact(uri, kind=INDEX_KIND)
        entries = artifact.manifest["shards"]
        if shards is not None:
            entries = [entries[i] for i in shards]
        loaded = []
        for entry in entries:
            index_loc = artifact.location(entry["index"])
            if verify:
                if not (mmap and index_loc.is_s3):  # the local copy is checked as it is made
                    artifact.verify(entry["index"])
                artifact.verify(entry["ids"])
            if mmap:
                local = artifact.local_path(entry["index"], cache_dir=cache_dir or os.path.join(
                    tempfile.gettempdir(), "ray_cora_index_cache"))
                index = faiss.read_index(local, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            else:
                data = storage.read_bytes(index_loc, decompress=False)
                index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
            table = pq.read_table(io.BytesIO(artifact.read_bytes(entry["ids"], verify=False)))
            if table.num_rows != entry["count"] or index.ntotal != entry["count"]:
                raise StorageError(f"{index_loc.uri}: shard holds {index.ntotal} vectors and "
                                   f"{table.num_rows} ids, manifest says {entry['count']}")
            langs = table.column("lang").to_numpy(zero_copy_only=False) if "lang" in table.column_names else None
            if use_gpu:
                index = _to_gpu(index)
            loaded.append(_Shard(index, table.column("pid").to_numpy(zero_copy_only=False), langs))
        return cls(artifact.manifest, loaded, threads)

    @property
    def dim(self) -> int:
        return int(self.manifest["encoder"]["dim"])

    def __len__(self) -> int:
        return int(self.manifest["num_vectors"])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k by inner product over all shards: scores (n, k') descending and pids per query."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}), got {queries.shape}")
        per_shard = self._search_shards(queries, k)
        return merge_topk([(scores, rows, shard.pids)
                           for (scores, rows), shard in zip(per_shard, self.shards)], k)

    def search_pid_arrays(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` as (scores (n, k'), pids (n, k') object array, None in empty slots), the
        form partial results take when several searchers each hold some shards."""
        scores, pids = self.search(queries, k)
        array = np.full(scores.shape, None, dtype=object)
        for i, row in enumerate(pids):
            array[i, :len(row)] = row
        return scores, array

    def _search_shards(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        def one(shard: _Shard) -> tuple[np.ndarray, np.ndarray]:
            return shard.index.search(queries, min(k, shard.index.ntotal))

        workers = self.threads or min(len(self.shards), os.cpu_count() or 1)
        if workers <= 1 or len(self.shards) == 1:
            return [one(s) for s in self.shards]
        with ThreadPoolExecutor(workers) as pool:  # FAISS releases the GIL while searching
            return list(pool.map(one, self.shards))


def merge_topk(results: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
               k: int) -> tuple[np.ndarray, list[list[str]]]:
    """Merge per-shard results into the global top-k; stable, so ties keep shard order.

    ``results[i] = (scores (n, k_i), rows (n, k_i), pids of shard i)``; a row of -1 is an empty
    slot (FAISS returns those when a shard has fewer than k hits). Returned scores are (n, k')
    with k' = min(k, total slots); slots without a hit score -inf and have no pid.

    >>> a = (np.array([[0.9, 0.1]]), np.array([[1, 0]]), np.array(["a0", "a1"]))
    >>> b = (np.array([[0.5]]), np.array([[0]]), np.array(["b0"]))
    >>> merge_topk([a, b], k=2)[1]
    [['a1', 'b0']]
    """
    return merge_pid_arrays([(s, pid_array(r, p)) for s, r, p in results], k)


def _to_gpu(index):
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        raise ConfigError("use_gpu: this FAISS build has no GPU support or no GPU is visible; "
                          "install ray-cora[gpu] (faiss-gpu) on a CUDA machine")
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)


def iter_shard_ids(uri: str) -> Iterator[tuple[int, list[str]]]:
    """(shard number, pids) for every committed shard, read from the ids files."""
    artifact = storage.Artifact(uri, kind=INDEX_KIND)
    for number, entry in enumerate(artifact.manifest["shards"]):
        table = pq.read_table(io.BytesIO(artifact.read_bytes(entry["ids"])))
        yield number, table.column("pid").to_pylist()


def pid_array(rows: np.ndarray, pids: np.ndarray) -> np.ndarray:
    """FAISS result rows (n, k) → the pids they name, as an object array with None in empty slots
    (row -1)."""
    array = np.asarray(pids, dtype=object)[np.clip(rows, 0, None)]
    array[rows < 0] = None
    return array


def merge_pid_arrays(partials: Sequence[tuple[np.ndarray, np.ndarray]],
                     k: int) -> tuple[np.ndarray, list[list[str]]]:
    """Merge partial (scores (n, k_i), pids (n, k_i) object array, None in empty slots) results
    exactly, as :meth:`ShardedIndex.search_pid_arrays` returns them (one per shard group or
    searcher actor); stable, so ties keep the partials' order."""
    scores = np.concatenate([np.where(p == None, -np.inf, s) for s, p in partials], axis=1)  # noqa: E711
    pids = np.concatenate([p for _, p in partials], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    top_pids = np.take_along_axis(pids, order, axis=1)
    return top_scores, [[str(p) for p, s in zip(prow, srow) if np.isfinite(s)]
                        for prow, srow in zip(top_pids, top_scores)]
