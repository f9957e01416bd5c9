"""Batch encoders for ``Dataset.map_batches`` on an actor pool: the model loads once per actor."""

from __future__ import annotations

import numpy as np

from ray_cora.encoders import load_encoder


class EncodePassages:
    """``{pid, lang, title, text}`` batch → ``{pid, lang, embedding}``."""

    def __init__(self, spec: str, threads: int = 1) -> None:
        self.encoder = load_encoder(spec, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encoder.encode_passages(batch["title"].tolist(), batch["text"].tolist())
        return {"pid": batch["pid"], "lang": batch["lang"], "embedding": vectors}


class EncodeQueries:
    """``{qid, lang, question}`` batch → the same columns plus ``embedding``."""

    def __init__(self, spec: str, threads: int = 1) -> None:
        self.encoder = load_encoder(spec, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encoder.encode_queries(batch["question"].tolist())
        return {"qid": batch["qid"], "lang": batch["lang"], "embedding": vectors}
