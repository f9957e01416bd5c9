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
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ray_cora.data.records import BadRecords
from ray_cora.errors import ConfigError, RayCoraError
from ray_cora.languages import UNKNOWN_LANG, normalize_lang
from ray_cora.storage import Location, iter_lines, list_files, open_input, resolve

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
) -> Iterator[dict[str, str]]:
    """Stream the passages of one file (or one :class:`Segment` of it) as ``{pid, lang, title, text}``.

    ``lang`` sets the language when the file has no ``lang`` column/field; without either a passage
    is ``und``. Malformed records go to ``bad_records`` (default: raise
    :class:`~ray_cora.errors.BadRecordError` naming file:line).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "p.tsv")
    >>> _ = open(path, "w").write("id\\ttext\\ttitle\\n1\\tMount Fuji is 3,776 m high.\\tMount Fuji\\n")
    >>> next(iter_passages(path, lang="en"))["title"]
    'Mount Fuji'
    >>> next(iter_passages(path))["lang"]
    'und'
    """
    loc = uri if isinstance(uri, Location) else resolve(uri)
    fmt = format or detect_format(loc.uri)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown passage format {fmt!r}; expected one of {', '.join(FORMATS)}")
    default_lang = normalize_lang(lang) if lang else None
    bad = bad_records if bad_records is not None else BadRecords("error")
    counts = stats if stats is not None else {}
    for key in ("read", "yielded", "bad", *LANG_SOURCES):
        counts.setdefault(key, 0)
    reader = {"tsv": _tsv_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows}[fmt]
    for line, row, raw in reader(loc, segment):
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
        counts["yielded"] += 1
        counts[lang_source] += 1
        yield passage


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


def decoded_lines(loc: Location, segment: Segment) -> Iterator[tuple[int, str | None, bytes]]:
    """(line number, text or None when not UTF-8, raw bytes) for every non-blank line."""
    seek = segment.start_byte > 0 and detect_compression(loc.path) is None
    with (loc.fs.open_input_file(loc.path) if seek else open_input(loc)) as stream:
        if seek:
            stream.seek(segment.start_byte)
        number = segment.first_line - 1 if seek else 0
        end = None if segment.num_lines is None else segment.first_line - 1 + segment.num_lines
        for raw in iter_lines(stream):
            number += 1
            if number < segment.first_line:
                continue
            if end is not None and number > end:
                return
            raw = raw.rstrip(b"\r")
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None, raw
                continue
            yield number, text.removeprefix("\ufeff") if number == 1 else text, raw


def detect_compression(path: str) -> str | None:
    for suffix, name in ((".gz", "gzip"), (".bz2", "bz2"), (".zst", "zstd"), (".lz4", "lz4")):
        if path.endswith(suffix):
            return name
    return None


def parse_tsv_header(first_line: str) -> tuple[str, ...] | None:
    """The column names when ``first_line`` is a header (has ``id``/``pid`` and ``text``)."""
    names = tuple(f.strip().lower() for f in first_line.split("\t"))
    return names if ("id" in names or "pid" in names) and "text" in names else None


def _tsv_rows(loc: Location, segment: Segment) -> Iterator[tuple[int, dict | str, bytes]]:
    columns = segment.tsv_columns
    for number, text, raw in decoded_lines(loc, segment):
        if text is None:
            yield number, "invalid UTF-8", raw
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


def _jsonl_rows(loc: Location, segment: Segment) -> Iterator[tuple[int, dict | str, bytes]]:
    for number, text, raw in decoded_lines(loc, segment):
        if text is None:
            yield number, "invalid UTF-8", raw
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, f"invalid JSON: {exc.msg} at column {exc.colno}", raw
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
