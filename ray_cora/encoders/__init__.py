"""Text encoders behind one interface, chosen by a spec string.

- ``muse`` — Google's multilingual Universal Sentence Encoder v3 (offline, numpy).
- ``hf:<name-or-path>[?pooling=cls|mean&max_length=N&normalize=true&query_prefix=...&passage_prefix=...&tokenizer=...
  &query_format=plain|tagged]`` — any Hugging Face encoder, or a folder with ``question_encoder/`` and
  ``ctx_encoder/`` (see :mod:`ray_cora.encoders.hf`).
- ``dpr:<path-or-uri>[?config=...&tokenizer=...&max_length=N&query_format=tagged|plain]`` — a CORA/DPR
  bi-encoder ``.cpt`` (see :mod:`ray_cora.encoders.dpr`).

Every loaded encoder has ``spec``, ``dim``, ``normalized``, ``query_format`` and ``identity``:

- ``query_format`` — the template questions are written in before ``encode_queries``: ``plain``
  ``"{question}"`` or ``tagged`` ``"{question} [{lang}]"`` (CORA's ``--add_lang``). Defaults: ``dpr:``
  tagged (CORA evaluates its mDPR so), ``hf:`` what the folder's ``ray_cora_encoder.json`` records,
  else plain, ``muse`` plain; ``?query_format=`` overrides. Encoders never apply it themselves:
  callers write ``encode_queries([format_query(enc.query_format, q, lang) ...])``.
- ``identity`` — what the model is, whatever the spelling of its spec (:func:`encoder_identity`
  computes it without loading). Manifests record :func:`encoder_record`; readers check with
  :func:`check_same_encoder`.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence
from urllib.parse import parse_qs

import numpy as np

from ray_cora import storage
from ray_cora.encoders.identity import PLAIN, QUERY_FORMATS, TAGGED, format_query, identity_differences
from ray_cora.errors import ConfigError, RayCoraError, StorageError

__all__ = ["ENCODER_SPECS", "PLAIN", "QUERY_FORMATS", "TAGGED", "TextEncoder", "check_encoder_available",
           "check_encoder_spec",
           "check_same_encoder", "encoder_identity", "encoder_record", "format_query", "load_encoder",
           "query_format_for", "spec_query_format"]

ENCODER_SPECS = (
    "muse",
    ("hf:<name-or-path>[?pooling=cls|mean&max_length=N&normalize=true&query_prefix=...&passage_prefix=..."
     "&query_format=plain|tagged]"),
    "dpr:<checkpoint-path-or-uri>[?config=<hf-name-or-path>&tokenizer=...&max_length=N&query_format=tagged|plain]",
)


class TextEncoder(Protocol):
    """Embeds questions and passages into one vector space searched by inner product."""

    spec: str
    dim: int
    normalized: bool
    query_format: str  # "{question}" or "{question} [{lang}]": how callers write questions
    identity: dict[str, Any]  # what the model is (see encoder_identity)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:  # (n, dim) float32, texts already formatted
        ...

    def encode_passages(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:  # (n, dim)
        ...


def load_encoder(spec: str, *, threads: int = 1, device: Any = None, dtype: Any = None) -> TextEncoder:
    """Build the encoder a spec names.

    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``; default: CUDA when available) and ``dtype``
    (default: bf16 autocast on GPU, float32 on CPU) apply to ``hf:`` and ``dpr:`` encoders.

    >>> load_encoder("muse").dim
    512
    """
    name = spec.strip()
    # Each encoder module is imported when its spec is loaded: hf/dpr pull in torch and
    # transformers (3.4 s + 2.0 s cold here), muse its ONNX runtime, and this package is imported
    # by every job config (check_encoder_spec), so `ray-cora --help` must not pay for them.
    if name == "muse":
        from ray_cora.encoders.muse import MuseEncoder

        return MuseEncoder(threads=threads)
    if name.startswith("hf:"):
        from ray_cora.encoders.hf import HFEncoder

        return HFEncoder(name, threads=threads, device=device, dtype=dtype)
    if name.startswith("dpr:"):
        from ray_cora.encoders.dpr import DPREncoder

        return DPREncoder(name, threads=threads, device=device, dtype=dtype)
    raise _unknown(spec)


def check_encoder_spec(spec: str) -> str:
    """Validate a spec early (at config time) without loading any weights or reading any file.

    >>> check_encoder_spec("hf:/models/labse?pooling=mean")
    'hf:/models/labse?pooling=mean'
    """
    name = spec.strip()
    # Each encoder module is imported when its spec is loaded: hf/dpr pull in torch and
    # transformers (3.4 s + 2.0 s cold here), muse its ONNX runtime, and this package is imported
    # by every job config (check_encoder_spec), so `ray-cora --help` must not pay for them.
    if name == "muse":
        return name
    if name.startswith("hf:"):
        from ray_cora.encoders.hf import parse_hf_spec

        parse_hf_spec(name)
        return name
    if name.startswith("dpr:"):
        from ray_cora.encoders.dpr import parse_dpr_spec

        parse_dpr_spec(name)
        return name
    raise _unknown(spec)


def check_encoder_available(spec: str) -> None:
    """Check on the driver, before any actor loads it, that the encoder a spec names is there: an
    ``hf:`` folder with ``config.json`` (or a cached model name), a ``dpr:`` checkpoint file (a local
    one also opened safely, as the actors will). Reads no weights (a missing ``tokenizer=``, or a bad
    ``s3://`` checkpoint, is still found when an actor loads it).

    >>> check_encoder_available("muse")
    """
    name = spec.strip()
    # As in load_encoder: each encoder module is imported with its spec.
    if name == "muse":
        return
    if name.startswith("hf:"):
        from ray_cora.encoders.hf import check_model_source, parse_hf_spec

        parsed = parse_hf_spec(name)
        check_model_source(parsed.source, what="encoder")
        return
    if name.startswith("dpr:"):
        from ray_cora.encoders.dpr import dpr_identity, parse_dpr_spec

        source = parse_dpr_spec(name).source
        loc = storage.resolve(source)
        if not loc.is_file():
            raise StorageError(f"{source}: no such checkpoint file; give the path or s3:// URI of a DPR/CORA .cpt")
        if not loc.is_s3:
            # The safe (weights_only) open refuses what an actor would refuse; the tensors stay
            # memory-mapped, unread. An s3:// checkpoint is not downloaded twice for this.
            dpr_identity(name)
        return
    raise _unknown(spec)


def spec_query_format(spec: str) -> str:
    """The query format of the encoder a spec names, from the spec alone (its ``query_format=``
    option, else the kind's default: ``dpr:`` tagged as CORA's mDPR, an ``hf:`` folder's
    ``ray_cora_encoder.json``, else plain) — cheap: no checkpoint is read.

    >>> spec_query_format("dpr:/ckpt/mDPR_biencoder_best.cpt"), spec_query_format("muse")
    ('{question} [{lang}]', '{question}')
    """
    name = spec.strip()
    if name == "muse":
        return PLAIN
    if name.startswith("hf:"):
        from ray_cora.encoders.hf import parse_hf_spec
        from ray_cora.encoders.identity import folder_query_format

        parsed = parse_hf_spec(name)
        return parsed.query_format or folder_query_format(parsed.source) or PLAIN
    if name.startswith("dpr:"):
        from ray_cora.encoders.dpr import DEFAULT_QUERY_FORMAT, parse_dpr_spec

        return parse_dpr_spec(name).query_format or DEFAULT_QUERY_FORMAT
    raise _unknown(spec)


def query_format_for(spec: str | None, recorded: Mapping[str, Any] | None = None, *,
                     add_lang: bool | None = None) -> str:
    """How questions are written for query encoder ``spec`` (``None``: the recorded one) searching
    vectors whose manifest's encoder entry is ``recorded``: ``add_lang`` when set (``--add-lang
    true|false``); else a ``query_format=`` the spec sets itself; else the format the manifest
    records with its encoder; else the spec's own (:func:`spec_query_format`). The format belongs
    to the model, so leaving a flag out cannot silently cost recall.

    >>> query_format_for(None, {"spec": "dpr:x.cpt"})
    '{question} [{lang}]'
    >>> query_format_for("hf:m?query_format=plain", {"spec": "hf:m", "query_format": "{question} [{lang}]"})
    '{question}'
    >>> query_format_for(None, {"spec": "dpr:x.cpt"}, add_lang=False)
    '{question}'
    """
    if add_lang is not None:
        return TAGGED if add_lang else PLAIN
    if spec is None and recorded is None:
        raise ValueError("query_format_for needs a spec or a recorded encoder")
    sets_own = spec is not None and "query_format" in parse_qs(spec.partition("?")[2])
    if not sets_own and recorded and recorded.get("query_format"):
        return str(recorded["query_format"])
    return spec_query_format(spec if spec is not None else str(recorded["spec"]))


def encoder_identity(spec: str) -> dict[str, Any]:
    """The ``identity`` the encoder a spec names would have, without building it (a ``dpr:``
    checkpoint is hashed and its ``encoder_params`` read; an ``hf:`` folder's small files are read).

    >>> encoder_identity("muse")
    {'kind': 'muse', 'query_format': '{question}'}
    >>> encoder_identity("hf:bert-base-multilingual-uncased")["query_format"]
    '{question}'
    """
    name = spec.strip()
    # As in load_encoder: each encoder module is imported with its spec.
    if name == "muse":
        from ray_cora.encoders.muse import MUSE_IDENTITY

        return dict(MUSE_IDENTITY)
    if name.startswith("hf:"):
        from ray_cora.encoders.hf import hf_identity

        return hf_identity(name)
    if name.startswith("dpr:"):
        from ray_cora.encoders.dpr import dpr_identity

        return dpr_identity(name)
    raise _unknown(spec)


def encoder_record(encoder: TextEncoder | str, *, dim: int | None = None) -> dict[str, Any]:
    """What a manifest records of the encoder that made its vectors:
    ``{"spec", "dim", "normalized", "query_format", "identity"}``.

    ``encoder`` is a loaded encoder, or a spec for drivers that never load it (``import-embeddings``);
    then ``dim`` is the caller's (``None`` if not given, except mUSE's 512).

    >>> encoder_record("muse")["dim"]
    512
    """
    if isinstance(encoder, str):
        spec = encoder.strip()
        identity = encoder_identity(spec)
        normalized = {"muse": True, "dpr": False}.get(identity["kind"], bool(identity.get("normalize")))
        dim = 512 if dim is None and identity["kind"] == "muse" else dim
    else:
        spec = encoder.spec
        identity = getattr(encoder, "identity", None) or encoder_identity(spec)
        normalized = bool(encoder.normalized)
        if dim is not None and dim != encoder.dim:
            raise ConfigError(f"encoder {spec!r} gives {encoder.dim}-d vectors, not {dim}-d")
        dim = int(encoder.dim)
    return {"spec": spec, "dim": dim, "normalized": normalized, "query_format": identity["query_format"],
            "identity": dict(identity)}


def check_same_encoder(recorded: Mapping[str, Any], current: Mapping[str, Any] | TextEncoder, *, what: str) -> None:
    """Raise :class:`~ray_cora.errors.ConfigError` unless ``current`` is the model that made ``what``.

    ``recorded`` is the ``"encoder"`` entry of a manifest; ``current`` the :func:`encoder_record` of
    the encoder in hand (or the encoder itself, or a bare identity). Identities are compared, field
    by field, except ``query_format`` (it changes how questions are written, not the vector space:
    callers format with ``current``'s). A record without ``"identity"`` (older manifests) passes when
    its spec is the same string, else the identity of its spec is computed (the file must still be
    readable) and compared.

    >>> check_same_encoder({"spec": "muse"}, encoder_record("muse"), what="index /x")
    >>> check_same_encoder({"spec": "hf:labse"}, encoder_record("muse"), what="index /x")
    Traceback (most recent call last):
    ...
    ray_cora.errors.ConfigError: encoder 'muse' differs from the one that built index /x ('hf:labse'): \
kind 'hf' (recorded) vs 'muse' (now); questions must be encoded in the space index /x was built in: \
use that encoder, or rebuild index /x with this one
    """
    if not isinstance(current, Mapping):
        current = encoder_record(current)
    identity = current.get("identity", current)
    spec = str(current.get("spec", "this encoder")).strip()
    built_with = str(recorded.get("spec", "an unrecorded encoder")).strip()
    before = recorded.get("identity")
    head = f"encoder {spec!r} differs from the one that built {what} ({built_with!r})"
    if before is None:
        if "spec" in recorded and built_with == spec:
            return
        try:
            before = encoder_identity(built_with)
        except RayCoraError as exc:
            raise ConfigError(f"{head}, and the manifest records no identity to compare, nor can that encoder "
                              f"be read ({exc}); pass the encoder that built {what}, or rebuild it") from exc
    differences = identity_differences(before, identity)
    dims = recorded.get("dim"), current.get("dim")
    if not differences and all(isinstance(d, int) for d in dims) and dims[0] != dims[1]:
        differences.append(f"dim {dims[0]} (recorded) vs {dims[1]} (now)")
    if differences:
        raise ConfigError(f"{head}: {'; '.join(differences)}; questions must be encoded in the space {what} "
                          f"was built in: use that encoder, or rebuild {what} with this one")


def _unknown(spec: str) -> ConfigError:
    return ConfigError(f"unknown encoder spec {spec!r}; available: {'; '.join(ENCODER_SPECS)} "
                       "('muse' = Google's multilingual Universal Sentence Encoder v3, offline)")
