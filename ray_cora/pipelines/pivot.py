"""The Ray layers of the pivot jobs: database build and batch answering on Ray Data actor pools.

``build_pivot_database``: the driver streams the English records once, cutting them into shards
and writing each shard's answer part (one shard of records in memory); Ray Data sends the pending
shards to :class:`EmbedPivotShards` actors, which embed and index them and write each shard's
marker; the manifests are written last. A rerun redoes only shards whose marker or files are
missing or damaged (:mod:`ray_cora.pivot.database` has the layout).

``run_predictions``: questions cut into blocks (``<lang>-<n>``, as ``ray-cora retrieve`` cuts
them) → :class:`AnswerBlocks` actors, each holding one
:class:`~ray_cora.pivot.pipeline.PivotPipeline`, write ``parts/<block>.jsonl`` then the marker
``parts/<block>.json``; the driver holds the questions and the small markers, never the
predictions; ``manifest.json`` (every part with its sha256) is written last. A rerun skips the
blocks already written for the same questions.

Edited inputs: both jobs read their whole question set on every run and key their work by content
(a database shard by the sha256 of its answer part, a block by that of its questions), so an edited
input is replanned: unchanged shards and blocks are kept, the others redone. "Nothing to do" is
said only when the config and the input file (size, mtime and sha256) are those of the finished run.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np
import ray
from ray.data import ActorPoolStrategy

from ray_cora import storage
from ray_cora.configs.pivot import PivotBuildConfig, PivotCalibrateConfig, PivotRunConfig
from ray_cora.data.bookkeeping import (
    check_job_settings,
    error_row,
    iter_entries,
    refuse_stale_blocks,
    require_all_blocks,
)
from ray_cora.data.qa import iter_qa
from ray_cora.data.retrieval import part_paths, question_blocks
from ray_cora.encoders import check_encoder_available, load_encoder
from ray_cora.errors import ConfigError, RayCoraError, StorageError
from ray_cora.index.plan import input_fingerprint
from ray_cora.index.sharded import IndexSpec
from ray_cora.pipelines.retrieve import block_sha256, finished_blocks
from ray_cora.pivot.calibrate import answer_is_correct, calibrated_threshold, pick_threshold
from ray_cora.pivot.database import KIND, commit_database, embed_shard, iter_db_records, prepare_parts
from ray_cora.pivot.pipeline import PREDICTION_FIELDS, PivotPipeline
from ray_cora.progress import JobProgress
from ray_cora.runtime import check_resources_fit, ray_session, worker_runtime_env

PREDICTIONS_KIND = "pivot-predictions"
BUILD_JOB_FILE = "build-job.json"
# The input a finished build read (input_fingerprint), written after its manifest.
BUILD_INPUT_FILE = "build-input.json"
RUN_JOB_FILE = "run-job.json"


# --- pivot build ------------------------------------------------------------------------------


class EmbedPivotShards:
    """Actor body: embeds whole shards (answer part → index shard → marker); the encoder loads once."""

    def __init__(self, *, encoder: str, out: str, index_spec: dict, batch_size: int, threads: int = 1) -> None:
        self.encoder = load_encoder(encoder, threads=threads)
        self.root = storage.resolve(out)
        self.spec = IndexSpec(**index_spec)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        part = json.loads(batch["part"][0])
        try:
            entry = embed_shard(self.root, part, self.encoder, batch_size=self.batch_size, spec=self.spec)
        except RayCoraError as exc:
            return error_row("part", str(part["number"]), exc)
        return {"part": np.array([str(part["number"])], dtype=object),
                "entry": np.array([json.dumps(entry)], dtype=object), "error": np.array([b""], dtype=object)}


def build_pivot_database(config: PivotBuildConfig) -> dict[str, Any]:
    """Run ``ray-cora pivot build``; returns the database manifest.

    Fault points (:mod:`ray_cora.faults`): ``driver.entries`` / ``pivot.answer_parts`` stop the
    driver after that many shards came back from the actors / after writing that many answer parts.
    """

    started = time.perf_counter()
    out = storage.resolve(config.out)
    fingerprint = input_fingerprint(config.questions)
    try:
        existing = storage.Artifact(out, kind=KIND).manifest
        recorded = out.join(BUILD_INPUT_FILE)
        if existing.get("config") == config.to_dict() and recorded.is_file() \
                and json.loads(storage.read_bytes(recorded)) == fingerprint:
            print(f"pivot build: {out.uri} is already built with this config ({existing['num_questions']} "
                  "questions); nothing to do")
            return existing
    except StorageError:
        pass
    check_job_settings(out, BUILD_JOB_FILE, {key: getattr(config, key) for key in
                                     ("questions", "dataset", "encoder", "shard_size", "index_type")}, "pivot build")
    spec = config.index_spec()

    def records():
        return iter_db_records(config.questions, dataset=config.dataset)

    parts, done = prepare_parts(records(), out, shard_size=config.shard_size, source=config.questions,
                                reread=records)
    pending = [p for p in parts if p["number"] not in done]
    print(f"pivot build: {sum(p['count'] for p in parts)} questions in {len(parts)} shards; "
          f"{len(done)} already written, {len(pending)} to embed")
    progress = JobProgress("pivot build", unit="shard", total=len(parts), items="questions", already_done=len(done),
                           already_items=sum(p["count"] for p in parts if p["number"] in done),
                           todo_items=sum(p["count"] for p in pending))
    progress.start()
    if pending:
        check_encoder_available(config.encoder)
        with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
            check_resources_fit({"--actor-cpus/--actor-gpus": (config.actor_cpus, config.actor_gpus)})
            items = [{"part": json.dumps(p)} for p in pending]
            results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                EmbedPivotShards, batch_size=1, batch_format="numpy",
                compute=ActorPoolStrategy(size=min(config.actors, len(items))),
                num_cpus=config.actor_cpus, num_gpus=config.actor_gpus or None, runtime_env=worker_runtime_env(),
                fn_constructor_kwargs={"encoder": config.encoder, "out": config.out, "index_spec": spec.to_dict(),
                                       "batch_size": config.batch_size, "threads": config.threads})
            for entry in iter_entries(results.iter_rows(), unit="shard"):
                done[entry["number"]] = entry
                progress.add(items=entry["count"],
                             bytes=sum(entry["size"].values()) if entry.get("size") else 0)
    manifest = commit_database(out, parts, done, encoder_spec=config.encoder, spec=spec, config=config.to_dict())
    storage.write_bytes(out.join(BUILD_INPUT_FILE), json.dumps(fingerprint).encode("utf-8"))
    print(f"pivot build: {manifest['num_questions']} English questions ({manifest['with_answer_qid']} with an "
          f"answer QID) in {manifest['num_shards']} shards, embedded {sum(p['count'] for p in pending)} now "
          f"({time.perf_counter() - started:.1f} s) → {out.uri}")
    progress.finish()
    return manifest


# --- pivot run / calibrate ------------------------------------------------------------------------


class PivotPredictor:
    """``map_batches`` callable: one :class:`PivotPipeline` per actor, loaded once."""

    def __init__(self, **pipeline_options: Any) -> None:
        self.pipeline = PivotPipeline.load(**pipeline_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.pipeline.answer_batch(batch["question"].tolist(), batch["lang"].tolist())
        return {"row": batch["row"], "result": np.array([json.dumps(r, ensure_ascii=False) for r in results],
                                                        dtype=object)}


def predict(config: PivotRunConfig | PivotCalibrateConfig, *, threshold: float | None) -> list[dict[str, Any]]:
    """Answer every question of the config on an actor pool; rows in input order, each
    ``{qid, lang, question, answers, **pipeline result}``."""

    questions = list(iter_qa(config.questions, dataset=config.dataset, lang=config.lang))
    if not questions:
        raise ConfigError(f"{config.questions}: no questions (dataset {config.dataset}, lang {config.lang})")
    options = {"db": config.db, "reranker": config.reranker, "labels": config.labels,
               "translator": config.translator, "k": config.k, "threshold": threshold, "threads": config.threads,
               "mmap": config.mmap}
    PivotPipeline.check_sources(**options)  # one line here, not an actor dying in __init__
    results: dict[int, dict[str, Any]] = {}
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        check_resources_fit({"--actor-cpus/--actor-gpus": (config.actor_cpus, config.actor_gpus)})
        items = ray.data.from_items([{"row": i, "question": q["question"], "lang": q["lang"]}
                                     for i, q in enumerate(questions)])
        answered = items.map_batches(
            PivotPredictor, fn_constructor_kwargs=options, batch_size=config.batch_size, batch_format="numpy",
            compute=ActorPoolStrategy(size=config.actors), num_cpus=config.actor_cpus,
            num_gpus=config.actor_gpus or None, runtime_env=worker_runtime_env())
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


def _threshold(config: PivotRunConfig) -> float | None:
    if config.threshold is not None:
        return config.threshold
    if config.calibration:
        return calibrated_threshold(storage.read_bytes(config.calibration), config.calibration)
    return None


class AnswerBlocks:
    """Actor body: answers one block of questions with its :class:`PivotPipeline` (loaded once per
    actor) and writes ``parts/<block>.jsonl``, then the block's marker."""

    def __init__(self, *, out: str, pipeline_options: dict[str, Any], batch_size: int) -> None:
        self.root = storage.resolve(out)
        self.pipeline = PivotPipeline.load(**pipeline_options)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        block = str(batch["block"][0])
        try:
            raw = batch["questions"][0]
            entry = self.write_block(block, json.loads(raw), questions_sha256=block_sha256(raw))
        except RayCoraError as exc:
            return error_row("block", block, exc)
        return {"block": batch["block"], "entry": np.array([json.dumps(entry)], dtype=object),
                "error": np.array([b""], dtype=object)}

    def write_block(self, block: str, questions: list[dict[str, Any]], *,
                    questions_sha256: str | None = None) -> dict[str, Any]:
        rows = []
        for start in range(0, len(questions), self.batch_size):
            chunk = questions[start:start + self.batch_size]
            results = self.pipeline.answer_batch([q["question"] for q in chunk], [q["lang"] for q in chunk])
            rows.extend({**q, **r} for q, r in zip(chunk, results))
        data = "".join(prediction_line(r) + "\n" for r in rows).encode("utf-8")
        part, marker = part_paths(block)
        storage.write_bytes(self.root.join(part), data)
        entry = {"block": block, "path": part, "lang": questions[0]["lang"], "count": len(questions),
                 "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "summary": summarize(rows),
                 "questions_sha256": questions_sha256}
        storage.write_bytes(self.root.join(marker), json.dumps(entry).encode("utf-8"))
        return entry


def run_predictions(config: PivotRunConfig) -> dict[str, Any]:
    """Run ``ray-cora pivot run``; returns the predictions manifest.

    Fault point ``driver.entries`` (:mod:`ray_cora.faults`): the driver stops after that many blocks
    came back.
    """

    started = time.perf_counter()
    out = storage.resolve(config.out)
    fingerprint = input_fingerprint(config.questions)
    try:
        existing = storage.Artifact(out, kind=PREDICTIONS_KIND)
        if existing.manifest.get("config") == config.to_dict() and existing.manifest.get("input") == fingerprint:
            existing.verify_all()
            print(f"pivot run: {out.uri} already holds these predictions; nothing to do")
            return existing.manifest
    except StorageError:
        pass
    threshold = _threshold(config)
    key = {k: getattr(config, k) for k in ("db", "questions", "dataset", "lang", "reranker", "labels",
                                           "translator", "k", "block_size")}
    check_job_settings(out, RUN_JOB_FILE, {**key, "threshold": threshold}, "pivot run")
    done = finished_blocks(out)
    items, counts = [], {}
    questions = iter_qa(config.questions, dataset=config.dataset, lang=config.lang)
    for block, chunk in question_blocks(questions, config.block_size):
        counts[block] = len(chunk)
        slim = [{k: q[k] for k in ("qid", "lang", "question", "answers")} for q in chunk]
        text = json.dumps(slim, ensure_ascii=False)
        if block in done and done[block].get("questions_sha256") == block_sha256(text):
            continue
        done.pop(block, None)  # missing, or written for questions that have changed since
        items.append({"block": block, "questions": text})
    if not counts:
        raise ConfigError(f"{config.questions}: no questions (dataset {config.dataset}, lang {config.lang})")
    refuse_stale_blocks(out, done, counts)
    print(f"pivot run: {sum(counts.values())} questions in {len(counts)} blocks; {len(done)} already "
          f"written, {len(items)} to answer")
    progress = JobProgress("pivot run", unit="block", total=len(counts), items="questions", already_done=len(done),
                           already_items=sum(counts[block] for block in done),
                           todo_items=sum(counts[item["block"]] for item in items))
    progress.start()
    if items:
        options = {"db": config.db, "reranker": config.reranker, "labels": config.labels,
                   "translator": config.translator, "k": config.k, "threshold": threshold,
                   "threads": config.threads, "mmap": config.mmap}
        PivotPipeline.check_sources(**options)  # one line here, not an actor dying in __init__
        with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
            check_resources_fit({"--actor-cpus/--actor-gpus": (config.actor_cpus, config.actor_gpus)})
            results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                AnswerBlocks, batch_size=1, batch_format="numpy",
                compute=ActorPoolStrategy(size=min(config.actors, len(items))),
                num_cpus=config.actor_cpus, num_gpus=config.actor_gpus or None, runtime_env=worker_runtime_env(),
                fn_constructor_kwargs={"out": config.out, "pipeline_options": options,
                                       "batch_size": config.batch_size})
            for entry in iter_entries(results.iter_rows(), unit="block"):
                done[entry["block"]] = entry
                progress.add(items=entry["count"], bytes=entry["size"])
    require_all_blocks(out, done, counts)
    blocks = sorted(counts)
    summary = merge_summaries([done[b]["summary"] for b in blocks])
    writer = storage.ArtifactWriter(out, kind=PREDICTIONS_KIND, config=config.to_dict())
    per_language: dict[str, int] = {}
    for block in blocks:
        writer.add_existing(done[block]["path"], size=done[block]["size"], sha256=done[block]["sha256"])
        per_language[done[block]["lang"]] = per_language.get(done[block]["lang"], 0) + done[block]["count"]
    manifest = writer.commit({"threshold": threshold, "input": fingerprint, "summary": summary, "num_questions": sum(counts.values()),
                              "per_language": dict(sorted(per_language.items())),
                              "parts": [done[b]["path"] for b in blocks]})
    print(f"pivot run: {summary['questions']} questions, {summary['abstained']} abstained; translation sources "
          f"{summary['translation_sources']} ({time.perf_counter() - started:.1f} s) → {out.uri}/parts/*.jsonl "
          f"(`ray-cora evaluate qa --predictions {out.uri}` reads the folder)")
    progress.finish()
    return manifest


def merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-block summaries of :func:`summarize`, added up."""
    sources: dict[str, int] = {}
    for s in summaries:
        for name, count in s["translation_sources"].items():
            sources[name] = sources.get(name, 0) + count
    return {"questions": sum(s["questions"] for s in summaries), "abstained": sum(s["abstained"] for s in summaries),
            "translation_sources": dict(sorted(sources.items()))}


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


def calibrate(config: PivotCalibrateConfig) -> dict[str, Any]:
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
