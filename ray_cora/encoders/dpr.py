"""CORA/DPR bi-encoder checkpoints: ``dpr:<path-or-uri>[?config=...&tokenizer=...&max_length=N]``.

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
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

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
    parse_spec,
    passage_inputs,
    report_key_mismatch,
    resolve_device,
    set_cpu_threads,
)
from ray_cora.errors import ConfigError, StorageError

# torch / transformers are imported inside the functions that use them (3.4 s + 2.0 s cold here):
# spec parsing here runs in every job config; only loading a checkpoint needs them.

logger = logging.getLogger(__name__)

DPR_OPTIONS = ("config", "tokenizer", "max_length")
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


def parse_dpr_spec(spec: str) -> DPRSpec:
    """Parse and validate a ``dpr:`` spec.

    >>> parse_dpr_spec("dpr:s3://b/mDPR_biencoder_best.cpt?config=/models/mbert").config
    '/models/mbert'
    """
    source, options = parse_spec(spec, "dpr", DPR_OPTIONS)
    return DPRSpec(spec=spec.strip(), source=source, config=options.get("config") or None,
                   tokenizer=options.get("tokenizer") or None,
                   max_length=option_int(spec, options, "max_length", None, minimum=2))


def load_dpr_checkpoint(uri: str) -> dict[str, Any]:
    """Read a DPR/CORA checkpoint safely (``weights_only=True``) and check its shape.

    Returns the checkpoint dict; ``model_dict`` maps weight names to tensors.

    >>> load_dpr_checkpoint("mDPR_biencoder_best.cpt")["model_dict"]  # doctest: +SKIP
    """
    import torch


    loc = storage.resolve(uri)
    if loc.is_s3:
        source: Any = io.BytesIO(storage.read_bytes(loc, decompress=False))
    elif os.path.isfile(loc.path):
        source = loc.path
    else:
        raise StorageError(f"{uri}: no such checkpoint file; give the path or s3:// URI of a DPR/CORA .cpt")
    try:
        with warnings.catch_warnings():
            # Old checkpoints use other pickle protocols; torch warns about each, needlessly.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
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
        checkpoint = load_dpr_checkpoint(parsed.source)
        params = checkpoint.get("encoder_params")
        params = dict(params) if isinstance(params, Mapping) else {}
        config_source = parsed.config or params.get("pretrained_model_cfg")
        if not config_source or not isinstance(config_source, str):
            raise ConfigError(f"{parsed.source}: the checkpoint does not name its base model "
                              "(encoder_params.pretrained_model_cfg); pass it as "
                              "dpr:<checkpoint>?config=<hf-name-or-path>")
        tokenizer_source = parsed.tokenizer or config_source
        max_length = parsed.max_length or _int_or(params.get("sequence_length"), DEFAULT_MAX_LENGTH)
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
            built[name] = Tower(model, tokenizer, pooling="cls", max_length=max_length, device=dev,
                                autocast_dtype=autocast_dtype, zero_token_types=True, projection=projection)
        self._question, self._passage = built["question"], built["ctx"]
        if self._question.dim != self._passage.dim:
            raise StorageError(f"{parsed.source}: question ({self._question.dim}-d) and ctx "
                               f"({self._passage.dim}-d) towers give vectors of different sizes")
        self.dim = self._question.dim
        self.max_length = self._question.max_length

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        texts = [clean_text(t) for t in texts]
        return self._question.encode(texts, [None] * len(texts))

    def encode_passages(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return self._passage.encode(*passage_inputs(titles, texts))


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else default
