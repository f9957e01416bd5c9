"""Text encoders behind one interface, chosen by a spec string.

- ``muse`` — Google's multilingual Universal Sentence Encoder v3 (offline, numpy).
- ``hf:<name-or-path>[?pooling=cls|mean&max_length=N&normalize=true&query_prefix=...&passage_prefix=...&tokenizer=...]``
  — any Hugging Face encoder, or a folder with ``question_encoder/`` and ``ctx_encoder/``
  (see :mod:`ray_cora.encoders.hf`).
- ``dpr:<path-or-uri>[?config=...&tokenizer=...&max_length=N]`` — a CORA/DPR bi-encoder ``.cpt``
  (see :mod:`ray_cora.encoders.dpr`).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from ray_cora.errors import ConfigError

ENCODER_SPECS = (
    "muse",
    "hf:<name-or-path>[?pooling=cls|mean&max_length=N&normalize=true&query_prefix=...&passage_prefix=...]",
    "dpr:<checkpoint-path-or-uri>[?config=<hf-name-or-path>&tokenizer=...&max_length=N]",
)


class TextEncoder(Protocol):
    """Embeds questions and passages into one vector space searched by inner product."""

    spec: str
    dim: int
    normalized: bool

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:  # (n, dim) float32
        ...

    def encode_passages(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:  # (n, dim)
        ...


def load_encoder(spec: str, *, threads: int = 1, device: Any = None, dtype: Any = None) -> TextEncoder:
    """Build the encoder a spec names.

    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``; default: CUDA when available) and ``dtype``
    (default: bf16 autocast on GPU, float32 on CPU) apply to ``hf:`` and ``dpr:`` encoders.

    >>> load_encoder("muse").dim
    512
    """
    name = spec.strip()
    # Each encoder module is imported when its spec is loaded: hf/dpr pull in torch and
    # transformers (3.4 s + 2.0 s cold here), muse its ONNX runtime, and this package is imported
    # by every job config (check_encoder_spec), so `ray-cora --help` must not pay for them.
    if name == "muse":
        from ray_cora.encoders.muse import MuseEncoder

        return MuseEncoder(threads=threads)
    if name.startswith("hf:"):
        from ray_cora.encoders.hf import HFEncoder

        return HFEncoder(name, threads=threads, device=device, dtype=dtype)
    if name.startswith("dpr:"):
        from ray_cora.encoders.dpr import DPREncoder

        return DPREncoder(name, threads=threads, device=device, dtype=dtype)
    raise _unknown(spec)


def check_encoder_spec(spec: str) -> str:
    """Validate a spec early (at config time) without loading any weights or reading any file.

    >>> check_encoder_spec("hf:/models/labse?pooling=mean")
    'hf:/models/labse?pooling=mean'
    """
    name = spec.strip()
    # Each encoder module is imported when its spec is loaded: hf/dpr pull in torch and
    # transformers (3.4 s + 2.0 s cold here), muse its ONNX runtime, and this package is imported
    # by every job config (check_encoder_spec), so `ray-cora --help` must not pay for them.
    if name == "muse":
        return name
    if name.startswith("hf:"):
        from ray_cora.encoders.hf import parse_hf_spec

        parse_hf_spec(name)
        return name
    if name.startswith("dpr:"):
        from ray_cora.encoders.dpr import parse_dpr_spec

        parse_dpr_spec(name)
        return name
    raise _unknown(spec)


def _unknown(spec: str) -> ConfigError:
    return ConfigError(f"unknown encoder spec {spec!r}; available: {'; '.join(ENCODER_SPECS)} "
                       "('muse' = Google's multilingual Universal Sentence Encoder v3, offline)")
