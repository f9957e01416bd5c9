"""The Ray layers of the pivot jobs: database build and batch answering on Ray Data actor pools.

``build_pivot_database``: records → Ray Data → encoder actors → shards written as the driver
streams batches of ``shard_size`` vectors (the driver holds one shard at a time, plus the answer
text). ``run_predictions``: questions → Ray Data → :class:`PivotPredictor` actors, each holding
one :class:`~ray_cora.pivot.pipeline.PivotPipeline` → ``predictions.jsonl`` + ``manifest.json``
(written last; a rerun with the same config finds it and stops).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from ray_cora import storage
from ray_cora.data.qa import iter_qa
from ray_cora.errors import ConfigError, StorageError
from ray_cora.index.sharded import IndexSpec
from ray_cora.pivot.calibrate import answer_is_correct, pick_threshold
from ray_cora.pivot.database import check_unique_qids, iter_db_records, write_database
from ray_cora.pivot.pipeline import PREDICTION_FIELDS

if TYPE_CHECKING:
    from ray_cora.pivot_job import PivotBuildConfig, PivotCalibrateConfig, PivotRunConfig

PREDICTIONS_KIND = "pivot-predictions"


def build_pivot_database(config: "PivotBuildConfig") -> dict[str, Any]:
    import ray
    from ray.data import ActorPoolStrategy

    from ray_cora.pipelines.embed import EncodeQueries
    from ray_cora.runtime import ray_session, worker_runtime_env

    out = storage.resolve(config.out)
    try:
        existing = storage.Artifact(out, kind="pivot-database").manifest
        if existing.get("config") == config.to_dict():
            print(f"pivot build: {out.uri} is already built with this config ({existing['num_questions']} "
                  "questions); nothing to do")
            return existing
    except StorageError:
        pass
    records = list(iter_db_records(config.questions, dataset=config.dataset))
    check_unique_qids(records, config.questions)
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        items = ray.data.from_items([{"qid": r["qid"], "lang": "en", "question": r["question"]} for r in records])
        encoded = items.map_batches(
            EncodeQueries, fn_constructor_kwargs={"spec": config.encoder}, batch_size=config.batch_size,
            batch_format="numpy", compute=ActorPoolStrategy(size=config.concurrency),
            num_cpus=config.actor_cpus, num_gpus=config.actor_gpus or None, runtime_env=worker_runtime_env())

        def batches():
            for batch in encoded.iter_batches(batch_size=config.shard_size, batch_format="numpy"):
                qids = [str(q) for q in batch["qid"]]
                yield qids, np.asarray(batch["embedding"], dtype=np.float32)

        # dim and normalized are read off the vectors as they stream past (before the commit).
        encoder_info: dict[str, Any] = {"spec": config.encoder, "dim": None, "normalized": True}
        manifest = write_database(config.out, records, _with_encoder_dim(batches(), encoder_info),
                                  encoder=encoder_info, spec=IndexSpec(index_type=config.index_type),
                                  config=config.to_dict())
    print(f"pivot build: {manifest['num_questions']} English questions "
          f"({manifest['with_answer_qid']} with an answer QID) → {out.uri}")
    return manifest


def _with_encoder_dim(batches, info: dict[str, Any]):
    for qids, vectors in batches:
        info["dim"] = int(vectors.shape[1])
        norms = np.linalg.norm(vectors, axis=1)
        info["normalized"] = bool(info["normalized"] and np.allclose(norms, 1, atol=1e-3))
        yield qids, vectors


class PivotPredictor:
    """``map_batches`` callable: one :class:`PivotPipeline` per actor, loaded once."""

    def __init__(self, **pipeline_options: Any) -> None:
        from ray_cora.pivot.pipeline import PivotPipeline

        self.pipeline = PivotPipeline.load(**pipeline_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.pipeline.answer_batch(batch["question"].tolist(), batch["lang"].tolist())
        return {"row": batch["row"], "result": np.array([json.dumps(r, ensure_ascii=False) for r in results],
                                                        dtype=object)}


def predict(config: "PivotRunConfig | PivotCalibrateConfig", *, threshold: float | None) -> list[dict[str, Any]]:
    """Answer every question of the config on an actor pool; rows in input order, each
    ``{qid, lang, question, answers, **pipeline result}``."""
    import ray
    from ray.data import ActorPoolStrategy

    from ray_cora.runtime import ray_session, worker_runtime_env

    questions = list(iter_qa(config.questions, dataset=config.dataset, lang=config.lang))
    if not questions:
        raise ConfigError(f"{config.questions}: no questions (dataset {config.dataset}, lang {config.lang})")
    options = {"db": config.db, "reranker": config.reranker, "labels": config.labels,
               "translator": config.translator, "k": config.k, "threshold": threshold}
    results: dict[int, dict[str, Any]] = {}
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        items = ray.data.from_items([{"row": i, "question": q["question"], "lang": q["lang"]}
                                     for i, q in enumerate(questions)])
        answered = items.map_batches(
            PivotPredictor, fn_constructor_kwargs=options, batch_size=config.batch_size, batch_format="numpy",
            compute=ActorPoolStrategy(size=config.concurrency), num_cpus=config.actor_cpus,
            runtime_env=worker_runtime_env())
        for batch in answered.iter_batches(batch_size=1024, batch_format="numpy"):
            for row, result in zip(batch["row"], batch["result"]):
                results[int(row)] = json.loads(result)
    return [{"qid": q["qid"], "lang": q["lang"], "question": q["question"], "answers": q["answers"],
             **results[i]} for i, q in enumerate(questions)]


def prediction_line(row: dict[str, Any]) -> str:
    """The predictions JSONL line: the scored fields first, then what explains them."""
    keep = {k: row[k] for k in PREDICTION_FIELDS}
    keep.update({k: row[k] for k in ("matched_question", "english_answer", "mips_score")})
    return json.dumps(keep, ensure_ascii=False)


def _threshold(config: "PivotRunConfig") -> float | None:
    if config.threshold is not None:
        return config.threshold
    if config.calibration:
        data = json.loads(storage.read_bytes(config.calibration))
        if data.get("threshold") is None:
            raise ConfigError(f"{config.calibration}: calibration found no threshold reaching precision "
                              f"{data.get('target_precision')}; pass --threshold or recalibrate")
        return float(data["threshold"])
    return None


def run_predictions(config: "PivotRunConfig") -> dict[str, Any]:
    out = storage.resolve(config.out)
    try:
        existing = storage.Artifact(out, kind=PREDICTIONS_KIND)
        if existing.manifest.get("config") == config.to_dict():
            existing.verify_all()
            print(f"pivot run: {out.uri} already holds these predictions; nothing to do")
            return existing.manifest
    except StorageError:
        pass
    threshold = _threshold(config)
    rows = predict(config, threshold=threshold)
    writer = storage.ArtifactWriter(out, kind=PREDICTIONS_KIND, config=config.to_dict())
    writer.write_bytes("predictions.jsonl", "".join(prediction_line(r) + "\n" for r in rows).encode("utf-8"))
    summary = summarize(rows)
    manifest = writer.commit({"threshold": threshold, "summary": summary})
    print(f"pivot run: {len(rows)} questions, {summary['abstained']} abstained; translation sources "
          f"{summary['translation_sources']} → {out.uri}/predictions.jsonl")
    return manifest


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    sources: dict[str, int] = {}
    for r in rows:
        key = r["translation_source"] or "abstained"
        sources[key] = sources.get(key, 0) + 1
    return {"questions": len(rows), "abstained": sum(r["abstained"] for r in rows),
            "translation_sources": dict(sorted(sources.items()))}


def is_correct(row: dict[str, Any], correct_by: str) -> bool:
    if correct_by == "qid":
        return row["qid"] in (row["matched_qid"], row.get("source_qid"))
    return answer_is_correct(row["prediction"], row["answers"], row["lang"])


def calibrate(config: "PivotCalibrateConfig") -> dict[str, Any]:
    rows = predict(config, threshold=None)
    correct = [is_correct(r, config.correct_by) for r in rows]
    result = pick_threshold([r["score"] for r in rows], correct, target_precision=config.target_precision)
    out = storage.resolve(config.out)
    storage.write_bytes(out.join("dev_predictions.jsonl"), "".join(
        json.dumps({**json.loads(prediction_line(r)), "correct": c}, ensure_ascii=False) + "\n"
        for r, c in zip(rows, correct)).encode("utf-8"))
    payload = {**result.to_dict(), "correct_by": config.correct_by, "db": config.db,
               "reranker": config.reranker, "score": "reranker probability" if config.reranker else "MIPS inner product"}
    storage.write_bytes(out.join("calibration.json"), json.dumps(payload, indent=2).encode("utf-8"))
    if result.threshold is None:
        print(f"pivot calibrate: no threshold reaches precision {config.target_precision:.0%} "
              f"(precision answering everything: {result.precision_without_threshold:.1%})")
    else:
        print(f"pivot calibrate: threshold {result.threshold:.4f} → precision {result.precision:.1%}, "
              f"coverage {result.coverage:.1%} on {result.num_examples} dev questions → {out.uri}/calibration.json")
    return payload
