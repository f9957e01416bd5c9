"""Read the passage embeddings CORA/DPR released, without running the code a pickle may carry.

CORA (``wiki_emb_<lang>_<shard>``) and DPR (``wikipedia_passages_<n>``) ship embeddings as a Python
pickle of a list of ``(id, vector)`` tuples, each vector a 1-d numpy float32 array (768-d for
mDPR). Unpickling can call any importable function, so :class:`RestrictedUnpickler` only lets
through the few numpy globals needed to rebuild arrays, dtypes and scalars, and names any other
global it meets.

What the files hold is checked before it reaches an index, each refusal naming the file and the item
(its 0-based position in the pickled list): vectors must be 1-d floats of one dimension > 0, every
value finite (a NaN vector is never found, an infinite one tops every search), no norm above
:data:`OUTLIER_NORM_RATIO` times the median norm (:class:`NormOutliers`: one 1e30 vector was the top
hit for 55% of queries), and no id given twice once read as text (``1`` and ``"1"`` are one pid).
"""

from __future__ import annotations

import bisect
import io
import os
import pickle
import re
from typing import IO, Any, Callable, Iterator

import numpy as np
import pyarrow.parquet as pq

from ray_cora import storage
from ray_cora.data.passage_store import pid_keys
from ray_cora.errors import RayCoraError, StorageError
from ray_cora.index.sharded import IndexSpec, commit_index, shard_paths, write_shard
from ray_cora.index.trained import (
    TrainedIndex,
    VectorSampler,
    needs_training,
    train_index,
    training_sample_size,
    write_trained_index,
)
from ray_cora.languages import UNKNOWN_LANG, normalize_lang

_ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # protocol-2 pickles store raw bytes as latin-1 text through it
})


def _numpy_global(module: str, name: str) -> Any:
    """The object a whitelisted global names, taken from numpy itself (numpy 1 or 2 layout)."""
    if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
        return getattr(np, name)
    if module == "_codecs":
        return _latin1_encode
    try:  # numpy >= 2 moved numpy.core to numpy._core; both spellings occur in old files
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    return getattr(numeric if module.endswith("numeric") else multiarray, name)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` limited to latin-1, the only use numpy's protocol-2 pickles make of it."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise StorageError(f"refused to unpickle: _codecs.encode with encoding {encoding!r} (only "
                           "latin-1, as numpy writes it, is allowed)")
    return text.encode("latin-1")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays, dtypes, scalars and plain Python values.

    >>> import io
    >>> RestrictedUnpickler(io.BytesIO(pickle.dumps([("a", np.ones(2, np.float32))])), "x").load()[0][1]
    array([1., 1.], dtype=float32)
    """

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _numpy_global(module, name)
        raise StorageError(f"{self.source}: refused to unpickle: the file references the Python global "
                           f"{module}.{name}, but a CORA/DPR embedding file holds only (id, numpy "
                           "array) tuples; loading it could run code. If the file comes from a source you "
                           "trust, convert it to a plain list of (str id, float32 array) tuples first")


class _StreamReader(io.RawIOBase):
    """Adapts a ``read(n)``-only stream (pyarrow) to the buffered file API pickle needs."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def load_cora_pickle(uri: str) -> Any:
    """Unpickle one file (local, ``file://``, ``s3://``; ``.gz`` decompressed) with
    :class:`RestrictedUnpickler`, streaming it rather than reading it into memory first."""
    with storage.open_input(uri) as stream:
        reader = io.BufferedReader(_StreamReader(stream), buffer_size=1 << 20)
        try:
            return RestrictedUnpickler(reader, uri).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
                AttributeError) as exc:
            raise StorageError(f"{uri}: not a readable pickle ({type(exc).__name__}: {exc}); the file may "
                               "be truncated or in another format: CORA/DPR embedding files are pickled "
                               "lists of (id, vector) tuples") from exc


def check_item(item: Any, index: int, dim: int | None, source: str) -> tuple[str, np.ndarray]:
    """Validate one ``(id, vector)`` item; return the id as ``str`` and the vector as float32.

    >>> check_item((7, np.zeros(3, np.float32)), 0, 3, "f")[0]
    '7'
    """
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        what = f"a {type(item).__name__}" + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
        raise StorageError(f"{source}: item {index} is {what}, expected an (id, vector) pair")
    pid, vector = item
    if isinstance(pid, (bool, np.bool_)) or not isinstance(pid, (str, int, np.integer)):
        raise StorageError(f"{source}: item {index} has id {pid!r} of type {type(pid).__name__}, "
                           "expected a str or int")
    if not isinstance(vector, np.ndarray) or vector.ndim != 1 or vector.dtype.kind != "f":
        shape = f"a {vector.dtype} array of shape {vector.shape}" if isinstance(vector, np.ndarray) \
            else f"a {type(vector).__name__}"
        raise StorageError(f"{source}: item {index} (id {pid!r}) has {shape}, expected a 1-d float vector")
    if vector.shape[0] == 0:
        raise StorageError(f"{source}: item {index} (id {pid!r}) has a 0-dimension vector: an index needs "
                           "vectors of at least one dimension; these are not passage embeddings")
    if dim is not None and vector.shape[0] != dim:
        raise StorageError(f"{source}: item {index} (id {pid!r}) has a {vector.shape[0]}-d vector, but "
                           f"earlier items are {dim}-d")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused per batch
        return str(pid), vector.astype(np.float32, copy=False)


def iter_cora_embeddings(uri: str, *, batch_size: int = 10000) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield ``(ids, vectors)`` batches, ``vectors`` float32 ``(n, dim)``, from one CORA/DPR
    embedding file.

    A pickle cannot be read incrementally, so the whole file is unpickled first: one file (a
    shard, a few GB in CORA's release) is held in memory at a time; call this once per file.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "wiki_emb_en_0")
    >>> _ = open(path, "wb").write(pickle.dumps([("en_1", np.arange(4, dtype=np.float32))]))
    >>> [(ids, vecs.shape) for ids, vecs in iter_cora_embeddings(path)]
    [(['en_1'], (1, 4))]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = load_cora_pickle(uri)
    if not isinstance(items, (list, tuple)):
        raise StorageError(f"{uri}: holds a {type(items).__name__}, expected a list of (id, vector) tuples "
                           "(the CORA/DPR embedding format)")
    dim: int | None = None
    for start in range(0, len(items), batch_size):
        ids: list[str] = []
        vectors: list[np.ndarray] = []
        for index in range(start, min(start + batch_size, len(items))):
            pid, vector = check_item(items[index], index, dim, uri)
            dim = vector.shape[0]
            ids.append(pid)
            vectors.append(vector)
        matrix = np.stack(vectors).astype(np.float32, copy=False)
        # Checked after the float32 cast: a float64 1e300 becomes inf there.
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            values = matrix[row][~np.isfinite(matrix[row])]
            raise StorageError(f"{uri}: item {start + row} (id {ids[row]!r}) has a non-finite value "
                               f"({values[0]}) in its vector (as float32): a NaN vector is never found and an "
                               "infinite one tops every search; fix or remove that item")
        yield ids, matrix


OUTLIER_NORM_RATIO = 100.0
NORM_SAMPLE_SIZE = 65_536


class NormOutliers:
    """The outlier rule for imported vectors: a vector whose L2 norm is more than ``ratio`` (100)
    times the median norm of the vectors read so far (its own batch included; the median of a
    seeded uniform sample of at most 65,536 norms) is refused. Inner-product search ranks by
    ``|q| |v| cos``, so one vector of a huge norm outranks the whole corpus; real embeddings'
    norms vary by a few times, not a hundred.

    >>> check = NormOutliers()
    >>> check.outliers(np.ones((5, 4), np.float32)).tolist(), check.outliers(np.full((1, 4), 1e4, np.float32)).tolist()
    ([], [0])
    """

    def __init__(self, ratio: float = OUTLIER_NORM_RATIO, *, sample_size: int = NORM_SAMPLE_SIZE,
                 seed: int = 0) -> None:
        self.ratio = ratio
        self._sampler = VectorSampler(sample_size, seed)
        self.median = 0.0

    def outliers(self, vectors: np.ndarray) -> np.ndarray:
        """Rows of ``vectors`` (n, dim) whose norm breaks the rule; their norms join the sample."""
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
        self._sampler.add(norms[:, None])
        self.median = float(np.median(self._sampler.sample()))
        if self.median <= 0:  # mostly zero vectors: no scale to compare with
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(norms > self.ratio * self.median)


_CORA_EMBEDDING_NAME = re.compile(r"^wiki_emb_(?P<lang>[A-Za-z]+(?:[-_][A-Za-z]+)?)_(?P<shard>\d+)(?:\.\w+)*$")


def lang_of_embedding_file(uri: str) -> str:
    """The passage language a CORA embedding file's name gives, else ``und``.

    CORA writes one set of files per language, ``wiki_emb_<lang>_<shard>`` (its mDPR README
    generates English first, then the other languages; ``dense_retriever.py --remove_lang`` drops a
    language by ``lang in basename``). Other names (DPR's ``wikipedia_passages_<n>``, CORA's
    ``wiki_emb_<shard>``) give no language.

    >>> [lang_of_embedding_file(n) for n in ("s3://b/wiki_emb_ja_3", "wiki_emb_zh_0.pkl", "wiki_emb_7",
    ...                                      "wikipedia_passages_1", "wiki_emb_others_0")]
    ['ja', 'zh_cn', 'und', 'und', 'und']
    """
    found = _CORA_EMBEDDING_NAME.match(os.path.basename(uri.rstrip("/")))
    if found is None:
        return UNKNOWN_LANG
    try:
        return normalize_lang(found.group("lang"))
    except RayCoraError:
        return UNKNOWN_LANG


def sample_cora_embeddings(inputs: list[str], size_for_dim: Callable[[int], int], *,
                           seed: int) -> tuple[np.ndarray, int]:
    """A seeded uniform sample over all the files' vectors (``size_for_dim(dim)`` of them), and how
    many vectors the files hold: a first pass, one file at a time (a file's length is not known
    before it is unpickled, so :class:`~ray_cora.index.trained.VectorSampler` keeps the smallest
    random keys)."""
    sampler: VectorSampler | None = None
    for uri in inputs:
        for _, vectors in iter_cora_embeddings(uri):
            sampler = sampler or VectorSampler(size_for_dim(vectors.shape[1]), seed)
            sampler.add(vectors)
    if sampler is None:
        raise StorageError(f"{', '.join(inputs)}: no embeddings found")
    return sampler.sample(), sampler.seen


def import_cora_embeddings(inputs: list[str], out: str, *, shard_size: int, encoder: dict[str, Any],
                           lang: str | None = None, passages: str | None = None, spec: Any = None) -> dict:
    """Convert CORA/DPR embedding pickles into a committed sharded index at ``out``.

    Files are read one at a time, in the order given; vectors are cut into shards of
    ``shard_size`` across file boundaries (the last shard takes the remainder), so the driver
    holds at most one file plus one shard. Each vector's passage language is ``lang`` when given,
    else what its file's name says (:func:`lang_of_embedding_file`), recorded with its pid so that
    passage stores built from a corpus without languages (CORA's ``all_w100.tsv``) get them.
    ``encoder`` is the manifest's encoder record (its ``dim`` is filled in from the vectors);
    ``passages``, the corpus the vectors embed, is recorded so ``retrieve``/``serve`` find texts.

    An index type that needs training (IVF, PQ, OPQ, SQ) is trained once, before the first shard,
    on a seeded sample of all the files' vectors (so the files are read twice) and stored as
    ``trained.faiss``; every shard adds to a copy of it (:mod:`ray_cora.index.trained`).
    """
    spec = spec or IndexSpec()
    trained: TrainedIndex | None = None
    if needs_training(spec.factory_string()):
        # The sample size depends on the corpus size, unknown before a pass: sample the most the
        # rule can ask for (train_size, or 256 x the largest centroid count), then keep a prefix.
        sample, total = sample_cora_embeddings(
            inputs, lambda d: training_sample_size(spec.factory_string(), d, 1 << 62, spec.train_size),
            seed=spec.train_seed)
        size = training_sample_size(spec.factory_string(total), sample.shape[1], total, spec.train_size)
        trained = train_index(sample[:size], spec, num_vectors=total, seed=spec.train_seed)
        write_trained_index(out, trained)
    shards: list[dict] = []
    pending_ids: list[str] = []
    pending_langs: list[str] = []
    pending: list[np.ndarray] = []
    dim: int | None = None
    file_langs: dict[str, str] = {}

    def flush(count: int) -> None:
        nonlocal pending_ids, pending_langs, pending
        matrix = np.concatenate(pending)
        shards.append(write_shard(out, len(shards), pending_ids[:count], matrix[:count], spec,
                                  langs=pending_langs[:count], trained=trained))
        pending_ids, pending_langs, pending = pending_ids[count:], pending_langs[count:], [matrix[count:]]

    norms = NormOutliers()
    keys: list[np.ndarray] = []  # a 64-bit hash of every pid, in import order (8 bytes a vector)
    file_starts: list[int] = []  # the global row each file starts at
    for uri in inputs:
        file_lang = file_langs[uri] = lang or lang_of_embedding_file(uri)
        file_starts.append(sum(len(k) for k in keys))
        item = 0
        for ids, vectors in iter_cora_embeddings(uri):
            if dim is not None and vectors.shape[1] != dim:
                raise StorageError(f"{uri}: vectors have dimension {vectors.shape[1]}, earlier files "
                                   f"had {dim}: these files do not come from one encoder")
            dim = vectors.shape[1]
            outliers = norms.outliers(vectors)
            if len(outliers):
                row = int(outliers[0])
                raise StorageError(
                    f"{uri}: item {item + row} (id {ids[row]!r}) has norm {float(np.linalg.norm(vectors[row])):.4g}, "
                    f"more than {norms.ratio:g}x the median norm of the vectors read so far ({norms.median:.4g}): "
                    "it would top most searches; fix or remove that item")
            keys.append(pid_keys(ids))
            item += len(ids)
            pending_ids.extend(ids)
            pending_langs.extend([file_lang] * len(ids))
            pending.append(vectors)
            while len(pending_ids) >= shard_size:
                flush(shard_size)
    if pending_ids:
        flush(len(pending_ids))
    if not shards:
        raise StorageError(f"{', '.join(inputs)}: no embeddings found")
    _refuse_duplicate_ids(out, np.concatenate(keys), shards, shard_size, inputs, file_starts)
    if encoder.get("dim") not in (None, dim):
        raise StorageError(f"{', '.join(inputs)}: vectors are {dim}-d but the encoder gives "
                           f"{encoder['dim']}-d vectors: these embeddings were not made by it")
    source = "given (--lang)" if lang else "embedding file names (wiki_emb_<lang>_<n>)"
    extra = {"imported_from": list(inputs), "languages": {"source": source, "per_file": file_langs}}
    if passages:
        extra["passages"] = passages
    return commit_index(out, shards, spec=spec, encoder={**encoder, "dim": dim}, extra=extra,
                        trained=trained.entry if trained else None)


def _refuse_duplicate_ids(out: str, keys: np.ndarray, shards: list[dict], shard_size: int, inputs: list[str],
                          file_starts: list[int]) -> None:
    """Refuse a pid given twice (ids are read as text, so ``1`` and ``"1"`` are one pid): equal
    64-bit keys are candidates, confirmed against the pids the shards' id files hold (global row r
    is row ``r % shard_size`` of shard ``r // shard_size``). Runs before the manifest is written,
    so a refused import leaves no index."""
    order = np.argsort(keys, kind="stable")
    same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if not len(same):
        return
    root = storage.resolve(out)
    cache: dict[int, list[str]] = {}

    def pid_at(row: int) -> str:
        number = row // shard_size
        if number not in cache:
            data = storage.read_bytes(root.join(shards[number]["ids"] or shard_paths(number)[1]), decompress=False)
            cache[number] = pq.read_table(io.BytesIO(data), columns=["pid"]).column("pid").to_pylist()
        return cache[number][row % shard_size]

    def where(row: int) -> str:
        file = bisect.bisect_right(file_starts, row) - 1
        return f"{inputs[file]}: item {row - file_starts[file]}"

    for i in same.tolist():
        first, second = sorted((int(order[i]), int(order[i + 1])))
        pid = pid_at(second)
        if pid_at(first) == pid:
            raise StorageError(f"{where(second)} has id {pid!r}, already the id of {where(first)} (ids are "
                               "compared as text, so 1 and '1' are the same passage): each passage must be "
                               "imported once; remove one of them")
