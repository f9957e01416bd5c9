"""Text encoders behind one interface, chosen by a spec string (``muse``, later ``hf:...``, ``dpr:...``)."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from ray_cora.errors import ConfigError

ENCODER_SPECS = ("muse",)


class TextEncoder(Protocol):
    """Embeds questions and passages into one vector space searched by inner product."""

    spec: str
    dim: int
    normalized: bool

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:  # (n, dim) float32
        ...

    def encode_passages(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:  # (n, dim)
        ...


def load_encoder(spec: str, *, threads: int = 1) -> TextEncoder:
    """Build the encoder a spec names.

    >>> load_encoder("muse").dim
    512
    """
    name = spec.strip()
    if name == "muse":
        from ray_cora.encoders.muse import MuseEncoder

        return MuseEncoder(threads=threads)
    raise ConfigError(f"unknown encoder spec {spec!r}; available: {', '.join(ENCODER_SPECS)} "
                      "('muse' = Google's multilingual Universal Sentence Encoder v3, offline)")


def check_encoder_spec(spec: str) -> str:
    """Validate a spec early (at config time) without loading any weights."""
    if spec.strip() not in ENCODER_SPECS:
        load_encoder(spec)  # raises the descriptive error
    return spec.strip()
