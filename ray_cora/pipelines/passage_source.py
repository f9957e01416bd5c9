"""Passage files as a Ray Data dataset: one read task per file, each streaming Arrow batches."""

from __future__ import annotations

import posixpath
from typing import Iterator

import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from ray_cora import storage
from ray_cora.data.passages import PASSAGE_SCHEMA, iter_passage_batches, passage_files
from ray_cora.data.records import BadRecords, OnBadRecord


class PassageDatasource(Datasource):
    """Reads TSV/JSONL/Parquet passage files into the ``pid, lang, title, text`` schema.

    With ``on_bad_record="skip"`` each read task writes the records it skipped to
    ``<quarantine>/<file-number>-<file-name>.jsonl``.
    """

    def __init__(self, uri: str, *, format: str | None = None, lang: str | None = None,
                 on_bad_record: OnBadRecord = "error", quarantine: str | None = None,
                 batch_size: int = 4096) -> None:
        self._files = [f.uri for f in passage_files(uri, format=format)]
        self._format, self._lang = format, lang
        self._on_bad_record, self._quarantine = on_bad_record, quarantine
        self._batch_size = batch_size

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        tasks = []
        for number, uri in enumerate(self._files):
            # Copy what the task needs into locals so the closure does not capture self.
            fmt, lang, policy = self._format, self._lang, self._on_bad_record
            quarantine, batch_size = self._quarantine, self._batch_size

            def read(uri=uri, number=number) -> Iterator[pa.Table]:
                bad = BadRecords(policy)
                yield from iter_passage_batches(uri, batch_size=batch_size, format=fmt, lang=lang,
                                                bad_records=bad)
                if bad.count and quarantine:
                    name = f"{number:05d}-{posixpath.basename(uri)}.jsonl"
                    storage.write_bytes(storage.resolve(quarantine).join(name), bad.to_jsonl())

            metadata = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                     input_files=(uri,))
            tasks.append(ReadTask(read, metadata, schema=PASSAGE_SCHEMA,
                                  per_task_row_limit=per_task_row_limit))
        return tasks
