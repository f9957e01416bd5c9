"""Splitting a passage corpus into index shards before any embedding starts (pure, no Ray).

A shard is ``shard_size`` consecutive records of one input file. Uncompressed TSV/JSONL files
are scanned once for the byte offset of every shard's first line, so each shard is read by its
own task with a seek (one 26 GB TSV still spreads over every worker); Parquet shards come from
row counts in the footers. A compressed text file cannot be seeked, so its shards form one task
that reads the file once, in order. The plan is saved beside the index, so a resumed job
processes exactly the same shards. :func:`sample_passages` draws the seeded training sample of an
index that needs one (IVF, PQ) from the same plan.

A plan holds byte offsets, so it is only true of the bytes it was made from. Each shard records the
sha256 of its lines (``source_sha256``, computed in the same scan that finds the offsets: no extra
read), and each input file its size and mtime (:func:`input_state`). A resumed job compares the
files' size and mtime (cheap) and replans when they changed; a shard already built is kept only when
the new plan has a shard with the same number, lines and content hash. The reader of a shard hashes
the lines it reads and refuses a shard whose hash differs from the plan's, so an edit that keeps
size and mtime, or one made while the job runs, is caught where the bytes are read.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_cora.data.passages import (
    MAX_PASSAGE_CHARS,
    Segment,
    detect_compression,
    detect_format,
    iter_passages,
    parse_tsv_header,
    passage_files,
)
from ray_cora.data.records import BadRecords
from ray_cora.errors import StorageError
from ray_cora.index.trained import sample_rows
from ray_cora.storage import Location, iter_lines, list_files, open_input, resolve

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
    # sha256 of the shard's lines (each with its newline); Parquet: of the whole file.
    source_sha256: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "ShardSpec":
        columns = data.get("tsv_columns")
        return cls(**{**data, "tsv_columns": tuple(columns) if columns else None})

    @property
    def segment(self) -> Segment:
        return Segment(self.first_line, self.num_lines, self.start_byte, self.tsv_columns)

    def same_records(self, other: "ShardSpec") -> bool:
        """Whether ``other`` names the same records with the same content (its offset may differ:
        an edit earlier in the file moves a shard's bytes without changing them)."""
        return (self.source_sha256 is not None and self.source_sha256 == other.source_sha256
                and (self.number, self.uri, self.format, self.first_line, self.num_lines, self.tsv_columns)
                == (other.number, other.uri, other.format, other.first_line, other.num_lines, other.tsv_columns))


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
        try:
            segments = _file_segments(file, fmt, shard_size)
        except (OSError, EOFError, zlib.error, pa.ArrowInvalid) as exc:
            # Planning reads every file once (line offsets, Parquet footers): a damaged .gz or a
            # file that is not Parquet fails here, named, before any actor starts.
            kind = " ".join(filter(None, (detect_compression(file.path), fmt)))
            raise StorageError(f"{file.uri}: cannot be read as {kind}: {str(exc).strip() or type(exc).__name__} "
                               "(damaged or truncated?); replace or remove the file, then rerun") from None
        # Absolute: the actors that read a shard need not share the driver's working directory.
        specs = [ShardSpec(number + i, absolute_uri(file), fmt, *seg) for i, seg in enumerate(segments)]
        if fmt == "parquet" and specs:
            # Row groups have no cheap per-shard bytes: any change to the file redoes all its shards.
            whole = file_sha256(file)
            specs = [replace(spec, source_sha256=whole) for spec in specs]
        number += len(specs)
        if fmt != "parquet" and detect_compression(file.path):
            tasks.append(specs) if specs else None
        else:
            tasks.extend([spec] for spec in specs)
    return tasks


def absolute_uri(loc: Location) -> str:
    """A local file as an absolute path (valid from any working directory); other URIs as given."""
    return loc.uri if "://" in loc.uri else loc.path


def plan_fingerprint(tasks: list[list[ShardSpec]]) -> str:
    """sha256 of the plan's JSON: a saved plan is checked against it before it is trusted."""
    payload = json.dumps([[asdict(s) for s in task] for task in tasks], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _file_segments(file: Location, fmt: str, shard_size: int) -> list[tuple]:
    if fmt == "parquet":
        with file.fs.open_input_file(file.path) as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows
        return [(start + 1, min(shard_size, rows - start), 0, None, None) for start in range(0, rows, shard_size)]
    header = None
    if fmt == "tsv":
        with open_input(file) as stream:
            first = next(iter(iter_lines(stream)), b"").decode("utf-8", errors="replace").lstrip("\ufeff")
        header = parse_tsv_header(first)
    first_record_line = 2 if header else 1
    offsets, total_lines, digests = shard_offsets(file, first_record_line, shard_size, digests=True)
    return [(line, min(shard_size, total_lines - line + 1), offset, header, digest)
            for line, offset, digest in zip(range(first_record_line, total_lines + 1, shard_size), offsets, digests)]


def shard_offsets(file: Location, first_line: int, shard_size: int, *, digests: bool = False
                  ) -> tuple[list[int], int] | tuple[list[int], int, list[str]]:
    """Byte offsets of the lines that start shards (0s for compressed files: they are read from
    the start), and the file's number of lines, in one streaming pass; with ``digests``, also the
    sha256 of each shard's lines, each with its newline (as
    :func:`~ray_cora.data.passages.decoded_lines` feeds its ``digest``)."""
    compressed = detect_compression(file.path) is not None
    offsets = [0] if first_line == 1 else []
    hashes = [hashlib.sha256()] if first_line == 1 else []
    position, lines, last_byte = 0, 0, b"\n"
    with open_input(file) as stream:
        while chunk := stream.read(_SCAN_CHUNK):
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
            # The line after the j-th newline of this chunk is line number lines + j + 2.
            line_numbers = lines + np.arange(len(newlines)) + 2
            starts = (line_numbers >= first_line) & ((line_numbers - first_line) % shard_size == 0)
            cut = 0
            for i in newlines[starts]:
                if digests and hashes:
                    hashes[-1].update(chunk[cut:i + 1])
                hashes.append(hashlib.sha256())
                cut = int(i) + 1
                offsets.append(position + cut)
            if digests and hashes:
                hashes[-1].update(chunk[cut:])
            lines += len(newlines)
            position += len(chunk)
            last_byte = chunk[-1:]
    if position and last_byte != b"\n":
        lines += 1  # a last line without a trailing newline
        if digests and hashes:
            hashes[-1].update(b"\n")  # hashed as the readers hash it: every line with its newline
    if compressed:
        offsets = [0] * len(offsets)
    if digests:
        return offsets, lines, [h.hexdigest() for h in hashes]
    return offsets, lines


def file_sha256(file: Location) -> str:
    """sha256 of a file's bytes as stored (not decompressed)."""
    digest = hashlib.sha256()
    with open_input(file, decompress=False) as stream:
        while chunk := stream.read(_SCAN_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def input_state(uri: str, *, format: str | None = None) -> list[dict[str, Any]]:
    """``{uri, size, mtime_ns}`` of every passage file at ``uri``: what a resumed job compares first
    (a stat per file, no read); ``mtime_ns`` is None where the store has none."""
    return [file_state(file) for file in passage_files(uri, format=format)]


def file_state(file: Location) -> dict[str, Any]:
    """``{uri, size, mtime_ns}`` of one file (one stat)."""
    info = file.info()
    mtime = info.mtime_ns if info.mtime is not None else None
    return {"uri": absolute_uri(file), "size": info.size, "mtime_ns": mtime}


def input_fingerprint(uri: str) -> list[dict[str, Any]]:
    """``{uri, size, mtime_ns, sha256}`` of the file at ``uri`` (of every file, for a folder): a
    finished job's record of the input it read, so a rerun can tell "nothing to do" from "the input
    changed". The whole file is hashed: used for question sets, which are small next to the work a
    rerun would skip, and where a same-size edit must not pass as unchanged."""
    loc = resolve(uri)
    kind = loc.info().type
    if kind == pafs.FileType.NotFound:
        return []  # the job's reader says so, with its own message
    files = list_files(loc) if kind == pafs.FileType.Directory else [loc]
    return [{**file_state(file), "sha256": file_sha256(file)} for file in files]


def changed_inputs(saved: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[str]:
    """One phrase per input that differs between two :func:`input_state` lists (empty: same)."""
    before = {s["uri"]: s for s in saved}
    after = {s["uri"]: s for s in now}
    changes = [f"{uri} is new" for uri in after if uri not in before]
    changes += [f"{uri} is gone" for uri in before if uri not in after]
    for uri in before.keys() & after.keys():
        a, b = before[uri], after[uri]
        if a["size"] != b["size"]:
            changes.append(f"{uri} changed (size {a['size']:,} → {b['size']:,} bytes)")
        elif a.get("mtime_ns") != b.get("mtime_ns"):
            changes.append(f"{uri} changed (modified since; same size)")
    return sorted(changes)


def check_shard_digest(spec: ShardSpec, digest: str) -> None:
    """Raise :class:`~ray_cora.errors.StorageError` when the lines a shard's reader hashed are not
    the ones the plan hashed: the file changed after the plan was made."""
    if spec.source_sha256 is not None and digest != spec.source_sha256:
        raise StorageError(
            f"{spec.uri}: lines {spec.first_line}-{spec.first_line + spec.num_lines - 1} changed since the "
            "plan was made (content sha256 differs); rerun the job to replan (if the file's size and mtime "
            "are unchanged, delete plan.json in the output folder first)")


def planned_records(tasks: list[list[ShardSpec]]) -> int:
    """Records the plan covers (lines of record, malformed ones included)."""
    return sum(spec.num_lines for task in tasks for spec in task)


def sample_passages(tasks: list[list[ShardSpec]], size: int, *, seed: int,
                    lang: str | None = None, max_chars: int | None = MAX_PASSAGE_CHARS) -> Iterator[dict[str, str]]:
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
                                 bad_records=BadRecords("skip"), max_chars=max_chars)
        for position, passage in enumerate(passages):
            if position in wanted_set:
                yield passage
            if position >= last:
                break
