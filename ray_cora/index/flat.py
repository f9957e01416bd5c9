"""Exact inner-product search over one in-memory block of vectors (FAISS ``IndexFlatIP``)."""

from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np


class FlatIndex:
    """Vectors with their passage ids; :meth:`search` returns exact top-k by inner product.

    >>> index = FlatIndex(np.eye(3, dtype="float32"), ["a", "b", "c"])
    >>> index.search(np.array([[0, 1, 0]], dtype="float32"), k=2)[1][0]
    ['b', 'a']
    """

    def __init__(self, vectors: np.ndarray, pids: Sequence[str]) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(pids):
            raise ValueError(f"need one row per pid: vectors {vectors.shape}, {len(pids)} pids")
        self.dim = vectors.shape[1]
        self.pids = list(pids)
        self._index = faiss.IndexFlatIP(self.dim)
        self._index.add(vectors)

    def __len__(self) -> int:
        return len(self.pids)

    def to_bytes(self) -> bytes:
        """The FAISS index serialised (``faiss.read_index`` / ``deserialize_index`` reads it)."""
        return faiss.serialize_index(self._index).tobytes()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """(scores (n, k'), pids per query), k' = min(k, size); ties keep FAISS's order."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}), got {queries.shape}")
        k = min(k, len(self.pids))
        scores, rows = self._index.search(queries, k)
        return scores, [[self.pids[r] for r in row if r >= 0] for row in rows]
