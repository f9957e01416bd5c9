"""Wikipedia articles (wikiextractor ``--json`` output) cut into fixed-size passages (pure, no Ray).

Input: for each language, a wikiextractor tree (``enwiki/AA/wiki_00``, ``wiki_01``, ...; files may
be ``.bz2``/``.gz``) with one JSON object per line: ``{"id", "url", "title", "text"}``.

From one article to its passages (as DPR's/CORA's ``w100`` corpora):

1. **Body**: ``text`` without its first line when that line is the title (wikiextractor repeats it).
2. **Filter** (:func:`drop_reason`): drop a disambiguation page (title marker such as
   ``(disambiguation)``/``(曖昧さ回避)``, or a body that opens "X may refer to:" and is mostly a
   list; see :data:`DISAMBIGUATION`), and an article with fewer than ``min_article_tokens`` tokens.
3. **Split** (:func:`passage_ranges`): consecutive runs of ``passage_tokens`` tokens (tokens per
   language: :mod:`ray_cora.data.segment`), cut regardless of sentence ends, as DPR does. The last
   piece is kept when it has more than ``min_tail_tokens`` tokens and dropped otherwise (DPR keeps
   every tail; ``min_tail_tokens=0`` does the same). An article that fits in a single piece keeps
   it: only ``min_article_tokens`` decides about short articles.
4. **pid**: ``f"{lang}-{article_id}-{n}"``, ``n`` counting the article's passages from 0.

>>> passages = split_article("Fuji", "Fuji\\n" + " ".join(f"w{i}" for i in range(230)), "en")
>>> [len(p.split()) for p in passages], passages[2][:14]
([100, 100, 30], 'w200 w201 w202')

The shard writer (:func:`write_input_shards`) turns one input file into Parquet shards plus a
small commit record; the Ray layer (:mod:`ray_cora.pipelines.build_passages`) runs it once per
input file.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_cora import storage
from ray_cora.data.passages import PASSAGE_SCHEMA, passage_tables
from ray_cora.data.qa import lone_surrogate, numbered_lines
from ray_cora.data.records import BadRecords, OnBadRecord
from ray_cora.data.segment import Backend, join_span, segmenter_name, token_spans
from ray_cora.errors import ConfigError, StorageError
from ray_cora.languages import normalize_lang
from ray_cora.storage import Location

__all__ = [
    "DISAMBIGUATION", "DROP_REASONS", "InputFile", "WikiOptions", "article_body", "drop_reason",
    "is_disambiguation", "iter_articles", "iter_wiki_passage_batches", "iter_wiki_passages",
    "list_inputs", "parse_input", "passage_ranges", "process_article", "shard_name",
    "split_article", "write_input_shards",
]

SHARD_FORMAT_VERSION = 1
PROGRESS_DIR = "_progress"
QUARANTINE_DIR = "_quarantine"
DROP_REASONS = ("disambiguation", "short")
_ROW_GROUP_ROWS = 16_384

# Per language: (title markers, written inside parentheses; opening phrases of a disambiguation
# page). Title markers of every language are checked for every language (a title containing
# "(disambiguation)" is one anywhere); phrases are the language's own plus English.
DISAMBIGUATION: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "en": (("disambiguation",), ("may refer to", "may also refer to", "may stand for")),
    "ar": (("توضيح",), ("قد يشير إلى", "قد تشير إلى", "يمكن أن يشير إلى")),
    "da": (("flertydig",), ("kan henvise til", "kan have flere betydninger")),
    "de": (("begriffsklärung",), ("steht für", "bezeichnet")),
    "el": (("αποσαφήνιση",), ("μπορεί να αναφέρεται",)),
    "es": (("desambiguación",), ("puede referirse a", "puede hacer referencia a")),
    "fa": (("ابهام‌زدایی",), ("ممکن است به",)),
    "fi": (("täsmennyssivu",), ("voi tarkoittaa", "voi viitata")),
    "fr": (("homonymie", "désambiguïsation"), ("peut désigner", "peut faire référence", "peut se référer")),
    "he": (("פירושונים",), ("יכול להתייחס",)),
    "hu": (("egyértelműsítő lap",), ("jelentheti", "több dolgot jelenthet")),
    "id": (("disambiguasi",), ("dapat merujuk kepada", "dapat merujuk pada", "bisa merujuk pada")),
    "it": (("disambigua",), ("può riferirsi a", "può indicare")),
    "ja": (("曖昧さ回避",), ("以下のものを指す", "以下の意味がある", "以下を指す")),
    "ko": (("동음이의", "동음이의어"), ("다음을 가리킨다", "다음과 같은 뜻이 있다")),
    "ms": (("nyahkekaburan",), ("boleh merujuk kepada",)),
    "nl": (("doorverwijspagina",), ("kan verwijzen naar", "kan betrekking hebben op")),
    "no": (("andre betydninger",), ("kan vise til", "kan sikte til")),
    "pl": (("ujednoznacznienie",), ("może oznaczać", "może odnosić się do")),
    "pt": (("desambiguação",), ("pode referir-se a", "pode se referir a")),
    "ro": (("dezambiguizare",), ("se poate referi la",)),
    "ru": (("значения",), ("может означать", "может относиться к")),
    "sv": (("olika betydelser",), ("kan syfta på", "kan avse")),
    "th": (("แก้ความกำกวม",), ("อาจหมายถึง",)),
    "tr": (("anlam ayrımı",), ("şunlara atıfta bulunabilir", "şu anlamlara gelebilir")),
    "uk": (("значення",), ("може означати", "може стосуватися")),
    "vi": (("định hướng",), ("có thể là", "có thể chỉ", "có thể đề cập đến")),
    "zh": (("消歧义", "消歧義"), ("可以指", "可能指", "可指")),
}
_TITLE_MARKERS = tuple(f"({m.casefold()})" for markers, _ in DISAMBIGUATION.values() for m in markers)
_LIST_MARKS = ("-", "*", "•", "・")


@dataclass(frozen=True)
class WikiOptions:
    """How articles become passages (the fields of the job config that change the output)."""

    passage_tokens: int = 100
    min_tail_tokens: int = 20
    min_article_tokens: int = 20
    drop_disambiguation: bool = True
    segmenter: Backend = "auto"

    def __post_init__(self) -> None:
        if self.passage_tokens < 1 or self.min_tail_tokens < 0 or self.min_article_tokens < 0:
            raise ConfigError("passage_tokens must be >= 1, min_tail_tokens and min_article_tokens >= 0")
        if self.min_tail_tokens >= self.passage_tokens:
            raise ConfigError(f"min_tail_tokens ({self.min_tail_tokens}) must be smaller than "
                              f"passage_tokens ({self.passage_tokens}), or every tail is dropped")


# ---------------------------------------------------------------------------------------------
# One article


def article_body(title: str, text: str) -> str:
    """``text`` without a first line that repeats the title (wikiextractor writes one).

    >>> article_body("Tokyo", "Tokyo\\n\\nTokyo is the capital of Japan.")
    'Tokyo is the capital of Japan.'
    """
    text = text.strip()
    first, _, rest = text.partition("\n")
    return rest.strip() if first.strip() == title.strip() else text


def _fold_title(title: str) -> str:
    return " ".join(title.replace("（", "(").replace("）", ")").casefold().split())


def is_disambiguation(title: str, body: str, lang: str) -> bool:
    """A disambiguation page: a title marker in parentheses (any language's, :data:`DISAMBIGUATION`),
    or a body whose first line holds a "may refer to" phrase and either ends with a colon or is
    followed mostly by short list-like lines.

    >>> is_disambiguation("Mercury", "Mercury may refer to:\\n- Mercury (planet)", "en")
    True
    >>> is_disambiguation("富士山 (曖昧さ回避)", "", "ja"), is_disambiguation("Mercury (planet)", "", "en")
    (True, False)
    """
    folded = _fold_title(title)
    if any(marker in folded for marker in _TITLE_MARKERS):
        return True
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    if not lines:
        return False
    first = lines[0].casefold()
    own = DISAMBIGUATION.get(normalize_lang(lang).split("_")[0], ((), ()))[1]
    if not any(phrase in first for phrase in own + DISAMBIGUATION["en"][1]):
        return False
    if first.endswith((":", "：")):
        return True
    rest = lines[1:]
    listy = sum(len(line) <= 100 or line.startswith(_LIST_MARKS) for line in rest)
    return len(rest) >= 2 and 3 * listy >= 2 * len(rest)


def passage_ranges(n_tokens: int, *, passage_tokens: int = 100, min_tail_tokens: int = 20) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of the passages of an ``n_tokens``-token article.

    >>> passage_ranges(230), passage_ranges(215), passage_ranges(15)
    ([(0, 100), (100, 200), (200, 230)], [(0, 100), (100, 200)], [(0, 15)])
    """
    ranges = [(start, min(start + passage_tokens, n_tokens)) for start in range(0, n_tokens, passage_tokens)]
    if len(ranges) > 1 and ranges[-1][1] - ranges[-1][0] <= min_tail_tokens:
        ranges.pop()
    return ranges


class ArticleResult(NamedTuple):
    passages: list[str]
    dropped: str | None  # one of DROP_REASONS, or None when kept


def process_article(title: str, text: str, lang: str, options: WikiOptions = WikiOptions()) -> ArticleResult:
    """Filter then split one article, segmenting it once.

    >>> process_article("Mercury", "Mercury may refer to:", "en").dropped
    'disambiguation'
    """
    body = article_body(title, text)
    if options.drop_disambiguation and is_disambiguation(title, body, lang):
        return ArticleResult([], "disambiguation")
    spans = token_spans(body, lang, options.segmenter)
    if len(spans) < max(options.min_article_tokens, 1):
        return ArticleResult([], "short")
    ranges = passage_ranges(len(spans), passage_tokens=options.passage_tokens,
                            min_tail_tokens=options.min_tail_tokens)
    return ArticleResult([join_span(body, spans[a:b], lang) for a, b in ranges], None)


def split_article(title: str, text: str, lang: str, *, passage_tokens: int = 100,
                  min_tail_tokens: int = 20, backend: Backend = "auto") -> list[str]:
    """The passage texts of one article, without filtering (see the module docstring)."""
    options = WikiOptions(passage_tokens, min_tail_tokens, 0, False, backend)
    return process_article(title, text, lang, options).passages


def drop_reason(title: str, text: str, lang: str, *, min_article_tokens: int = 20,
                drop_disambiguation: bool = True, backend: Backend = "auto") -> str | None:
    """Why the article is left out (``"disambiguation"``, ``"short"``), or None when it is kept.

    >>> drop_reason("Fuji", "Fuji\\nA mountain.", "en")
    'short'
    """
    body = article_body(title, text)
    if drop_disambiguation and is_disambiguation(title, body, lang):
        return "disambiguation"
    if len(token_spans(body, lang, backend)) < max(min_article_tokens, 1):
        return "short"
    return None


# ---------------------------------------------------------------------------------------------
# One input file


def iter_articles(uri: str | Location, *, bad_records: BadRecords | None = None,
                  stats: dict[str, int] | None = None) -> Iterator[dict[str, Any]]:
    """Stream the articles of one wikiextractor file as ``{"id", "title", "text", "line"}``.

    A malformed line (not UTF-8, not JSON, no usable ``id``/``title``/``text``, an ``id`` seen
    before in the file) goes to ``bad_records`` (default: raise ``BadRecordError`` at file:line).
    """
    loc = uri if isinstance(uri, Location) else storage.resolve(uri)
    bad = bad_records if bad_records is not None else BadRecords("error")
    counts = stats if stats is not None else {}
    counts.setdefault("articles", 0)
    counts.setdefault("bad_records", 0)
    seen: dict[str, int] = {}
    for number, raw in numbered_lines(loc.uri):
        if not raw.strip():
            continue
        article, problem = _parse_article(raw)
        if article is not None and article["id"] in seen:
            article, problem = None, f"duplicate article id {article['id']!r} (first at line {seen[article['id']]})"
        if article is None:
            counts["bad_records"] += 1
            bad.report(loc.uri, number, problem or "bad record", raw=raw)
            continue
        seen[article["id"]] = number
        counts["articles"] += 1
        yield {**article, "line": number}


def _parse_article(raw: bytes) -> tuple[dict[str, str] | None, str | None]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "invalid UTF-8"
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}"
    except RecursionError:
        return None, "JSON nested too deeply to read"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    article_id = obj.get("id")
    if isinstance(article_id, bool) or not isinstance(article_id, (str, int)) or not str(article_id).strip():
        return None, "missing field 'id' (a string or an integer)"
    title = obj.get("title")
    if not isinstance(title, str) or not title.strip():
        return None, "missing or empty field 'title'"
    text = obj.get("text")
    if not isinstance(text, str):
        return None, "missing field 'text' (a string)"
    for name, value in (("id", str(article_id)), ("title", title), ("text", text)):
        problem = lone_surrogate(value, name)
        if problem:
            return None, problem
    return {"id": str(article_id).strip(), "title": title.strip(), "text": text}, None


def _new_stats() -> dict[str, int]:
    return {"articles": 0, "dropped_disambiguation": 0, "dropped_short": 0, "bad_records": 0, "passages": 0}


def iter_wiki_passages(uri: str | Location, lang: str, *, options: WikiOptions = WikiOptions(),
                       bad_records: BadRecords | None = None,
                       stats: dict[str, int] | None = None) -> Iterator[dict[str, str]]:
    """Stream the passages (``pid, lang, title, text``) of one wikiextractor file.

    ``stats`` (if given) is filled with ``articles``, ``dropped_<reason>``, ``bad_records`` and
    ``passages`` counts.
    """
    lang = normalize_lang(lang)
    counts = stats if stats is not None else {}
    for key, value in _new_stats().items():
        counts.setdefault(key, value)
    for article in iter_articles(uri, bad_records=bad_records, stats=counts):
        result = process_article(article["title"], article["text"], lang, options)
        if result.dropped:
            counts[f"dropped_{result.dropped}"] += 1
            continue
        for n, text in enumerate(result.passages):
            counts["passages"] += 1
            yield {"pid": f"{lang}-{article['id']}-{n}", "lang": lang, "title": article["title"], "text": text}


def iter_wiki_passage_batches(uri: str | Location, lang: str, *, batch_size: int = 4096,
                              **kwargs: Any) -> Iterator[pa.Table]:
    """:func:`iter_wiki_passages` grouped into Arrow tables (``PASSAGE_SCHEMA``) of at most
    ``batch_size`` rows."""
    return passage_tables(iter_wiki_passages(uri, lang, **kwargs), batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# Planning: input files, shard names


def parse_input(spec: str) -> tuple[str, str]:
    """``"en=s3://bucket/enwiki"`` -> ``("en", "s3://bucket/enwiki")``.

    >>> parse_input("zh-Hans=/data/zhwiki")
    ('zh_cn', '/data/zhwiki')
    """
    lang, sep, uri = str(spec).partition("=")
    if not sep or not lang.strip() or not uri.strip():
        raise ConfigError(f"input {spec!r}: expected LANG=URI, as in en=s3://bucket/enwiki or "
                          "ja=/data/jawiki")
    return normalize_lang(lang), uri.strip()


@dataclass(frozen=True)
class InputFile:
    """One wikiextractor file: its language, its number among that language's files (sorted by
    path), and its URI. ``unit`` names everything made from it."""

    lang: str
    number: int
    uri: str

    @property
    def unit(self) -> str:
        return f"part-{self.lang}-{self.number:05d}"


def list_inputs(inputs: list[tuple[str, str]]) -> list[InputFile]:
    """Every input file of every ``(lang, uri)`` pair, numbered per language in path order."""
    files: list[InputFile] = []
    for lang, uri in inputs:
        found = storage.list_files(uri)
        if not found:
            raise ConfigError(f"{uri}: no input files for {lang}; point it at wikiextractor's output "
                              "folder (the one holding AA/, AB/, ...) or at one of its files")
        files.extend(InputFile(lang, number, loc.uri) for number, loc in enumerate(found))
    return files


def shard_name(unit: str, piece: int) -> str:
    """``part-en-00003-000.parquet``: the first ``rows_per_shard`` passages of input file 3 of en;
    ``-001`` holds the next ones, and so on."""
    return f"{unit}-{piece:03d}.parquet"


def fingerprint(file: InputFile, source_size: int, *, options: WikiOptions, on_bad_record: OnBadRecord,
                rows_per_shard: int, segmenter: str) -> str:
    """What a shard depends on; a rerun keeps a committed shard only when this is unchanged."""
    key = {"format": SHARD_FORMAT_VERSION, "source": file.uri, "source_size": source_size, "lang": file.lang,
           "options": asdict(options), "on_bad_record": on_bad_record, "rows_per_shard": rows_per_shard,
           "segmenter": segmenter}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# One input file -> Parquet shards + a commit record


class _ShardWriter:
    """Buffers one shard in memory (bounded by ``rows_per_shard``), then writes it atomically."""

    def __init__(self, out: Location, unit: str, rows_per_shard: int) -> None:
        self.out, self.unit, self.rows_per_shard = out, unit, rows_per_shard
        self.shards: list[dict[str, Any]] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._sink: pa.BufferOutputStream | None = None
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0

    def add(self, table: pa.Table) -> None:
        while table.num_rows:
            room = self.rows_per_shard - self._rows - self._pending_rows
            head, table = table.slice(0, room), table.slice(room)
            self._pending.append(head)
            self._pending_rows += head.num_rows
            if self._pending_rows >= _ROW_GROUP_ROWS:
                self._write_row_group()
            if self._rows + self._pending_rows >= self.rows_per_shard:
                self._finish_shard()

    def close(self) -> list[dict[str, Any]]:
        if self._rows + self._pending_rows:
            self._finish_shard()
        return self.shards

    def _write_row_group(self) -> None:
        if not self._pending_rows:
            return
        if self._writer is None:
            self._sink = pa.BufferOutputStream()
            self._writer = pq.ParquetWriter(self._sink, PASSAGE_SCHEMA, compression="zstd")
        self._writer.write_table(pa.concat_tables(self._pending), row_group_size=_ROW_GROUP_ROWS)
        self._rows += self._pending_rows
        self._pending, self._pending_rows = [], 0

    def _finish_shard(self) -> None:
        self._write_row_group()
        assert self._writer is not None and self._sink is not None
        self._writer.close()
        data = self._sink.getvalue()
        name = shard_name(self.unit, len(self.shards))
        storage.write_bytes(self.out.join(name), data)
        self.shards.append({"file": name, "rows": self._rows, "size": data.size,
                            "sha256": hashlib.sha256(data).hexdigest()})
        self._writer, self._sink, self._rows = None, None, 0


def _still_committed(out: Location, record: dict[str, Any], expected: str) -> bool:
    if record.get("fingerprint") != expected:
        return False
    files = list(record.get("shards", []))
    if record.get("quarantine"):
        files.append(record["quarantine"])
    for entry in files:
        info = out.join(entry["file"]).info()
        if info.type != pafs.FileType.File or info.size != entry["size"]:
            return False
    return True


def _read_json(loc: Location) -> dict[str, Any] | None:
    try:
        if not loc.is_file():
            return None
        return json.loads(storage.read_bytes(loc))
    except (ValueError, UnicodeDecodeError):
        return None  # a damaged record counts as absent: the file is redone


def write_input_shards(file: InputFile, out: str | Location, *, options: WikiOptions = WikiOptions(),
                       on_bad_record: OnBadRecord = "error", rows_per_shard: int = 100_000,
                       resume: bool = True, batch_size: int = 4096) -> dict[str, Any]:
    """Write the passages of one input file as ``<unit>-NNN.parquet`` shards under ``out``.

    Order of writes: shards, then the quarantine file (skipped bad records, if any), then the
    commit record ``_progress/<unit>.json`` (counts, shard sizes and sha256, and a fingerprint of
    the source and options). With ``resume`` an input whose commit record matches and whose files
    are all present with their recorded sizes is not read again (``status: "skipped"``).
    Returns the commit record.
    """
    started = time.perf_counter()
    out = out if isinstance(out, Location) else storage.resolve(out)
    source = storage.resolve(file.uri)
    info = source.info()
    if info.type != pafs.FileType.File:
        raise StorageError(f"{source.uri}: input file listed at the start of the job is gone; "
                           "rerun the job (finished files are not redone)")
    segmenter = segmenter_name(file.lang, options.segmenter)
    expected = fingerprint(file, info.size, options=options, on_bad_record=on_bad_record,
                           rows_per_shard=rows_per_shard, segmenter=segmenter)
    progress = out.join(PROGRESS_DIR, f"{file.unit}.json")
    previous = _read_json(progress)
    if resume and previous is not None and _still_committed(out, previous, expected):
        return {**previous, "status": "skipped", "seconds": 0.0}
    if previous is not None:  # invalidate before rewriting anything it describes
        out.fs.delete_file(progress.path)

    stats = _new_stats()
    bad = BadRecords(on_bad_record)
    writer = _ShardWriter(out, file.unit, rows_per_shard)
    for batch in iter_wiki_passage_batches(source, file.lang, batch_size=batch_size, options=options,
                                           bad_records=bad, stats=stats):
        writer.add(batch)
    shards = writer.close()
    quarantine = None
    if bad.count:
        data = bad.to_jsonl()
        name = f"{QUARANTINE_DIR}/{file.unit}.jsonl"
        storage.write_bytes(out.join(name), data)
        quarantine = {"file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # Shards an earlier run made beyond the ones made now (other options) are this file's own.
    kept = {s["file"] for s in shards}
    for old in (previous or {}).get("shards", []):
        if old["file"] not in kept and out.join(old["file"]).exists():
            out.fs.delete_file(out.join(old["file"]).path)
    record = {"unit": file.unit, "lang": file.lang, "file_number": file.number, "source": file.uri,
              "source_size": info.size, "fingerprint": expected, "segmenter": segmenter,
              "stats": stats, "shards": shards, "quarantine": quarantine}
    storage.write_bytes(progress, json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8"))
    return {**record, "status": "processed", "seconds": time.perf_counter() - started}

