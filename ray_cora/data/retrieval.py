"""The retrieval output format, pure: questions cut into blocks, the record each question gets
(``{qid, lang, question, answers, answers_all?, gold_pids?, query?, ctxs}``), the part files a
``ray-cora retrieve`` folder holds, and reading any retrieval output back with every record checked.
Written by :mod:`ray_cora.pipelines.retrieve`; read by training, evaluation, iteration and the pivot."""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

import numpy as np

from ray_cora import storage
from ray_cora.data.qa import iter_qa
from ray_cora.errors import BadRecordError, ConfigError, StorageError

RETRIEVAL_KIND = "retrieval"



QUESTION_FIELDS = ("qid", "lang", "question", "answers", "answer_type", "en_question", "gold_pids")



def question_files(questions: str, dataset: str) -> list[str]:
    """``questions`` itself, or for xquad/squad a folder of per-language ``*.json`` files."""
    if dataset in ("xquad", "squad"):
        loc = storage.resolve(questions)
        if not loc.is_file():
            return [f.uri for f in storage.list_files(loc, suffix=".json")]
    return [questions]



def iter_questions(questions: str, *, dataset: str, langs: tuple[str, ...] | None) -> Iterator[dict]:
    for uri in question_files(questions, dataset):
        if dataset in ("xquad", "squad"):
            records = iter_qa(uri, dataset=dataset)
            yield from (r for r in records if langs is None or r["lang"] in langs)
        else:
            yield from iter_qa(uri, dataset=dataset, langs=langs)



def answers_in_all_languages(questions: str, *, dataset: str) -> dict[str, list[str]]:
    """qid → answers of that question in every language of the file(s) (MKQA: all 26), for R^multi."""
    union: dict[str, dict[str, None]] = {}
    for record in iter_questions(questions, dataset=dataset, langs=None):
        bucket = union.setdefault(record["qid"], {})
        for answer in record["answers"]:
            bucket[answer] = None
    return {qid: list(answers) for qid, answers in union.items()}



def question_blocks(records: Iterable[dict], block_size: int) -> Iterator[tuple[str, list[dict]]]:
    """Group questions into blocks of one language, named ``<lang>-<n:05d>`` in input order.

    >>> rs = [{"lang": l} for l in "aabab"]
    >>> [(name, len(b)) for name, b in question_blocks(rs, 2)]
    [('a-00000', 2), ('b-00000', 2), ('a-00001', 1)]
    """
    buffers: dict[str, list[dict]] = {}
    counters: dict[str, int] = {}
    for record in records:
        buffer = buffers.setdefault(record["lang"], [])
        buffer.append(record)
        if len(buffer) >= block_size:
            yield _name(record["lang"], counters), buffer
            buffers[record["lang"]] = []
    for lang, buffer in buffers.items():
        if buffer:
            yield _name(lang, counters), buffer



def _name(lang: str, counters: dict[str, int]) -> str:
    number = counters.get(lang, 0)
    counters[lang] = number + 1
    return f"{lang}-{number:05d}"



def part_paths(block: str) -> tuple[str, str]:
    return f"parts/{block}.jsonl", f"parts/{block}.json"



def retrieval_record(question: dict, ctxs: list[dict], *, answers_all: list[str] | None,
                     query: str | None = None) -> dict:
    record = {k: question[k] for k in ("qid", "lang", "question", "answers")}
    # CORA writes the tagged question into its output's "question", so its mGEN conversion tags it
    # a second time; we keep the plain question (mGEN adds the tag once) and record the encoder's
    # input apart.
    if query is not None and query != question["question"]:
        record["query"] = query
    if answers_all is not None:
        record["answers_all"] = answers_all
    if question.get("gold_pids"):
        record["gold_pids"] = question["gold_pids"]
    record["ctxs"] = ctxs
    return record



def make_ctxs(pids: list[str], scores: np.ndarray, passages: dict[str, dict], *, source: str) -> list[dict]:
    """Ranked passages with their texts (as in the corpus: no language tag is added)."""
    ctxs = []
    for pid, score in zip(pids, scores):
        passage = passages.get(pid)
        if passage is None:
            raise StorageError(f"passage {pid!r} is in the index but not in the corpus {source}: pass the "
                               "--passages the index was built from (and a fresh --passage-store)")
        ctxs.append({"pid": pid, "lang": passage["lang"], "title": passage["title"], "text": passage["text"],
                     "score": round(float(score), 6)})
    return ctxs



def format_block(questions: list[dict], ranked: list[list[str]], scores: np.ndarray,
                 passages: dict[str, dict], *, answers_all: list[list[str]] | None, queries: list[str] | None,
                 source: str) -> bytes:
    """A block's part file: one retrieval record per question, as JSON lines. ``ranked[i]`` and
    ``scores[i]`` are question i's top-k pids and scores; ``passages`` maps every pid to its row;
    ``queries[i]`` is the text the query encoder read (recorded as ``query`` when it is not the
    plain question).

    >>> qs = [{"qid": "1", "lang": "en", "question": "Who?", "answers": ["Ada"]}]
    >>> data = format_block(qs, [["p1"]], np.array([[0.5]]), {"p1": {"lang": "en", "title": "T", "text": "Ada"}},
    ...                     answers_all=None, queries=["Who? [en]"], source="corpus.jsonl")
    >>> json.loads(data)["query"], json.loads(data)["ctxs"][0]["score"]
    ('Who? [en]', 0.5)
    """
    lines = []
    for i, (question, pid_row) in enumerate(zip(questions, ranked)):
        ctxs = make_ctxs(pid_row, scores[i], passages, source=source)
        extra = answers_all[i] if answers_all is not None else None
        record = retrieval_record(question, ctxs, answers_all=extra, query=queries[i] if queries else None)
        lines.append(json.dumps(record, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def iter_retrieval(uri: str) -> Iterator[tuple[str, int, dict]]:
    """``(source, line, record)`` for every line of a retrieval output: a committed ``ray-cora
    retrieve`` folder (parts in manifest order, checksums verified) or any JSONL file/folder."""
    loc = storage.resolve(uri)
    if not loc.is_file() and loc.join(storage.MANIFEST_NAME).is_file():
        artifact = storage.Artifact(loc, kind=RETRIEVAL_KIND)
        parts = artifact.manifest.get("parts")
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise StorageError(f"{loc.join(storage.MANIFEST_NAME).uri}: field 'parts' must be a list of part file "
                               "names: rerun `ray-cora retrieve` with this --out to write it again")
        sources = [(artifact.location(p).uri, lambda p=p: artifact.read_bytes(p)) for p in parts]
    else:
        sources = [(f.uri, lambda f=f: storage.read_bytes(f)) for f in storage.list_files(loc, suffix=".jsonl")]
        if not sources:
            raise ConfigError(f"{loc.uri}: no retrieval output here (expected a `ray-cora retrieve` folder "
                              "with manifest.json, or .jsonl files)")
    hint = "fix or regenerate the retrieval file"
    for source, read in sources:
        for number, line in enumerate(read().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise BadRecordError(source, number, f"invalid UTF-8 at byte {exc.start}", hint=hint) from None
            except json.JSONDecodeError as exc:
                raise BadRecordError(source, number, f"not valid JSON: {exc.msg}", hint=hint) from None
            except RecursionError:
                raise BadRecordError(source, number, "JSON nested too deeply", hint=hint) from None
            problem = _retrieval_problem(record)
            if problem:
                raise BadRecordError(source, number, problem, hint=hint)
            yield source, number, record



def _retrieval_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "a retrieval record must be a JSON object"
    for name, kind in (("qid", str), ("lang", str), ("answers", list), ("ctxs", list)):
        if name not in record:
            return f"missing field '{name}'"
        if not isinstance(record[name], kind) and not (name == "qid" and _is_int(record[name])):
            return f"field '{name}' must be a {kind.__name__}"
    # A string where a list of strings belongs is refused, not read as a list: answers_all "Tokyo"
    # would be matched letter by letter, and no writer of ours makes one.
    for name in ("answers", "answers_all", "gold_pids"):
        value = record.get(name)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return f"field '{name}' must be a list of strings, got {_json_type(value)}"
    for i, ctx in enumerate(record["ctxs"]):
        if not isinstance(ctx, dict) or not isinstance(ctx.get("pid"), str):
            return f"field 'ctxs[{i}].pid' must be a string"
        for name in ("text", "title", "lang"):
            if ctx.get(name) is not None and not isinstance(ctx[name], str):
                return f"field 'ctxs[{i}].{name}' must be a string, got {_json_type(ctx[name])}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)
