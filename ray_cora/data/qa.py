"""Readers for QA sets (MKQA, XOR-TyDi QA, NQ-open, XQuAD/SQuAD, our own jsonl), one schema out.

Every reader streams its input and yields plain dicts with the fields in :data:`QA_FIELDS`:

- ``qid``: the dataset's own id as a string; one question in many languages shares it, so a
  record is keyed by ``(qid, lang)``;
- ``lang``: canonical language code (see :mod:`ray_cora.languages`);
- ``question``: stripped, non-empty;
- ``answers``: answer strings, stripped, de-duplicated, order kept; empty only for
  unanswerable records kept with ``keep_unanswerable=True``;
- ``answer_type``: e.g. ``entity``, ``date``, ``span``, ``short``, ``unanswerable``;
- ``en_question``: the English form of the question when the dataset gives it, else None;
- ``gold_pids``: ids of gold passages (only XQuAD/SQuAD and our jsonl have them).

Nothing is dropped silently. A record that is not yielded was either filtered by a rule below
(counted in ``stats``) or reported to ``bad_records`` with its file and 1-based line:

- unanswerable: answer type ``unanswerable`` or ``long_answer``, or no answer string left
  (``keep_unanswerable=True`` keeps them); this is how the CORA paper evaluates MKQA;
- language: the record's language is not among ``lang``/``langs``.

``stats`` (optional dict, filled in place): ``read`` (candidate records: for MKQA one per
example and selected language), ``yielded``, ``filtered_unanswerable``, ``filtered_lang``,
``bad``; ``read == yielded + filtered_unanswerable + filtered_lang + bad``. ``truncated`` (present
once one is) counts questions cut to :data:`MAX_QUESTION_CHARS` (they are still yielded).

Limits: a question longer than :data:`MAX_QUESTION_CHARS` characters is cut there (no real
question is that long, and the encoders read at most a few hundred tokens; a 20 MB "question"
would otherwise be held, tokenized and shipped whole). Text with a lone surrogate (``"\\ud800"``
in JSON: not Unicode text, it cannot be written as UTF-8) and JSON nested too deeply to parse
are bad records. A file that cannot be read to its end (a damaged ``.gz``) is a
:class:`~ray_cora.errors.StorageError` naming the file and the line reached.
"""

from __future__ import annotations

import json
import posixpath
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ray_cora.data.records import BadRecords
from ray_cora.errors import ConfigError, StorageError
from ray_cora.languages import MKQA_LANGS, normalize_lang, parse_langs
from ray_cora.storage import iter_lines, open_input

__all__ = [
    "DATASETS",
    "MAX_QUESTION_CHARS",
    "QA_FIELDS",
    "iter_qa",
    "iter_squad_paragraphs",
    "lone_surrogate",
    "numbered_lines",
    "squad_paragraph_pid",
]

QA_FIELDS: tuple[str, ...] = (
    "qid", "lang", "question", "answers", "answer_type", "en_question", "gold_pids",
)
DATASETS: tuple[str, ...] = ("mkqa", "xor", "nq", "xquad", "squad", "jsonl")

_UNANSWERABLE_TYPES = frozenset({"unanswerable", "long_answer"})

MAX_QUESTION_CHARS = 2000
# What reading a damaged file raises: gzip/zlib streams (truncated, corrupt), pyarrow's OSError.
_READ_ERRORS = (OSError, EOFError, zlib.error)


class _Bad(Exception):
    """A malformed record; the message says what is wrong, naming the field."""


def squad_paragraph_pid(
    lang: str, article_index: int, paragraph_index: int, *, dataset: str = "xquad"
) -> str:
    """Passage id of a SQuAD-layout paragraph (0-based indices); parallel paragraphs in two
    languages differ only in the language part.

    >>> squad_paragraph_pid("es", 0, 3)
    'xquad-es-0-3'
    """
    return f"{dataset}-{lang}-{article_index}-{paragraph_index}"


def iter_qa(
    uri: str,
    *,
    dataset: str,
    lang: str | None = None,
    langs: Sequence[str] | None = None,
    keep_unanswerable: bool = False,
    bad_records: BadRecords | None = None,
    stats: dict[str, int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream the QA records of ``uri`` (local path, ``file://`` or ``s3://``; ``.gz`` is fine).

    ``dataset`` is one of :data:`DATASETS`. ``lang`` or ``langs`` selects languages (for
    ``xquad``/``squad``, whose files carry no language field, ``lang`` names the file's language;
    otherwise it is taken from the file name, e.g. ``xquad.es.json``). Malformed records go to
    ``bad_records`` (default: stop at the first one with a ``file:line`` error).

    >>> recs = list(iter_qa("mkqa.jsonl.gz", dataset="mkqa", lang="ja"))  # doctest: +SKIP
    >>> recs[0]["qid"], recs[0]["lang"]  # doctest: +SKIP
    ('36228854473990432', 'ja')
    """
    name = dataset.strip().lower() if isinstance(dataset, str) else dataset
    if name not in DATASETS:
        raise ConfigError(f"unknown QA dataset {dataset!r}; accepted: {', '.join(DATASETS)}")
    if lang is not None and langs is not None:
        raise ConfigError("pass either lang or langs, not both")
    bad = bad_records if bad_records is not None else BadRecords("error")
    st = stats if stats is not None else {}
    for key in ("read", "yielded", "filtered_unanswerable", "filtered_lang", "bad"):
        st.setdefault(key, 0)

    if name in ("xquad", "squad"):
        file_lang = _squad_lang(uri, lang, name)
        selected = _selection(None, langs)
        return _counted(_squad_qa(uri, file_lang, name, selected, bad, st), keep_unanswerable, st)
    selected = _selection(lang, langs)
    if name == "mkqa":
        if selected is not None:
            missing = [c for c in selected if c not in MKQA_LANGS]
            if missing:
                raise ConfigError(
                    f"MKQA has no language {', '.join(missing)}; its languages are "
                    f"{', '.join(MKQA_LANGS)}"
                )
        parse = _mkqa_parser(selected or MKQA_LANGS)
        selected = None  # the parser emits only the selected languages
    elif name == "nq":
        if selected is not None and "en" not in selected:
            raise ConfigError(
                f"NQ-open questions are English; lang/langs {', '.join(selected)} selects none"
            )
        parse = _nq_parser()
    elif name == "xor":
        parse = _parse_xor
    else:
        parse = _parse_jsonl
    return _counted(_jsonl_qa(uri, parse, selected, bad, st), keep_unanswerable, st)


def iter_squad_paragraphs(
    uri: str,
    *,
    lang: str | None = None,
    dataset: str = "xquad",
    bad_records: BadRecords | None = None,
) -> Iterator[dict[str, str]]:
    """Yield every paragraph of a SQuAD-layout file as a passage ``{pid, lang, title, text}``.

    >>> next(iter_squad_paragraphs("xquad.es.json"))["pid"]  # doctest: +SKIP
    'xquad-es-0-0'
    """
    file_lang = _squad_lang(uri, lang, dataset)
    bad = bad_records if bad_records is not None else BadRecords("error")
    doc = _load_squad(uri, bad)
    if doc is None:
        return
    text_of, articles = doc
    for ai, article in enumerate(articles):
        title = article.get("title") if isinstance(article, dict) else None
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            bad.report(uri, 1, f"data[{ai}]: 'paragraphs' is missing or not a list")
            continue
        for pi, par in enumerate(paragraphs):
            context = par.get("context") if isinstance(par, dict) else None
            if not isinstance(context, str) or not context.strip():
                line = _line_of_qas(text_of, par)
                bad.report(uri, line, f"data[{ai}].paragraphs[{pi}]: 'context' missing or empty")
                continue
            yield {
                "pid": squad_paragraph_pid(file_lang, ai, pi, dataset=dataset),
                "lang": file_lang,
                "title": title if isinstance(title, str) else "",
                "text": context,
            }


# --- shared plumbing -------------------------------------------------------------------------


def _selection(lang: str | None, langs: Sequence[str] | None) -> tuple[str, ...] | None:
    if lang is not None:
        return (normalize_lang(lang),)
    if langs is not None:
        return parse_langs(langs)
    return None


def _counted(
    records: Iterator[dict[str, Any]], keep_unanswerable: bool, st: dict[str, int]
) -> Iterator[dict[str, Any]]:
    """Apply the unanswerable rule to well-formed records and count what is yielded."""
    for rec in records:
        if not keep_unanswerable and (
            rec["answer_type"] in _UNANSWERABLE_TYPES or not rec["answers"]
        ):
            st["filtered_unanswerable"] += 1
            continue
        if len(rec["question"]) > MAX_QUESTION_CHARS:
            rec["question"] = rec["question"][:MAX_QUESTION_CHARS]
            st["truncated"] = st.get("truncated", 0) + 1
        st["yielded"] += 1
        yield rec


def _report(bad: BadRecords, st: dict[str, int], uri: str, line: int, reason: str,
            raw: str | bytes = "") -> None:
    st["bad"] += 1
    bad.report(uri, line, reason, raw=raw)


def _jsonl_qa(
    uri: str,
    parse: Any,
    selected: tuple[str, ...] | None,
    bad: BadRecords,
    st: dict[str, int],
) -> Iterator[dict[str, Any]]:
    """Read ``uri`` as JSON lines; ``parse(obj, index)`` returns a list of records or raises
    :class:`_Bad` (it may also return ``_Bad`` items for per-language problems of one line)."""
    index = 0
    for line_no, raw in numbered_lines(uri):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            st["read"] += 1
            _report(bad, st, uri, line_no, f"invalid UTF-8: {exc}", raw)
            index += 1
            continue
        if line_no == 1:
            text = text.removeprefix("\ufeff")
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise _Bad(f"expected a JSON object, got {type(obj).__name__}")
            results = parse(obj, index)
        except json.JSONDecodeError as exc:
            st["read"] += 1
            _report(bad, st, uri, line_no, f"invalid JSON: {exc.msg} at column {exc.colno}",
                    text)
            index += 1
            continue
        except RecursionError:
            st["read"] += 1
            _report(bad, st, uri, line_no, "JSON nested too deeply to read", text)
            index += 1
            continue
        except _Bad as exc:
            st["read"] += 1
            _report(bad, st, uri, line_no, str(exc), text)
            index += 1
            continue
        index += 1
        for rec in results:
            st["read"] += 1
            if isinstance(rec, _Bad):
                _report(bad, st, uri, line_no, str(rec), text)
            elif selected is not None and rec["lang"] not in selected:
                st["filtered_lang"] += 1
            else:
                yield rec


def numbered_lines(uri: str) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw line)`` of ``uri`` (1-based); a file that cannot be read to its end (a
    damaged ``.gz``) is a :class:`StorageError` naming it and the line reached."""
    with open_input(uri) as stream:
        lines = iter_lines(stream)
        line_no = 0
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except _READ_ERRORS as exc:
                raise _damaged(uri, line_no, exc) from None
            line_no += 1
            yield line_no, raw


def _damaged(uri: str, lines_read: int, exc: BaseException) -> StorageError:
    return StorageError(f"{uri}:{lines_read + 1}: cannot read the file on after line {lines_read} "
                        f"({type(exc).__name__}: {exc}): it is damaged (a truncated or corrupt .gz?); "
                        "fetch or write it again")


def lone_surrogate(value: str, name: str) -> str | None:
    """What is wrong with text that holds a lone surrogate (JSON's ``"\\ud800"``: not Unicode, it
    cannot be written as UTF-8), naming the field; None for good text.

    >>> lone_surrogate("a\\ud800b", "question")
    "field 'question' holds a lone surrogate '\\\\ud800' at character 1: not Unicode text"
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"field {name!r} holds a lone surrogate {value[exc.start]!r} at character {exc.start}: not Unicode text"
    return None


def _check_text(value: str, name: str) -> str:
    problem = lone_surrogate(value, name)
    if problem:
        raise _Bad(problem)
    return value


def _field(obj: dict[str, Any], key: str, where: str = "") -> Any:
    if key not in obj or obj[key] is None:
        raise _Bad(f"missing field {where + key!r}")
    return obj[key]


def _text(obj: dict[str, Any], key: str, where: str = "") -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str):
        raise _Bad(f"field {where + key!r} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise _Bad(f"field {where + key!r} is empty")
    return value


def _id(obj: dict[str, Any], key: str) -> str:
    value = _field(obj, key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(f"field {key!r} must be a string or an integer, got {type(value).__name__}")
    value = str(value).strip()
    if not value:
        raise _Bad(f"field {key!r} is empty")
    return value


def _lang(obj: dict[str, Any], key: str = "lang") -> str:
    code = _text(obj, key)
    try:
        return normalize_lang(code)
    except ConfigError:
        raise _Bad(f"field {key!r}: unknown language code {code!r}") from None


def _str_list(obj: dict[str, Any], key: str, *, required: bool) -> list[str]:
    if not required and obj.get(key) is None:
        return []
    value = _field(obj, key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"field {key!r} must be a list of strings")
    return _dedup(value)


def _dedup(values: Iterable[str | None]) -> list[str]:
    out: dict[str, None] = {}
    for v in values:
        if isinstance(v, str) and v.strip():
            out[v.strip()] = None
    return list(out)


def _record(qid: str, lang: str, question: str, answers: list[str], answer_type: str,
            en_question: str | None, gold_pids: list[str]) -> dict[str, Any]:
    for name, value in (("id", qid), ("question", question), ("en_question", en_question or ""),
                        ("answer_type", answer_type)):
        _check_text(value, name)
    for name, values in (("answers", answers), ("gold_pids", gold_pids)):
        for value in values:
            _check_text(value, name)
    return {
        "qid": qid,
        "lang": lang,
        "question": question,
        "answers": answers,
        "answer_type": answer_type,
        "en_question": en_question,
        "gold_pids": gold_pids,
    }


# --- per-dataset parsers ---------------------------------------------------------------------


def _mkqa_parser(selected: tuple[str, ...]) -> Any:
    def parse(obj: dict[str, Any], index: int) -> list[dict[str, Any] | _Bad]:
        qid = _id(obj, "example_id")
        queries = _field(obj, "queries")
        answers = _field(obj, "answers")
        if not isinstance(queries, dict):
            raise _Bad("field 'queries' must be an object {lang: question}")
        if not isinstance(answers, dict):
            raise _Bad("field 'answers' must be an object {lang: [answer, ...]}")
        en = queries.get("en")
        en_question = en.strip() if isinstance(en, str) and en.strip() else None
        if en_question is None and isinstance(obj.get("query"), str) and obj["query"].strip():
            en_question = obj["query"].strip()
        out: list[dict[str, Any] | _Bad] = []
        for code in selected:
            try:
                question = _text(queries, code, "queries.")
                out.append(_record(qid, code, question, *_mkqa_answers(answers, code),
                                   en_question, []))
            except _Bad as exc:
                out.append(exc)
        return out

    return parse


def _mkqa_answers(answers: dict[str, Any], code: str) -> tuple[list[str], str]:
    items = _field(answers, code, "answers.")
    if not isinstance(items, list) or not items:
        raise _Bad(f"field 'answers.{code}' must be a non-empty list of answers")
    texts: list[str | None] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _Bad(f"field 'answers.{code}[{i}]' must be an object")
        if not isinstance(item.get("type"), str):
            raise _Bad(f"missing field 'answers.{code}[{i}].type'")
        texts.append(item.get("text") if isinstance(item.get("text"), str) else None)
        aliases = item.get("aliases") or []
        if not isinstance(aliases, list):
            raise _Bad(f"field 'answers.{code}[{i}].aliases' must be a list")
        texts.extend(a for a in aliases if isinstance(a, str))
    return _dedup(texts), items[0]["type"]


def _parse_xor(obj: dict[str, Any], index: int) -> list[dict[str, Any]]:
    answers = _str_list(obj, "answers", required=True)
    return [_record(_id(obj, "id"), _lang(obj), _text(obj, "question"), answers,
                    "short" if answers else "unanswerable", None, [])]


def _nq_parser() -> Any:
    def parse(obj: dict[str, Any], index: int) -> list[dict[str, Any]]:
        qid = _id(obj, "id") if obj.get("id") is not None else str(index)
        question = _text(obj, "question")
        answers = _str_list(obj, "answer", required=True)
        return [_record(qid, "en", question, answers, "short" if answers else "unanswerable",
                        question, [])]

    return parse


def _parse_jsonl(obj: dict[str, Any], index: int) -> list[dict[str, Any]]:
    answer_type = obj.get("answer_type", "unknown")
    if answer_type is None:
        answer_type = "unknown"
    if not isinstance(answer_type, str):
        raise _Bad("field 'answer_type' must be a string")
    en_question = obj.get("en_question")
    if en_question is not None and not isinstance(en_question, str):
        raise _Bad("field 'en_question' must be a string or null")
    if en_question is not None:
        en_question = en_question.strip() or None
    return [_record(
        _id(obj, "qid"),
        _lang(obj),
        _text(obj, "question"),
        _str_list(obj, "answers", required=True),
        answer_type.strip() or "unknown",
        en_question,
        _str_list(obj, "gold_pids", required=False),
    )]


# --- SQuAD layout (XQuAD) ---------------------------------------------------------------------


def _squad_lang(uri: str, lang: str | None, dataset: str) -> str:
    if lang is not None:
        return normalize_lang(lang)
    base = posixpath.basename(uri.rstrip("/"))
    for suffix in (".gz", ".json"):
        base = base.removesuffix(suffix)
    if "." in base:
        try:
            return normalize_lang(base.rsplit(".", 1)[1])
        except ConfigError:
            pass
    if dataset == "squad":
        return "en"  # SQuAD itself is English; translated copies are named or given --lang
    raise ConfigError(
        f"{uri}: cannot tell the language from the file name (expected e.g. xquad.es.json); "
        "pass --lang"
    )


def _load_squad(uri: str, bad: BadRecords, st: dict[str, int] | None = None
                ) -> tuple[str, list[Any]] | None:
    st = st if st is not None else {"read": 0, "bad": 0}
    with open_input(uri) as stream:
        try:
            data = stream.read()
        except _READ_ERRORS as exc:
            raise _damaged(uri, 0, exc) from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        st["read"] += 1
        _report(bad, st, uri, data[: exc.start].count(b"\n") + 1, f"invalid UTF-8: {exc}")
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        st["read"] += 1
        _report(bad, st, uri, exc.lineno, f"invalid JSON: {exc.msg} at column {exc.colno}")
        return None
    except RecursionError:
        st["read"] += 1
        _report(bad, st, uri, 1, "JSON nested too deeply to read")
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        st["read"] += 1
        _report(bad, st, uri, 1, "expected a SQuAD JSON object with a 'data' list")
        return None
    return text, doc["data"]


def _line_of_qas(text: str, node: Any) -> int:
    """Best-effort line of a nested SQuAD node: the line of its first question id, else 1."""
    ids: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("id"), str):
            ids.append(node["id"])
        for qa in node.get("qas") or []:
            if isinstance(qa, dict) and isinstance(qa.get("id"), str):
                ids.append(qa["id"])
    for qid in ids[:1]:
        m = re.search(r'"id"\s*:\s*' + re.escape(json.dumps(qid)), text)
        if m:
            return text.count("\n", 0, m.start()) + 1
    return 1


def _squad_qa(
    uri: str,
    file_lang: str,
    dataset: str,
    selected: tuple[str, ...] | None,
    bad: BadRecords,
    st: dict[str, int],
) -> Iterator[dict[str, Any]]:
    loaded = _load_squad(uri, bad, st)
    if loaded is None:
        return
    text, articles = loaded
    for ai, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            st["read"] += 1
            _report(bad, st, uri, 1, f"data[{ai}]: 'paragraphs' is missing or not a list")
            continue
        for pi, par in enumerate(paragraphs):
            qas = par.get("qas") if isinstance(par, dict) else None
            if not isinstance(qas, list):
                st["read"] += 1
                _report(bad, st, uri, _line_of_qas(text, par),
                        f"data[{ai}].paragraphs[{pi}]: 'qas' is missing or not a list")
                continue
            pid = squad_paragraph_pid(file_lang, ai, pi, dataset=dataset)
            for qi, qa in enumerate(qas):
                st["read"] += 1
                where = f"data[{ai}].paragraphs[{pi}].qas[{qi}]: "
                try:
                    if not isinstance(qa, dict):
                        raise _Bad("expected a JSON object")
                    rec = _squad_record(qa, file_lang, pid)
                except _Bad as exc:
                    _report(bad, st, uri, _line_of_qas(text, qa), where + str(exc),
                            json.dumps(qa, ensure_ascii=False))
                    continue
                if selected is not None and file_lang not in selected:
                    st["filtered_lang"] += 1
                    continue
                yield rec


def _squad_record(qa: dict[str, Any], lang: str, pid: str) -> dict[str, Any]:
    qid = _id(qa, "id")
    question = _text(qa, "question")
    items = _field(qa, "answers")
    if not isinstance(items, list):
        raise _Bad("field 'answers' must be a list")
    texts: list[str | None] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise _Bad(f"missing field 'answers[{i}].text'")
        texts.append(item["text"])
    answers = _dedup(texts)
    answer_type = "unanswerable" if qa.get("is_impossible") or not answers else "span"
    return _record(qid, lang, question, answers, answer_type,
                   question if lang == "en" else None, [pid])
