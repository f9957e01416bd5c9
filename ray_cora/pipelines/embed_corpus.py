"""The corpus embedding job on Ray Data: shard tasks → encoder actor pool → FAISS shards → manifest.

Each task of the plan (:mod:`ray_cora.index.plan`) goes to an encoder actor, which streams the
shard's passages from storage, embeds them in batches, writes the shard's FAISS index and id file,
and then the shard's marker ``shards/shard-NNNNN.json`` (its manifest entry): a shard exists once
its marker does. Index types that need training (IVF, PQ, OPQ, SQ) are trained once, before any
shard: one Ray task encodes a seeded sample of the corpus, trains the index and writes
``trained.faiss`` and then its marker ``trained.json``; every actor adds its shards' vectors to a copy
of it, so all shards share one quantizer and codebook. A rerun reuses it (checksum verified), never
retrains. The driver never holds passages or vectors; it collects the small entries and
commits ``manifest.json`` last. A rerun reuses the saved plan and skips every shard whose marker
and checksums verify, so a killed job resumes where it stopped; a killed actor is replaced by
Ray Data and its task rerun, which rewrites the same deterministic paths — no duplicates, no gaps.

An input edited between runs (a bad record fixed, passages added) is replanned rather than
refused: the plan records each file's size and mtime and each shard's content sha256, so the new
plan keeps exactly the shards whose lines are unchanged (same number, lines and hash: embedding
them again would give the same vectors) and embeds the others again; a shard's reader checks the
hash of what it read against the plan, so an edit the size and mtime miss is refused there. Every
passage of the final input is then in the index once — a repeated passage id is refused, naming
both lines, before the manifest is written.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from dataclasses import asdict

import io

import numpy as np
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from ray_cora import faults, storage
from ray_cora.progress import JobProgress
from ray_cora.configs.embed import EmbedConfig
from ray_cora.data.bookkeeping import iter_entries
from ray_cora.data.passages import MAX_PASSAGE_CHARS, DuplicatePids, numbered_passages
from ray_cora.data.records import BadRecords
from ray_cora.encoders import check_encoder_available, encoder_record, load_encoder
from ray_cora.errors import ChecksumError, ConfigError, RayCoraError, StorageError
from ray_cora.index.plan import (
    ShardSpec,
    absolute_uri,
    changed_inputs,
    check_shard_digest,
    input_state,
    plan_corpus,
    plan_fingerprint,
    planned_records,
    sample_passages,
)
from ray_cora.index.sharded import IndexSpec, check_shard_entries, commit_index, write_shard
from ray_cora.index.trained import (
    TRAINED_PATH,
    needs_training,
    read_trained_index,
    train_index,
    training_sample_size,
    write_trained_index,
)
from ray_cora.runtime import check_resources_fit, ray_session, worker_runtime_env

PLAN_NAME = "plan.json"
TRAINED_MARKER = "trained.json"


def shard_marker(number: int) -> str:
    return f"shards/shard-{number:05d}.json"


class EmbedShards:
    """Actor body: embeds whole shards; built once per actor (the model loads once)."""

    def __init__(self, *, encoder: str, out: str, index_spec: dict, batch_size: int, lang: str | None,
                 threads: int = 1, on_bad_record: str = "error", fault_plan: faults.FaultPlan = faults.EMPTY,
                 trained: dict | None = None, max_passage_chars: int | None = None):
        self.encoder = load_encoder(encoder, threads=threads)
        self.out = out
        self.spec = IndexSpec(**index_spec)
        # The corpus' trained index, read (and checked) once per actor; each shard adds to a copy.
        self.trained = read_trained_index(out, trained) if trained else None
        self.batch_size = batch_size
        self.lang = lang
        self.on_bad_record = on_bad_record
        self.max_passage_chars = max_passage_chars
        # The driver's fault plan (tests only), as in FAISS's big_batch_search: die once at a given
        # shard to prove recovery.
        self.faults = fault_plan

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entries, errors = [], []
        for task_json in batch["task"]:
            for spec_dict in json.loads(task_json):
                try:
                    entries.append(json.dumps(self.embed_shard(ShardSpec.from_dict(spec_dict))))
                    errors.append(b"")
                except RayCoraError as exc:
                    # Returned as data: Ray Data would wrap a raised error and lose its type and text.
                    entries.append("")
                    errors.append(pickle.dumps(exc))
        return {"entry": np.array(entries, dtype=object), "error": np.array(errors, dtype=object)}

    def embed_shard(self, spec: ShardSpec) -> dict:
        pids, langs, vectors = [], [], []
        titles: list[str] = []
        texts: list[str] = []

        def flush() -> None:
            if texts:
                vectors.append(self.encoder.encode_passages(titles, texts))
                titles.clear()
                texts.clear()

        bad = BadRecords(self.on_bad_record)
        stats: dict[str, int] = {}
        digest = hashlib.sha256()
        die_here = self.faults.get(faults.EMBED_ACTOR_SHARD) == spec.number  # once per shard, not per passage
        for _, passage in numbered_passages(spec.uri, format=spec.format, lang=self.lang, segment=spec.segment,
                                            bad_records=bad, stats=stats, digest=digest,
                                            max_chars=self.max_passage_chars):
            pids.append(passage["pid"])
            langs.append(passage["lang"])
            titles.append(passage["title"])
            texts.append(passage["text"])
            if len(texts) >= self.batch_size:
                flush()
            if die_here and len(pids) > 1:  # mid-shard; returns only when it died here once already
                self.faults.die_once_here(faults.EMBED_ACTOR_SHARD, spec.number)
                die_here = False
        if spec.format != "parquet":
            check_shard_digest(spec, digest.hexdigest())  # before anything is written for it
        flush()
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, self.encoder.dim), np.float32)
        root = storage.resolve(self.out)
        quarantine = root.join(quarantine_path(spec.number))
        if bad.count:
            storage.write_bytes(quarantine, bad.to_jsonl())
        elif quarantine.is_file():  # left by a run over an earlier version of these lines
            quarantine.fs.delete_file(quarantine.path)
        entry = write_shard(root, spec.number, pids, matrix, self.spec, langs=langs, trained=self.trained) \
            if pids else {"index": None, "ids": None, "count": 0}
        entry = {**entry, "number": spec.number, "source": spec.uri, "first_line": spec.first_line,
                 "num_lines": spec.num_lines, "skipped_bad_records": bad.count,
                 # What the shard was built from: a resumed job keeps it only for the same lines.
                 "source_sha256": spec.source_sha256, "tsv_columns": spec.tsv_columns,
                 "truncated_passages": stats["truncated"],
                 # What the model is (checkpoint sha256, options, query format), for the manifest.
                 "encoder": encoder_record(self.encoder),
                 # Which Ray node built the shard: shows how work spread over a cluster.
                 "node_id": ray.get_runtime_context().get_node_id()}
        storage.write_bytes(root.join(shard_marker(spec.number)), json.dumps(entry).encode())
        return entry


def quarantine_path(number: int) -> str:
    return f"_quarantine/shard-{number:05d}.jsonl"


def load_or_make_plan(out: storage.Location, *, passages: str, shard_size: int,
                      format: str | None) -> list[list[ShardSpec]]:
    """The saved plan when it was made for the same input and shard size and the input files
    have the size and mtime it recorded; a new plan when they changed (the shards whose lines are
    unchanged are kept by :func:`finished_shards`); a :class:`ConfigError` for other settings."""
    plan_loc = out.join(PLAN_NAME)
    key = {"passages": passages, "shard_size": shard_size, "format": format}
    inputs = input_state(passages, format=format)
    if plan_loc.is_file():
        saved = json.loads(storage.read_bytes(plan_loc))
        if saved["key"] != key:
            raise ConfigError(f"{out.uri} holds an index job for {saved['key']}, not {key}: use "
                              "another --out, or delete that folder to start over")
        tasks = [[ShardSpec.from_dict(s) for s in task] for task in saved["tasks"]]
        if plan_fingerprint(tasks) != saved["fingerprint"]:
            raise StorageError(f"{plan_loc.uri}: plan does not match its fingerprint; delete it to replan")
        # A plan from before inputs were recorded has no content hashes: replan (its shards are redone).
        changes = changed_inputs(saved["inputs"], inputs) if "inputs" in saved else ["inputs not recorded"]
        if not changes:
            return tasks
        new_tasks = plan_corpus(passages, shard_size=shard_size, format=format)
        old = {spec.number: spec for task in tasks for spec in task}
        new = [spec for task in new_tasks for spec in task]
        kept = sum(1 for spec in new if spec.number in old and spec.same_records(old[spec.number]))
        print(f"plan: {'; '.join(changes[:3])}{' …' if len(changes) > 3 else ''} since {plan_loc.uri} was made: "
              f"replanned; {kept} of {len(new)} shards have the same lines (kept where already embedded), "
              f"{len(new) - kept} changed or new")
        tasks = new_tasks
    else:
        tasks = plan_corpus(passages, shard_size=shard_size, format=format)
    payload = {"key": key, "inputs": inputs, "fingerprint": plan_fingerprint(tasks),
               "tasks": [[asdict(s) for s in task] for task in tasks]}
    storage.write_bytes(plan_loc, json.dumps(payload).encode())
    return tasks


def finished_shards(out: storage.Location, tasks: list[list[ShardSpec]], *, verify: bool = True,
                    trained_sha256: str | None = None) -> dict[int, dict]:
    """Entries of shards already written (marker present, files matching their checksums, and,
    when the index has a ``trained.faiss``, built from that very file)."""
    done = {}
    for task in tasks:
        for spec in task:
            marker = out.join(shard_marker(spec.number))
            if not marker.is_file():
                continue
            entry = json.loads(storage.read_bytes(marker))
            if not built_from(entry, spec):
                continue  # made from other lines (the input was edited): embed this shard again
            if entry["count"] and trained_sha256 is not None and entry.get("trained_sha256") != trained_sha256:
                continue  # built from another trained index (or none): recompute this shard
            if entry["count"] and verify:
                try:
                    for role in ("index", "ids"):
                        sha, size = storage.sha256_of(out.join(entry[role]))
                        if (sha, size) != (entry["sha256"][role], entry["size"][role]):
                            raise ChecksumError(role)
                except (StorageError, ChecksumError):
                    continue  # damaged or partial: recompute this shard
            done[spec.number] = entry
    return done


def built_from(entry: dict, spec: ShardSpec) -> bool:
    """Whether a shard marker was written for exactly the lines ``spec`` plans (same file, line
    range, TSV columns and content sha256)."""
    columns = entry.get("tsv_columns")
    return (spec.source_sha256 is not None and entry.get("source_sha256") == spec.source_sha256
            and (entry.get("source"), entry.get("first_line"), entry.get("num_lines"))
            == (spec.uri, spec.first_line, spec.num_lines)
            and (tuple(columns) if columns else None) == spec.tsv_columns)


def check_unique_pids(out: storage.Location, tasks: list[list[ShardSpec]], done: dict[int, dict], *,
                      lang: str | None, max_passage_chars: int | None) -> None:
    """Refuse a corpus in which two passages have the same id (naming both file:line), from the
    finished shards' id files: 8 bytes per passage on the driver; the input is read again, shard
    by shard, only where a repeated id was seen."""
    checker = DuplicatePids()
    suspects: list[ShardSpec] = []
    for spec in (spec for task in tasks for spec in task):
        entry = done[spec.number]
        if not entry["count"]:
            continue
        pids = pq.read_table(io.BytesIO(storage.read_bytes(out.join(entry["ids"]))), columns=["pid"])
        checker.add_many(pids.column("pid").to_pylist())
        suspects.append(spec)
    if not checker.repeated().size:
        return

    def reread():
        for spec in suspects:
            for line, passage in numbered_passages(spec.uri, format=spec.format, lang=lang, segment=spec.segment,
                                                   bad_records=BadRecords("skip"), max_chars=max_passage_chars):
                yield spec.uri, line, passage["pid"]

    checker.check(reread)


def stored_trained_index(out: storage.Location, index_spec: IndexSpec) -> dict | None:
    """The entry of the ``trained.faiss`` a previous run of this job committed (its marker
    ``trained.json`` present and the file matching its sha256), else None. A marker for another
    index spec, or a damaged file, is an error: the finished shards were built from it."""
    marker = out.join(TRAINED_MARKER)
    if not marker.is_file():
        return None
    saved = json.loads(storage.read_bytes(marker))
    if saved["index_spec"] != index_spec.to_dict():
        raise ConfigError(f"{out.uri} holds an index trained for {saved['index_spec']}, not "
                          f"{index_spec.to_dict()}: use another --out, or delete that folder to start over")
    entry = saved["trained"]
    sha, size = storage.sha256_of(out.join(entry["path"]))
    if (sha, size) != (entry["sha256"], entry["size"]):
        raise ChecksumError(f"{out.join(entry['path']).uri}: does not match {marker.uri} (sha256, size); "
                            "the finished shards were built from it: delete the folder to rebuild the index")
    return entry


def train_corpus_index(*, encoder: str, out: str, tasks_json: str, index_spec: dict, batch_size: int,
                       lang: str | None, threads: int, num_vectors: int,
                       max_passage_chars: int | None = MAX_PASSAGE_CHARS) -> dict:
    """Ray task body: encode a seeded sample of the planned corpus, train the index on it and write
    ``trained.faiss``; returns its entry. A task of its own, before the actor pool starts, because
    every actor needs the trained index before its first shard: training in the first actor batch
    would make the others wait on it, and a resumed job would have to tell which actor owns it."""
    model = load_encoder(encoder, threads=threads)
    spec = IndexSpec(**index_spec)
    tasks = [[ShardSpec.from_dict(s) for s in task] for task in json.loads(tasks_json)]
    size = training_sample_size(spec.factory_string(num_vectors), model.dim, num_vectors, spec.train_size)
    vectors, titles, texts = [], [], []
    for passage in sample_passages(tasks, size, seed=spec.train_seed, lang=lang, max_chars=max_passage_chars):
        titles.append(passage["title"])
        texts.append(passage["text"])
        if len(texts) >= batch_size:
            vectors.append(model.encode_passages(titles, texts))
            titles, texts = [], []
    if texts:
        vectors.append(model.encode_passages(titles, texts))
    sample = np.concatenate(vectors) if vectors else np.zeros((0, model.dim), np.float32)
    trained = train_index(sample, spec, num_vectors=num_vectors, seed=spec.train_seed)
    return write_trained_index(out, trained)


def train_once(config: EmbedConfig, out: storage.Location, tasks: list[list[ShardSpec]],
               index_spec: IndexSpec) -> dict:
    """Train the corpus' index in one Ray task and commit it (``trained.json`` after ``trained.faiss``)."""
    train = ray.remote(num_cpus=config.actor_cpus, num_gpus=config.actor_gpus,
                       runtime_env=worker_runtime_env() or None)(train_corpus_index)
    entry = ray.get(train.remote(
        encoder=config.encoder, out=absolute_uri(out), tasks_json=json.dumps([[asdict(s) for s in t] for t in tasks]),
        index_spec=index_spec.to_dict(), batch_size=config.batch_size, lang=config.lang,
        threads=config.threads, num_vectors=planned_records(tasks), max_passage_chars=config.max_passage_chars))
    storage.write_bytes(out.join(TRAINED_MARKER), json.dumps(
        {"index_spec": index_spec.to_dict(), "trained": entry}).encode())
    return entry


def corpus_uri(passages: str) -> str:
    """The corpus as the index manifest records it: an absolute path for a local one (so the index
    can be used from any directory), the URI as given otherwise."""
    return absolute_uri(storage.resolve(passages))


def embed_corpus(config: EmbedConfig) -> dict:
    """Run the embedding job described by an :class:`~ray_cora.configs.embed.EmbedConfig`.

    Phases: plan (or reuse ``plan.json``); train the index once when its type needs it (or reuse
    ``trained.json``/``trained.faiss``, checksum verified); embed the pending shards on the actor
    pool; commit ``manifest.json``.

    Fault point ``embed.actor_shard`` (:mod:`ray_cora.faults`): one actor dies once at that shard.
    """

    started = time.perf_counter()
    out = storage.resolve(config.out)
    tasks = load_or_make_plan(out, passages=config.passages, shard_size=config.shard_size,
                              format=config.format)
    index_spec = config.index_spec()
    trained = stored_trained_index(out, index_spec)
    must_train = trained is None and needs_training(index_spec.factory_string(planned_records(tasks)))
    done = finished_shards(out, tasks, trained_sha256=trained["sha256"] if trained else None)
    if must_train:
        done = {}  # shards written without this corpus' trained index (none should exist) are redone
    pending = [task for task in tasks if not all(spec.number in done for spec in task)]
    num_shards = sum(len(t) for t in tasks)
    print(f"plan: {num_shards} shards in {len(tasks)} tasks; {len(done)} already written, "
          f"{sum(len(t) for t in pending)} to embed"
          + (f"; reusing {TRAINED_PATH} (sha256 {trained['sha256'][:12]}…)" if trained else ""))
    # A pending task embeds all its shards again (a compressed file's shards are one task).
    skipped_shards = [spec for task in tasks if all(s.number in done for s in task) for spec in task]
    progress = JobProgress("embed", unit="shard", total=num_shards, items="passages",
                           already_done=len(skipped_shards),
                           already_items=sum(done[spec.number]["count"] for spec in skipped_shards),
                           todo_items=sum(spec.num_lines for task in pending for spec in task))
    progress.start()
    new_passages = 0
    if pending:
        check_encoder_available(config.encoder)  # one line here, not an actor dying in __init__
        with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
            check_resources_fit({"--actor-cpus/--actor-gpus": (config.actor_cpus, config.actor_gpus)})
            if must_train:
                started_training = time.perf_counter()
                trained = train_once(config, out, tasks, index_spec)
                print(f"trained {trained['factory']} on {trained['train']['sample_size']} sampled passages "
                      f"(seed {trained['train']['seed']}) in {time.perf_counter() - started_training:.1f} s")
            items = [{"task": json.dumps([asdict(s) for s in task])} for task in pending]
            results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                EmbedShards, batch_size=1, batch_format="numpy",
                compute=ActorPoolStrategy(size=config.actors),
                num_cpus=config.actor_cpus, num_gpus=config.actor_gpus, runtime_env=worker_runtime_env(),
                fn_constructor_kwargs={
                    # Absolute: actors need not share the driver's working directory.
                    "encoder": config.encoder, "out": absolute_uri(out), "index_spec": index_spec.to_dict(),
                    "batch_size": config.batch_size, "lang": config.lang, "threads": config.threads,
                    "on_bad_record": config.on_bad_record, "fault_plan": faults.current(), "trained": trained,
                    "max_passage_chars": config.max_passage_chars})
            for entry in iter_entries(results.iter_rows()):
                done[entry["number"]] = entry
                new_passages += entry["count"]
                progress.add(items=entry["count"],
                             bytes=entry["size"]["index"] + entry["size"]["ids"] if entry["count"] else 0)
    missing = [spec.number for task in tasks for spec in task if spec.number not in done]
    if missing:
        raise StorageError(f"{out.uri}: shards {missing[:10]} were not written; rerun the job to resume")
    check_shard_entries(out, list(done.values()))  # a count-0 marker must not hide a written shard
    shards = [entry for _, entry in sorted(done.items()) if entry["count"]]
    if not shards:
        raise ConfigError(f"{config.passages}: no passages found, nothing to index")
    check_unique_pids(out, tasks, done, lang=config.lang, max_passage_chars=config.max_passage_chars)
    # The encoder's record comes from the actors' entries: the driver never loads the model.
    manifest = commit_index(
        out, shards, spec=index_spec, config=config.to_dict(), trained=trained,
        encoder={**shards[0]["encoder"], "spec": config.encoder}, extra={"passages": corpus_uri(config.passages)})
    elapsed = time.perf_counter() - started
    bytes_written = sum(s["size"]["index"] + s["size"]["ids"] for s in shards)
    skipped = sum(entry.get("skipped_bad_records", 0) for entry in done.values())
    if skipped:
        print(f"skipped {skipped} malformed passages; they are in {out.join('_quarantine').uri}/")
    truncated = sum(entry.get("truncated_passages", 0) for entry in done.values())
    if truncated:
        print(f"truncated {truncated} passages longer than {config.max_passage_chars:,} characters "
              "(--max-passage-chars) to that length")
    summary = {"passages": manifest["num_vectors"], "embedded_now": new_passages,
               "passages_per_second": round(new_passages / elapsed, 1) if new_passages else None,
               "shards": len(shards), "bytes": bytes_written, "skipped_bad_records": skipped,
               "truncated_passages": truncated, "seconds": round(elapsed, 1),
               "manifest": out.join("manifest.json").uri}
    print(f"index: {summary['passages']} passages in {summary['shards']} shards "
          f"({bytes_written / 1e6:.1f} MB); embedded {new_passages} now"
          + (f" at {summary['passages_per_second']} passages/s" if new_passages else "")
          + f"; manifest: {summary['manifest']}")
    progress.finish()
    return summary
