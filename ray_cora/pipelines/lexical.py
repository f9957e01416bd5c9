"""The sharded BM25 index job on Ray Data: shard tasks → per-language term-postings parts → manifest.

The corpus is planned as ``embed`` plans it (:mod:`ray_cora.index.plan`, saved as ``plan.json``).
Each task streams its shard's passages from storage, tokenises them with the rule of their
language (:func:`~ray_cora.index.bm25.bm25_tokens`), writes one part per language
(:mod:`ray_cora.index.lexical`) and then the shard's marker ``shards/shard-NNNNN.json``: a shard
exists once its marker does. The driver collects the small entries and commits ``manifest.json``
last, with each language's passage count and total length summed over the parts (the statistics
that make scores comparable across shards). A rerun reuses the plan and skips every shard whose
marker and checksums verify; an input edited between runs is replanned and only the shards whose
lines changed are indexed again, exactly as in :mod:`ray_cora.pipelines.embed_corpus`.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import time
from collections import defaultdict
from dataclasses import asdict

import numpy as np
import ray

from ray_cora import storage
from ray_cora.configs.lexical import LexicalIndexConfig
from ray_cora.data.bookkeeping import iter_entries
from ray_cora.data.passages import DuplicatePids, numbered_passages
from ray_cora.data.records import BadRecords
from ray_cora.errors import ChecksumError, ConfigError, RayCoraError, StorageError
from ray_cora.index.lexical import (
    LEXICAL_KIND,
    PartBuilder,
    commit_lexical_index,
    part_prefix,
    passage_terms,
    write_part,
)
from ray_cora.index.plan import ShardSpec, absolute_uri, check_shard_digest
from ray_cora.pipelines.embed_corpus import built_from, corpus_uri, load_or_make_plan, shard_marker
from ray_cora.progress import JobProgress
from ray_cora.runtime import ray_session, worker_runtime_env


def index_shard(spec: ShardSpec, *, out: str, lang: str | None, tokenizer: str,
                max_passage_chars: int | None) -> dict:
    """Build and write shard ``spec``'s parts (one per passage language), then its marker; returns
    the marker's entry."""
    # PartBuilder keeps ~0.6 kB a passage instead of its term strings (~6 kB): a 1M-passage shard fits a task.
    builders: dict[str, PartBuilder] = defaultdict(PartBuilder)
    digest = hashlib.sha256()
    for _, passage in numbered_passages(spec.uri, format=spec.format, lang=lang, segment=spec.segment,
                                        bad_records=BadRecords("error"), digest=digest, max_chars=max_passage_chars):
        builders[passage["lang"]].add(passage["pid"], passage_terms(passage, passage["lang"], tokenizer))  # type: ignore[arg-type]
    if spec.format != "parquet":
        check_shard_digest(spec, digest.hexdigest())  # before anything is written for it
    root = storage.resolve(out)
    parts = []
    for part_lang, builder in sorted(builders.items()):
        part = builder.build()
        prefix = part_prefix(spec.number, part_lang)
        parts.append({"number": spec.number, "lang": part_lang, "prefix": prefix, "count": part.count,
                      "total_len": part.total_len, "files": write_part(root, prefix, part)})
    entry = {"number": spec.number, "source": spec.uri, "first_line": spec.first_line, "num_lines": spec.num_lines,
             "source_sha256": spec.source_sha256, "tsv_columns": spec.tsv_columns, "tokenizer": tokenizer,
             "count": sum(p["count"] for p in parts), "parts": parts}
    storage.write_bytes(root.join(shard_marker(spec.number)), json.dumps(entry).encode())
    return entry


def index_tasks(batch: dict[str, np.ndarray], *, out: str, lang: str | None, tokenizer: str,
                max_passage_chars: int | None) -> dict[str, np.ndarray]:
    """Ray Data batch function: planned tasks (lists of shard specs) in, their entries out; a user
    error comes back as data (Ray Data would wrap a raised one and lose its type and text)."""
    entries, errors = [], []
    for task_json in batch["task"]:
        for spec_dict in json.loads(task_json):
            try:
                entries.append(json.dumps(index_shard(ShardSpec.from_dict(spec_dict), out=out, lang=lang,
                                                      tokenizer=tokenizer, max_passage_chars=max_passage_chars)))
                errors.append(b"")
            except RayCoraError as exc:
                entries.append("")
                errors.append(pickle.dumps(exc))
    return {"entry": np.array(entries, dtype=object), "error": np.array(errors, dtype=object)}


def finished_shards(out: storage.Location, tasks: list[list[ShardSpec]], *, tokenizer: str) -> dict[int, dict]:
    """Entries of shards already written for the same lines and tokenizer whose files match their
    checksums."""
    done = {}
    for spec in (spec for task in tasks for spec in task):
        marker = out.join(shard_marker(spec.number))
        if not marker.is_file():
            continue
        entry = json.loads(storage.read_bytes(marker))
        if "parts" not in entry:
            raise ConfigError(f"{marker.uri} is the marker of another job's shard (an `embed` index?): give "
                              "`index-bm25` a folder of its own, e.g. --out <index>/lexical")
        if not built_from(entry, spec) or entry.get("tokenizer") != tokenizer:
            continue
        try:
            for part in entry["parts"]:
                for relpath, recorded in part["files"].items():
                    if storage.member_path_problem(relpath):  # a marker names files of its own folder only
                        raise ChecksumError(relpath)
                    if storage.sha256_of(out.join(relpath)) != (recorded["sha256"], recorded["size"]):
                        raise ChecksumError(relpath)
        except (StorageError, ChecksumError):
            continue  # damaged or partial: index this shard again
        done[spec.number] = entry
    return done


def check_unique_pids(out: storage.Location, parts: list[dict]) -> None:
    """Refuse a corpus in which two passages share an id (8 bytes per passage on the driver)."""
    checker = DuplicatePids()
    for part in parts:
        blob = storage.read_bytes(out.join(f"{part['prefix']}/pids.bin"))
        offsets = np.load(io.BytesIO(storage.read_bytes(out.join(f"{part['prefix']}/pids.npy"))), allow_pickle=False)
        checker.add_many(blob[int(a):int(b)].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:]))
    repeated = checker.repeated()
    if repeated.size:
        raise ConfigError(f"{out.uri}: {repeated.size} passage id(s) occur more than once in the corpus; "
                          "give every passage its own id (`ray-cora embed` names both lines of each)")


def build_lexical_index(config: LexicalIndexConfig) -> dict:
    """Run the job of a :class:`~ray_cora.configs.lexical.LexicalIndexConfig`; returns a summary.

    Phases: plan (or reuse ``plan.json``); index the pending shards as Ray Data tasks; commit
    ``manifest.json``. Fault point ``driver.entries`` (:mod:`ray_cora.faults`) stops the driver
    after that many shards, as a killed job would.
    """
    started = time.perf_counter()
    out = storage.resolve(config.out)
    manifest_loc = out.join(storage.MANIFEST_NAME)
    if manifest_loc.is_file():
        kind = json.loads(storage.read_bytes(manifest_loc)).get("kind")
        if kind != LEXICAL_KIND:
            raise ConfigError(f"{manifest_loc.uri}: {out.uri} holds a {kind!r} artifact, not a lexical index: give "
                              "`index-bm25` a folder of its own, e.g. --out <index>/lexical")
    tasks = load_or_make_plan(out, passages=config.passages, shard_size=config.shard_size, format=config.format)
    done = finished_shards(out, tasks, tokenizer=config.tokenizer)
    pending = [task for task in tasks if not all(spec.number in done for spec in task)]
    num_shards = sum(len(t) for t in tasks)
    print(f"plan: {num_shards} shards in {len(tasks)} tasks; {len(done)} already written, "
          f"{sum(len(t) for t in pending)} to index")
    progress = JobProgress("index-bm25", unit="shard", total=num_shards, items="passages", already_done=len(done),
                           already_items=sum(e["count"] for e in done.values()),
                           todo_items=sum(spec.num_lines for task in pending for spec in task))
    progress.start()
    if pending:
        with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
            items = [{"task": json.dumps([asdict(s) for s in task])} for task in pending]
            results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                index_tasks, batch_size=1, batch_format="numpy", num_cpus=config.task_cpus,
                concurrency=config.tasks, runtime_env=worker_runtime_env(),
                fn_kwargs={"out": absolute_uri(out), "lang": config.lang,
                                       "tokenizer": config.tokenizer, "max_passage_chars": config.max_passage_chars})
            for entry in iter_entries(results.iter_rows(), unit="shard"):
                done[entry["number"]] = entry
                progress.add(items=entry["count"],
                             bytes=sum(f["size"] for p in entry["parts"] for f in p["files"].values()))
    missing = [spec.number for task in tasks for spec in task if spec.number not in done]
    if missing:
        raise StorageError(f"{out.uri}: shards {missing[:10]} were not written; rerun the job to resume")
    parts = [part for _, entry in sorted(done.items()) for part in entry["parts"]]
    if not parts:
        raise ConfigError(f"{config.passages}: no passages found, nothing to index")
    check_unique_pids(out, parts)
    manifest = commit_lexical_index(out, parts, tokenizer=config.tokenizer, k1=config.k1, b=config.b,
                                    config=config.to_dict(), extra={"passages": corpus_uri(config.passages)})
    size = sum(f["size"] for p in parts for f in p["files"].values())
    summary = {"passages": manifest["num_passages"], "languages": len(manifest["languages"]),
               "shards": num_shards, "parts": len(parts), "bytes": size,
               "bytes_per_passage": round(size / manifest["num_passages"], 1),
               "seconds": round(time.perf_counter() - started, 1), "manifest": out.join("manifest.json").uri}
    print(f"lexical index: {summary['passages']} passages in {summary['languages']} languages, "
          f"{summary['parts']} parts of {num_shards} shards ({size / 1e6:.1f} MB, "
          f"{summary['bytes_per_passage']} bytes/passage); manifest: {summary['manifest']}")
    progress.finish()
    return summary
