"""Which FAISS index a sharded index holds, in FAISS's own vocabulary (pure; FAISS imported lazily).

An index is named by a ``faiss.index_factory`` string (``Flat``, ``IVF1024,PQ64``, ``HNSW32``,
``OPQ64,IVF1024,PQ64``, ``IVF1024,SQfp16``, …), always with ``METRIC_INNER_PRODUCT``. The old
shorthands stay accepted (and old manifests, which record only them, still open): ``flat`` →
``Flat``, ``hnsw`` → ``HNSW<hnsw_m>``, ``ivfpq`` → ``IVF<ivf_nlist>,PQ<pq_m>x<pq_nbits>``.
Search-time parameters (``nprobe``, ``efSearch``) are defaults here, overridable per search call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ray_cora.errors import ConfigError

# faiss is imported inside the functions that use it (0.6 s cold here): IndexSpec is imported by
# every job config and by `ray-cora --help`.

IndexType = Literal["flat", "ivfpq", "hnsw"]
SHORTHANDS = ("flat", "ivfpq", "hnsw")
# FAISS's k-means warns below 39 training points per centroid; the shorthand ``ivfpq`` keeps
# the old rule of capping nlist so that a small corpus still gets that many.
MIN_POINTS_PER_LIST = 39


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index the shards get; recorded in the manifest (``index_params``).

    >>> IndexSpec("ivfpq", ivf_nlist=1024, pq_m=64).factory_string()
    'IVF1024,PQ64x8'
    >>> IndexSpec("ivfpq", ivf_nlist=1024).factory_string(num_vectors=10_000)  # nlist capped: N // 39
    'IVF256,PQ64x8'
    >>> IndexSpec(index_factory="OPQ16,IVF64,PQ16").factory_string()
    'OPQ16,IVF64,PQ16'
    """

    index_type: str = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int = 1024
    pq_m: int = 64
    pq_nbits: int = 8
    ivf_nprobe: int = 32
    # Any faiss.index_factory string; when set it names the index and index_type is ignored.
    index_factory: str | None = None
    # Training sample: at most this many vectors (None: the rule of ray_cora.index.trained).
    train_size: int | None = None
    train_seed: int = 0

    def __post_init__(self) -> None:
        if not self.index_factory and self.index_type not in SHORTHANDS:
            raise ConfigError(f"unknown index_type {self.index_type!r}; use flat, ivfpq or hnsw, or give "
                              "any FAISS factory string as index_factory (e.g. 'IVF1024,PQ64')")

    def factory_string(self, num_vectors: int | None = None) -> str:
        """The ``faiss.index_factory`` string; for the ``ivfpq`` shorthand, ``num_vectors`` (the
        training set) caps nlist at ``num_vectors // 39``."""
        if self.index_factory:
            return self.index_factory.strip()
        if self.index_type == "flat":
            return "Flat"
        if self.index_type == "hnsw":
            return f"HNSW{self.hnsw_m}"
        nlist = self.ivf_nlist
        if num_vectors is not None:
            nlist = max(1, min(nlist, num_vectors // MIN_POINTS_PER_LIST))
        return f"IVF{nlist},PQ{self.pq_m}x{self.pq_nbits}"

    def search_defaults(self) -> dict[str, int]:
        """The search-time parameters a search call gets unless it passes its own."""
        return {"nprobe": self.ivf_nprobe, "efSearch": self.hnsw_ef_search}

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexSpec":
        """The spec a manifest's ``index_params`` records (keys an older version did not write get
        their defaults; unknown keys are ignored)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def make_empty_index(factory: str, dim: int, spec: IndexSpec = IndexSpec()):
    """``faiss.index_factory(dim, factory, METRIC_INNER_PRODUCT)`` with the spec's build and
    search defaults set (HNSW efConstruction/efSearch, IVF nprobe), untrained and empty."""
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"FAISS cannot build index_factory {factory!r} for {dim}-d vectors: "
                          f"{str(exc).strip().splitlines()[-1]}; see the FAISS wiki's 'The index "
                          "factory' page for the syntax (e.g. 'IVF1024,PQ64', 'HNSW32')") from exc
    hnsw = _find(index, "hnsw")
    if hnsw is not None:
        hnsw.hnsw.efConstruction = spec.hnsw_ef_construction
    ivf = faiss.try_extract_index_ivf(index)
    for node in (_find(index, "do_polysemous_training"), ivf and faiss.downcast_index(ivf)):
        # The factory turns on polysemous training (a reordering of PQ codes for Hamming-distance
        # filtering, which inner-product search never uses): 350x the training time of IVF8,PQ8x6
        # on 300 vectors here, for nothing.
        if node is not None and hasattr(node, "do_polysemous_training"):
            node.do_polysemous_training = False
    set_default_search_params(index, spec.search_defaults())
    return index


def set_default_search_params(index, defaults: dict[str, int]) -> None:
    """Freeze ``nprobe``/``efSearch`` into the index object itself (what a raw ``faiss.read_index``
    of a shard file then uses); :func:`search_parameters` overrides them per call."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = max(1, min(int(defaults["nprobe"]), ivf.nlist))
    hnsw = _find(index, "hnsw")
    if hnsw is not None:
        hnsw.hnsw.efSearch = int(defaults["efSearch"])


def search_parameters(index, *, nprobe: int | None = None, ef_search: int | None = None):
    """A FAISS ``SearchParameters`` object for one search call on ``index`` (None when nothing is
    asked or the index has no such knob), so concurrent searches with different settings do not
    race on the index's own ``nprobe``/``efSearch`` (as ``ParameterSpace`` would).

    Handles ``IndexPreTransform`` (OPQ, PCA) around an IVF or HNSW index and an HNSW coarse
    quantizer (``IVF4096_HNSW32``). The returned object keeps its nested parameter objects alive.
    """
    import faiss

    if nprobe is None and ef_search is None:
        return None
    keep: list[Any] = []
    node = faiss.downcast_index(index)
    if isinstance(node, faiss.IndexPreTransform):
        inner = search_parameters(node.index, nprobe=nprobe, ef_search=ef_search)
        if inner is None:
            return None
        params = faiss.SearchParametersPreTransform()
        params.index_params = inner
        params.keep_alive = [inner]  # SWIG does not keep the nested object alive by itself
        return params
    if isinstance(node, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        if nprobe is not None:
            params.nprobe = max(1, min(int(nprobe), node.nlist))
        else:
            params.nprobe = node.nprobe
        quantizer = faiss.downcast_index(node.quantizer)
        if ef_search is not None and isinstance(quantizer, faiss.IndexHNSW):
            inner = faiss.SearchParametersHNSW()
            inner.efSearch = int(ef_search)
            params.quantizer_params = inner
            keep.append(inner)
        params.keep_alive = keep
        return params
    gpu_ivf = getattr(faiss, "GpuIndexIVF", None)  # faiss-gpu only; not an IndexIVF subclass
    if gpu_ivf is not None and isinstance(node, gpu_ivf):
        params = faiss.SearchParametersIVF()
        # faiss-gpu selects at most 2048 lists (GPU_MAX_SELECTION_K).
        params.nprobe = max(1, min(int(nprobe) if nprobe is not None else node.nprobe, node.nlist, 2048))
        return params
    if isinstance(node, faiss.IndexHNSW) and ef_search is not None:
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(ef_search)
        return params
    return None


def search_knob(index) -> tuple[str | None, int]:
    """The search-time parameter that trades recall for speed on ``index`` and its largest useful
    value: (``"nprobe"``, nlist) for IVF (also inside OPQ/PCA), (``"efSearch"``, 0: unbounded) for
    HNSW, (None, 0) for exhaustive indexes (Flat, PQ, SQ), which have none."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return "nprobe", int(ivf.nlist)
    if _find(index, "hnsw") is not None:
        return "efSearch", 0
    return None, 0


def exhaustive_search(index, queries, k: int):
    """Top-k of ``index`` over the same stored codes, without the approximation that its search-time
    parameter controls: every IVF list probed, HNSW's stored vectors scanned instead of its graph
    walked. What a tuned search is compared with: IVF-PQ's codes are lossy whatever nprobe is, so
    this is the best any nprobe can reach; for Flat-coded indexes it is exact."""
    import faiss

    node = faiss.downcast_index(index)
    if isinstance(node, faiss.IndexPreTransform):
        transformed = queries
        for i in range(node.chain.size()):
            transformed = faiss.downcast_VectorTransform(node.chain.at(i)).apply(transformed)
        return exhaustive_search(node.index, transformed, k)
    if isinstance(node, faiss.IndexIVF):
        return node.search(queries, k, params=search_parameters(node, nprobe=node.nlist))
    if isinstance(node, faiss.IndexHNSW):
        return faiss.downcast_index(node.storage).search(queries, k)
    return node.search(queries, k)


# faiss-cpu >= 1.10 defaults ``distance_compute_blas_threshold`` to 128000 (it was 20): a flat
# search of fewer queries than that scans the vectors query by query instead of one sgemm. Measured
# here (faiss-cpu 1.15.1, 200 queries over 250k x 512, 2 threads, quiet machine): 28-31 q/s at the
# new default, 395 q/s at 20; 16 queries are unaffected, 1,024 queries 389 -> 427 q/s. The setting
# is process-wide, so raw FAISS in the same process gets the same speed (the benchmarks' ratios hold).
BLAS_QUERY_BATCH = 20


def use_blas_for_query_batches(threshold: int = BLAS_QUERY_BATCH) -> None:
    """Let FAISS's exhaustive search compute a batch of ``threshold`` or more queries with one
    BLAS matrix product (process-wide; idempotent). Called wherever an index is opened for search.

    >>> import faiss
    >>> use_blas_for_query_batches()
    >>> faiss.cvar.distance_compute_blas_threshold
    20
    """
    import faiss

    faiss.cvar.distance_compute_blas_threshold = int(threshold)


def _find(index, attribute: str):
    """The index (``index`` or one inside an ``IndexPreTransform``) that has ``attribute``."""
    import faiss

    node = faiss.downcast_index(index)
    while True:
        if hasattr(node, attribute):
            return node
        if isinstance(node, faiss.IndexPreTransform):
            node = faiss.downcast_index(node.index)
        else:
            return None
