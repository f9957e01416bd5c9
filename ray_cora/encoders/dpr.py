"""CORA/DPR bi-encoder checkpoints: ``dpr:<path-or-uri>[?config=...&tokenizer=...&max_length=N&query_format=...]``.

A CORA mDPR (or Facebook DPR) ``.cpt`` is a ``torch.save``-d dict whose ``model_dict`` holds the
question tower under ``question_model.*`` and the passage tower under ``ctx_model.*`` (BERT weight
names), and usually ``encoder_params`` (``pretrained_model_cfg``, ``sequence_length``, …).

- The file is opened with ``torch.load(..., weights_only=True)``: a checkpoint that needs any other
  Python object is refused with the name of that object and how to re-save it; it is never loaded
  with ``weights_only=False``, because unpickling can run arbitrary code.
- The BERT is built from ``config=`` (default: ``encoder_params["pretrained_model_cfg"]``), the
  tokenizer from ``tokenizer=`` (default: the config's source) — local folders, ``s3://`` folders
  or names in the local Hugging Face cache.
- As in DPR/CORA: the ``[CLS]`` vector (through ``encode_proj`` when the checkpoint has one), no
  normalisation, all-zero segment ids, passages as ``(title, text)`` pairs (text alone when the
  title is empty), ``max_length`` from ``encoder_params["sequence_length"]`` (else 256).
- ``query_format`` (``tagged`` by default, ``plain`` to override): questions are written
  ``"{question} [{lang}]"`` as CORA evaluates its ``mDPR_biencoder_best.cpt`` (AkariAsai/CORA
  ``mDPR/README.md``, Evaluations: ``python dense_retriever.py --model_file
  ../models/mDPR_biencoder_best.cpt ... --add_lang``). Facebook's English DPR checkpoints were not
  trained with the tag: use ``?query_format=plain`` for them. The encoder only exposes the template
  (``encoder.query_format``); callers format with :func:`ray_cora.encoders.format_query` and pass
  the formatted questions to ``encode_queries``.
- ``encoder.identity`` (and :func:`dpr_identity`, without building the model): the sha256 of the
  checkpoint's bytes and the effective config, tokenizer, max_length and query format, so that two
  spellings of one model compare equal and other bytes at the same path do not.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ray_cora import storage
from ray_cora.encoders.hf import (
    DEFAULT_MAX_LENGTH,
    Tower,
    clean_text,
    load_config,
    load_tokenizer,
    local_model_dir,
    option_int,
    option_query_format,
    parse_spec,
    passage_inputs,
    report_key_mismatch,
    resolve_device,
    set_cpu_threads,
)
from ray_cora.encoders.identity import TAGGED, normalize_source
from ray_cora.errors import ConfigError, StorageError

# torch / transformers are imported inside the functions that use them (3.4 s + 2.0 s cold here):
# spec parsing here runs in every job config; only loading a checkpoint needs them.

logger = logging.getLogger(__name__)

DPR_OPTIONS = ("config", "tokenizer", "max_length", "query_format")
DEFAULT_QUERY_FORMAT = TAGGED  # CORA's mDPR is evaluated with --add_lang (see the module docstring)
TOWER_PREFIXES = {"question": "question_model.", "ctx": "ctx_model."}
PROJECTION = "encode_proj."
MAX_MISSING = 5  # more missing weights than this means the checkpoint is not for this config


@dataclass(frozen=True)
class DPRSpec:
    """A parsed ``dpr:`` spec; building it checks every option but reads no file."""

    spec: str
    source: str
    config: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    query_format: str | None = None  # a template; None: DEFAULT_QUERY_FORMAT


def parse_dpr_spec(spec: str) -> DPRSpec:
    """Parse and validate a ``dpr:`` spec.

    >>> parse_dpr_spec("dpr:s3://b/mDPR_biencoder_best.cpt?config=/models/mbert").config
    '/models/mbert'
    """
    source, options = parse_spec(spec, "dpr", DPR_OPTIONS)
    return DPRSpec(spec=spec.strip(), source=source, config=options.get("config") or None,
                   tokenizer=options.get("tokenizer") or None,
                   max_length=option_int(spec, options, "max_length", None, minimum=2),
                   query_format=option_query_format(spec, options))


def load_dpr_checkpoint(uri: str) -> dict[str, Any]:
    """Read a DPR/CORA checkpoint safely (``weights_only=True``) and check its shape.

    Returns the checkpoint dict; ``model_dict`` maps weight names to tensors.

    >>> load_dpr_checkpoint("mDPR_biencoder_best.cpt")["model_dict"]  # doctest: +SKIP
    """
    return read_dpr_checkpoint(uri)[0]


def read_dpr_checkpoint(uri: str) -> tuple[dict[str, Any], str]:
    """The checkpoint dict (as :func:`load_dpr_checkpoint`) and the sha256 of the file's bytes.

    The file is read once for the hash; the tensors are then memory-mapped (``mmap=True``) where the
    file is in torch's zip format, so reading ``encoder_params`` alone does not load the weights
    (pre-1.6 files cannot be mapped and load in full).
    """
    with local_checkpoint(uri) as (path, sha256):
        # On POSIX a mapped file stays readable after the temporary copy of an s3:// object is removed.
        return read_checkpoint_file(path, uri=uri), sha256


@contextlib.contextmanager
def local_checkpoint(uri: str) -> Iterator[tuple[str, str]]:
    """A local path of the checkpoint and the sha256 of its bytes: a local file is hashed where it
    is; an ``s3://`` object is streamed (and hashed) into a temporary file, removed on exit."""
    loc = storage.resolve(uri)
    if not loc.is_s3:
        if not os.path.isfile(loc.path):
            raise StorageError(f"{uri}: no such checkpoint file; give the path or s3:// URI of a DPR/CORA .cpt")
        yield loc.path, storage.sha256_of(loc)[0]
        return
    digest = hashlib.sha256()
    handle, tmp = tempfile.mkstemp(prefix="ray-cora-", suffix=".cpt")
    try:
        with os.fdopen(handle, "wb") as out, storage.open_input(loc, decompress=False) as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        yield tmp, digest.hexdigest()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read_checkpoint_file(path: str, *, uri: str) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` (memory-mapped for zip-format files) with errors that
    name ``uri`` and the fix, and the check that it is a bi-encoder checkpoint."""
    import torch

    try:
        with warnings.catch_warnings():
            # Old checkpoints use other pickle protocols; torch warns about each, needlessly.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise StorageError(unsafe_checkpoint_message(uri, str(exc))) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise StorageError(f"{uri}: not a readable torch checkpoint ({exc}); check that the file is a "
                           "complete DPR/CORA .cpt") from exc
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model_dict"), Mapping):
        found = sorted(map(str, checkpoint))[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise StorageError(f"{uri}: not a DPR/CORA bi-encoder checkpoint: expected a dict with a "
                           f"'model_dict' of weights, found {found}")
    return dict(checkpoint)


@dataclass(frozen=True)
class DPRSettings:
    """What a ``dpr:`` spec runs once the checkpoint's ``encoder_params`` fill its defaults."""

    config: str
    tokenizer: str
    max_length: int
    query_format: str


def dpr_settings(parsed: DPRSpec, checkpoint: Mapping[str, Any]) -> DPRSettings:
    """The effective config, tokenizer, max_length and query format of ``parsed`` over ``checkpoint``.

    >>> dpr_settings(parse_dpr_spec("dpr:x.cpt?max_length=128"), {"encoder_params": {
    ...     "pretrained_model_cfg": "bert-base-multilingual-uncased", "sequence_length": 256}}).max_length
    128
    """
    params = checkpoint.get("encoder_params")
    params = dict(params) if isinstance(params, Mapping) else {}
    config_source = parsed.config or params.get("pretrained_model_cfg")
    if not config_source or not isinstance(config_source, str):
        raise ConfigError(f"{parsed.source}: the checkpoint does not name its base model "
                          "(encoder_params.pretrained_model_cfg); pass it as "
                          "dpr:<checkpoint>?config=<hf-name-or-path>")
    return DPRSettings(config=config_source, tokenizer=parsed.tokenizer or config_source,
                       max_length=parsed.max_length or _int_or(params.get("sequence_length"), DEFAULT_MAX_LENGTH),
                       query_format=parsed.query_format or DEFAULT_QUERY_FORMAT)


def dpr_identity_of(settings: DPRSettings, checkpoint_sha256: str) -> dict[str, Any]:
    """The identity dict of a ``dpr:`` encoder (see the module docstring)."""
    return {"kind": "dpr", "checkpoint_sha256": checkpoint_sha256, "config": normalize_source(settings.config),
            "tokenizer": normalize_source(settings.tokenizer), "max_length": settings.max_length,
            "query_format": settings.query_format}


def dpr_identity(spec: str | DPRSpec) -> dict[str, Any]:
    """What a ``dpr:`` spec names, without building the model: the file is hashed and only its
    ``encoder_params`` are read (the weights stay memory-mapped, unread).

    >>> dpr_identity("dpr:mDPR_biencoder_best.cpt")["query_format"]  # doctest: +SKIP
    '{question} [{lang}]'
    """
    parsed = spec if isinstance(spec, DPRSpec) else parse_dpr_spec(spec)
    checkpoint, sha256 = read_dpr_checkpoint(parsed.source)
    return dpr_identity_of(dpr_settings(parsed, checkpoint), sha256)


def unsafe_checkpoint_message(uri: str, torch_message: str) -> str:
    """Turn torch's weights-only refusal into one line naming the global and how to proceed.

    >>> msg = unsafe_checkpoint_message("x.cpt", "... GLOBAL argparse.Namespace was not an allowed ...")
    >>> msg.split(":")[0]
    'x.cpt'
    >>> "argparse.Namespace" in msg and "re-save" in msg
    True
    """
    found = re.search(r"GLOBAL ([\w.]+)", torch_message)
    if found is None:
        reason = next((line.split("error:", 1)[1].strip() for line in torch_message.splitlines()
                       if "WeightsUnpickler error:" in line and line.split("error:", 1)[1].strip()), "")
        if not reason:
            lines = [line.strip() for line in torch_message.splitlines() if line.strip()]
            reason = next((line for line in lines if "Unsupported" in line or "unsupported" in line),
                          lines[0] if lines else "unknown reason")
        return (f"{uri}: refused to load: a safe (weights_only) load of this file fails ({reason}); it is "
                "not a plain torch checkpoint of tensors, or it was made by an unusual writer: re-save it "
                "with torch.save({'model_dict': ..., 'encoder_params': {...}}) in a trusted environment")
    name = found.group(1)
    return (f"{uri}: refused to load: the checkpoint holds the Python object {name}, which a safe "
            "(weights_only) load does not allow because unpickling it could run code. If you trust the "
            "file, re-save it with tensors and plain values only, e.g. c = torch.load(IN, "
            "weights_only=False); torch.save({'model_dict': c['model_dict'], 'encoder_params': "
            "<a plain dict of c['encoder_params']>}, OUT), then use dpr:OUT")


def split_towers(model_dict: Mapping[str, Any], *, source: str) -> dict[str, dict[str, Any]]:
    """``{"question": {name: tensor}, "ctx": {...}}`` with the tower prefixes stripped.

    >>> sorted(split_towers({"question_model.a": 1, "ctx_model.a": 2}, source="x")["ctx"].items())
    [('a', 2)]
    """
    towers: dict[str, dict[str, Any]] = {name: {} for name in TOWER_PREFIXES}
    other: list[str] = []
    for key, value in model_dict.items():
        for name, prefix in TOWER_PREFIXES.items():
            if key.startswith(prefix):
                towers[name][key[len(prefix):]] = value
                break
        else:
            other.append(key)
    for name, prefix in TOWER_PREFIXES.items():
        if not towers[name]:
            seen = sorted({k.split(".", 1)[0] + "." for k in model_dict})[:10]
            raise StorageError(f"{source}: no {prefix}* weights: not a DPR/CORA bi-encoder checkpoint "
                               f"(weight prefixes found: {', '.join(seen) or 'none'})")
    if other:
        logger.warning("%s: ignoring %d weights outside question_model./ctx_model.: %s",
                       source, len(other), ", ".join(sorted(other)[:10]))
    return towers


def build_tower_model(config: Any, weights: Mapping[str, Any], *, label: str, config_source: str) -> tuple[Any, Any]:
    """A model from ``config`` holding ``weights``, and the ``encode_proj`` linear layer if any.

    ``load_state_dict(strict=False)`` is used so that harmless differences (``position_ids``, the
    unused pooler) do not stop loading; every other missing or unexpected weight is logged, and
    more than :data:`MAX_MISSING` missing weights is an error.
    """
    import torch
    from transformers import AutoModel

    body = {k: v for k, v in weights.items() if not k.startswith(PROJECTION)}
    proj = {k[len(PROJECTION):]: v for k, v in weights.items() if k.startswith(PROJECTION)}
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            raise StorageError(f"{label}: weight {key!r} is a {type(value).__name__}, not a tensor")
    model = AutoModel.from_config(config)
    fix = (f"pass ?config=<the Hugging Face model the checkpoint was trained from> "
           f"(now {config_source!r})")
    try:
        result = model.load_state_dict(body, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        raise ConfigError(f"{label}: the checkpoint's weights do not fit config {config_source!r} "
                          f"({str(exc).splitlines()[-1].strip()}); {fix}") from exc
    report_key_mismatch(label, result.missing_keys, result.unexpected_keys, max_missing=MAX_MISSING, fix=fix)
    projection = None
    if proj:
        if set(proj) != {"weight", "bias"} or proj["weight"].ndim != 2:
            raise StorageError(f"{label}: incomplete encode_proj weights ({', '.join(sorted(proj))}); "
                               "expected encode_proj.weight (2-d) and encode_proj.bias")
        out_dim, in_dim = proj["weight"].shape
        projection = torch.nn.Linear(in_dim, out_dim)
        with torch.no_grad():
            projection.weight.copy_(proj["weight"])
            projection.bias.copy_(proj["bias"])
    return model, projection


class DPREncoder:
    """A CORA/DPR bi-encoder: questions through ``question_model``, passages through ``ctx_model``.

    >>> enc = DPREncoder("dpr:mDPR_biencoder_best.cpt?config=/models/bert-base-multilingual-uncased")  # doctest: +SKIP
    >>> enc.encode_queries(["Who wrote Faust?"]).shape  # doctest: +SKIP
    (1, 768)
    """

    normalized = False

    def __init__(self, spec: str | DPRSpec, *, threads: int = 1, device: Any = None, dtype: Any = None) -> None:
        parsed = spec if isinstance(spec, DPRSpec) else parse_dpr_spec(spec)
        self.spec = parsed.spec
        dev, autocast_dtype = resolve_device(device, dtype)
        set_cpu_threads(dev, threads)
        checkpoint, sha256 = read_dpr_checkpoint(parsed.source)
        settings = dpr_settings(parsed, checkpoint)
        config_source, tokenizer_source = settings.config, settings.tokenizer
        self.identity = dpr_identity_of(settings, sha256)
        self.query_format = settings.query_format
        towers = split_towers(checkpoint["model_dict"], source=parsed.source)
        del checkpoint  # the optimizer state can be large
        with local_model_dir(config_source) as config_path:
            config = load_config(config_path, source=config_source)
        with local_model_dir(tokenizer_source) as tokenizer_path:
            tokenizer = load_tokenizer(tokenizer_path, source=tokenizer_source)
        built = {}
        for name, prefix in (("question", "question_model"), ("ctx", "ctx_model")):
            model, projection = build_tower_model(config, towers[name], label=f"{parsed.source} {prefix}",
                                                  config_source=config_source)
            built[name] = Tower(model, tokenizer, pooling="cls", max_length=settings.max_length, device=dev,
                                autocast_dtype=autocast_dtype, zero_token_types=True, projection=projection)
        self._question, self._passage = built["question"], built["ctx"]
        if self._question.dim != self._passage.dim:
            raise StorageError(f"{parsed.source}: question ({self._question.dim}-d) and ctx "
                               f"({self._passage.dim}-d) towers give vectors of different sizes")
        self.dim = self._question.dim
        self.max_length = self._question.max_length

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, dim)`` vectors of questions already written in :attr:`query_format` (CORA's
        ``text_to_tensor`` strips the tagged text too, so the tag is added before, not here)."""
        texts = [clean_text(t) for t in texts]
        return self._question.encode(texts, [None] * len(texts))

    def encode_passages(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return self._passage.encode(*passage_inputs(titles, texts))


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else default
