"""``ray-cora evaluate retrieval``: score a retrieval output with the pure scorers
(:mod:`ray_cora.metrics.retrieval`) and write the report (:mod:`ray_cora.reports.evaluation`)."""

from __future__ import annotations

from typing import Sequence

from ray_cora import storage
from ray_cora.configs.evaluate import EvaluateRetrievalConfig
from ray_cora.data.retrieval import iter_retrieval
from ray_cora.errors import BadRecordError, ConfigError
from ray_cora.languages import normalize_lang
from ray_cora.metrics.retrieval import retrieval_metrics, score_retrieval_row
from ray_cora.reports.evaluation import write_evaluation


def score_retrieval_file(uri: str, *, ks: Sequence[int], heatmap_k: int) -> dict:
    """Stream a retrieval output and aggregate its metrics (memory: a few ints per question)."""
    scored, max_ctxs = [], 0
    for source, line, record in iter_retrieval(uri):
        try:
            record["lang"] = normalize_lang(record["lang"])
        except ConfigError as exc:
            raise BadRecordError(source, line, f"field 'lang': {exc}",
                                 hint="use a code of ray_cora/languages.py") from None
        max_ctxs = max(max_ctxs, len(record["ctxs"]))
        scored.append(score_retrieval_row(record, heatmap_k=heatmap_k))
    if not scored:
        raise ConfigError(f"{uri}: no retrieval records to score")
    if max_ctxs == 0:
        raise ConfigError(f"{uri}: every one of its {len(scored)} records has an empty 'ctxs' list, so there "
                          "is nothing to score: rerun `ray-cora retrieve` (is the index empty?)")
    usable = [k for k in ks if k <= max_ctxs] or [min(ks)]
    metrics = retrieval_metrics(scored, usable)
    dropped = [k for k in ks if k not in usable]
    return {"mode": "retrieval", "source": uri, "passages_per_question": max_ctxs, "ks_left_out": dropped,
            **metrics}


def run_evaluate_retrieval(config: EvaluateRetrievalConfig) -> dict:
    metrics = score_retrieval_file(config.retrieval, ks=config.ks, heatmap_k=config.heatmap_k)
    report = write_evaluation(metrics, config.out, groups=config.groups, title=config.title,
                              heatmap_k=config.heatmap_k)
    print(report)
    print(f"wrote {storage.resolve(config.out).uri}/metrics.json, report.md, per_language.png, "
          "retrieved_languages.png")
    return metrics


