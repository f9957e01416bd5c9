"""Request and response bodies of the HTTP API, and the input limits every request is held to (pure).

Types are strict (``"k": "5"`` or ``"question": 3`` is refused, not coerced) and unknown fields
are refused, so a client's mistake is reported instead of guessed at. Limits that depend on the
application's options (question length, ``k``) are checked by :class:`Limits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ray_cora.errors import ConfigError, RayCoraError
from ray_cora.languages import normalize_lang


class ClientError(RayCoraError):
    """A request the API refuses: HTTP ``status`` with the JSON body ``{"error", "field"}``."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        self.status = status
        self.field = field
        self.message = message
        super().__init__(message)

    def __reduce__(self):
        return (_rebuild_client_error, (self.status, self.message, self.field))

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


def _rebuild_client_error(status: int, message: str, field: str | None) -> ClientError:
    return ClientError(status, message, field=field)


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


class AnswerRequest(_Request):
    question: StrictStr = Field(description="The question", examples=["¿Qué altura tiene el monte Fuji?"])
    lang: StrictStr = Field(description="Language code of the question and of the answer", examples=["es"])


class PivotRequest(AnswerRequest):
    pass


class Passage(BaseModel):
    pid: str
    lang: str
    title: str
    text: str
    score: float


class RetrieveResponse(BaseModel):
    question: str
    lang: str | None
    k: int
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
    translation_source: str | None


class ErrorResponse(BaseModel):
    error: str
    field: str | None = None


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

    def question(self, text: str) -> str:
        text = text.strip()
        if not text:
            raise ClientError(422, "question is empty", field="question")
        if len(text) > self.max_question_chars:
            raise ClientError(422, f"question is {len(text)} characters long; the limit is "
                              f"{self.max_question_chars}", field="question")
        return text

    def lang(self, code: str | None, *, required: bool = False) -> str | None:
        if code is None:
            if required:
                raise ClientError(422, "lang is required", field="lang")
            return None
        try:
            return normalize_lang(code)
        except ConfigError as exc:
            raise ClientError(422, str(exc), field="lang") from None

    def k(self, k: int | None) -> int:
        if k is None:
            return self.default_k
        if not 1 <= k <= self.max_k:
            raise ClientError(422, f"k must be between 1 and {self.max_k}, got {k}", field="k")
        return k

    def search_param(self, name: str, value: int | None) -> int | None:
        """A request's ``nprobe`` or ``ef_search``: None (the app's default) or 1..its maximum."""
        if value is None:
            return None
        limit = self.max_nprobe if name == "nprobe" else self.max_ef_search
        if not 1 <= value <= limit:
            raise ClientError(422, f"{name} must be between 1 and {limit}, got {value}", field=name)
        return value

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
                           field=None)
    if kind == "missing":
        message = f"{field} is required" if field else "request body is required (a JSON object)"
    elif kind == "extra_forbidden":
        message = f"unknown field {field!r}"
    elif kind in ("model_type", "model_attributes_type", "dict_type") and not loc:
        message = "request body must be a JSON object"
    else:
        message = f"{field}: {first.get('msg', 'invalid value')} (got {first.get('input')!r})"
    return ClientError(422, message, field=field)
