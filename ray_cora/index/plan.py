"""Splitting a passage corpus into index shards before any embedding starts (pure, no Ray).

A shard is ``shard_size`` consecutive records of one input file. Uncompressed TSV/JSONL files
are scanned once for the byte offset of every shard's first line, so each shard is read by its
own task with a seek (one 26 GB TSV still spreads over every worker); Parquet shards come from
row counts in the footers. A compressed text file cannot be seeked, so its shards form one task
that reads the file once, in order. The plan is saved beside the index, so a resumed job
processes exactly the same shards. :func:`sample_passages` draws the seeded training sample of an
index that needs one (IVF, PQ) from the same plan.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq

from ray_cora.data.passages import (
    Segment,
    detect_compression,
    detect_format,
    iter_passages,
    parse_tsv_header,
    passage_files,
)
from ray_cora.data.records import BadRecords
from ray_cora.index.trained import sample_rows
from ray_cora.storage import Location, iter_lines, open_input

_SCAN_CHUNK = 16 << 20


@dataclass(frozen=True)
class ShardSpec:
    """One shard: its number and the segment of which input file holds its records."""

    number: int
    uri: str
    format: str
    first_line: int
    num_lines: int
    start_byte: int
    tsv_columns: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "ShardSpec":
        columns = data.get("tsv_columns")
        return cls(**{**data, "tsv_columns": tuple(columns) if columns else None})

    @property
    def segment(self) -> Segment:
        return Segment(self.first_line, self.num_lines, self.start_byte, self.tsv_columns)


def plan_corpus(uri: str, *, shard_size: int, format: str | None = None) -> list[list[ShardSpec]]:
    """Tasks of shards (each task a list of consecutive shards of one file), numbered globally.

    Every record line of every file belongs to exactly one shard; no trailing records are lost.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    tasks: list[list[ShardSpec]] = []
    number = 0
    for file in passage_files(uri, format=format):
        fmt = format or detect_format(file.uri)
        segments = _file_segments(file, fmt, shard_size)
        specs = [ShardSpec(number + i, file.uri, fmt, *seg) for i, seg in enumerate(segments)]
        number += len(specs)
        if fmt != "parquet" and detect_compression(file.path):
            tasks.append(specs) if specs else None
        else:
            tasks.extend([spec] for spec in specs)
    return tasks


def plan_fingerprint(tasks: list[list[ShardSpec]]) -> str:
    payload = json.dumps([[asdict(s) for s in task] for task in tasks], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _file_segments(file: Location, fmt: str, shard_size: int) -> list[tuple]:
    if fmt == "parquet":
        with file.fs.open_input_file(file.path) as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows
        return [(start + 1, min(shard_size, rows - start), 0, None) for start in range(0, rows, shard_size)]
    header = None
    if fmt == "tsv":
        with open_input(file) as stream:
            first = next(iter(iter_lines(stream)), b"").decode("utf-8", errors="replace").lstrip("\ufeff")
        header = parse_tsv_header(first)
    first_record_line = 2 if header else 1
    offsets, total_lines = shard_offsets(file, first_record_line, shard_size)
    return [(line, min(shard_size, total_lines - line + 1), offset, header)
            for line, offset in zip(range(first_record_line, total_lines + 1, shard_size), offsets)]


def shard_offsets(file: Location, first_line: int, shard_size: int) -> tuple[list[int], int]:
    """Byte offsets of the lines that start shards (0s for compressed files: they are read from
    the start), and the file's number of lines, in one streaming pass."""
    compressed = detect_compression(file.path) is not None
    offsets = [0] if first_line == 1 else []
    position, lines, last_byte = 0, 0, b"\n"
    with open_input(file) as stream:
        while chunk := stream.read(_SCAN_CHUNK):
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
            # The line after the j-th newline of this chunk is line number lines + j + 2.
            line_numbers = lines + np.arange(len(newlines)) + 2
            starts = (line_numbers >= first_line) & ((line_numbers - first_line) % shard_size == 0)
            offsets.extend(int(position + i + 1) for i in newlines[starts])
            lines += len(newlines)
            position += len(chunk)
            last_byte = chunk[-1:]
    if position and last_byte != b"\n":
        lines += 1  # a last line without a trailing newline
    if compressed:
        offsets = [0] * len(offsets)
    return offsets, lines


def planned_records(tasks: list[list[ShardSpec]]) -> int:
    """Records the plan covers (lines of record, malformed ones included)."""
    return sum(spec.num_lines for task in tasks for spec in task)


def sample_passages(tasks: list[list[ShardSpec]], size: int, *, seed: int,
                    lang: str | None = None) -> Iterator[dict[str, str]]:
    """A seeded uniform sample of about ``size`` passages of the planned corpus (the training set
    of its FAISS index), shard by shard in plan order.

    Positions are drawn over all planned records; each shard is read from its first line only up
    to its last drawn position and not at all when none falls in it. Malformed records are left
    out (the embed job reports them), so a shard with some yields slightly fewer.
    """
    specs = [spec for task in tasks for spec in task]
    starts = np.cumsum([0] + [spec.num_lines for spec in specs])
    picked = sample_rows(int(starts[-1]), size, seed)
    for spec, start, end in zip(specs, starts[:-1], starts[1:]):
        wanted = picked[(picked >= start) & (picked < end)] - start
        if not len(wanted):
            continue
        wanted_set, last = set(wanted.tolist()), int(wanted[-1])
        passages = iter_passages(spec.uri, format=spec.format, lang=lang, segment=spec.segment,
                                 bad_records=BadRecords("skip"))
        for position, passage in enumerate(passages):
            if position in wanted_set:
                yield passage
            if position >= last:
                break
