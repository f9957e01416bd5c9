"""Prediction files: ours (JSONL keyed by ``(qid, lang)``) and the official scorers' formats.

- **ours**: one JSON object per line, ``{"qid", "lang", "prediction"}`` plus, optionally, MKQA's
  ``binary_answer`` ("yes"/"no"/null) and ``no_answer_prob``. ``qid`` is the dataset's own id
  (MKQA ``example_id``, XOR ``id``, XQuAD ``id``) as a string; ``prediction`` null means "".
- **xor**: the XOR-TyDi scorer's JSON object ``{id: answer}`` (no language: it comes from the
  gold file, which the converter can read, or from ``lang``).
- **mkqa**: the MKQA scorer's JSONL ``{example_id, prediction, binary_answer, no_answer_prob}``,
  one file per language, named ``{lang}.jsonl`` in a folder as its all-languages script expects.

Malformed lines raise :class:`~ray_cora.errors.BadRecordError` (file:line); an unknown language
code raises :class:`~ray_cora.errors.ConfigError` naming the file and line.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "p.jsonl")
>>> write_predictions(path, {("7", "ja"): Prediction("東京")})
>>> read_predictions(path)
{('7', 'ja'): Prediction(prediction='東京', binary_answer=None, no_answer_prob=0.0)}
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

from ray_cora import storage
from ray_cora.errors import BadRecordError, ConfigError, StorageError
from ray_cora.languages import normalize_lang
from ray_cora.metrics.qa import Prediction

__all__ = [
    "FORMATS",
    "Prediction",
    "read_any",
    "read_mkqa_predictions",
    "prediction_files",
    "read_predictions",
    "read_xor_predictions",
    "write_mkqa_predictions",
    "write_predictions",
    "write_xor_predictions",
]

FORMATS: tuple[str, ...] = ("ours", "xor", "mkqa")
Predictions = dict[tuple[str, str], Prediction]
_HINT = "fix the prediction file"


def _lang_at(code: Any, source: str, line: int) -> str:
    if not isinstance(code, str) or not code.strip():
        raise BadRecordError(source, line, "field 'lang' must be a non-empty language code", hint=_HINT)
    try:
        return normalize_lang(code)
    except ConfigError as exc:
        raise ConfigError(f"{source}:{line}: field 'lang': {exc}") from None


def _qid(value: Any, field: str, source: str, line: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise BadRecordError(source, line, f"field {field!r} must be a non-empty string or integer",
                             hint=_HINT)
    return str(value).strip()


def _prediction(obj: dict[str, Any], source: str, line: int) -> Prediction:
    text = obj.get("prediction")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise BadRecordError(source, line, "field 'prediction' must be a string or null", hint=_HINT)
    binary = obj.get("binary_answer")
    if binary is not None and not isinstance(binary, str):
        raise BadRecordError(source, line, "field 'binary_answer' must be \"yes\", \"no\" or null", hint=_HINT)
    binary = binary.lower() if binary else None
    if binary not in (None, "yes", "no"):
        raise BadRecordError(source, line, f"field 'binary_answer' must be \"yes\", \"no\" or null, "
                             f"got {obj['binary_answer']!r}", hint=_HINT)
    prob = obj.get("no_answer_prob", 0.0)
    if prob is None:
        prob = 0.0
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not math.isfinite(prob):
        raise BadRecordError(source, line, "field 'no_answer_prob' must be a finite number", hint=_HINT)
    return Prediction(text, binary, float(prob))


def _json_lines(uri: str) -> Iterable[tuple[int, dict[str, Any]]]:
    with storage.open_input(uri) as stream:
        for line_no, raw in enumerate(storage.iter_lines(stream), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
            except UnicodeDecodeError as exc:
                raise BadRecordError(uri, line_no, f"invalid UTF-8: {exc}", hint=_HINT) from None
            except json.JSONDecodeError as exc:
                raise BadRecordError(uri, line_no, f"invalid JSON: {exc.msg} at column {exc.colno}",
                                     hint=_HINT) from None
            if not isinstance(obj, dict):
                raise BadRecordError(uri, line_no, f"expected a JSON object, got {type(obj).__name__}",
                                     hint=_HINT)
            yield line_no, obj


def _put(out: Predictions, key: tuple[str, str], pred: Prediction, lines: dict, source: str,
         line: int) -> None:
    if key in out:
        raise BadRecordError(source, line, f"question {key[0]!r} in language {key[1]!r} already "
                             f"predicted at line {lines[key]}", hint="keep one prediction per (qid, lang)")
    out[key] = pred
    lines[key] = line


def prediction_files(uri: str) -> list[str]:
    """The JSONL files a predictions URI stands for: the file itself; for a folder with a
    ``manifest.json`` listing ``parts`` (``ray-cora pivot run`` output), those parts in order,
    checksums verified; for any other folder, its ``*.jsonl`` files sorted by path."""
    loc = storage.resolve(uri)
    if loc.is_file() or not loc.exists():
        return [uri]  # a missing path fails in the reader with the usual not-found error
    if loc.join(storage.MANIFEST_NAME).is_file():
        artifact = storage.Artifact(loc)
        parts = artifact.manifest.get("parts")
        if parts is not None and not (isinstance(parts, list) and all(isinstance(p, str) for p in parts)):
            raise StorageError(f"{loc.join(storage.MANIFEST_NAME).uri}: field 'parts' must be a list of part "
                               "file names: rerun the job that wrote it")
        if isinstance(parts, list) and parts:
            for part in parts:
                artifact.verify(part)
            return [artifact.location(part).uri for part in parts]
    files = [f.uri for f in storage.list_files(loc, suffix=".jsonl")]
    if not files:
        raise ConfigError(f"{loc.uri}: no predictions here (expected a .jsonl file, a folder of .jsonl "
                          "files, or a `ray-cora pivot run` output folder)")
    return files


def read_predictions(uri: str) -> Predictions:
    """Read our JSONL predictions into ``{(qid, lang): Prediction}`` (file order kept); ``uri``
    is one file or a folder of them (see :func:`prediction_files`)."""
    out: Predictions = {}
    lines: dict[tuple[str, str], int] = {}
    for source in prediction_files(uri):
        for line_no, obj in _json_lines(source):
            for field in ("qid", "lang"):
                if field not in obj:
                    raise BadRecordError(source, line_no, f"missing field {field!r}", hint=_HINT)
            if "prediction" not in obj:
                raise BadRecordError(source, line_no, "missing field 'prediction'", hint=_HINT)
            key = (_qid(obj["qid"], "qid", source, line_no), _lang_at(obj["lang"], source, line_no))
            _put(out, key, _prediction(obj, source, line_no), lines, source, line_no)
    return out


def write_predictions(uri: str, predictions: Mapping[tuple[str, str], Prediction | str]) -> None:
    """Write ``{(qid, lang): Prediction | str}`` as our JSONL (binary/no-answer fields only when set)."""
    with storage.open_output(uri) as stream:
        for (qid, lang), pred in predictions.items():
            pred = pred if isinstance(pred, Prediction) else Prediction(pred)
            record: dict[str, Any] = {"qid": qid, "lang": lang, "prediction": pred.prediction}
            if pred.binary_answer:
                record["binary_answer"] = pred.binary_answer
            if pred.no_answer_prob:
                record["no_answer_prob"] = pred.no_answer_prob
            stream.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))


def read_xor_predictions(uri: str, *, lang: str | None = None,
                         qid_langs: Mapping[str, str] | None = None) -> Predictions:
    """Read the XOR scorer's ``{id: answer}`` JSON. Each id's language is ``qid_langs[id]`` (from
    the gold file) or ``lang``; a key unknown to ``qid_langs`` whose part after the last ``_`` is
    known is taken as that id, as the XOR scorer strips such prefixes."""
    if lang is None and qid_langs is None:
        raise ConfigError(f"{uri}: XOR predictions carry no language; pass --lang, or --gold with "
                          "--dataset so each id's language is taken from the gold file")
    fixed = normalize_lang(lang) if lang is not None else None
    try:
        doc = json.loads(storage.read_bytes(uri).decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError as exc:
        raise BadRecordError(uri, 1, f"invalid UTF-8: {exc}", hint=_HINT) from None
    except json.JSONDecodeError as exc:
        raise BadRecordError(uri, exc.lineno, f"invalid JSON: {exc.msg} at column {exc.colno}",
                             hint=_HINT) from None
    if not isinstance(doc, dict):
        raise BadRecordError(uri, 1, "expected a JSON object {id: answer}", hint=_HINT)
    out: Predictions = {}
    lines: dict[tuple[str, str], int] = {}
    for i, (key, answer) in enumerate(doc.items(), start=1):
        if answer is not None and not isinstance(answer, str):
            raise BadRecordError(uri, 1, f"answer of id {key!r} must be a string", hint=_HINT)
        qid = key
        if qid_langs is not None and qid not in qid_langs and key.split("_")[-1] in qid_langs:
            qid = key.split("_")[-1]
        code = qid_langs.get(qid, fixed) if qid_langs is not None else fixed
        if code is None:
            code = "und"  # no gold language: kept as an unknown prediction, listed by the report
        _put(out, (qid, code), Prediction(answer or ""), lines, uri, i)
    return out


def write_xor_predictions(uri: str, predictions: Mapping[tuple[str, str], Prediction | str], *,
                          lang: str | None = None) -> int:
    """Write ``{id: answer}`` JSON (all languages, or only ``lang``); returns the count written.
    Two languages predicting one id cannot share this format: that is an error."""
    only = normalize_lang(lang) if lang is not None else None
    doc: dict[str, str] = {}
    lang_of: dict[str, str] = {}
    for (qid, code), pred in predictions.items():
        if only is not None and code != only:
            continue
        if qid in doc:
            raise ConfigError(f"id {qid!r} is predicted in both {lang_of[qid]!r} and {code!r}: the XOR "
                              "format has one answer per id; pass --lang to convert one language")
        doc[qid] = pred.prediction if isinstance(pred, Prediction) else pred
        lang_of[qid] = code
    storage.write_bytes(uri, json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8"))
    return len(doc)


def _mkqa_file_lang(uri: str) -> str | None:
    base = posixpath.basename(uri.rstrip("/"))
    for suffix in (".gz", ".jsonl"):
        base = base.removesuffix(suffix)
    try:
        return normalize_lang(base)
    except ConfigError:
        return None


def read_mkqa_predictions(uri: str, *, lang: str | None = None) -> Predictions:
    """Read the MKQA scorer's JSONL: one file (language from ``lang`` or its ``{lang}.jsonl``
    name) or a folder of ``{lang}.jsonl`` files."""
    files = [f.uri for f in storage.list_files(uri, suffix=".jsonl")]
    if not files:
        raise ConfigError(f"{uri}: no {{lang}}.jsonl prediction files found")
    out: Predictions = {}
    lines: dict[tuple[str, str], int] = {}
    for file in files:
        code = normalize_lang(lang) if lang is not None else _mkqa_file_lang(file)
        if code is None:
            raise ConfigError(f"{file}: cannot tell the language from the file name (expected e.g. "
                              "ja.jsonl, as the MKQA scorer names them); pass --lang")
        for line_no, obj in _json_lines(file):
            if "example_id" not in obj:
                raise BadRecordError(file, line_no, "missing field 'example_id'", hint=_HINT)
            key = (_qid(obj["example_id"], "example_id", file, line_no), code)
            _put(out, key, _prediction(obj, file, line_no), lines, file, line_no)
    return out


def write_mkqa_predictions(folder: str, predictions: Mapping[tuple[str, str], Prediction | str], *,
                           lang: str | None = None) -> list[str]:
    """Write one MKQA-scorer file per language, ``folder/{lang}.jsonl``; returns their URIs."""
    only = normalize_lang(lang) if lang is not None else None
    per_lang: dict[str, list[bytes]] = {}
    for (qid, code), pred in predictions.items():
        if only is not None and code != only:
            continue
        pred = pred if isinstance(pred, Prediction) else Prediction(pred)
        record = {"example_id": qid, "prediction": pred.prediction,
                  "binary_answer": pred.binary_answer, "no_answer_prob": pred.no_answer_prob}
        per_lang.setdefault(code, []).append((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    root = storage.resolve(folder)
    written = []
    for code, records in sorted(per_lang.items()):
        target = root.join(f"{code}.jsonl")
        storage.write_bytes(target, b"".join(records))
        written.append(target.uri)
    return written


def read_any(uri: str, fmt: str, *, lang: str | None = None,
             qid_langs: Mapping[str, str] | None = None) -> Predictions:
    """Read predictions in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "ours":
        return read_predictions(uri)
    if fmt == "xor":
        return read_xor_predictions(uri, lang=lang, qid_langs=qid_langs)
    if fmt == "mkqa":
        return read_mkqa_predictions(uri, lang=lang)
    raise ConfigError(f"unknown predictions format {fmt!r}; accepted: {', '.join(FORMATS)}")
