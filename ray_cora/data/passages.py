"""Passage corpora (DPR/CORA TSV, JSONL, Parquet) read as a stream, one schema out:
``pid, lang, title, text`` (all strings).

CORA's ``all_w100.tsv`` is 26 GB, so nothing here loads a whole file: TSV and JSONL are split into
lines chunk by chunk, Parquet is read a record batch at a time.

A passage's language comes from, in order: its own ``lang`` column/field; the ``lang`` the caller
gives for the whole file; else it is ``und`` (:data:`~ray_cora.languages.UNKNOWN_LANG`). CORA writes
``all_w100.tsv`` as ``id, text, title`` with integer ids and no language
(AkariAsai/CORA ``wikipedia_preprocess/build_dpr_w100_data.py``, ``write_para_data_to_tsv``), so
its passages read as ``und`` here; the passage store then fills them from the languages an index
recorded per pid (``import-embeddings`` takes them from CORA's ``wiki_emb_<lang>_<n>`` file names).
``stats`` counts where each language came from (``lang_column``, ``lang_given``, ``lang_unknown``).

Size limits, so one huge record cannot exhaust a worker: a passage's text is cut to
``max_chars`` characters (:data:`MAX_PASSAGE_CHARS` by default, ``--max-passage-chars``) and
counted in ``stats["truncated"]``; a physical line longer than :data:`MAX_LINE_BYTES` is never held
in memory whole: it is a malformed record (its first bytes go to the quarantine).
"""

from __future__ import annotations

import csv
import hashlib
import json
import zlib
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_cora.data.records import BadRecords
from ray_cora.data.qa import lone_surrogate
from ray_cora.errors import ConfigError, RayCoraError, StorageError
from ray_cora.languages import UNKNOWN_LANG, normalize_lang
from ray_cora.storage import Location, list_files, open_input, resolve

PASSAGE_FIELDS = ("pid", "lang", "title", "text")
PASSAGE_SCHEMA = pa.schema([(name, pa.string()) for name in PASSAGE_FIELDS])
FORMATS = ("tsv", "jsonl", "parquet")

_SUFFIXES = {
    "tsv": (".tsv", ".tsv.gz", ".tsv.bz2", ".tsv.zst"),
    # Not ".json": a folder of passages also holds manifest.json / plan.json.
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.bz2", ".jsonl.zst"),
    "parquet": (".parquet",),
}
_TSV_POSITIONAL = ("id", "text", "title", "lang")
# Where a passage's language came from, as counted in iter_passages' stats.
LANG_SOURCES = ("lang_column", "lang_given", "lang_unknown")
# A DPR/CORA passage is 100 words (~600 characters; ~2,000 in the longest scripts); encoders read
# at most a few hundred tokens of it. 20,000 characters keeps every real passage whole while one
# runaway record (a 20 MB line once grew an mUSE actor to 20 GB) costs no more than a normal batch.
# Cut rather than quarantined: the passage keeps its place in the index (an encoder reads only its
# first few hundred tokens anyway), so a long but valid passage is never lost; the count is reported.
MAX_PASSAGE_CHARS = 20_000
# A line is split out of the stream before it is parsed; above this it is dropped as it is read
# (a malformed record), so a file without newlines cannot fill a worker's memory.
MAX_LINE_BYTES = 64 << 20
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Segment:
    """A contiguous run of one file's records, so several workers can share a large file.

    Text formats: ``num_lines`` physical lines starting at 1-based ``first_line``, found at
    ``start_byte`` (a seek, for uncompressed files; compressed files are read up to it).
    ``tsv_columns`` carries the header of a TSV whose header line lies before the segment.
    Parquet: rows ``first_line - 1 .. first_line - 1 + num_lines``.
    """

    first_line: int = 1
    num_lines: int | None = None
    start_byte: int = 0
    tsv_columns: tuple[str, ...] | None = None


WHOLE_FILE = Segment()


def detect_format(uri: str) -> str:
    """The passage format from a file name: ``tsv``, ``jsonl`` or ``parquet``."""
    name = uri.lower()
    for fmt, suffixes in _SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    raise ConfigError(f"{uri}: cannot tell the passage format from the file name; name it *.tsv, "
                      "*.jsonl or *.parquet (optionally .gz), or pass --format tsv|jsonl|parquet")


def passage_files(uri: str, *, format: str | None = None) -> list[Location]:
    """The passage files at ``uri``: the file itself, or every passage file in the folder."""
    loc = resolve(uri)
    if loc.is_file():
        return [loc]
    suffixes = _SUFFIXES[format] if format else tuple(s for v in _SUFFIXES.values() for s in v)
    found = [f for f in list_files(loc) if f.path.lower().endswith(suffixes)]
    if not found:
        raise ConfigError(f"{uri}: folder holds no passage files ({', '.join(suffixes)})")
    return found


def iter_passages(
    uri: str | Location,
    *,
    format: str | None = None,
    lang: str | None = None,
    bad_records: BadRecords | None = None,
    stats: dict[str, int] | None = None,
    segment: Segment = WHOLE_FILE,
    max_chars: int | None = MAX_PASSAGE_CHARS,
    digest: Any = None,
) -> Iterator[dict[str, str]]:
    """Stream the passages of one file (or one :class:`Segment` of it) as ``{pid, lang, title, text}``.

    ``lang`` sets the language when the file has no ``lang`` column/field; without either a passage
    is ``und``. Malformed records go to ``bad_records`` (default: raise
    :class:`~ray_cora.errors.BadRecordError` naming file:line). A text longer than ``max_chars``
    characters is cut there and counted in ``stats["truncated"]`` (``None``: no limit). ``digest``
    (a ``hashlib`` object) is fed every line of the segment, each with its newline, as the shard
    plan hashes it (:attr:`~ray_cora.index.plan.ShardSpec.source_sha256`).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "p.tsv")
    >>> _ = open(path, "w").write("id\\ttext\\ttitle\\n1\\tMount Fuji is 3,776 m high.\\tMount Fuji\\n")
    >>> next(iter_passages(path, lang="en"))["title"]
    'Mount Fuji'
    >>> next(iter_passages(path))["lang"]
    'und'
    """
    for _, passage in numbered_passages(uri, format=format, lang=lang, bad_records=bad_records, stats=stats,
                                        segment=segment, max_chars=max_chars, digest=digest):
        yield passage


def numbered_passages(
    uri: str | Location,
    *,
    format: str | None = None,
    lang: str | None = None,
    bad_records: BadRecords | None = None,
    stats: dict[str, int] | None = None,
    segment: Segment = WHOLE_FILE,
    max_chars: int | None = MAX_PASSAGE_CHARS,
    digest: Any = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """:func:`iter_passages` with each passage's line number (Parquet: row number), 1-based."""
    loc = uri if isinstance(uri, Location) else resolve(uri)
    fmt = format or detect_format(loc.uri)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown passage format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if max_chars is not None and max_chars < 1:
        raise ConfigError(f"max passage characters must be >= 1, got {max_chars}")
    default_lang = normalize_lang(lang) if lang else None
    bad = bad_records if bad_records is not None else BadRecords("error")
    counts = stats if stats is not None else {}
    for key in ("read", "yielded", "bad", "truncated", *LANG_SOURCES):
        counts.setdefault(key, 0)
    if fmt == "parquet":
        rows = _parquet_rows(loc, segment)
    else:
        rows = {"tsv": _tsv_rows, "jsonl": _jsonl_rows}[fmt](loc, segment, digest)
    for line, row, raw in rows:
        counts["read"] += 1
        problem = row if isinstance(row, str) else None
        if problem is None:
            try:
                passage, lang_source = _to_passage(row, default_lang)
            except _Bad as exc:
                problem = str(exc)
        if problem is not None:
            counts["bad"] += 1
            bad.report(loc.uri, line, problem, raw=raw)
            continue
        if max_chars is not None and len(passage["text"]) > max_chars:
            passage["text"] = passage["text"][:max_chars]
            counts["truncated"] += 1
        counts["yielded"] += 1
        counts[lang_source] += 1
        yield line, passage


def iter_passage_batches(
    uri: str | Location, *, batch_size: int = 4096, **kwargs: Any
) -> Iterator[pa.Table]:
    """:func:`iter_passages` grouped into Arrow tables of at most ``batch_size`` rows."""
    return passage_tables(iter_passages(uri, **kwargs), batch_size=batch_size)


def passage_tables(passages: Iterable[dict[str, str]], *, batch_size: int) -> Iterator[pa.Table]:
    """Group passage dicts into Arrow tables (``PASSAGE_SCHEMA``) of at most ``batch_size`` rows."""
    rows: list[dict[str, str]] = []
    for passage in passages:
        rows.append(passage)
        if len(rows) >= batch_size:
            yield pa.Table.from_pylist(rows, schema=PASSAGE_SCHEMA)
            rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=PASSAGE_SCHEMA)


def pid_hash(pid: str) -> int:
    """A 63-bit hash of a passage id (as :func:`iter_passages` writes it: a stripped string)."""
    return int.from_bytes(hashlib.blake2b(pid.encode("utf-8"), digest_size=8).digest(), "little") >> 1


class DuplicatePids:
    """Repeated passage ids over millions of passages in 8 bytes per id: hashes are collected as
    the passages stream past and sorted once; only on a repeated hash is the input read again
    (:meth:`check`), to name both lines and to rule out a hash collision. Ids are compared as
    :func:`iter_passages` writes them, so ``1`` and ``"1"`` are the same id.

    >>> d = DuplicatePids(); d.add_many(["1", "2"]); d.repeated().size
    0
    """

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []

    def add_many(self, pids: Iterable[str]) -> None:
        pids = list(pids)
        self._chunks.append(np.fromiter((pid_hash(p) for p in pids), dtype=np.int64, count=len(pids)))

    def repeated(self) -> np.ndarray:
        """The hashes seen more than once."""
        if not self._chunks:
            return np.zeros(0, np.int64)
        hashes = np.sort(np.concatenate(self._chunks))
        return np.unique(hashes[1:][hashes[1:] == hashes[:-1]])

    def check(self, reread: Callable[[], Iterable[tuple[str, int, str]]]) -> None:
        """Raise :class:`ConfigError` naming the first repeated id and both its ``file:line``;
        ``reread`` yields ``(file, line, pid)`` for the input again, in order."""
        repeated = set(self.repeated().tolist())
        if not repeated:
            return
        first_seen: dict[str, str] = {}
        for source, line, pid in reread():
            if pid_hash(pid) not in repeated:
                continue
            if pid in first_seen:
                raise ConfigError(f"duplicate passage id {pid!r} at {first_seen[pid]} and {source}:{line} "
                                  "(ids are compared as text, so 1 and \"1\" are the same): give every "
                                  "passage its own id")
            first_seen[pid] = f"{source}:{line}"


class _Bad(Exception):
    pass


def _to_passage(row: dict[str, Any], default_lang: str | None) -> tuple[dict[str, str], str]:
    pid = row.get("pid", row.get("id"))
    if pid is None or (isinstance(pid, str) and not pid.strip()):
        raise _Bad("missing field 'id' (or 'pid')")
    if isinstance(pid, (bool, float)) or not isinstance(pid, (str, int)):
        raise _Bad(f"field 'id' must be a string or an integer, got {type(pid).__name__}")
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _Bad("missing or empty field 'text'")
    title = row.get("title") or ""
    if not isinstance(title, str):
        raise _Bad(f"field 'title' must be a string, got {type(title).__name__}")
    for name, value in (("id", pid), ("text", text), ("title", title)):
        # JSON's "\ud800" escape decodes to a lone surrogate: not Unicode, no encoder can read it.
        problem = lone_surrogate(value, name) if isinstance(value, str) else None
        if problem:
            raise _Bad(problem)
    raw_lang = row.get("lang")
    if raw_lang:
        try:
            lang, source = normalize_lang(raw_lang), "lang_column"
        except RayCoraError:
            raise _Bad(f"unknown language code {raw_lang!r} in field 'lang'") from None
    elif default_lang:
        lang, source = default_lang, "lang_given"
    else:
        lang, source = UNKNOWN_LANG, "lang_unknown"
    return {"pid": str(pid).strip(), "lang": lang, "title": title.strip(), "text": text.strip()}, source


@dataclass(frozen=True)
class LineProblem:
    """Why a line could not be decoded (stands in for its text in :func:`decoded_lines`)."""

    reason: str


def decoded_lines(loc: Location, segment: Segment, *, digest: Any = None,
                  max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str | LineProblem, bytes]]:
    """(line number, text — or a :class:`LineProblem` when not UTF-8 or too long —, raw bytes) for
    every non-blank line of the segment. ``digest`` is fed each of the segment's lines, blank ones
    included, as ``line + b"\\n"`` (the shard plan's content hash); a line over
    ``max_line_bytes`` comes with only its first 10,000 bytes."""
    seek = segment.start_byte > 0 and detect_compression(loc.path) is None
    last = segment.first_line - 1
    try:
        for item in _segment_lines(loc, segment, seek=seek, digest=digest, max_line_bytes=max_line_bytes):
            last = item[0]
            yield item
    except (OSError, EOFError, zlib.error) as exc:
        # A damaged .gz/.bz2 (or a file that went away) fails inside the decompressor's read: say
        # which file and how far it got, instead of a traceback from deep inside pyarrow or gzip.
        raise StorageError(f"{loc.uri}: cannot be read after line {last}: {str(exc).strip() or type(exc).__name__} "
                           f"(a damaged or truncated {detect_compression(loc.path) or 'file'}?); replace the file, "
                           "then rerun") from None


def _segment_lines(loc: Location, segment: Segment, *, seek: bool, digest: Any,
                   max_line_bytes: int) -> Iterator[tuple[int, str | LineProblem, bytes]]:
    with (loc.fs.open_input_file(loc.path) if seek else open_input(loc)) as stream:
        if seek:
            stream.seek(segment.start_byte)
        number = segment.first_line - 1 if seek else 0
        # bounded_lines stops after the segment's last line.
        for raw, length in bounded_lines(stream, max_line_bytes=max_line_bytes, digest=digest,
                                         skip=segment.first_line - 1 - number, count=segment.num_lines):
            number += 1
            if number < segment.first_line:
                continue
            if length > max_line_bytes:
                yield number, LineProblem(f"line is {length:,} bytes, longer than the {max_line_bytes:,}-byte "
                                          "limit (is it a passage file, with one record per line?)"), raw
                continue
            raw = raw.rstrip(b"\r")
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, LineProblem("invalid UTF-8"), raw
                continue
            yield number, text.removeprefix("\ufeff") if number == 1 else text, raw


def bounded_lines(stream: IO[bytes], *, max_line_bytes: int = MAX_LINE_BYTES, digest: Any = None,
                  skip: int = 0, count: int | None = None) -> Iterator[tuple[bytes, int]]:
    """``(line without its newline, its length in bytes)`` for each line of a binary stream; a line
    longer than ``max_line_bytes`` is not kept whole (only its first 10,000 bytes come back), so
    memory stays bounded whatever the input. After ``skip`` lines, the next ``count`` lines (all,
    when None) are fed to ``digest`` as ``line + b"\\n"``; reading stops after them.

    >>> import io
    >>> [(line, n) for line, n in bounded_lines(io.BytesIO(b"ab\\n" + b"x" * 50 + b"\\nc"), max_line_bytes=10)][::2]
    [(b'ab', 2), (b'c', 1)]
    """
    number = 0
    pending: list[bytes] = []  # pieces of the unfinished line (only its head once it is too long)
    length = 0

    def hashed(n: int) -> bool:
        return digest is not None and n > skip and (count is None or n <= skip + count)

    while chunk := stream.read(_READ_CHUNK):
        parts = chunk.split(b"\n")
        for part in parts[:-1]:
            number += 1
            if hashed(number):
                digest.update(part + b"\n")
            line = b"".join(pending) + part if pending else part
            full = length + len(part)
            yield (line if full <= max_line_bytes else line[:10_000]), full
            pending, length = [], 0
            if count is not None and number >= skip + count:
                return
        tail = parts[-1]
        if tail:
            if hashed(number + 1):
                digest.update(tail)
            if length + len(tail) <= max_line_bytes:
                pending.append(tail)
            elif length <= max_line_bytes:  # just went over: keep only the head for the quarantine
                pending = [(b"".join(pending) + tail)[:10_000]]
            length += len(tail)
    if length:
        number += 1
        if hashed(number):
            digest.update(b"\n")
        yield (b"".join(pending) if length <= max_line_bytes else b"".join(pending)[:10_000]), length


def detect_compression(path: str) -> str | None:
    for suffix, name in ((".gz", "gzip"), (".bz2", "bz2"), (".zst", "zstd"), (".lz4", "lz4")):
        if path.endswith(suffix):
            return name
    return None


def parse_tsv_header(first_line: str) -> tuple[str, ...] | None:
    """The column names when ``first_line`` is a header (has ``id``/``pid`` and ``text``)."""
    names = tuple(f.strip().lower() for f in first_line.split("\t"))
    return names if ("id" in names or "pid" in names) and "text" in names else None


def _tsv_rows(loc: Location, segment: Segment, digest: Any = None) -> Iterator[tuple[int, dict | str, bytes]]:
    columns = segment.tsv_columns
    for number, text, raw in decoded_lines(loc, segment, digest=digest):
        if isinstance(text, LineProblem):
            yield number, text.reason, raw
            continue
        fields = next(csv.reader([text], delimiter="\t")) if '"' in text else text.split("\t")
        if columns is None:
            columns = parse_tsv_header(text)
            if columns is not None:
                continue
            columns = _TSV_POSITIONAL[: max(3, min(len(fields), 4))]
        if len(fields) != len(columns):
            yield number, (f"expected {len(columns)} tab-separated columns ({', '.join(columns)}), "
                           f"found {len(fields)}"), raw
            continue
        yield number, dict(zip(columns, fields)), raw


def _jsonl_rows(loc: Location, segment: Segment, digest: Any = None) -> Iterator[tuple[int, dict | str, bytes]]:
    for number, text, raw in decoded_lines(loc, segment, digest=digest):
        if isinstance(text, LineProblem):
            yield number, text.reason, raw
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, f"invalid JSON: {exc.msg} at column {exc.colno}", raw
            continue
        except RecursionError:
            yield number, "JSON nested too deeply to read (a passage record is one flat object)", raw
            continue
        if not isinstance(obj, dict):
            yield number, f"expected a JSON object, got {type(obj).__name__}", raw
            continue
        yield number, obj, raw


def _parquet_rows(loc: Location, segment: Segment) -> Iterator[tuple[int, dict | str, bytes]]:
    with loc.fs.open_input_file(loc.path) as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"{loc.uri}: not a readable Parquet file: {exc}") from exc
        names = set(parquet.schema_arrow.names)
        if "text" not in names or not names & {"pid", "id"}:
            raise ConfigError(f"{loc.uri}: Parquet passages need columns 'pid' (or 'id') and 'text'; "
                              f"found {sorted(names)}")
        wanted = [c for c in ("pid", "id", "lang", "title", "text") if c in names]
        first = segment.first_line
        end = None if segment.num_lines is None else first - 1 + segment.num_lines
        row_number, offset, groups = 0, 0, []
        for group in range(parquet.num_row_groups):  # read only the row groups the segment touches
            group_rows = parquet.metadata.row_group(group).num_rows
            if offset + group_rows >= first and (end is None or offset < end):
                groups.append(group)
            elif not groups:
                row_number += group_rows
            offset += group_rows
        for batch in parquet.iter_batches(batch_size=8192, row_groups=groups, columns=wanted):
            for row in batch.to_pylist():
                row_number += 1
                if row_number < first:
                    continue
                if end is not None and row_number > end:
                    return
                yield row_number, row, json.dumps(row, ensure_ascii=False, default=str).encode()
