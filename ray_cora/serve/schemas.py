"""Request and response bodies of the HTTP API, and the input limits every request is held to (pure).

Types are strict (``"k": "5"`` or ``"question": 3`` is refused, not coerced) and unknown fields
are refused, so a client's mistake is reported instead of guessed at. Limits that depend on the
application's options (question length, ``k``) are checked by :class:`Limits`.

Every error response has one JSON body, :class:`ErrorResponse`: ``{"error": one line for a person,
"field": the request field at fault or null, "type": the error's class (``invalid_request_error``,
``authentication_error``, ``unavailable_error``, ``server_error``), "code": what exactly (e.g.
``invalid_text``, ``body_too_large``)}``. A body that is not JSON is a 400; a JSON body whose
fields are wrong (types, ranges, empty or invalid text) a 422 naming the field.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ray_cora.errors import ConfigError, RayCoraError
from ray_cora.languages import normalize_lang


# The default ``code`` of an error response per HTTP status (a raise site may name a finer one).
STATUS_CODES = {400: "invalid_body", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                408: "timeout", 413: "body_too_large", 415: "unsupported_media_type", 422: "invalid_value",
                429: "overloaded", 500: "internal_error", 503: "unavailable"}


def error_type(status: int) -> str:
    """The ``type`` of an error response with HTTP ``status``.

    >>> [error_type(s) for s in (401, 422, 503, 500)]
    ['authentication_error', 'invalid_request_error', 'unavailable_error', 'server_error']
    """
    if status == 401:
        return "authentication_error"
    if status in (429, 503):
        return "unavailable_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def printable(text: str, limit: int = 200) -> str:
    """``text`` made safe to send back in an error body: lone surrogates (not encodable as UTF-8)
    written as ``\\udXXX`` escapes, cut to ``limit`` characters.

    >>> printable("a\\ud800b")
    'a\\\\ud800b'
    """
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit - 1] + "…"


class ClientError(RayCoraError):
    """An HTTP error the API answers: ``status`` with the JSON body ``{"error", "field", "type",
    "code"}`` (:class:`ErrorResponse`); ``code`` defaults to the status's (:data:`STATUS_CODES`).
    ``headers`` go with the response (``Retry-After``, ``Allow``, ``WWW-Authenticate``)."""

    def __init__(self, status: int, message: str, *, field: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.field = field
        self.message = message
        self.code = code or STATUS_CODES.get(status, "error")
        self.headers = dict(headers or {})
        super().__init__(message)

    def __reduce__(self):
        return (_rebuild_client_error, (self.status, self.message, self.field, self.code, self.headers))

    def body(self) -> dict[str, Any]:
        return {"error": printable(self.message, 1000), "field": None if self.field is None else printable(self.field),
                "type": error_type(self.status), "code": self.code}


def _rebuild_client_error(status: int, message: str, field: str | None, code: str | None = None,
                          headers: dict[str, str] | None = None) -> ClientError:
    return ClientError(status, message, field=field, code=code, headers=headers)


def check_text(value: str, field: str) -> str:
    """``value`` unless it holds a character UTF-8 cannot encode (a lone UTF-16 surrogate such as
    ``"\\ud800"``, which JSON escapes can carry): then a 422 naming ``field``.

    >>> check_text("a\\ud800b", "question")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ray_cora.serve.schemas.ClientError: question: character 2 is a lone UTF-16 surrogate (\\ud800), not text: ...
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = printable(value[exc.start:exc.start + 1])
        raise ClientError(422, f"{field}: character {exc.start + 1} is a lone UTF-16 surrogate ({bad}), not "
                          "text: send valid Unicode (a surrogate must come in a high+low pair)",
                          field=field, code="invalid_text") from None
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RetrieveRequest(_Request):
    question: StrictStr = Field(description="The question, in any language", examples=["富士山の高さは？"])
    lang: StrictStr | None = Field(None, description="Language code of the question, checked against ray_cora's "
                                   "language table; required when the index's encoder reads questions with "
                                   "their language, as CORA's mDPR does ('{question} [{lang}]')", examples=["ja"])
    k: StrictInt | None = Field(None, description="Passages to return (1..max_k; default default_k)")
    nprobe: StrictInt | None = Field(None, description="IVF lists to probe for this request (1..max_nprobe; "
                                     "default: the app's nprobe, else the index's tuned value)")
    ef_search: StrictInt | None = Field(None, description="HNSW efSearch for this request (1..max_ef_search; "
                                        "default: the app's, else the index's)")
    retriever: Literal["dense", "bm25", "hybrid"] | None = Field(
        None, description="dense: the dense index alone; bm25: the BM25 index alone, in the question's language "
        "(needs lang); hybrid: both lists fused by the fusion setting of the question's language (without "
        "lang: the dense list alone). bm25 and hybrid need an app with a lexical_index (422 otherwise). "
        "Default: the app's retriever (GET /v1/info)", examples=["hybrid"])


class AnswerRequest(_Request):
    question: StrictStr = Field(description="The question", examples=["¿Qué altura tiene el monte Fuji?"])
    lang: StrictStr = Field(description="Language code of the question and of the answer", examples=["es"])


class PivotRequest(AnswerRequest):
    pass


class Retrievers(BaseModel):
    """Where a passage came from: its 1-based rank in each retriever's list, null when not in it."""

    dense: int | None = Field(description="Rank in the dense list (null: not in its top)")
    bm25: int | None = Field(description="Rank in the BM25 list (null: not in its top, or no BM25 search)")


class Passage(BaseModel):
    pid: str
    lang: str
    title: str
    text: str
    score: float = Field(description="The dense inner product, the BM25 score, or the fused score (hybrid): "
                         "the retriever's own scale")
    retrievers: Retrievers = Field(description="The passage's rank in the dense and BM25 lists")


class RetrieveResponse(BaseModel):
    question: str
    lang: str | None
    k: int
    retriever: str = Field(description="The retriever that answered: dense, bm25 or hybrid")
    passages: list[Passage]


class AnswerResponse(BaseModel):
    question: str
    lang: str
    answer: str
    passages: list[Passage] = Field(description="The evidence the generator read")


class PivotResponse(BaseModel):
    question: str
    lang: str
    answer: str | None = Field(description="The matched English question's answer in `lang`; null "
                               "when the pipeline abstains")
    abstained: bool
    matched_question: str
    matched_qid: str
    score: float
    english_answer: str
    translation_source: str | None = Field(description="Where the answer came from (ray_cora.pivot.translate."
                                           "SOURCES): english (asked in English), wikidata_qid (the label of the "
                                           "answer's Wikidata item), wikidata_en_match (an item whose English label "
                                           "or alias is the answer), mt, untranslated (the English answer); null when "
                                           "the pipeline abstains")
    threshold: float | None = Field(None, description="The abstention threshold the score was held to (it "
                                    "abstains when score < threshold); null when the app has none")


class DetectLanguageRequest(_Request):
    text: StrictStr = Field(description="A question (or any short text)", examples=["في أي عام اكتمل بناء برج إيفل؟"])


class DetectLanguageResponse(BaseModel):
    lang: str | None = Field(description="The language code, among the language table's; null when unsure")
    name: str | None = Field(description="The language's English name (null with lang)")
    script: str | None = Field(description="Its writing script (null with lang)")
    direction: Literal["ltr", "rtl"] | None = Field(description="Its writing direction (null with lang: write "
                                                      "the text with dir=auto)")
    how: str = Field(description="How it was told: script, letters, words; or why not (e.g. 'tied between "
                     "da, no')")


class ErrorResponse(BaseModel):
    """The body of every error response (4xx and 5xx)."""

    error: str = Field(description="What is wrong and how to fix it, one line")
    field: str | None = Field(None, description="The request field at fault (dotted path), or the header")
    type: str = Field(description="invalid_request_error, authentication_error, unavailable_error or server_error")
    code: str = Field(description="Machine-readable cause, e.g. invalid_json, missing_field, unknown_field, "
                      "invalid_text, invalid_value, no_lexical_index, body_too_large, unsupported_media_type, "
                      "unauthorized, not_found, method_not_allowed, not_configured, not_ready, unavailable, "
                      "internal_error")


@dataclass(frozen=True)
class Limits:
    """The checks a request passes before any model sees it; each failure is a 422 naming its field.

    >>> Limits(max_question_chars=10).question("  ")
    Traceback (most recent call last):
    ...
    ray_cora.serve.schemas.ClientError: question is empty
    """

    max_question_chars: int = 1000
    max_k: int = 100
    default_k: int = 10
    max_nprobe: int = 1024
    max_ef_search: int = 4096
    # The retrievers the app offers (bm25 and hybrid only with a lexical index) and a request's default.
    retrievers: tuple[str, ...] = ("dense",)
    default_retriever: str = "dense"

    def question(self, text: str, field: str = "question") -> str:
        text = text.strip()
        if not text:
            raise ClientError(422, f"{field} is empty", field=field, code="empty_question")
        if len(text) > self.max_question_chars:
            raise ClientError(422, f"{field} is {len(text)} characters long; the limit is "
                              f"{self.max_question_chars}", field=field, code="question_too_long")
        return check_text(text, field)

    def lang(self, code: str | None, *, required: bool = False) -> str | None:
        if code is None:
            if required:
                raise ClientError(422, "lang is required", field="lang", code="missing_field")
            return None
        try:
            return normalize_lang(check_text(code, "lang"))
        except ConfigError as exc:
            raise ClientError(422, str(exc), field="lang", code="unknown_lang") from None

    def k(self, k: int | None) -> int:
        if k is None:
            return self.default_k
        if not 1 <= k <= self.max_k:
            raise ClientError(422, f"k must be between 1 and {self.max_k}, got {k}", field="k", code="out_of_range")
        return k

    def search_param(self, name: str, value: int | None) -> int | None:
        """A request's ``nprobe`` or ``ef_search``: None (the app's default) or 1..its maximum."""
        if value is None:
            return None
        limit = self.max_nprobe if name == "nprobe" else self.max_ef_search
        if not 1 <= value <= limit:
            raise ClientError(422, f"{name} must be between 1 and {limit}, got {value}", field=name,
                              code="out_of_range")
        return value

    def retriever(self, name: str | None) -> str:
        """A request's ``retriever`` (None: the app's default), refused with a 422 naming the field
        when the app does not offer it (bm25 and hybrid need an app with a lexical index).

        >>> Limits().retriever("hybrid")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ray_cora.serve.schemas.ClientError: retriever 'hybrid' needs a lexical index and this app has none: ...
        """
        if name is None:
            return self.default_retriever
        if name not in self.retrievers:
            raise ClientError(422, f"retriever {name!r} needs a lexical index and this app has none: use "
                              f"{' or '.join(self.retrievers)}, or start the app with lexical_index=<URI> "
                              "(ray-cora index-bm25 --out)", field="retriever", code="no_lexical_index")
        return name

    @property
    def max_body_bytes(self) -> int:
        # A question of max_question_chars in 4-byte UTF-8 characters, escaped, plus the other fields.
        return 4 * 6 * self.max_question_chars + 4096


def describe_validation_errors(errors: list[dict[str, Any]]) -> ClientError:
    """FastAPI/pydantic validation errors → one ClientError: 400 for a body that is not JSON,
    422 for a JSON body of the wrong shape, naming the first offending field."""
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return ClientError(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                           field=None, code="invalid_json")
    code = "invalid_value"
    if kind == "missing":
        message = f"{field} is required" if field else "request body is required (a JSON object)"
        code = "missing_field"
    elif kind == "extra_forbidden":
        message, code = f"unknown field {field!r}", "unknown_field"
    elif kind in ("model_type", "model_attributes_type", "dict_type") and not loc:
        message, code = "request body must be a JSON object", "invalid_body"
    elif kind == "string_unicode":  # a key that is a lone surrogate
        message = (f"{printable(reprlib.repr(first.get('input')), 80)} is not text (a lone UTF-16 surrogate): send "
                   "valid Unicode")
        code = "invalid_text"
    else:
        message = (f"{field or 'request body'}: {first.get('msg', 'invalid value')} "
                   f"(got {printable(reprlib.repr(first.get('input')), 80)})")
    return ClientError(422, message, field=field, code=code)
