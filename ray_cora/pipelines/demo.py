"""The demo job: Ray Data reads and embeds the demo corpus on an actor pool, FAISS indexes it,
every demo question is retrieved for, and a per-language recall table is written and printed.
Then a few questions, one per script, are answered through the English pivot (RM-MIPS over the demo
pivot database, the pure :class:`~ray_cora.pivot.PivotPipeline` that ``ray-cora serve --pivot-db
demo`` hosts), with the answer in the question's language and where its translation came from."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from ray_cora import storage
from ray_cora.configs.demo import DemoConfig
from ray_cora.configs.serve import ServeConfig
from ray_cora.data.qa import iter_qa
from ray_cora.demo import DEMO_PIVOT_DB, DEMO_WIKIDATA_LABELS
from ray_cora.encoders import encoder_record
from ray_cora.index.flat import FlatIndex
from ray_cora.languages import LANGUAGES
from ray_cora.metrics.retrieval import first_answer_rank, first_gold_rank, recall_by_language
from ray_cora.pipelines.encode import EncodePassages, EncodeQueries
from ray_cora.pipelines.passage_source import PassageDatasource
from ray_cora.pivot import AnswerTranslator, PivotDatabase, PivotPipeline, iter_db_records
from ray_cora.pivot.calibrate import answer_is_correct
from ray_cora.pivot.database import write_database
from ray_cora.pivot.pipeline import answer_labels
from ray_cora.reports.tables import language_name, retrieval_markdown
from ray_cora.runtime import check_resources_fit, ray_session, worker_runtime_env

KS = (1, 5, 10)
PIVOT_LANG = "en"  # the pivot database's language: a question in it gets the English answer as is
# translation_source (ray_cora.pivot.translate.SOURCES) -> what the report says
SOURCE_NAMES = {"english": "English (no translation)", "wikidata_qid": "Wikidata label of the answer's QID",
                "wikidata_en_match": "Wikidata label (English label/alias match)", "mt": "machine translation",
                "untranslated": "untranslated (English answer)"}


def _embed(dataset, udf, *, config: DemoConfig, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    embedded = dataset.map_batches(
        udf, fn_constructor_kwargs={"spec": config.encoder}, batch_size=config.batch_size,
        batch_format="numpy", compute=ActorPoolStrategy(size=config.actors),
        num_cpus=config.actor_cpus, num_gpus=config.actor_gpus or None, runtime_env=worker_runtime_env())
    parts: dict[str, list] = {c: [] for c in columns + ("embedding",)}
    for batch in embedded.iter_batches(batch_size=1024, batch_format="numpy"):
        for column in parts:
            parts[column].append(batch[column])
    return {c: np.concatenate(v) if v else np.zeros((0,)) for c, v in parts.items()}


def run_demo(config: DemoConfig) -> dict:
    """Run the demo end to end; returns the metrics written to ``metrics.json``."""

    started = time.perf_counter()
    out = storage.resolve(config.out)
    questions = list(iter_qa(config.questions, dataset="jsonl"))
    pivot_records = list(iter_db_records(str(DEMO_PIVOT_DB), dataset="jsonl"))
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        check_resources_fit({"--actor-cpus/--actor-gpus": (config.actor_cpus, config.actor_gpus)})
        passages = ray.data.read_datasource(PassageDatasource(config.passages),
                                            runtime_env=worker_runtime_env())
        corpus = _embed(passages, EncodePassages, config=config, columns=("pid", "lang"))
        text_by_pid = {row["pid"]: row for row in passages.iter_rows()}
        # The pivot database's English questions ride in the same actor pool as the demo questions
        # (one model load per actor, not a second pool or an encoder in the driver); rows are keyed
        # by position, so a pivot qid may equal a question's.
        to_encode = [(q["lang"], q["question"]) for q in questions] + [(PIVOT_LANG, r["question"])
                                                                        for r in pivot_records]
        queries = ray.data.from_items([{"qid": str(i), "lang": lang, "question": text}
                                       for i, (lang, text) in enumerate(to_encode)])
        encoded = _embed(queries, EncodeQueries, config=config, columns=("qid", "lang"))
    embed_seconds = time.perf_counter() - started

    pids = [str(p) for p in corpus["pid"]]
    index = FlatIndex(corpus["embedding"], pids)
    _write_index(out.join("index"), index, corpus, config)

    by_row = {int(row): vec for row, vec in zip(encoded["qid"], encoded["embedding"])}
    vectors = np.stack([by_row[i] for i in range(len(to_encode))]).astype(np.float32)
    query_vectors = vectors[:len(questions)]
    scores, ranked = index.search(query_vectors, config.k)

    rows, lines = [], []
    for question, score_row, pid_row in zip(questions, scores, ranked):
        ctxs = [{"pid": pid, "lang": text_by_pid[pid]["lang"], "title": text_by_pid[pid]["title"],
                 "score": float(s)} for pid, s in zip(pid_row, score_row)]
        texts = [text_by_pid[pid]["text"] for pid in pid_row]
        gold_langs = {text_by_pid[p]["lang"] for p in question["gold_pids"] if p in text_by_pid}
        rows.append({"lang": question["lang"],
                     "gold_rank": first_gold_rank(pid_row, question["gold_pids"]),
                     "answer_rank": first_answer_rank(texts, question["answers"]),
                     "cross_lingual": bool(gold_langs) and question["lang"] not in gold_langs})
        lines.append(json.dumps({**{k: question[k] for k in ("qid", "lang", "question", "answers",
                                                              "gold_pids")}, "ctxs": ctxs},
                                ensure_ascii=False))
    table = recall_by_language(rows, KS)

    shown = pick_pivot_questions(questions, config.pivot_questions)
    pivot_rows = _answer_through_pivot(config, out, shown, pivot_records, vectors[len(questions):],
                                       {q["question"]: query_vectors[i] for i, q in enumerate(questions)})
    markdown = (_report(config, table, len(pids), len(questions), embed_seconds) + "\n"
                + pivot_markdown(pivot_rows, num_db=len(pivot_records), threshold=config.pivot_threshold))
    metrics = {"encoder": config.encoder, "num_passages": len(pids), "num_questions": len(questions),
               "ks": list(KS), "per_language": table, "pivot": pivot_summary(pivot_rows, config.pivot_threshold),
               "seconds": round(time.perf_counter() - started, 1)}
    storage.write_bytes(out.join("retrieval.jsonl"), ("\n".join(lines) + "\n").encode("utf-8"))
    storage.write_bytes(out.join("pivot.jsonl"), "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                         for r in pivot_rows).encode("utf-8"))
    storage.write_bytes(out.join("metrics.json"), json.dumps(metrics, indent=2).encode("utf-8"))
    storage.write_bytes(out.join("report.md"), markdown.encode("utf-8"))
    print(markdown)
    print(f"wrote {out.uri}/report.md, metrics.json, retrieval.jsonl, pivot.jsonl, index/ and pivot-db/ "
          f"in {metrics['seconds']} s")
    print(page_hint(config.pivot_threshold))
    return metrics


def page_hint(threshold: float | None = None) -> str:
    """How to ask the demo's pivot (and retriever) in a browser: serve's defaults, not a guessed URL.

    >>> page_hint()
    'Ask your own questions in a browser: run `ray-cora serve --pivot-db demo`, then open http://127.0.0.1:8000/'
    """
    fields = ServeConfig.model_fields
    command = "ray-cora serve --pivot-db demo" + (f" --pivot-threshold {threshold:g}" if threshold is not None else "")
    return (f"Ask your own questions in a browser: run `{command}`, then open "
            f"http://{fields['host'].default}:{fields['port'].default}/")


def _script(lang: str) -> str:
    known = LANGUAGES.get(lang)
    return known.script if known else lang


def pick_pivot_questions(questions: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` questions to show through the pivot, by a rule (never by their answers): walking
    ``questions`` in order, skipping English ones (the pivot's own language) and qids already
    taken, first up to ``n - 1`` with an entity answer (``answer_type`` ``entity``: what Wikidata
    labels can translate), then any others; each pass takes a question in a script not shown yet,
    then in a language not shown yet. On the demo set, 7 give its 7 non-English scripts, the last a
    number/date answer (no label: it stays in English).

    >>> qs = [{"qid": "a", "lang": "en", "question": "?", "answer_type": "entity"},
    ...       {"qid": "a", "lang": "fr", "question": "?", "answer_type": "entity"},
    ...       {"qid": "b", "lang": "de", "question": "?", "answer_type": "number"},
    ...       {"qid": "c", "lang": "ja", "question": "?", "answer_type": "entity"}]
    >>> [q["lang"] for q in pick_pivot_questions(qs, 3)]
    ['fr', 'ja', 'de']
    """
    chosen: list[dict[str, Any]] = []
    for entity, limit in ((True, n - 1), (False, n)):
        for key in (lambda q: _script(q["lang"]), lambda q: q["lang"]):
            for q in questions:
                if len(chosen) >= limit:
                    break
                if (q["lang"] == PIVOT_LANG or (q.get("answer_type") == "entity") != entity
                        or q["qid"] in {c["qid"] for c in chosen} or key(q) in {key(c) for c in chosen}):
                    continue
                chosen.append(q)
    return chosen


class _Encoded:
    """The encoder :class:`PivotPipeline` calls, answering from vectors the actor pool already made."""

    def __init__(self, by_text: dict[str, np.ndarray]) -> None:
        self.by_text = by_text

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.by_text[t] for t in texts])


def _answer_through_pivot(config: DemoConfig, out: storage.Location, shown: list[dict[str, Any]],
                          records: list[dict[str, Any]], record_vectors: np.ndarray,
                          question_vectors: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Write the demo pivot database (the layout ``pivot build`` writes, from the pool's vectors)
    under ``out/pivot-db``, then answer ``shown`` with the pipeline Serve's PivotReranker runs:
    no reranker and no MT model offline, the demo Wikidata labels, ``config.pivot_threshold``."""
    db_uri = out.join("pivot-db").uri
    write_database(db_uri, records, iter([([r["qid"] for r in records], record_vectors)]),
                   encoder=encoder_record(config.encoder, dim=int(record_vectors.shape[1])), config=config.to_dict())
    db = PivotDatabase.open(db_uri)
    labels = answer_labels(str(DEMO_WIKIDATA_LABELS), db)  # as PivotPipeline.load keeps them
    pipeline = PivotPipeline(db, _Encoded(question_vectors), AnswerTranslator(labels), threshold=config.pivot_threshold)
    results = pipeline.answer_batch([q["question"] for q in shown], [q["lang"] for q in shown])
    return [pivot_row(q, r, config.pivot_threshold) for q, r in zip(shown, results)]


def pivot_row(question: dict[str, Any], result: dict[str, Any], threshold: float | None) -> dict[str, Any]:
    """One ``pivot.jsonl`` line: the question, the pipeline's result, and whether the answer is
    one of the question's gold answers (the XOR-TyDi scorer's exact match; None when it abstained)."""
    abstained = bool(result["abstained"])
    answer = None if abstained else result["prediction"]
    return {"qid": question["qid"], "lang": question["lang"], "script": _script(question["lang"]),
            "question": question["question"], "matched_qid": result["matched_qid"],
            "matched_question": result["matched_question"], "score": round(float(result["score"]), 4),
            "english_answer": result["english_answer"], "answer_qid": result["answer_qid"], "answer": answer,
            "translation_source": result["translation_source"], "abstained": abstained, "threshold": threshold,
            "correct": None if abstained else answer_is_correct(answer, question["answers"], question["lang"]),
            "answers": question["answers"]}


def pivot_summary(rows: Sequence[dict[str, Any]], threshold: float | None) -> dict[str, Any]:
    """``metrics.json``'s ``pivot``: how many were shown, answered by each translation source,
    abstained, and matched a gold answer."""
    return {"questions": len(rows), "threshold": threshold,
            "by_source": dict(Counter(r["translation_source"] for r in rows if not r["abstained"])),
            "abstained": sum(r["abstained"] for r in rows), "correct": sum(bool(r["correct"]) for r in rows),
            "scripts": sorted({r["script"] for r in rows})}


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def pivot_markdown(rows: Sequence[dict[str, Any]], *, num_db: int, threshold: float | None) -> str:
    """The report's second table: per question, the matched English question and its score, the
    answer in the question's language and where it came from (or the abstention)."""
    rule = f"answers below score {threshold:g} abstain" if threshold is not None else \
        "no abstention threshold, as `ray-cora serve --pivot-db demo` without `--pivot-threshold`"
    lines = [
        "## The English pivot: answers in the question's language\n",
        f"{len(rows)} questions, one per script first (entity answers first, then one of another type; "
        f"English skipped), each matched by inner product to the nearest of the {num_db} English questions "
        f"of `{DEMO_PIVOT_DB.name}` (RM-MIPS, no reranker; {rule}). The English answer is translated with "
        f"`{DEMO_WIKIDATA_LABELS.name}`: the label of the answer's Wikidata QID, else of an entity whose "
        "English label or alias is the answer; numbers and dates have no label and stay in English (no MT "
        "model offline). gold: the answer is one of the question's gold answers (exact match).\n",
        "| language | script | question | matched English question | score | answer | source | gold |",
        "|---|---|---|---|---:|---|---|---|",
    ]
    for r in rows:
        if r["abstained"]:
            answer, source, gold = "—", f"abstained (score {r['score']:.3f} < threshold {r['threshold']:g})", "—"
        else:
            answer, source = r["answer"], SOURCE_NAMES.get(r["translation_source"], r["translation_source"])
            if answer != r["english_answer"]:
                answer = f"{answer} (en: {r['english_answer']})"
            gold = "yes" if r["correct"] else "no"
        cells = [f"{r['lang']} ({language_name(r['lang'])})", r["script"], r["question"], r["matched_question"],
                 f"{r['score']:.3f}", answer, source, gold]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _write_index(root: storage.Location, index: FlatIndex, corpus: dict, config: DemoConfig) -> None:
    writer = storage.ArtifactWriter(root, kind="flat-index", config=config.to_dict())
    writer.write_bytes("index.faiss", index.to_bytes())
    ids = io.BytesIO()
    pq.write_table(pa.table({"pid": index.pids, "lang": [str(l) for l in corpus["lang"]]}), ids)
    writer.write_bytes("ids.parquet", ids.getvalue())
    writer.commit({"encoder": {"spec": config.encoder, "dim": index.dim, "normalized": True},
                   "metric": "inner_product", "num_vectors": len(index)})


def _report(config: DemoConfig, table: dict, num_passages: int, num_questions: int,
            embed_seconds: float) -> str:
    return (
        "# ray_cora demo: cross-lingual retrieval\n\n"
        f"{num_passages} passages and {num_questions} questions from `{config.passages}`, encoder "
        f"`{config.encoder}`, exact inner-product search (FAISS flat), top-{config.k}. "
        f"Reading and embedding on Ray Data took {embed_seconds:.1f} s.\n\n"
        "R@k: a gold passage (any language) is among the top k. A@k: an answer string in the "
        "question's language occurs in a top-k passage (cross-lingual questions cannot score here: "
        "their evidence is in another language). Percentages.\n\n"
        + retrieval_markdown(table, KS)
    )
