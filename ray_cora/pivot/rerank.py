"""The RM-MIPS reranker: a cross-encoder scoring (query, English candidate question) pairs.

``hf:<name-or-path>[?max_length=N&batch_size=N]`` names any transformers
``AutoModelForSequenceClassification``: with one output its sigmoid is the paraphrase
probability (what ``ray-cora pivot train-reranker`` trains); with two outputs (PAWS-X/QQP style
classifiers) the softmax probability of label 1.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from ray_cora.encoders.hf import parse_spec
from ray_cora.encoders.tiny import seeded_model, tiny_bert_config, train_wordpiece
from ray_cora.errors import ConfigError
from ray_cora.models.hf import load_hf_model

# torch / transformers are imported inside the functions that use them (3.4 s + 2.0 s cold here):
# the pivot's MIPS-only path (no reranker) must not load them.

RERANK_OPTIONS = ("max_length", "batch_size")


def check_reranker_spec(spec: str) -> str:
    parse_spec(spec, "hf", RERANK_OPTIONS)
    return spec


class CrossEncoder:
    """Scores text pairs with a sequence-classification model.

    >>> ce = CrossEncoder("hf:/models/xlmr-pawsx")  # doctest: +SKIP
    >>> ce.score(["¿Qué altura tiene el Fuji?"], ["How tall is Mount Fuji?"])  # doctest: +SKIP
    array([0.97], dtype=float32)
    """

    def __init__(self, spec: str, *, threads: int = 1, device: Any = None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification


        loaded = load_hf_model(spec, AutoModelForSequenceClassification, options=RERANK_OPTIONS,
                               what="sequence-classification model", threads=threads, device=device)
        self.spec, self.tokenizer, self.model, self.device = spec, loaded.tokenizer, loaded.model, loaded.device
        self.max_length = loaded.option_int("max_length", 128)
        self.batch_size = loaded.option_int("batch_size", 32)
        if self.model.config.num_labels not in (1, 2):
            raise ConfigError(f"{loaded.source}: the cross-encoder has {self.model.config.num_labels} output "
                              "labels; a reranker needs 1 (a paraphrase score) or 2 (label 1 = paraphrase)")
        self._torch = torch

    def score(self, queries: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """Paraphrase probability of each (query, candidate) pair, (n,) float32."""
        torch = self._torch
        out = []
        for start in range(0, len(queries), self.batch_size):
            batch = self.tokenizer(list(queries[start:start + self.batch_size]),
                                   list(candidates[start:start + self.batch_size]), padding=True,
                                   truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                logits = self.model(**batch).logits.float()
            out.append(pair_probability(logits).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)


def pair_probability(logits: Any) -> Any:
    """(batch, 1) logits → sigmoid; (batch, 2) → softmax probability of label 1."""
    if logits.shape[-1] == 1:
        return logits[:, 0].sigmoid()
    return logits.softmax(-1)[:, 1]


def rerank_order(scores: np.ndarray) -> np.ndarray:
    """Candidate positions by falling score; ties keep the MIPS order (stable)."""
    return np.argsort(-np.asarray(scores), kind="stable")


def build_tiny_cross_encoder(dir: str | os.PathLike, texts: Iterable[str], *, hidden: int = 32, layers: int = 2,
                             heads: int = 2, vocab_size: int = 500, seed: int = 0) -> str:
    """Save a tokenizer trained on ``texts`` and a seeded random one-output
    ``BertForSequenceClassification`` into ``dir`` (for tests and offline demos); return ``dir``."""
    from transformers import BertForSequenceClassification


    path = os.fspath(dir)
    os.makedirs(path, exist_ok=True)
    tokenizer = train_wordpiece(texts, vocab_size=vocab_size)
    config = tiny_bert_config(len(tokenizer), hidden=hidden, layers=layers, heads=heads)
    config.num_labels = 1
    model = seeded_model(BertForSequenceClassification, config, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
