"""``ray-cora evaluate retrieval``: score a retrieval output with the pure scorers
(:mod:`ray_cora.metrics.retrieval`) and write the report (:mod:`ray_cora.reports.evaluation`);
with ``--compare``, score several outputs of the same questions (dense / BM25 / hybrid) side by side."""

from __future__ import annotations

import posixpath
import re
from typing import Sequence

from ray_cora import storage
from ray_cora.configs.evaluate import EvaluateRetrievalConfig
from ray_cora.data.retrieval import RETRIEVAL_KIND, iter_retrieval
from ray_cora.errors import BadRecordError, ConfigError
from ray_cora.languages import normalize_lang
from ray_cora.metrics.retrieval import retrieval_metrics, score_retrieval_row
from ray_cora.reports.evaluation import write_comparison, write_evaluation

QuestionKey = tuple[str, str]  # (language, qid): a question of a multilingual set is one per language


def score_retrieval_rows(uri: str, *, heatmap_k: int) -> tuple[list[tuple[QuestionKey, dict]], int]:
    """Every record of a retrieval output scored (:func:`score_retrieval_row`), keyed by
    ``(lang, qid)``, and the most passages any record has."""
    scored, max_ctxs = [], 0
    for source, line, record in iter_retrieval(uri):
        try:
            record["lang"] = normalize_lang(record["lang"])
        except ConfigError as exc:
            raise BadRecordError(source, line, f"field 'lang': {exc}",
                                 hint="use a code of ray_cora/languages.py") from None
        max_ctxs = max(max_ctxs, len(record["ctxs"]))
        scored.append(((record["lang"], str(record["qid"])), score_retrieval_row(record, heatmap_k=heatmap_k)))
    return scored, max_ctxs


def aggregate_retrieval(uri: str, scored: Sequence[dict], max_ctxs: int, *, ks: Sequence[int]) -> dict:
    """The metrics of one retrieval output from its scored rows (ks beyond its depth left out)."""
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


def score_retrieval_file(uri: str, *, ks: Sequence[int], heatmap_k: int) -> dict:
    """Stream a retrieval output and aggregate its metrics (memory: a few ints per question)."""
    scored, max_ctxs = score_retrieval_rows(uri, heatmap_k=heatmap_k)
    return aggregate_retrieval(uri, [row for _, row in scored], max_ctxs, ks=ks)


def run_retriever(uri: str) -> str | None:
    """The retriever a ``ray-cora retrieve`` folder records (``dense`` when its manifest names none:
    dense runs, and those before BM25 existed, leave it out); None for a plain JSONL output."""
    loc = storage.resolve(uri)
    if loc.is_file() or not loc.join(storage.MANIFEST_NAME).is_file():
        return None
    retriever = storage.Artifact(loc, kind=RETRIEVAL_KIND).manifest.get("retriever") or "dense"
    return str(retriever)


def folder_label(uri: str) -> str:
    """A run's name from its folder or file name, made fit for a table column.

    >>> folder_label("s3://bucket/runs/bm25-top100/"), folder_label("out/dev run.jsonl")
    ('bm25-top100', 'dev_run')
    """
    name = posixpath.basename(uri.rstrip("/")) or uri
    name = re.sub(r"\.jsonl(\.gz|\.zst)?$", "", name)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name) or "run"


def run_labels(runs: Sequence[tuple[str | None, str]]) -> list[tuple[str, str | None]]:
    """``(label, retriever)`` per run: the label given, else the retriever its manifest records, else
    its folder name; runs whose default labels collide are named by their folders instead."""
    retrievers = [run_retriever(uri) for _, uri in runs]
    defaults = [given or retriever or folder_label(uri) for (given, uri), retriever in zip(runs, retrievers)]
    labels = [folder_label(uri) if given is None and defaults.count(label) > 1 else label
              for (given, uri), label in zip(runs, defaults)]
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            uris = [uri for (_, uri), other in zip(runs, labels) if other == label]
            raise ConfigError(f"--retrieval / --compare: {' and '.join(uris)} would both be labelled {label!r}: "
                              "name them, as --compare bm25=URI (and --label for --retrieval)")
    return list(zip(labels, retrievers))


def _question_mismatch(keys: dict[str, set[QuestionKey]], uris: dict[str, str]) -> str | None:
    """One line saying how the runs' question sets differ, or None when they are the same."""
    first, *others = keys
    for other in others:
        only_first, only_other = keys[first] - keys[other], keys[other] - keys[first]
        if only_first or only_other:
            lang, qid = min(only_first or only_other)
            where = first if only_first else other
            return (f"--compare: {first} ({uris[first]}) has {len(keys[first])} questions and {other} "
                    f"({uris[other]}) {len(keys[other])}, {len(only_first) + len(only_other)} of them in only one "
                    f"(e.g. {lang} qid {qid}, only in {where}): retrieve the same --questions/--langs with "
                    "every retriever, or pass --common-questions true to score the questions all runs share")
    return None


def compare_retrieval_runs(runs: Sequence[tuple[str | None, str]], *, ks: Sequence[int], heatmap_k: int,
                           common_questions: bool = False) -> dict:
    """Score several retrieval outputs of the same questions, each exactly as
    :func:`score_retrieval_file` scores it alone; a run's metrics sit under its label in ``runs``.

    Runs whose question sets (``(lang, qid)``) differ are refused, unless ``common_questions``:
    then each is scored on the questions all share, and ``questions.left_out`` counts the rest per run.
    """
    labelled = run_labels(runs)
    scored: dict[str, list[tuple[QuestionKey, dict]]] = {}
    depth: dict[str, int] = {}
    uris: dict[str, str] = {}
    retrievers: dict[str, str | None] = {}
    for (label, retriever), (_, uri) in zip(labelled, runs):
        scored[label], depth[label] = score_retrieval_rows(uri, heatmap_k=heatmap_k)
        uris[label], retrievers[label] = uri, retriever
    keys = {label: {key for key, _ in rows} for label, rows in scored.items()}
    shared = set.intersection(*keys.values())
    left_out = {label: sum(key not in shared for key, _ in rows) for label, rows in scored.items()}
    if any(left_out.values()):
        mismatch = _question_mismatch(keys, uris)
        if not common_questions:
            raise ConfigError(mismatch or "--compare: the runs' question sets differ")
        if not shared:
            raise ConfigError(f"--compare: the runs share no question ({mismatch}); compare outputs of one "
                              "question set")
    results = {}
    for label, rows in scored.items():
        kept = [row for key, row in rows if key in shared]
        results[label] = {**aggregate_retrieval(uris[label], kept, depth[label], ks=ks),
                          **({"retriever": retrievers[label]} if retrievers[label] else {})}
    counts = {sum(row["count"] for row in run["per_language"].values()) for run in results.values()}
    return {"mode": "retrieval_comparison", "ks": sorted({k for run in results.values() for k in run["ks"]}),
            "labels": list(results), "questions": {"scored": max(counts), "left_out": left_out},
            "runs": results}


def run_evaluate_retrieval(config: EvaluateRetrievalConfig) -> dict:
    if config.compare:
        metrics = compare_retrieval_runs(config.runs, ks=config.ks, heatmap_k=config.heatmap_k,
                                         common_questions=config.common_questions)
        report = write_comparison(metrics, config.out, title=config.title)
        print(report)
        print(f"wrote {storage.resolve(config.out).uri}/metrics.json, report.md, comparison.png")
        return metrics
    metrics = score_retrieval_file(config.retrieval, ks=config.ks, heatmap_k=config.heatmap_k)
    report = write_evaluation(metrics, config.out, groups=config.groups, title=config.title,
                              heatmap_k=config.heatmap_k)
    print(report)
    print(f"wrote {storage.resolve(config.out).uri}/metrics.json, report.md, per_language.png, "
          "retrieved_languages.png")
    return metrics
