"""Training records: DPR/CORA retriever JSON (and its Parquet / JSONL equivalents) for mDPR, and
retrieval JSONL for mGEN, read as streams with bad records located by file and record.

DPR retriever JSON (what CORA releases) is one JSON array of objects::

    {"question": ..., "answers": [...], "positive_ctxs": [{"title", "text", "passage_id"?}, ...],
     "negative_ctxs": [...], "hard_negative_ctxs": [...]}

The same objects one per line (``.jsonl``) or as Parquet rows (same column names, ctx columns as
lists of structs) are read too. A JSON array is parsed incrementally (never loaded whole); its
records are located as ``file:line`` of the line where the object starts.

Retrieval JSONL for mGEN: ``{qid, lang, question, answers, ctxs: [{pid, lang, title, text,
score}]}`` per line (what the retrieval job writes).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow.parquet as pq

from ray_cora import storage
from ray_cora.data.records import BadRecords
from ray_cora.data.retrieval import RETRIEVAL_KIND
from ray_cora.errors import BadRecordError, ConfigError
from ray_cora.languages import normalize_lang
from ray_cora.metrics.retrieval import passage_has_answer

__all__ = ["BadRecords", "data_files", "iter_examples", "scan"]

DPR_KINDS = ("dpr", "retrieval")
_CHUNK = 1 << 20


def _is_parquet(uri: str) -> bool:
    return uri.endswith(".parquet")


def iter_json_array(stream: Any, source: str) -> Iterator[tuple[int, Any]]:
    """``(line, object)`` for each element of a top-level JSON array, parsed incrementally.

    >>> import io
    >>> list(iter_json_array(io.BytesIO(b'[{"a": 1},\\n {"a": 2}]'), "x.json"))
    [(1, {'a': 1}), (2, {'a': 2})]
    """
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buf, pos, line, started, done = "", 0, 1, False, False

    def more() -> bool:
        nonlocal buf, pos
        chunk = stream.read(_CHUNK)
        text = utf8.decode(chunk, final=not chunk)
        buf = buf[pos:] + text
        pos = 0
        return bool(chunk)

    def skip_space() -> None:
        nonlocal pos, line
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                line += buf[pos] == "\n"
                pos += 1
            if pos < len(buf) or not more():
                return

    try:
        skip_space()
        if pos >= len(buf) or buf[pos] != "[":
            raise BadRecordError(source, line, "expected a JSON array of training records ('[' first); "
                                 "for one record per line name the file .jsonl",
                                 hint="fix the file format")
        pos += 1
        while not done:
            skip_space()
            if pos < len(buf) and buf[pos] == "]":
                return
            if started:
                if pos >= len(buf) or buf[pos] != ",":
                    raise BadRecordError(source, line, "expected ',' or ']' between records",
                                         hint="the JSON is malformed; fix it")
                pos += 1
                skip_space()
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    if end == len(buf) and more():  # a number/literal may continue in the next chunk
                        continue
                    break
                except json.JSONDecodeError as exc:
                    where = line + buf.count("\n", pos, exc.pos)
                    if more():
                        continue
                    raise BadRecordError(source, where,
                                         f"malformed JSON: {exc.msg}", hint="the JSON is malformed; fix it") from None
            yield line, obj
            line += buf.count("\n", pos, end)
            pos = end
            started = True
    except UnicodeDecodeError as exc:
        raise BadRecordError(source, line, f"not UTF-8 ({exc.reason})", hint="re-encode the file as UTF-8") from None


def iter_raw_records(uri: str, bad: BadRecords) -> Iterator[tuple[int, Any]]:
    """``(line-or-row, object)`` from a .json array, .jsonl or .parquet file (rows numbered from 1)."""
    if _is_parquet(uri):
        loc = storage.resolve(uri)
        with loc.fs.open_input_file(loc.path) as handle:
            parquet = pq.ParquetFile(handle)
            row = 0
            for batch in parquet.iter_batches(batch_size=1024):
                for obj in batch.to_pylist():
                    row += 1
                    yield row, obj
        return
    with storage.open_input(uri) as stream:
        if uri.removesuffix(".gz").endswith(".json"):
            yield from iter_json_array(stream, uri)
            return
        for number, raw in enumerate(storage.iter_lines(stream), start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                bad.report(uri, number, f"not a JSON object: {exc}", raw=raw)


def _ctx(value: Any, field: str, index: int) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"{field}[{index}] is not an object with title and text")
    text = value.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{field}[{index}] has no text")
    title = value.get("title")
    return {"title": title if isinstance(title, str) else "", "text": text}


def _ctx_list(obj: dict[str, Any], field: str) -> list[dict[str, str]]:
    value = obj.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{field} is not a list")
    return [_ctx(v, field, i) for i, v in enumerate(value)]


def _question(obj: dict[str, Any]) -> str:
    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("empty or missing 'question'")
    return question.strip()


def _answers(obj: dict[str, Any], *, required: bool) -> list[str]:
    answers = obj.get("answers")
    if answers is None:
        answers = []
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise ValueError("'answers' is not a list of strings")
    answers = [a for a in answers if a.strip()]
    if required and not answers:
        raise ValueError("no non-empty answer in 'answers' (the generator needs a target)")
    return answers


def dpr_example(obj: Any) -> dict[str, Any]:
    """Check one DPR record and keep what training needs; ``ValueError`` says what is wrong.

    ``positive`` is the first positive (DPR's gold passage), ``positives`` all of them (for
    ``shuffle_positives``); ``lang`` is kept only when the record has one (mined records do; DPR's
    NQ data does not, and the trainer's ``--lang`` fills it in).

    >>> ex = dpr_example({"question": "q?", "answers": ["a"], "lang": "JA", "positive_ctxs": [{"title": "T", "text": "x"}]})
    >>> ex["positive"], ex["lang"]
    ({'title': 'T', 'text': 'x'}, 'ja')
    """
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    question = _question(obj)
    positives = _ctx_list(obj, "positive_ctxs")
    if not positives:
        raise ValueError("no positive passage ('positive_ctxs' is missing or empty)")
    example = {"question": question, "answers": _answers(obj, required=False), "positive": positives[0],
               "positives": positives, "hard_negatives": _ctx_list(obj, "hard_negative_ctxs"),
               "negatives": _ctx_list(obj, "negative_ctxs")}
    lang = obj.get("lang")
    if lang is not None:
        if not isinstance(lang, str) or not lang.strip():
            raise ValueError(f"'lang' {lang!r} is not a language code")
        try:
            example["lang"] = normalize_lang(lang)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return example


def retrieval_example(obj: Any, *, require_answer: bool = True) -> dict[str, Any]:
    """Check one retrieval-JSONL record (``qid, lang, question, answers, ctxs``); every passage
    gets ``has_answer``."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    question = _question(obj)
    lang = obj.get("lang")
    if not isinstance(lang, str) or not lang.strip():
        raise ValueError("missing 'lang' (the target language of the answer)")
    ctxs = obj.get("ctxs")
    if not isinstance(ctxs, list):
        raise ValueError("'ctxs' is missing or not a list of passages")
    answers = _answers(obj, required=require_answer)
    return {"qid": str(obj.get("qid", obj.get("id", ""))), "lang": normalize_lang(lang), "question": question,
            "answers": answers, "ctxs": [_retrieved_ctx(c, i, answers) for i, c in enumerate(ctxs)]}


def _retrieved_ctx(value: Any, index: int, answers: list[str]) -> dict[str, Any]:
    """A retrieved passage with ``has_answer`` (:func:`~ray_cora.metrics.retrieval.passage_has_answer`),
    always a bool, so every block of a training dataset has the same schema."""
    ctx: dict[str, Any] = _ctx(value, "ctxs", index)
    ctx["has_answer"] = passage_has_answer({**ctx, "has_answer": value.get("has_answer")}, answers)
    return ctx


def iter_examples(uris: Sequence[str], kind: str, bad: BadRecords, *,
                  require_answer: bool = True) -> Iterator[dict[str, Any]]:
    """Valid examples of ``kind`` (``dpr`` or ``retrieval``) from every file; bad ones go to ``bad``."""
    if kind not in DPR_KINDS:
        raise ValueError(f"unknown training data kind {kind!r}")
    for uri in uris:
        for files_uri in data_files(uri):
            for number, obj in iter_raw_records(files_uri, bad):
                try:
                    yield (dpr_example(obj) if kind == "dpr"
                           else retrieval_example(obj, require_answer=require_answer))
                except (ValueError, KeyError) as exc:
                    bad.report(files_uri, number, str(exc), raw=json.dumps(obj, ensure_ascii=False, default=str))


def data_files(uri: str) -> list[str]:
    """The data files of ``uri``: itself, the parts a `ray-cora retrieve` output's manifest lists
    (not its block markers or passage store), or every JSON/JSONL/Parquet file of a folder."""
    loc = storage.resolve(uri)
    if loc.is_file():
        return [uri]
    manifest = loc.join(storage.MANIFEST_NAME)
    if manifest.is_file():
        record = json.loads(storage.read_bytes(manifest))
        if record.get("kind") == RETRIEVAL_KIND:
            return [loc.join(part).uri for part in record["parts"]]
    return [l.uri for l in storage.list_files(loc) if l.path.endswith((".json", ".jsonl", ".parquet", ".gz"))]


def scan(uris: Sequence[str], kind: str, on_bad_record: str) -> tuple[int, BadRecords]:
    """Count the valid examples (raising at the first bad one, or counting bad ones with ``skip``).

    The driver runs this before training: errors surface before any worker starts, and the count
    fixes the number of steps every worker takes.
    """
    bad = BadRecords(on_bad_record)  # type: ignore[arg-type]
    count = sum(1 for _ in iter_examples(uris, kind, bad))
    return count, bad


