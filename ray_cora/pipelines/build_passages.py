"""Wikipedia -> passages on Ray Data: one read task per wikiextractor file.

Output layout under ``out`` (local folder or ``s3://``)::

    part-<lang>-<file:05d>-<piece:03d>.parquet  passages (pid, lang, title, text) of input file
                                                <file> of <lang> (files numbered in path order);
                                                piece 001, 002, ... only past rows_per_shard rows
    _progress/part-<lang>-<file:05d>.json       per input file: counts, shards with rows, size and
                                                sha256; written after its shards (resume point)
    _quarantine/part-<lang>-<file:05d>.jsonl    skipped bad lines (--on-bad-record skip)
    manifest.json                               written last: every shard with size, sha256, rows

Each read task writes its own shards (atomically, under names no other task uses) and its
``_progress`` record, and yields one row: that record. The driver collects those rows (never
the passages) and commits ``manifest.json``. A rerun removes the manifest first, skips every input
file whose ``_progress`` record still matches (same source size, options and segmenter; shards
present with their sizes) and commits a new manifest; read the shards through the manifest.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any, Iterator

import pyarrow as pa
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from ray_cora import storage
from ray_cora.configs.passages import PassagesConfig
from ray_cora.data.passages import PASSAGE_SCHEMA
from ray_cora.data.records import BadRecords, OnBadRecord
from ray_cora.data.wiki import (
    DROP_REASONS,
    InputFile,
    WikiOptions,
    iter_wiki_passage_batches,
    list_inputs,
    parse_input,
    write_input_shards,
)
from ray_cora.errors import StorageError
from ray_cora.progress import JobProgress
from ray_cora.runtime import check_resources_fit, ray_session, worker_runtime_env

log = logging.getLogger(__name__)

MANIFEST_KIND = "wiki-passages"
RECORD_SCHEMA = pa.schema([("record", pa.string())])


def _input_files(inputs: list[tuple[str, str]] | list[str] | list[InputFile]) -> list[InputFile]:
    if inputs and all(isinstance(i, InputFile) for i in inputs):
        return list(inputs)  # type: ignore[arg-type]
    pairs = [parse_input(i) if isinstance(i, str) else i for i in inputs]
    return list_inputs(pairs)  # type: ignore[arg-type]


def _metadata(file: InputFile) -> BlockMetadata:
    return BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(file.uri,))


class WikiPassageDatasource(Datasource):
    """Passages of wikiextractor files as a dataset (``pid, lang, title, text``), one read task per
    file streaming Arrow batches; for feeding an encoder directly, without Parquet in between.

    ``inputs``: ``"lang=uri"`` strings or ``(lang, uri)`` pairs. With ``on_bad_record="skip"`` each
    task writes what it skipped to ``<quarantine>/part-<lang>-<file>.jsonl``.

    >>> # ray.data.read_datasource(WikiPassageDatasource(["en=/data/enwiki"]))
    """

    def __init__(self, inputs: list[str] | list[tuple[str, str]], *, options: WikiOptions = WikiOptions(),
                 on_bad_record: OnBadRecord = "error", quarantine: str | None = None,
                 batch_size: int = 4096) -> None:
        self._files = _input_files(inputs)
        self._options, self._policy = options, on_bad_record
        self._quarantine, self._batch_size = quarantine, batch_size

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        # Locals, not self: the closures must not capture the datasource.
        options, policy, quarantine, batch_size = self._options, self._policy, self._quarantine, self._batch_size
        tasks = []
        for file in self._files:
            def read(file: InputFile = file) -> Iterator[pa.Table]:
                bad = BadRecords(policy)
                yield from iter_wiki_passage_batches(file.uri, file.lang, batch_size=batch_size,
                                                     options=options, bad_records=bad)
                if bad.count and quarantine:
                    storage.write_bytes(storage.resolve(quarantine).join(f"{file.unit}.jsonl"), bad.to_jsonl())

            tasks.append(ReadTask(read, _metadata(file), schema=PASSAGE_SCHEMA,
                                  per_task_row_limit=per_task_row_limit))
        return tasks


class WikiShardDatasource(Datasource):
    """One read task per input file writes that file's Parquet shards under ``out`` (see the
    module docstring) and yields one row, ``record``: the file's commit record as JSON."""

    def __init__(self, files: list[InputFile], *, out: str, options: WikiOptions = WikiOptions(),
                 on_bad_record: OnBadRecord = "error", rows_per_shard: int = 100_000,
                 resume: bool = True) -> None:
        self._files, self._out, self._options = files, out, options
        self._policy, self._rows_per_shard, self._resume = on_bad_record, rows_per_shard, resume

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        out, options, policy = self._out, self._options, self._policy
        rows_per_shard, resume = self._rows_per_shard, self._resume
        tasks = []
        for file in self._files:
            def read(file: InputFile = file) -> Iterator[pa.Table]:
                record = write_input_shards(file, out, options=options, on_bad_record=policy,
                                            rows_per_shard=rows_per_shard, resume=resume)
                yield pa.table({"record": [json.dumps(record, ensure_ascii=False)]}, schema=RECORD_SCHEMA)

            tasks.append(ReadTask(read, _metadata(file), schema=RECORD_SCHEMA))
        return tasks


def _uncommit(out: storage.Location) -> None:
    manifest = out.join(storage.MANIFEST_NAME)
    if manifest.exists():
        out.fs.delete_file(manifest.path)


def _commit(out: storage.Location, config: PassagesConfig, records: list[dict[str, Any]],
            languages: dict[str, dict[str, int]]) -> dict:
    writer = storage.ArtifactWriter(out, kind=MANIFEST_KIND, config=config.to_dict())
    inputs = []
    for record in records:
        for shard in record["shards"]:
            writer.add_existing(shard["file"], size=shard["size"], sha256=shard["sha256"])
            writer.files[shard["file"]]["rows"] = shard["rows"]
        if record.get("quarantine"):
            q = record["quarantine"]
            writer.add_existing(q["file"], size=q["size"], sha256=q["sha256"])
        inputs.append({"unit": record["unit"], "lang": record["lang"], "source": record["source"],
                       "source_size": record["source_size"], "segmenter": record["segmenter"],
                       "stats": record["stats"], "shards": [s["file"] for s in record["shards"]]})
    segmenters = {lang: sorted({r["segmenter"] for r in records if r["lang"] == lang}) for lang in languages}
    return writer.commit({"schema": PASSAGE_SCHEMA.names, "rows": sum(t["passages"] for t in languages.values()),
                          "languages": languages, "segmenters": segmenters, "inputs": inputs})


def _stray_shards(out: storage.Location, listed: dict[str, Any]) -> list[str]:
    found = [loc.path.removeprefix(out.path).lstrip("/") for loc in storage.list_files(out, suffix=".parquet")]
    return [name for name in found if name not in listed]


def build_passages(config: PassagesConfig) -> dict[str, Any]:
    """Run the passages job (see the module docstring); returns and prints a summary."""
    out = storage.resolve(config.out)
    files = list_inputs(config.input_pairs())
    langs = [lang for lang, _ in config.input_pairs()]
    source = WikiShardDatasource(files, out=config.out, options=config.wiki_options(),
                                 on_bad_record=config.on_bad_record, rows_per_shard=config.rows_per_shard,
                                 resume=config.resume)
    _uncommit(out)
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        check_resources_fit({"--task-cpus": (config.task_cpus, 0.0)})
        started = time.perf_counter()
        dataset = ray.data.read_datasource(source, override_num_blocks=max(len(files), 1),
                                           num_cpus=config.task_cpus, concurrency=config.tasks,
                                           # S3 settings for workers started before they were set
                                           runtime_env=worker_runtime_env() or None)
        # Which files an earlier run finished is known only as each task reports (it checks its own
        # _progress record), so the skipped ones are counted as they come back.
        progress = JobProgress("passages", unit="file", total=len(files), items="passages")
        progress.start()
        records = []
        for row in dataset.iter_rows():
            record = json.loads(row["record"])
            records.append(record)
            if record["status"] == "processed":
                progress.add(items=record["stats"]["passages"],
                             bytes=sum(shard["size"] for shard in record["shards"]))
            else:
                progress.add(skipped=True, items=record["stats"]["passages"],
                             note=f"{record['lang']} file {record['file_number']}")
        seconds = time.perf_counter() - started
    records.sort(key=lambda r: (langs.index(r["lang"]), r["file_number"]))
    if len(records) != len(files):  # never commit a manifest that misses an input file
        raise StorageError(f"{len(files)} input files but {len(records)} results came back from Ray; "
                           "rerun the job (finished files are kept)")

    languages: dict[str, dict[str, int]] = {}
    for lang in langs:
        totals: Counter[str] = Counter(files=0, processed=0)
        for record in (r for r in records if r["lang"] == lang):
            totals.update(record["stats"])
            totals["files"] += 1
            totals["processed"] += record["status"] == "processed"
        languages[lang] = dict(totals)
    manifest = _commit(out, config, records, languages)
    for lang, used in manifest["segmenters"].items():
        if len(used) > 1:
            log.warning("%s was segmented with %s on different nodes: install the same optional "
                        "segmenters everywhere, or pass --segmenter chars", lang, " and ".join(used))
    stray = _stray_shards(out, manifest["files"])
    if stray:
        log.warning("%d Parquet files under %s are not in its manifest (left by a run with other "
                    "inputs or options, e.g. %s); readers that go through manifest.json ignore them",
                    len(stray), out.uri, stray[0])

    processed = [r for r in records if r["status"] == "processed"]
    new_passages = sum(r["stats"]["passages"] for r in processed)
    summary = {
        "out": out.uri, "manifest": out.join(storage.MANIFEST_NAME).uri, "files": len(records),
        "files_processed": len(processed), "files_skipped": len(records) - len(processed),
        "passages": manifest["rows"], "passages_new": new_passages, "seconds": seconds,
        "passages_per_s": new_passages / seconds if seconds > 0 else 0.0,
        "languages": languages, "segmenters": manifest["segmenters"],
        "quarantined": sum(r["stats"]["bad_records"] for r in records) if config.on_bad_record == "skip" else 0,
    }
    _print_summary(summary)
    progress.finish()
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    columns = ["files", "articles", *(f"dropped_{r}" for r in DROP_REASONS), "bad_records", "passages"]
    heads = ["files", "articles", *(f"drop:{r[:6]}" for r in DROP_REASONS), "bad", "passages"]
    print(f"{'lang':>6} " + " ".join(f"{h:>11}" for h in heads) + "  segmenter")
    totals: Counter[str] = Counter()
    for lang, row in summary["languages"].items():
        totals.update({c: row.get(c, 0) for c in columns})
        print(f"{lang:>6} " + " ".join(f"{row.get(c, 0):>11}" for c in columns)
              + "  " + ",".join(summary["segmenters"].get(lang, [])))
    print(f"{'all':>6} " + " ".join(f"{totals[c]:>11}" for c in columns))
    skipped = f" ({summary['files_skipped']} done by an earlier run, kept)" if summary["files_skipped"] else ""
    print(f"processed {summary['files_processed']} of {summary['files']} input files{skipped}: "
          f"{summary['passages_new']} passages in {summary['seconds']:.1f} s "
          f"({summary['passages_per_s']:.0f} passages/s)")
    if summary["quarantined"]:
        print(f"skipped {summary['quarantined']} malformed lines; they are under _quarantine/")
    print(f"{summary['passages']} passages committed; manifest: {summary['manifest']}")
