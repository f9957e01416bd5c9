"""``ray-cora evaluate qa`` (score predictions like the official scorers) and
``ray-cora predictions convert`` (to and from the official prediction formats).

Both are thin: parse the config, read with :mod:`ray_cora.data.qa` / :mod:`ray_cora.data.predictions`,
score with :mod:`ray_cora.metrics.qa`, write with :mod:`ray_cora.storage`. No Ray.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ray_cora import storage
from ray_cora.configs.evaluate_qa import ConvertPredictionsConfig, EvaluateQAConfig
from ray_cora.data.predictions import (
    Predictions,
    read_any,
    write_mkqa_predictions,
    write_predictions,
    write_xor_predictions,
)
from ray_cora.data.qa import DATASETS, iter_qa
from ray_cora.errors import ConfigError
from ray_cora.languages import normalize_lang, parse_langs
from ray_cora.metrics.qa import score_predictions
from ray_cora.reports.evaluation import qa_metric_names, qa_report_markdown
from ray_cora.reports.plots import per_language_bar_chart


def _gold_rows(gold: list[str], dataset: str, *, lang: str | None, langs: tuple[str, ...] | None,
               keep_unanswerable: bool, stats: dict[str, int]) -> Iterator[dict[str, Any]]:
    for uri in gold:
        file_stats: dict[str, int] = {}
        single = dataset in ("xquad", "squad")
        yield from iter_qa(uri, dataset=dataset, lang=lang if single else None,
                           langs=None if single or langs is None else langs,
                           keep_unanswerable=keep_unanswerable, stats=file_stats)
        for key, value in file_stats.items():
            stats[key] = stats.get(key, 0) + value


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ConfigError(f"option 'dataset': unknown QA dataset {dataset!r}; accepted: {', '.join(DATASETS)}")


def run_evaluate_qa(config: EvaluateQAConfig) -> dict[str, Any]:
    """Score ``config.predictions`` against the gold and write the evaluation folder."""
    _check_dataset(config.dataset)
    langs = parse_langs(config.langs) if config.langs else None
    keep = config.keep_unanswerable if config.keep_unanswerable is not None else config.mode == "mkqa"
    read_stats: dict[str, int] = {}
    gold = [row for row in _gold_rows(config.gold, config.dataset, lang=config.lang, langs=langs,
                                      keep_unanswerable=keep, stats=read_stats)
            if langs is None or row["lang"] in langs]
    if not gold:
        raise ConfigError(f"no gold questions to score in {', '.join(config.gold)}"
                          + (f" for languages {', '.join(langs)}" if langs else "")
                          + ": check --gold, --dataset and --langs")
    qid_langs = {row["qid"]: row["lang"] for row in gold} if config.predictions_format == "xor" else None
    predictions = read_any(config.predictions, config.predictions_format,
                           lang=config.lang if config.predictions_format != "ours" else None,
                           qid_langs=qid_langs if config.lang is None else None)
    outside = 0
    if langs is not None:
        kept: Predictions = {k: v for k, v in predictions.items() if k[1] in langs or k[1] == "und"}
        outside, predictions = len(predictions) - len(kept), kept

    per_question: list[dict[str, Any]] = []
    metrics = score_predictions(gold, predictions, mode=config.mode, sacrebleu=config.sacrebleu,
                                per_question=per_question)
    metrics["predictions_outside_langs"] = outside
    metrics["gold"] = {"dataset": config.dataset, "files": list(config.gold),
                       "keep_unanswerable": keep, "read": read_stats}
    metrics["predictions_file"] = config.predictions

    report = qa_report_markdown(metrics, title=config.title)
    writer = storage.ArtifactWriter(config.out, kind="qa-evaluation", config=config.to_dict())
    writer.write_bytes("report.md", report.encode("utf-8"))
    writer.write_bytes("per_language.png", per_language_bar_chart(
        metrics["per_language"], qa_metric_names(config.mode), title=f"{config.title or 'QA'} ({config.mode} scorer)"))
    writer.write_bytes("per_question.jsonl", "".join(
        json.dumps(r, ensure_ascii=False) + "\n" for r in per_question).encode("utf-8"))
    writer.write_bytes("metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False).encode("utf-8"))
    writer.commit({"macro": metrics["macro"]})
    print(report)
    return metrics


def run_convert_predictions(config: ConvertPredictionsConfig) -> dict[str, Any]:
    """Read ``config.input`` in one format and write it in another; returns counts."""
    qid_langs = None
    if config.gold:
        _check_dataset(config.dataset)
        qid_langs = {}
        for row in _gold_rows(config.gold, config.dataset, lang=None, langs=None,
                              keep_unanswerable=True, stats={}):
            qid_langs[row["qid"]] = row["lang"]
    if config.from_format == "xor" and config.lang is None and qid_langs is None:
        raise ConfigError("--from-format xor: XOR predictions carry no language; pass --lang, or "
                          "--gold (with --dataset) to take each id's language from the gold file")
    predictions = read_any(config.input, config.from_format,
                           lang=config.lang if config.from_format != "ours" else None,
                           qid_langs=qid_langs)
    if config.lang is not None and config.from_format == "ours":
        only = normalize_lang(config.lang)  # --lang selects one language of our multilingual file
        predictions = {k: v for k, v in predictions.items() if k[1] == only}
    if config.to_format == "ours":
        write_predictions(config.out, predictions)
        written = [config.out]
    elif config.to_format == "xor":
        write_xor_predictions(config.out, predictions)
        written = [config.out]
    else:
        written = write_mkqa_predictions(config.out, predictions)
    count = len(predictions)
    print(f"converted {count} predictions ({config.from_format} → {config.to_format}): "
          + ", ".join(written))
    return {"count": count, "files": written}

