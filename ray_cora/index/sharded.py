"""A sharded FAISS index on any storage URI, and exact top-k search across its shards (pure, no Ray).

Layout under the index URI::

    manifest.json                     written last: the commit point
    trained.faiss                     the corpus' trained, empty index (IVF/PQ/OPQ/SQ types only)
    shards/shard-00000.faiss          a copy of it with the shard's vectors added
    shards/shard-00000.ids.parquet    row -> pid (and lang)

``manifest.json`` records ``format_version``, ``encoder`` {spec, dim, normalized}, ``metric``,
``index_type`` (the shorthand), ``index_factory`` (the ``faiss.index_factory`` string the shards
hold), ``index_params``, ``search_params`` (the default ``nprobe``/``efSearch`` of a search call),
``trained`` (:mod:`ray_cora.index.trained`: path, sha256, sample rule, size and seed; absent for
Flat/HNSW and for indexes written before it), ``num_vectors``, ``per_language`` (vectors per passage
language, when the shards record languages) and ``shards``: [{index, ids, count, sha256: {index,
ids}, lang_counts}] with paths relative to the manifest. A passage's language lives with its pid in
the ids file, so a corpus without a language column (CORA's ``all_w100.tsv``) gets it back from
the index.
"""

from __future__ import annotations

import io
import struct
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_cora import storage
from ray_cora.errors import ConfigError, StorageError
from ray_cora.index.gpu import move_to_gpu
from ray_cora.index.spec import (
    IndexSpec,
    IndexType,
    exhaustive_search,
    make_empty_index,
    search_knob,
    search_parameters,
    use_blas_for_query_batches,
)
from ray_cora.index.trained import (
    TrainedIndex,
    needs_training,
    sample_rows,
    train_index,
    training_sample_size,
    write_trained_index,
)

# faiss is imported inside the functions that use it (0.6 s cold here): IndexSpec and the manifest
# helpers are imported by every job config and by `ray-cora --help`.

INDEX_KIND = "sharded-index"
__all__ = ["INDEX_KIND", "IndexSpec", "IndexType", "ShardedIndex", "build_faiss_index", "check_shard_entries",
           "commit_index", "faiss_header_ntotal", "merge_pid_arrays", "merge_topk", "plan_shards", "write_index",
           "write_shard"]


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


def build_faiss_index(vectors: np.ndarray, spec: IndexSpec = IndexSpec(), trained: TrainedIndex | None = None):
    """An inner-product FAISS index over ``vectors`` (n, dim) float32: a copy of the corpus'
    ``trained`` index with the vectors added, or, without one, the spec's index built (and, for
    types that need it, trained) on these vectors alone, as shards were before ``trained.faiss``
    (what a caller that trains nothing still gets, e.g. ``pivot build``)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if trained is not None:
        if trained.index.d != dim:
            raise ConfigError(f"the trained index is {trained.index.d}-d, these vectors are {dim}-d: they do "
                              "not come from the encoder the index was trained for")
        index = trained.empty_copy()
    else:
        factory = spec.factory_string(n)
        index = make_empty_index(factory, dim, spec)
        if not index.is_trained:
            index.train(vectors[sample_rows(n, training_sample_size(factory, dim, n, spec.train_size),
                                            spec.train_seed)])
    index.add(vectors)
    return index


def shard_paths(number: int) -> tuple[str, str]:
    return f"shards/shard-{number:05d}.faiss", f"shards/shard-{number:05d}.ids.parquet"


def write_shard(root: str | storage.Location, number: int, pids: Sequence[str], vectors: np.ndarray,
                spec: IndexSpec = IndexSpec(), langs: Sequence[str] | None = None, *,
                trained: TrainedIndex | None = None) -> dict[str, Any]:
    """Build and write one shard (a copy of ``trained`` with these vectors added, when given);
    returns its manifest entry (paths, count, sha256, and the trained index's sha256)."""
    import faiss

    if len(pids) != len(vectors):
        raise ValueError(f"shard {number}: {len(pids)} pids but {len(vectors)} vectors")
    root = root if isinstance(root, storage.Location) else storage.resolve(root)
    index_path, ids_path = shard_paths(number)
    index_bytes = faiss.serialize_index(build_faiss_index(vectors, spec, trained)).tobytes()
    columns = {"pid": pa.array([str(p) for p in pids], pa.string())}
    if langs is not None:
        columns["lang"] = pa.array([str(lang) for lang in langs], pa.string())
    ids_buffer = io.BytesIO()
    pq.write_table(pa.table(columns), ids_buffer)
    writer = storage.ArtifactWriter(root, kind=INDEX_KIND)
    writer.write_bytes(index_path, index_bytes)
    writer.write_bytes(ids_path, ids_buffer.getvalue())
    entry = {"index": index_path, "ids": ids_path, "count": len(pids),
             "sha256": {"index": writer.files[index_path]["sha256"],
                        "ids": writer.files[ids_path]["sha256"]},
             "size": {"index": writer.files[index_path]["size"], "ids": writer.files[ids_path]["size"]}}
    if trained is not None:
        entry["trained_sha256"] = trained.entry["sha256"]
    if langs is not None:
        entry["lang_counts"] = dict(sorted(Counter(str(lang) for lang in langs).items()))
    return entry


def faiss_header_ntotal(header: bytes) -> tuple[int, int]:
    """(dim, ntotal) from the first 16 bytes of a serialized FAISS index: every index type starts
    with a fourcc, ``d`` (int32) and ``ntotal`` (int64), little-endian (FAISS ``read_index_header``;
    IVF, HNSW, PQ, SQ and ``IndexPreTransform`` (OPQ) alike), so a shard's vector count is known
    without reading the shard.

    >>> faiss_header_ntotal(b"IxFI" + (8).to_bytes(4, "little") + (5).to_bytes(8, "little"))
    (8, 5)
    """
    if len(header) < 16:
        raise ValueError(f"a FAISS index header is 16 bytes, got {len(header)}")
    dim, ntotal = struct.unpack("<iq", header[4:16])
    return dim, ntotal


def _read_head(loc: storage.Location, size: int) -> bytes:
    with storage.open_input(loc, decompress=False) as stream:
        return stream.read(size)


def check_shard_entries(root: str | storage.Location, shards: Sequence[dict[str, Any]]) -> None:
    """Cross-check each shard entry's ``count`` against the shard's own files before they are
    committed: the FAISS index's ``ntotal`` (its header) and the ids file's rows (its Parquet footer).
    An entry saying 0 vectors must name no files, and none may lie at its shard number's paths: a
    marker edited to ``count: 0`` would otherwise drop a written shard from the index silently.
    Raises :class:`StorageError` naming the shard and what to do."""
    root = root if isinstance(root, storage.Location) else storage.resolve(root)

    def one(entry: dict[str, Any]) -> None:
        count = entry.get("count")
        where = f"shard {entry['number']}" if "number" in entry else f"shard {entry.get('index')}"
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise StorageError(f"{root.uri}: {where}: count {count!r} is not a vector count; its marker is "
                               "damaged: delete the shard's marker and files and rerun to rebuild it")
        paths = [entry.get("index"), entry.get("ids")]
        if not count:
            named = [p for p in paths if p]
            if not named and "number" in entry:
                named = [p for p in shard_paths(int(entry["number"])) if root.join(p).exists()]
            if named:
                raise StorageError(f"{root.uri}: {where} says 0 vectors but {named[0]} exists: the marker was "
                                   "edited or is stale; delete the shard's marker and files "
                                   f"({', '.join(named)}) and rerun to rebuild it")
            return
        for path in paths:
            problem = storage.member_path_problem(path)
            if problem:
                raise StorageError(f"{root.uri}: {where}: path {path!r} {problem}: rebuild the shard")
        index_loc, ids_loc = root.join(paths[0]), root.join(paths[1])
        try:
            _, ntotal = faiss_header_ntotal(_read_head(index_loc, 16))
            rows = pq.ParquetFile(io.BytesIO(storage.read_bytes(ids_loc, decompress=False))).metadata.num_rows
        except (ValueError, OSError, pa.ArrowException) as exc:
            raise StorageError(f"{index_loc.uri}: unreadable shard ({exc}); delete the shard's marker and "
                               "files and rerun to rebuild it") from exc
        if ntotal != count or rows != count:
            raise StorageError(f"{index_loc.uri}: {where} says {count} vectors, but the FAISS index holds "
                               f"{ntotal} and its ids file {rows} rows: the marker or the shard was edited; "
                               "delete the shard's marker and files and rerun to rebuild it")

    with ThreadPoolExecutor(max(1, min(16, len(shards)))) as pool:  # S3: one small read per file
        list(pool.map(one, shards))


def commit_index(root: str | storage.Location, shards: Sequence[dict[str, Any]], *, encoder: dict[str, Any],
                 spec: IndexSpec = IndexSpec(), config: dict | None = None, extra: dict | None = None,
                 trained: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``manifest.json`` over already-written shards (sorted by shard path): the commit.
    ``trained`` is the entry of the ``trained.faiss`` every shard was copied from. Each shard's
    count is first checked against its files (:func:`check_shard_entries`)."""
    check_shard_entries(root, shards)
    writer = storage.ArtifactWriter(root, kind=INDEX_KIND, config=config)
    ordered = sorted(shards, key=lambda s: s["index"])
    if trained is not None:
        stale = [s["index"] for s in ordered if s.get("trained_sha256") != trained["sha256"]]
        if stale:
            raise StorageError(f"shards {stale[:5]} were not built from {trained['path']} "
                               f"(sha256 {trained['sha256'][:12]}…): delete them and rerun")
        writer.add_existing(trained["path"], size=trained["size"], sha256=trained["sha256"])
    for shard in ordered:
        for role in ("index", "ids"):
            writer.add_existing(shard[role], size=shard["size"][role], sha256=shard["sha256"][role])
    per_language = language_counts(ordered)
    factory = trained["factory"] if trained is not None else spec.factory_string()
    return writer.commit({
        "encoder": encoder, "metric": "inner_product", "index_type": spec.index_type, "index_factory": factory,
        "index_params": spec.to_dict(), "search_params": spec.search_defaults(),
        **({"trained": trained} if trained is not None else {}), "num_vectors": sum(s["count"] for s in ordered),
        **({"per_language": per_language} if per_language else {}), "shards": ordered, **(extra or {})})


def write_index(root: str | storage.Location, vectors: np.ndarray, pids: Sequence[str], *, shard_size: int,
                encoder: dict[str, Any], spec: IndexSpec = IndexSpec(), langs: Sequence[str] | None = None,
                config: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
    """A whole sharded index from vectors in memory (tests, benchmarks, small corpora): the index
    is trained once on a seeded sample when its type needs it (``trained.faiss``), then every
    shard of ``shard_size`` vectors adds to a copy; returns the manifest.

    >>> import tempfile
    >>> vecs = np.random.default_rng(0).standard_normal((600, 8)).astype("float32")
    >>> m = write_index(tempfile.mkdtemp(), vecs, [str(i) for i in range(600)], shard_size=250,
    ...                 encoder={"spec": "test", "dim": 8, "normalized": False},
    ...                 spec=IndexSpec(index_factory="IVF4,Flat"))
    >>> m["index_factory"], m["trained"]["train"]["sample_size"], len(m["shards"])
    ('IVF4,Flat', 600, 3)
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    trained = None
    if needs_training(spec.factory_string(n), dim):
        size = training_sample_size(spec.factory_string(n), dim, n, spec.train_size)
        trained = train_index(vectors[sample_rows(n, size, spec.train_seed)], spec, num_vectors=n,
                              seed=spec.train_seed)
        write_trained_index(root, trained)
    shards = [write_shard(root, number, pids[start:end], vectors[start:end], spec,
                          langs=None if langs is None else langs[start:end], trained=trained)
              for number, start, end in plan_shards(n, shard_size)]
    return commit_index(root, shards, encoder=encoder, spec=spec, config=config, extra=extra,
                        trained=trained.entry if trained else None)


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


def can_merge(index) -> bool:
    """Whether ``index.merge_from`` can append another shard's vectors to it: flat-code indexes
    (Flat, PQ, SQ) and IVF indexes, also inside an ``IndexPreTransform`` (OPQ); not HNSW, whose
    graph FAISS cannot merge."""
    import faiss

    node = faiss.downcast_index(index)
    if isinstance(node, faiss.IndexPreTransform):
        return can_merge(node.index)
    return isinstance(node, (faiss.IndexFlatCodes, faiss.IndexIVF))


def merge_shard_indexes(indexes: Sequence[Any]):
    """One FAISS index holding every shard's vectors, row ids in shard order (``indexes[0]`` grows;
    the others are emptied: ``IndexIVF.merge_from`` moves their inverted lists).

    Only for shards that share one trained index (or need none): ``merge_from`` checks sizes and
    types, not that two IVF shards have the same centroids."""
    import faiss

    merged = indexes[0]
    is_ivf = faiss.try_extract_index_ivf(merged) is not None
    for index in indexes[1:]:
        # IVF lists store ids, shifted by add_id; flat codes are numbered by position (add_id 0).
        merged.merge_from(index, merged.ntotal if is_ivf else 0)
    return merged


@dataclass
class _Shard:
    index: Any  # None once merged into ShardedIndex.merged
    pids: np.ndarray
    langs: np.ndarray | None


@dataclass
class ShardedIndex:
    """A committed sharded index, opened from its manifest; exact top-k merge across shards.

    Shards built from one ``trained.faiss`` (IVF, PQ, SQ, OPQ: one quantizer and codebook for the
    corpus) and flat shards are merged at open time into one FAISS index (``merge_from``), so a
    search probes one set of ``nprobe`` lists and costs what one index over all vectors costs;
    HNSW shards, memory-mapped shards and shards trained each on their own (indexes written before
    ``trained.faiss``) are searched one by one and their top-k merged (``faiss.merge_knn_results``).

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
    merged: Any = field(default=None, repr=False)
    # Where the searched indexes live: {"device": "cpu"}, or a GpuPlacement's dict per index.
    placement: dict[str, Any] = field(default_factory=lambda: {"device": "cpu"})

    def __post_init__(self) -> None:
        counts = [len(s.pids) for s in self.shards]
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._pids = np.concatenate([np.asarray(s.pids, dtype=object) for s in self.shards]) \
            if self.shards else np.zeros(0, dtype=object)
        defaults = self.manifest.get("search_params") or \
            IndexSpec.from_dict(self.manifest.get("index_params") or {}).search_defaults()
        self.search_defaults = {"nprobe": int(defaults["nprobe"]), "efSearch": int(defaults["efSearch"])}

    @classmethod
    def open(cls, uri: str, *, verify: bool = True, mmap: bool = False, cache_dir: str | None = None,
             use_gpu: bool = False, gpu_fp16: bool = True, threads: int = 0,
             shards: Sequence[int] | None = None, merge: bool = True) -> "ShardedIndex":
        """Open the index's shards (all, or the positions in ``shards``); ``verify`` checks sha256s,
        ``mmap`` memory-maps the FAISS files (remote shards are first copied to ``cache_dir``, by default
        a folder private to the user, :func:`ray_cora.storage.default_cache_dir`), so an index larger
        than RAM is searchable; mapped files are verified whatever ``verify`` says; ``merge=False``
        keeps mergeable shards apart (to compare).
        ``threads``: Python threads over shards searched one by one (0: one after another, each
        search on all of FAISS's OpenMP threads, which measured faster: docs/results/search_scale.md).
        ``use_gpu`` copies the (merged) index onto GPU 0 with faiss-gpu (:mod:`ray_cora.index.gpu`;
        ``gpu_fp16``: fp16 Flat storage / IVF-PQ lookup tables); ``placement`` says what was done."""
        import faiss

        use_blas_for_query_batches()
        artifact = storage.Artifact(uri, kind=INDEX_KIND)
        entries = artifact.manifest["shards"]
        total = sum(int(e.get("count", 0)) for e in entries)
        if total != artifact.manifest.get("num_vectors", total):
            raise StorageError(f"{artifact.root.join(storage.MANIFEST_NAME).uri}: num_vectors is "
                               f"{artifact.manifest['num_vectors']} but its shards hold {total}: the manifest "
                               "was edited; rebuild the index")
        if shards is not None:
            entries = [entries[i] for i in shards]
        loaded = []
        for entry in entries:
            index_loc = artifact.location(entry["index"])
            if mmap:
                # Verified always (hashed once per process per file signature, storage.verify_local_file):
                # a mapped file is read lazily, so "verify=False" would serve whatever is on disk.
                local = artifact.local_path(entry["index"], cache_dir=cache_dir or storage.default_cache_dir(
                    "index_cache"))
                index = faiss.read_index(local, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            else:
                # Read once and hash the bytes read: what is searched is exactly what was checked.
                data = artifact.read_bytes(entry["index"], verify=verify)
                index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
            table = pq.read_table(io.BytesIO(artifact.read_bytes(entry["ids"], verify=verify)))
            if table.num_rows != entry["count"] or index.ntotal != entry["count"]:
                raise StorageError(f"{index_loc.uri}: shard holds {index.ntotal} vectors and "
                                   f"{table.num_rows} ids, manifest says {entry['count']}")
            langs = table.column("lang").to_numpy(zero_copy_only=False) if "lang" in table.column_names else None
            loaded.append(_Shard(index, table.column("pid").to_numpy(zero_copy_only=False), langs))
        merged = None
        # Shards of one trained index, or of an index that needs no training, hold comparable codes;
        # shards trained each on their own (older IVF indexes) have different centroids: never merged.
        manifest = artifact.manifest
        factory = manifest.get("index_factory", "Flat" if manifest.get("index_type") == "flat" else None)
        shared = "trained" in manifest or factory == "Flat"
        if merge and not mmap and loaded and shared and can_merge(loaded[0].index):
            merged = merge_shard_indexes([s.index for s in loaded])
            for shard in loaded:
                shard.index = None
        placement: dict[str, Any] = {"device": "cpu"}
        if use_gpu:
            if mmap:
                raise ConfigError("use_gpu and mmap together: a GPU index is copied into GPU memory, "
                                  "there is nothing to memory-map; leave mmap off")
            if merged is not None:
                merged, where = move_to_gpu(merged, fp16=gpu_fp16)
                placement = where.to_dict()
            else:
                moved = [move_to_gpu(shard.index, fp16=gpu_fp16) for shard in loaded]
                for shard, (gpu_index, _) in zip(loaded, moved):
                    shard.index = gpu_index
                places = [where.to_dict() for _, where in moved]
                if places:
                    placement = {**places[0], "bytes": sum(p["bytes"] for p in places),
                                 "vectors": sum(p["vectors"] for p in places), "indexes": len(places)}
        return cls(artifact.manifest, loaded, threads, merged, placement)

    @property
    def dim(self) -> int:
        return int(self.manifest["encoder"]["dim"])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k by inner product over all shards: scores (n, k') descending and pids per query,
        k' = min(k, vectors). ``nprobe`` (IVF) and ``ef_search`` (HNSW) apply to this call only;
        unset, the manifest's ``search_params`` (the build-time values)."""
        scores, rows = self.search_rows(queries, k, nprobe=nprobe, ef_search=ef_search)
        return scores, [self._pids[row[row >= 0]].tolist() for row in rows]

    def search_pid_arrays(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
                          ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` as (scores (n, k'), pids (n, k') object array, None in empty slots), the
        form partial results take when several searchers each hold some shards."""
        scores, rows = self.search_rows(queries, k, nprobe=nprobe, ef_search=ef_search)
        return scores, pid_array(rows, self._pids)

    def search_rows(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
                    ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k as (scores (n, k') float32, global rows (n, k') int64, -1 and -inf in empty slots);
        a row numbers the opened shards' vectors in order (``pids`` of :meth:`pid_of_rows`)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}), got {queries.shape}")
        k = min(k, len(self))
        if k < 1 or not len(queries):
            return np.zeros((len(queries), max(k, 0)), np.float32), np.zeros((len(queries), max(k, 0)), np.int64)
        nprobe = self.search_defaults["nprobe"] if nprobe is None else nprobe
        ef_search = self.search_defaults["efSearch"] if ef_search is None else ef_search
        if self.merged is not None:
            params = search_parameters(self.merged, nprobe=nprobe, ef_search=ef_search)
            scores, rows = self.merged.search(queries, k, params=params)
        else:
            scores, rows = self._search_shards(queries, k, nprobe, ef_search)
        scores[rows < 0] = -np.inf
        return scores, rows

    def exhaustive_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search_rows` with nothing left out: every IVF list probed, HNSW's stored vectors
        scanned (:func:`ray_cora.index.spec.exhaustive_search`): the reference a tuned search's
        recall is measured against (exact for Flat-coded indexes)."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self))
        if self.merged is not None:
            return exhaustive_search(self.merged, queries, k)
        per_shard = []
        for number, shard in enumerate(self.shards):
            scores, rows = exhaustive_search(shard.index, queries, k)
            per_shard.append((scores, np.where(rows >= 0, rows + self._offsets[number], -1)))
        if len(per_shard) == 1:
            return per_shard[0]
        return faiss.merge_knn_results(np.stack([s for s, _ in per_shard]), np.stack([r for _, r in per_shard]),
                                       keep_max=True)

    @property
    def search_knob(self) -> tuple[str | None, int]:
        """(``"nprobe"``, nlist), (``"efSearch"``, 0) or (None, 0): what :meth:`search` can tune."""
        first = self.merged if self.merged is not None else (self.shards[0].index if self.shards else None)
        return search_knob(first) if first is not None else (None, 0)

    def pid_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """The pids global rows name (object array, None at -1)."""
        return pid_array(rows, self._pids)

    def _search_shards(self, queries: np.ndarray, k: int, nprobe: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        def one(number: int) -> tuple[np.ndarray, np.ndarray]:
            index = self.shards[number].index
            scores, rows = index.search(queries, k, params=search_parameters(index, nprobe=nprobe,
                                                                             ef_search=ef_search))
            return scores, np.where(rows >= 0, rows + self._offsets[number], -1)

        # Shards one after another by default: each FAISS search already runs on every core
        # (OpenMP); Python threads on top oversubscribe the CPUs (measured in
        # docs/results/search_scale.md).
        workers = min(self.threads, len(self.shards))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:  # FAISS releases the GIL while searching
                per_shard = list(pool.map(one, range(len(self.shards))))
        else:
            per_shard = [one(n) for n in range(len(self.shards))]
        if len(per_shard) == 1:
            return per_shard[0]
        return faiss.merge_knn_results(np.stack([s for s, _ in per_shard]), np.stack([r for _, r in per_shard]),
                                       keep_max=True)


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


def iter_shard_ids(uri: str) -> Iterator[tuple[int, list[str]]]:
    """(shard number, pids) for every committed shard, read from the ids files."""
    artifact = storage.Artifact(uri, kind=INDEX_KIND)
    for number, entry in enumerate(artifact.manifest["shards"]):
        table = pq.read_table(io.BytesIO(artifact.read_bytes(entry["ids"])))
        yield number, table.column("pid").to_pylist()


def pid_array(rows: np.ndarray, pids: np.ndarray) -> np.ndarray:
    """FAISS result rows (n, k) → the pids they name, as an object array with None in empty slots
    (row -1)."""
    array = np.asarray(pids, dtype=object)[np.clip(rows, 0, None)] if len(pids) else \
        np.full(rows.shape, None, dtype=object)
    array[rows < 0] = None
    return array


def merge_pid_arrays(partials: Sequence[tuple[np.ndarray, np.ndarray]],
                     k: int) -> tuple[np.ndarray, list[list[str]]]:
    """Merge partial (scores (n, k_i), pids (n, k_i) object array, None in empty slots) results
    exactly, as :meth:`ShardedIndex.search_pid_arrays` returns them (one per shard group or
    searcher actor); stable, so ties keep the partials' order."""
    # Sorting works on the float scores alone (empty slots to -inf); the object array of pids is
    # only gathered at the top-k positions, not sorted itself.
    scores = np.concatenate([np.where(p == None, -np.inf, s) for s, p in partials], axis=1)  # noqa: E711
    pids = np.concatenate([p for _, p in partials], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    top_pids = np.take_along_axis(pids, order, axis=1)
    finite = np.isfinite(top_scores)
    return top_scores, [prow[frow].tolist() for prow, frow in zip(top_pids, finite)]
