"""One trained FAISS index per corpus: the training sample rule, training, and ``trained.faiss``
(pure, no Ray).

An IVF coarse quantizer, a PQ/SQ codebook or an OPQ rotation is trained once, on a seeded sample
of the corpus' vectors, and stored empty as ``trained.faiss`` beside the shards; every shard adds
its vectors to a copy of it (``faiss.clone_index``). All shards then share one quantizer and one
codebook, so their inverted lists can be searched as one index (:class:`ShardedIndex` merges
them at open time) and every vector is encoded as well as in a single index trained on the same
sample. Indexes that need no training (``Flat``, ``HNSW32``) have no ``trained.faiss``.

The manifest's ``trained`` entry: ``{path, sha256, size, factory, dim, train: {rule, sample_size,
seed, num_vectors}}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_cora import storage
from ray_cora.errors import ChecksumError, ConfigError, StorageError
from ray_cora.index.spec import IndexSpec, make_empty_index

TRAINED_PATH = "trained.faiss"
# FAISS's k-means (ClusteringParameters) subsamples to max_points_per_centroid = 256 points per
# centroid and warns below min_points_per_centroid = 39: train on up to 256 points per centroid of
# the largest k-means in the index (nlist coarse centroids, ksub = 2^nbits PQ centroids), so no
# sampled vector is wasted, and refuse fewer than 30 per coarse centroid.
SAMPLE_RULE = "min(N, train_size or 256 * max(nlist, pq_ksub)); at least 30 * nlist and pq_ksub"
POINTS_PER_CENTROID = 256
MIN_POINTS_PER_CENTROID = 30


def needs_training(factory: str, dim: int | None = None) -> bool:
    """Whether an index of this factory string must be trained before vectors are added. Without
    ``dim`` (the embed driver knows no encoder dimension), a few common ones are tried: whether an
    index needs training does not depend on its dimension, only some strings need it divisible.

    >>> needs_training("Flat"), needs_training("HNSW16"), needs_training("IVF4,PQ2x4", 8)
    (False, False, True)
    """
    error: ConfigError | None = None
    for d in [dim] if dim else [768, 512, 1024, 384, 256, 128]:
        try:
            return not make_empty_index(factory, d).is_trained
        except ConfigError as exc:
            error = exc
    assert error is not None
    raise error


def k_means_sizes(index) -> tuple[int, int]:
    """(nlist, pq ksub) of an index: the centroid counts its training runs k-means for (0 when absent)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    nlist = int(ivf.nlist) if ivf is not None else 0
    node, ksub = faiss.downcast_index(ivf if ivf is not None else index), 0
    while node is not None:
        if hasattr(node, "pq"):
            ksub = int(node.pq.ksub)
            break
        node = faiss.downcast_index(node.index) if isinstance(node, faiss.IndexPreTransform) else None
    return nlist, ksub


def training_sample_size(factory: str, dim: int, num_vectors: int, train_size: int | None = None) -> int:
    """How many of the corpus' ``num_vectors`` to train on (:data:`SAMPLE_RULE`).

    >>> training_sample_size("IVF1024,PQ64", 512, 44_000_000)
    262144
    >>> training_sample_size("IVF1024,PQ64", 512, 100_000)
    100000
    >>> training_sample_size("IVF64,PQ16", 64, 10_000_000, train_size=20_000)
    20000
    """
    nlist, ksub = k_means_sizes(make_empty_index(factory, dim))
    target = train_size or POINTS_PER_CENTROID * max(nlist, ksub, 1)
    size = min(num_vectors, target)
    if size < MIN_POINTS_PER_CENTROID * nlist or size < ksub:
        need = max(MIN_POINTS_PER_CENTROID * nlist, ksub)
        raise ConfigError(f"{factory}: training needs at least {need} vectors ({MIN_POINTS_PER_CENTROID} per "
                          f"inverted list, {ksub or 'no'} PQ centroids), the sample has {size} "
                          f"(corpus {num_vectors}, train_size {train_size}): use fewer lists "
                          f"(IVF{max(1, num_vectors // 39)}), a larger train_size, or Flat/HNSW32")
    return size


def sample_rows(num_vectors: int, size: int, seed: int) -> np.ndarray:
    """``size`` distinct row numbers of ``range(num_vectors)``, sorted, drawn with ``seed``.

    >>> sample_rows(10, 3, seed=0).tolist() == sample_rows(10, 3, seed=0).tolist()
    True
    """
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_vectors, size=min(size, num_vectors), replace=False))


class VectorSampler:
    """A seeded uniform sample of ``size`` vectors from a stream of batches whose total length is
    not known in advance (CORA's embedding pickles): every vector gets a random key and the
    ``size`` smallest keys are kept, which is a uniform sample without replacement. Once ``size``
    are held, a vector whose key is above the largest kept one is dropped on arrival, so the
    stream is not copied.

    >>> sampler = VectorSampler(3, seed=0)
    >>> for start in range(0, 10, 4):
    ...     sampler.add(np.arange(start, min(start + 4, 10), dtype="float32")[:, None])
    >>> sampler.sample().shape, sampler.seen
    ((3, 1), 10)
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self._keys: list[np.ndarray] = []
        self._vectors: list[np.ndarray] = []
        self._buffered = 0
        self._threshold = np.inf

    def add(self, vectors: np.ndarray) -> None:
        keys = self.rng.random(len(vectors))
        self.seen += len(vectors)
        keep = keys < self._threshold
        self._keys.append(keys[keep])
        self._vectors.append(np.array(vectors[keep], dtype=np.float32))
        self._buffered += int(keep.sum())
        if self._buffered >= 2 * self.size:
            self._compact()

    def _compact(self) -> None:
        if not self._keys:
            return
        keys, vectors = np.concatenate(self._keys), np.concatenate(self._vectors)
        if len(keys) > self.size:
            kept = np.argpartition(keys, self.size - 1)[:self.size]
            keys, vectors = keys[kept], vectors[kept]
        if len(keys) == self.size:
            self._threshold = float(keys.max())
        self._keys, self._vectors, self._buffered = [keys], [vectors], len(keys)

    def sample(self) -> np.ndarray:
        """The sample, in key order (so any prefix of it is a uniform sample too)."""
        self._compact()
        if not self._keys:
            return np.zeros((0, 0), np.float32)
        return self._vectors[0][np.argsort(self._keys[0], kind="stable")]


@dataclass
class TrainedIndex:
    """A trained, empty FAISS index and its manifest entry; shards add to copies of it."""

    index: Any
    entry: dict[str, Any]

    def empty_copy(self):
        """A fresh copy to add one shard's vectors to (``faiss.clone_index``)."""
        import faiss

        return faiss.clone_index(self.index)


def train_index(sample: np.ndarray, spec: IndexSpec, *, num_vectors: int, seed: int) -> TrainedIndex:
    """Train the spec's index on ``sample`` (n, dim) float32, drawn from a corpus of ``num_vectors``
    (which caps the ``ivfpq`` shorthand's nlist); the entry is completed by :func:`write_trained_index`."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    dim = sample.shape[1]
    factory = spec.factory_string(num_vectors)
    index = make_empty_index(factory, dim, spec)
    index.train(sample)
    return TrainedIndex(index, {"path": TRAINED_PATH, "factory": factory, "dim": dim, "train": {
        "rule": SAMPLE_RULE, "sample_size": len(sample), "seed": seed, "num_vectors": num_vectors}})


def write_trained_index(root: str | storage.Location, trained: TrainedIndex) -> dict[str, Any]:
    """Write ``trained.faiss``; returns the entry with its sha256 and size (the manifest's ``trained``)."""
    import faiss

    root = root if isinstance(root, storage.Location) else storage.resolve(root)
    data = faiss.serialize_index(trained.index).tobytes()
    writer = storage.ArtifactWriter(root, kind="sharded-index")
    writer.write_bytes(trained.entry["path"], data)
    entry = {**trained.entry, "sha256": writer.files[trained.entry["path"]]["sha256"],
             "size": writer.files[trained.entry["path"]]["size"]}
    trained.entry = entry
    return entry


def read_trained_index(root: str | storage.Location, entry: dict[str, Any]) -> TrainedIndex:
    """Read ``trained.faiss`` back, checking it against the entry's sha256 (a resumed job must add
    to the very index its finished shards were built from, never a retrained one)."""
    import hashlib

    import faiss

    root = root if isinstance(root, storage.Location) else storage.resolve(root)
    problem = storage.member_path_problem(entry.get("path"))
    if problem is not None:  # the entry comes from a marker or manifest: keep it inside the index
        raise StorageError(f"{root.uri}: the trained index path {entry.get('path')!r} {problem}: it must be "
                           f"{TRAINED_PATH} inside the index folder; delete the folder and rebuild")
    location = root.join(entry["path"])
    data = storage.read_bytes(location, decompress=False)
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ChecksumError(f"{location.uri}: does not match the sha256 its entry records; the shards were "
                            "built from another trained index: delete the index folder and rebuild")
    return TrainedIndex(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), dict(entry))
