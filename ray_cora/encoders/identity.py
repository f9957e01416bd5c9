"""What an encoder is, pure: query formats, model sources and folder fingerprints, identity diffs.

An encoder's *identity* is a JSON-able dict that says which model it runs, independent of how its
spec was spelled: ``dpr:X.cpt`` and ``dpr:X.cpt?config=<the base model X.cpt names>`` have one
identity; the same path holding other bytes has another. :func:`ray_cora.encoders.encoder_identity`
computes it from a spec; every loaded encoder carries it as ``encoder.identity``.

The *query format* is the template a question is written in before the query encoder sees it:
``"{question}"`` (plain) or ``"{question} [{lang}]"`` (tagged: CORA's ``--add_lang``, as in
AkariAsai/CORA ``mDPR/dense_retriever.py`` ``parse_qa_jsonlines_file``). Encoders expose it as
``encoder.query_format``; callers apply it with :func:`format_query` and hand ``encode_queries``
the formatted text (encoders never add the tag themselves).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Mapping
from typing import Any

from ray_cora import storage
from ray_cora.errors import ConfigError

PLAIN = "{question}"
TAGGED = "{question} [{lang}]"
QUERY_FORMATS = {"plain": PLAIN, "tagged": TAGGED}
# A folder's own record of how its query encoder was trained: {"query_format": "plain" | "tagged"}.
QUERY_FORMAT_FILE = "ray_cora_encoder.json"
# Fields that change only how questions are written, not the vector space: not compared.
QUERY_ONLY_FIELDS = ("query_format",)
# Folder fingerprints read files up to this size (configs, tokenizers, tiny models) and only the
# size of larger ones (weights): cheap on every start, and it still tells most re-exports apart.
FINGERPRINT_CONTENT_LIMIT = 16 << 20
FINGERPRINT_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")


def parse_query_format(value: str, *, where: str) -> str:
    """A query format name (``plain``, ``tagged``) or one of their templates → the template.

    >>> parse_query_format("tagged", where="spec")
    '{question} [{lang}]'
    """
    text = str(value).strip()
    if text in QUERY_FORMATS:
        return QUERY_FORMATS[text]
    if text in QUERY_FORMATS.values():
        return text
    raise ConfigError(f"{where}: query_format={value!r} is not one of {', '.join(QUERY_FORMATS)} "
                      f"(plain = {PLAIN!r}; tagged = {TAGGED!r}, CORA's --add_lang)")


def format_query(template: str, question: str, lang: str) -> str:
    """The text the query encoder sees: ``question`` written in ``template`` (an encoder's
    ``query_format``). The tag goes after one space, exactly as CORA's mDPR ``--add_lang``.

    >>> format_query("{question} [{lang}]", "日本の首都は？", "ja")
    '日本の首都は？ [ja]'
    >>> format_query("{question}", "Who wrote Faust?", "en")
    'Who wrote Faust?'
    """
    return template.format(question=question, lang=lang)


def query_format_name(template: str) -> str:
    """``plain`` / ``tagged`` for a known template, else the template itself (for messages)."""
    return next((name for name, t in QUERY_FORMATS.items() if t == template), template)


def normalize_source(source: str) -> str:
    """A model source as an identity records it: local folders (and ``file://``) as absolute paths,
    ``s3://`` URIs without a trailing slash, Hugging Face names unchanged.

    >>> normalize_source("s3://b/models/mbert/")
    's3://b/models/mbert'
    >>> normalize_source("bert-base-multilingual-uncased")
    'bert-base-multilingual-uncased'
    """
    text = source.strip()
    if text.startswith("file://"):
        return storage.resolve(text).path
    if "://" in text:
        return text.rstrip("/")
    expanded = os.path.expanduser(text)
    if os.path.exists(expanded) or text.startswith(("/", "~", ".")):
        return os.path.abspath(expanded)
    return text


def is_folder_source(source: str) -> bool:
    """A local folder or an ``s3://``/``file://`` URI (rather than a Hugging Face cache name)."""
    return "://" in source or os.path.isdir(os.path.expanduser(source))


def folder_fingerprint(source: str) -> str | None:
    """A sha256 over a model folder's files (``None`` for a Hugging Face cache name): configs,
    tokenizer files and small weights by content, weight files over
    :data:`FINGERPRINT_CONTENT_LIMIT` by size only (hashing gigabytes on every start is not cheap;
    a re-training saved over the same folder with the same shapes is therefore not told apart)."""
    if not is_folder_source(source):
        return None
    root = storage.resolve(source)
    entries = []
    for loc in storage.list_files(root):
        rel = posixpath.relpath(loc.path, root.path)
        if not rel.endswith(FINGERPRINT_SUFFIXES):
            continue
        size = loc.info().size
        entries.append([rel, f"sha256:{storage.sha256_of(loc)[0]}" if size <= FINGERPRINT_CONTENT_LIMIT
                        else f"size:{size}"])
    return hashlib.sha256(json.dumps(entries).encode("utf-8")).hexdigest()


def folder_query_format(source: str) -> str | None:
    """The query format a model folder records in :data:`QUERY_FORMAT_FILE`, as a template, or
    ``None`` (no such file, or a Hugging Face cache name)."""
    if not is_folder_source(source):
        return None
    loc = storage.resolve(source).join(QUERY_FORMAT_FILE)
    if not loc.is_file():
        return None
    try:
        record = json.loads(storage.read_bytes(loc, decompress=False))
    except ValueError as exc:
        raise ConfigError(f"{loc.uri}: not valid JSON ({exc}); write it as {{\"query_format\": \"tagged\"}}") from exc
    if not isinstance(record, dict) or "query_format" not in record:
        return None
    return parse_query_format(record["query_format"], where=loc.uri)


def identity_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The identity fields that differ (``QUERY_ONLY_FIELDS`` aside), each as ``name recorded ≠ now``.

    >>> identity_differences({"kind": "dpr", "max_length": 256}, {"kind": "dpr", "max_length": 128})
    ['max_length 256 (recorded) vs 128 (now)']
    """
    if recorded.get("kind") != current.get("kind"):  # another kind of model: its fields say nothing more
        return [f"kind {_short(recorded.get('kind'))} (recorded) vs {_short(current.get('kind'))} (now)"]
    out = []
    for key in sorted(set(recorded) | set(current)):
        if key in QUERY_ONLY_FIELDS or recorded.get(key) == current.get(key):
            continue
        out.append(f"{key} {_short(recorded.get(key))} (recorded) vs {_short(current.get(key))} (now)")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"  # a sha256
    return text if len(text) <= 80 else text[:77] + "…"
