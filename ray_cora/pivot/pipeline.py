"""RM-MIPS: question → top-k English questions by MIPS → cross-encoder rerank → English answer →
answer in the question's language (or abstention below the calibrated threshold)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ray_cora import storage
from ray_cora.encoders import check_encoder_available, check_same_encoder, encoder_record, load_encoder
from ray_cora.encoders.hf import check_model_source, parse_spec
from ray_cora.errors import ConfigError, StorageError
from ray_cora.languages import normalize_lang
from ray_cora.pivot.database import KIND, PivotDatabase, check_database_manifest
from ray_cora.pivot.rerank import RERANK_OPTIONS, CrossEncoder, rerank_order
from ray_cora.pivot.translate import MT_OPTIONS, AnswerTranslator, HFTranslator, LabelTable

def answer_labels(labels: str, database: PivotDatabase) -> LabelTable:
    """The rows of the label table at ``labels`` that ``database``'s answers can use (by their QID
    or their English label): a full Wikidata table does not fit in memory, this subset does."""
    answer_table = database.rows.table
    return LabelTable.load(labels, answers=answer_table.column("answer").to_pylist(),
                           qids=answer_table.column("answer_qid").to_pylist())


PREDICTION_FIELDS = ("qid", "lang", "prediction", "matched_qid", "score", "abstained", "translation_source")


@dataclass
class PivotPipeline:
    """The single-query (and batch) pivot API that ``pivot run`` and the Serve layer host.

    >>> pipe = PivotPipeline.load("pivot-db/", labels="wikidata-labels/")  # doctest: +SKIP
    >>> pipe.answer("¿Qué altura tiene el monte Fuji?", "es")["prediction"]  # doctest: +SKIP
    '3,776 metres'
    """

    db: PivotDatabase
    encoder: Any
    translator: AnswerTranslator
    reranker: CrossEncoder | None = None
    k: int = 10
    threshold: float | None = None

    @classmethod
    def load(cls, db: str, *, encoder: str | None = None, reranker: str | None = None,
             labels: str | None = None, translator: str | None = None, k: int = 10,
             threshold: float | None = None, threads: int = 1, mmap: bool = False) -> "PivotPipeline":
        """Open the database and build the models; the encoder defaults to the database's own and
        must be the same model (:func:`~ray_cora.encoders.check_same_encoder`).
        ``mmap`` memory-maps the index shards: actors on one machine then share one copy of a
        large (million-question) database in the page cache instead of each loading it."""
        database = PivotDatabase.open(db, mmap=mmap)
        model = load_encoder(encoder or database.encoder_spec, threads=threads)
        # The same model, however its spec is spelled; also catches other bytes at the recorded path.
        check_same_encoder(database.manifest["encoder"], encoder_record(model), what=f"pivot database {db}")
        label_table = answer_labels(labels, database) if labels else None
        return cls(database, model,
                   AnswerTranslator(label_table,
                                    HFTranslator(translator, threads=threads) if translator else None),
                   CrossEncoder(reranker, threads=threads) if reranker else None, k, threshold)

    @staticmethod
    def check_sources(db: str, *, reranker: str | None = None, labels: str | None = None,
                      translator: str | None = None, **_: Any) -> None:
        """Check on the driver, before any actor runs :meth:`load`, that what it loads is there:
        the database (its manifest) and its encoder, the label table, the reranker and translator
        folders; reads no weights. The same keywords as :meth:`load` (others are ignored)."""
        database = storage.Artifact(db, kind=KIND)
        manifest = check_database_manifest(database.manifest, database.root.join(storage.MANIFEST_NAME).uri)
        check_encoder_available(manifest["encoder"]["spec"])
        if labels and not storage.resolve(labels).exists():
            raise StorageError(f"{labels}: no such label table; give the folder `ray-cora wikidata labels` "
                               "wrote, or an entity JSONL (path, file:// or s3://)")
        for what, spec, options in (("cross-encoder (--reranker)", reranker, RERANK_OPTIONS),
                                    ("translation model (--translator)", translator, MT_OPTIONS)):
            if spec:
                check_model_source(parse_spec(spec, "hf", options)[0], what=what)

    def answer(self, question: str, lang: str) -> dict[str, Any]:
        """One question → ``{prediction, matched_qid, matched_question, english_answer, score,
        mips_score, abstained, threshold, translation_source}`` (``threshold``: the abstention
        threshold the score was held to, None without one)."""
        return self.answer_batch([question], [lang])[0]

    def answer_batch(self, questions: Sequence[str], langs: Sequence[str]) -> list[dict[str, Any]]:
        langs = [normalize_lang(l) for l in langs]  # unknown language → ConfigError up front
        if not questions:
            return []
        if any(not q or not q.strip() for q in questions):
            raise ConfigError("a pivot question is empty")
        mips_scores, candidates = self.db.index.search(self.encoder.encode_queries(list(questions)), self.k)
        picks = [self._pick(q, cands, scores) for q, cands, scores in zip(questions, candidates, mips_scores)]
        results: list[dict[str, Any]] = []
        for (qid, score, mips), lang in zip(picks, langs):
            row = self.db.rows[qid]
            abstained = self.threshold is not None and score < self.threshold
            results.append({"prediction": "", "matched_qid": qid, "matched_question": row["question"],
                            "english_answer": row["answer"], "answer_qid": row["answer_qid"],
                            "source_qid": row["source_qid"], "score": score, "mips_score": mips,
                            "abstained": abstained, "threshold": self.threshold, "translation_source": None})
        for lang in sorted(set(langs)):
            todo = [i for i, l in enumerate(langs) if l == lang and not results[i]["abstained"]]
            translated = self.translator.translate_many(
                [(results[i]["english_answer"], results[i]["answer_qid"]) for i in todo], lang)
            for i, (text, source) in zip(todo, translated):
                results[i]["prediction"], results[i]["translation_source"] = text, source
        return results

    def _pick(self, question: str, candidates: list[str], scores: np.ndarray) -> tuple[str, float, float]:
        if not candidates:
            raise ConfigError("the pivot database is empty")
        if self.reranker is None:
            return candidates[0], float(scores[0]), float(scores[0])
        probs = self.reranker.score([question] * len(candidates),
                                    [self.db.rows[c]["question"] for c in candidates])
        best = int(rerank_order(probs)[0])
        return candidates[best], float(probs[best]), float(scores[best])
