"""Hugging Face encoders: ``hf:<name-or-path>[?options]`` (any ``AutoModel`` text encoder).

Spec grammar (options are URL query parameters, values URL-encoded: a space is ``+`` or ``%20``)::

    hf:<source>[?pooling=cls|mean&max_length=N&normalize=true|false
                &query_prefix=TEXT&passage_prefix=TEXT&tokenizer=<source>&query_format=plain|tagged]

``<source>`` is a local folder, a ``file://`` or ``s3://`` URI (the folder is downloaded to a
temporary directory first) or a model name found in the local Hugging Face cache. A folder holding
``question_encoder/`` and ``ctx_encoder/`` subfolders (what our mDPR training exports) is a
bi-encoder: questions go through ``question_encoder``, passages through ``ctx_encoder``.

Passages are encoded DPR-style as the pair ``(title, text)`` — ``[CLS] title [SEP] text [SEP]`` —
or the text alone when the title is empty. Pooling is the ``[CLS]`` vector (default, as DPR) or
the attention-masked mean of the last hidden states.

``query_format`` is the template questions are written in before encoding (``plain``:
``{question}``; ``tagged``: ``{question} [{lang}]``, CORA's ``--add_lang``): by default what the
folder's ``ray_cora_encoder.json`` records (``{"query_format": "tagged"}``), else plain. The encoder
only exposes it (``encoder.query_format``); callers format questions with
:func:`ray_cora.encoders.format_query` before ``encode_queries``.

``encoder.identity`` records the normalised source (absolute path for local folders), a
fingerprint of the folder's files (:func:`~ray_cora.encoders.identity.folder_fingerprint`; none
for Hugging Face cache names), every effective option and the query format.

The building blocks (:class:`Tower`, :func:`parse_spec`, :func:`pad_batch`, :func:`pool`,
:func:`resolve_device`, :func:`local_model_dir`) are shared with :mod:`ray_cora.encoders.dpr`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qsl

import numpy as np

from ray_cora import storage
from ray_cora.encoders.identity import (
    PLAIN,
    folder_fingerprint,
    folder_query_format,
    normalize_source,
    parse_query_format,
)
from ray_cora.errors import ConfigError

# torch / transformers are imported inside the functions that use them (3.4 s + 2.0 s cold here):
# spec parsing and option checks here run in every job config and in `ray-cora --help`.

logger = logging.getLogger(__name__)

HF_OPTIONS = ("pooling", "max_length", "normalize", "query_prefix", "passage_prefix", "tokenizer", "query_format")
POOLINGS = ("cls", "mean")
DEFAULT_MAX_LENGTH = 256
FORWARD_BATCH = 64  # texts per forward pass; callers may hand over much larger batches
TOWER_DIRS = ("question_encoder", "ctx_encoder")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "sentencepiece.bpe.model",
                    "spiece.model")
# Weights that may be absent or extra without changing what the encoder computes: position_ids is
# a (non-persistent) buffer in current transformers but a saved tensor in old checkpoints, and the
# pooler is never used by CLS/mean pooling.
_HARMLESS_KEY_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
_HARMLESS_KEY_PREFIXES = ("pooler.",)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


# ---------------------------------------------------------------- spec parsing (pure)

def parse_spec(spec: str, scheme: str, allowed: Sequence[str]) -> tuple[str, dict[str, str]]:
    """Split ``<scheme>:<source>?k=v&...`` into the source and its options, checking option names.

    >>> parse_spec("hf:/models/x?pooling=mean&query_prefix=query:+", "hf", HF_OPTIONS)
    ('/models/x', {'pooling': 'mean', 'query_prefix': 'query: '})
    """
    text = spec.strip()
    if not text.startswith(scheme + ":"):
        raise ConfigError(f"encoder spec {spec!r} does not start with {scheme + ':'!r}")
    body = text[len(scheme) + 1:]
    source, _, query = body.partition("?")
    if not source:
        raise ConfigError(f"encoder spec {spec!r} names no model: write {scheme}:<path-or-uri>")
    options: dict[str, str] = {}
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:
            raise ConfigError(f"encoder spec {spec!r}: malformed options {query!r} ({exc}); write "
                              "them as ?name=value&name=value") from exc
        for key, value in pairs:
            if key not in allowed:
                raise ConfigError(f"encoder spec {spec!r}: unknown option {key!r}; {scheme}: accepts "
                                  f"{', '.join(allowed)}")
            if key in options:
                raise ConfigError(f"encoder spec {spec!r}: option {key!r} given twice; keep one")
            options[key] = value
    return source, options


def option_int(spec: str, options: dict[str, str], key: str, default: int | None,
               *, minimum: int = 1) -> int | None:
    """An integer option (``None``/default when absent), with an error naming the bad value."""
    if key not in options:
        return default
    raw = options[key]
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError(f"encoder spec {spec!r}: {key}={raw!r} is not an integer >= {minimum}")
    return value


def option_bool(spec: str, options: dict[str, str], key: str, default: bool) -> bool:
    """A boolean option: true/false, yes/no, 1/0, on/off."""
    if key not in options:
        return default
    raw = options[key].lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"encoder spec {spec!r}: {key}={options[key]!r} is not a boolean; use true or false")


@dataclass(frozen=True)
class HFSpec:
    """A parsed ``hf:`` spec; building it checks every option but loads nothing."""

    spec: str
    source: str
    pooling: str = "cls"
    max_length: int = DEFAULT_MAX_LENGTH
    normalize: bool = False
    query_prefix: str = ""
    passage_prefix: str = ""
    tokenizer: str | None = None
    query_format: str | None = None  # a template; None: what the folder records, else plain


def parse_hf_spec(spec: str) -> HFSpec:
    """Parse and validate an ``hf:`` spec.

    >>> parse_hf_spec("hf:/m?pooling=mean&normalize=true&max_length=128").max_length
    128
    """
    source, options = parse_spec(spec, "hf", HF_OPTIONS)
    pooling = options.get("pooling", "cls")
    if pooling not in POOLINGS:
        raise ConfigError(f"encoder spec {spec!r}: pooling={pooling!r} is not one of {', '.join(POOLINGS)}")
    return HFSpec(
        spec=spec.strip(),
        source=source,
        pooling=pooling,
        max_length=option_int(spec, options, "max_length", DEFAULT_MAX_LENGTH, minimum=2),  # type: ignore[arg-type]
        normalize=option_bool(spec, options, "normalize", False),
        query_prefix=options.get("query_prefix", ""),
        passage_prefix=options.get("passage_prefix", ""),
        tokenizer=options.get("tokenizer") or None,
        query_format=option_query_format(spec, options),
    )


def option_query_format(spec: str, options: dict[str, str]) -> str | None:
    """The ``query_format`` option as a template, or ``None`` when the spec does not set it."""
    if "query_format" not in options:
        return None
    return parse_query_format(options["query_format"], where=f"encoder spec {spec!r}")


def hf_identity(spec: str | HFSpec, *, folder: str | None = None) -> dict[str, Any]:
    """What an ``hf:`` spec names, without loading the model (see the module docstring);
    ``folder`` is a local copy of the source to read the files from (an ``s3://`` download).

    >>> hf_identity("hf:bert-base-multilingual-uncased?pooling=cls")["tokenizer"]
    'bert-base-multilingual-uncased'
    """
    parsed = spec if isinstance(spec, HFSpec) else parse_hf_spec(spec)
    source = normalize_source(parsed.source)
    files = folder or parsed.source
    return {"kind": "hf", "source": source, "fingerprint": folder_fingerprint(files),
            "pooling": parsed.pooling, "max_length": parsed.max_length, "normalize": parsed.normalize,
            "query_prefix": parsed.query_prefix, "passage_prefix": parsed.passage_prefix,
            "tokenizer": normalize_source(parsed.tokenizer) if parsed.tokenizer else source,
            "query_format": parsed.query_format or folder_query_format(files) or PLAIN}


# ---------------------------------------------------------------- tensors (pure)

def pad_batch(features: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad tokenized examples into ``(n, longest)`` int64 tensors.

    ``input_ids`` are padded with ``pad_id``, every other field (attention mask, token types)
    with 0.

    >>> pad_batch([{"input_ids": [5, 6, 7]}, {"input_ids": [5]}], 0)["input_ids"].tolist()
    [[5, 6, 7], [5, 0, 0]]
    """
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    out = {}
    for key in features[0]:
        fill = pad_id if key == "input_ids" else 0
        rows = [list(f[key]) + [fill] * (longest - len(f[key])) for f in features]
        out[key] = torch.tensor(rows, dtype=torch.long)
    return out


def pool(hidden: Any, attention_mask: Any, pooling: str) -> Any:
    """Pool ``(n, seq, dim)`` hidden states to ``(n, dim)``: the first token or the masked mean.

    >>> import torch
    >>> h = torch.arange(12.).reshape(1, 3, 4); m = torch.tensor([[1, 1, 0]])
    >>> pool(h, m, "mean").tolist()
    [[2.0, 3.0, 4.0, 5.0]]
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (n, seq, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    raise ValueError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")


def is_harmless_key(key: str) -> bool:
    """Weight names whose absence or presence does not change CLS/mean embeddings."""
    return key.endswith(_HARMLESS_KEY_SUFFIXES) or key.startswith(_HARMLESS_KEY_PREFIXES)


# ---------------------------------------------------------------- devices and files

def resolve_device(device: Any = None, dtype: Any = None) -> tuple[Any, Any]:
    """The torch device and the autocast dtype (``None`` = plain float32) to run on.

    ``device=None`` picks CUDA when available. ``dtype=None`` means bf16 autocast on GPU and
    float32 on CPU; half precision on CPU is refused.
    """
    import torch

    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        compute = torch.bfloat16 if dev.type == "cuda" else None
    else:
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
        compute = names.get(dtype) if isinstance(dtype, str) else dtype
        if compute not in (torch.float32, torch.bfloat16, torch.float16):
            raise ConfigError(f"encoder dtype {dtype!r} is not supported; use float32, bfloat16 or float16")
        if compute == torch.float32:
            compute = None
        elif dev.type != "cuda":
            raise ConfigError(f"encoder dtype {dtype!r} runs as autocast on GPU only; on {dev} "
                              "leave dtype unset (float32) or pass a CUDA device")
    return dev, compute


@contextlib.contextmanager
def local_model_dir(source: str) -> Iterator[str]:
    """A name ``from_pretrained`` can read: a local folder as is, an ``s3://`` folder downloaded to
    a temporary directory (removed on exit), a hub name (resolved from the HF cache) unchanged."""
    if source.startswith("file://"):
        yield storage.resolve(source).path
        return
    if "://" not in source:
        yield os.path.expanduser(source)
        return
    root = storage.resolve(source)  # raises a clear StorageError for unknown schemes
    with tempfile.TemporaryDirectory(prefix="ray-cora-model-") as tmp:
        for loc in storage.list_files(root):
            rel = posixpath.relpath(loc.path, root.path)
            target = os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with storage.open_input(loc, decompress=False) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        yield tmp


def check_model_source(source: str, *, what: str = "model") -> None:
    """Check, without loading anything, that ``from_pretrained`` will find ``source``: a local
    folder (or ``file://``/``s3://`` one) holding ``config.json``, or a name in the local Hugging
    Face cache. Drivers call it before they start the actors that load the model, so that a wrong
    path is one line, not an actor dying in ``__init__``.

    >>> check_model_source("/no/such/model")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ray_cora.errors.ConfigError: cannot load the model from '/no/such/model': no such folder; give a local folder ...
    """
    text = source.strip()
    expanded = os.path.expanduser(text)
    # A bi-encoder folder (what train-mdpr exports) holds a config.json in each of its two towers.
    if "://" in text:
        root = storage.resolve(text)
        if not (root.join("config.json").is_file()
                or all(root.join(f"{tower}/config.json").is_file() for tower in TOWER_DIRS)):
            raise ConfigError(f"cannot load the {what} from {source!r}: no config.json there; {_load_hint(source)}")
        return
    if os.path.isdir(expanded):
        if not (os.path.isfile(os.path.join(expanded, "config.json"))
                or all(os.path.isfile(os.path.join(expanded, tower, "config.json")) for tower in TOWER_DIRS)):
            raise ConfigError(f"cannot load the {what} from {source!r}: the folder has no config.json; "
                              f"{_load_hint(source)}")
        return
    if text.startswith(("/", "~", ".")) or os.sep + os.sep in text or text.count("/") > 1:
        raise ConfigError(f"cannot load the {what} from {source!r}: no such folder; {_load_hint(source)}")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(text, "config.json")
    except ValueError:  # not a valid repository name either
        cached = None
    if not isinstance(cached, str):
        raise ConfigError(f"cannot load the {what} from {source!r}: not a folder, and not in the local Hugging "
                          f"Face cache; {_load_hint(source)}")


def _load_hint(source: str) -> str:
    return (f"give a local folder with config.json and tokenizer files, an s3:// folder, or a model "
            f"name present in the local Hugging Face cache (this code never downloads: every "
            f"from_pretrained runs with local_files_only=True; fetch a model once with `hf download NAME`; "
            f"{source!r} was not found as any of these)")


def load_tokenizer(path: str, *, source: str) -> Any:
    """``AutoTokenizer.from_pretrained`` with errors that say what to pass instead."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from {source!r}: {exc}; {_load_hint(source)}") from exc


def load_config(path: str, *, source: str) -> Any:
    """``AutoConfig.from_pretrained`` with errors that say what to pass instead."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a model config from {source!r}: {exc}; {_load_hint(source)}") from exc


def report_key_mismatch(what: str, missing: Sequence[str], unexpected: Sequence[str], *,
                        max_missing: int, fix: str) -> None:
    """Log weights that did not load (ignoring harmless ones); raise when too many are missing.

    A few missing weights are logged (the model still mostly works); more than ``max_missing``
    means the weights belong to another architecture, and the error says so.
    """
    missing = sorted(k for k in missing if not is_harmless_key(k))
    unexpected = sorted(k for k in unexpected if not is_harmless_key(k))
    if len(missing) > max_missing:
        shown = ", ".join(missing[:8]) + (", …" if len(missing) > 8 else "")
        extra = (f"; it has instead e.g. {', '.join(unexpected[:3])}" if unexpected else "")
        raise ConfigError(f"{what}: {len(missing)} weights missing ({shown}){extra}: the checkpoint does "
                          f"not match the model it is loaded into; {fix}")
    if missing:
        logger.warning("%s: weights missing from the checkpoint, left randomly initialised: %s",
                       what, ", ".join(missing))
    if unexpected:
        logger.warning("%s: checkpoint weights not used by the model: %s", what, ", ".join(unexpected))


# ---------------------------------------------------------------- one encoder tower

class Tower:
    """One transformer, its tokenizer and pooling: texts (or title/text pairs) → float32 vectors.

    ``zero_token_types`` feeds all-zero segment ids, as DPR/CORA do for both questions and
    passages; otherwise the tokenizer's token types are used (1s on the second segment of a pair)
    when the model has more than one token type.
    """

    def __init__(self, model: Any, tokenizer: Any, *, pooling: str, max_length: int, device: Any,
                 autocast_dtype: Any = None, prefix: str = "", zero_token_types: bool = False,
                 projection: Any = None) -> None:
        import torch

        self.model = model.eval().to(device=device, dtype=torch.float32)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.prefix = prefix
        self.zero_token_types = zero_token_types
        self.projection = projection.eval().to(device) if projection is not None else None
        config = model.config
        self.max_length = _cap_max_length(max_length, tokenizer, config)
        accepts_types = "token_type_ids" in inspect.signature(model.forward).parameters
        self.use_token_types = accepts_types and (zero_token_types or getattr(config, "type_vocab_size", 1) > 1)
        if tokenizer.pad_token_id is None:
            raise ConfigError("the tokenizer has no padding token; save it with a pad_token "
                              "(e.g. tokenizer.pad_token = tokenizer.unk_token) and try again")
        self.dim = int(projection.out_features if projection is not None else config.hidden_size)

    def tokenize(self, firsts: Sequence[str], seconds: Sequence[str | None]) -> list[dict[str, list[int]]]:
        """Tokenize ``first`` alone, or the pair ``(first, second)`` where ``second`` is not None."""
        features: list[dict[str, list[int]]] = [{} for _ in firsts]
        for is_pair in (False, True):
            idx = [i for i, s in enumerate(seconds) if (s is not None) == is_pair]
            if not idx:
                continue
            enc = self.tokenizer(
                [self.prefix + firsts[i] for i in idx],
                [seconds[i] for i in idx] if is_pair else None,
                truncation=True, max_length=self.max_length, padding=False,
                return_attention_mask=True, return_token_type_ids=self.use_token_types,
            )
            for row, i in enumerate(idx):
                item = {"input_ids": enc["input_ids"][row], "attention_mask": enc["attention_mask"][row]}
                if self.use_token_types:
                    types = enc["token_type_ids"][row]
                    item["token_type_ids"] = [0] * len(types) if self.zero_token_types else types
                features[i] = item
        return features

    def encode(self, firsts: Sequence[str], seconds: Sequence[str | None]) -> np.ndarray:
        """``(n, dim)`` float32 embeddings; texts are run longest-first in chunks to limit padding."""
        import torch

        n = len(firsts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        features = self.tokenize(firsts, seconds)
        order = sorted(range(n), key=lambda i: -len(features[i]["input_ids"]))
        autocast = (torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            for start in range(0, n, FORWARD_BATCH):
                chunk = order[start:start + FORWARD_BATCH]
                batch = {k: v.to(self.device) for k, v in
                         pad_batch([features[i] for i in chunk], self.tokenizer.pad_token_id).items()}
                hidden = self.model(**batch).last_hidden_state
                vectors = pool(hidden.float(), batch["attention_mask"], self.pooling)  # (b, hidden)
                if self.projection is not None:
                    vectors = self.projection(vectors).float()
                out[chunk] = vectors.cpu().numpy()
        return out


def _cap_max_length(max_length: int, tokenizer: Any, config: Any) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        max_length = min(max_length, limit)
    positions = getattr(config, "max_position_embeddings", None)
    if getattr(config, "model_type", "") == "bert" and isinstance(positions, int):
        max_length = min(max_length, positions)
    return max_length


def load_pretrained(path: str, *, source: str) -> Any:
    """``AutoModel.from_pretrained`` (float32, eval) that reports weights it could not load."""
    import torch
    from transformers import AutoModel

    config = load_config(path, source=source)
    if getattr(config, "model_type", "") == "dpr":
        raise ConfigError(f"{source}: is a transformers DPR{'/'.join(config.architectures or [])} "
                          "model; hf: expects the plain encoder inside it: save "
                          "model.question_encoder.bert_model / model.ctx_encoder.bert_model (with the "
                          "tokenizer) as question_encoder/ and ctx_encoder/ of one folder")
    try:
        # float32 explicitly (transformers 5 loads dtype="auto"): the encoder runs float32 (autocast
        # on GPU) and mDPR trains these weights.
        model, info = AutoModel.from_pretrained(path, output_loading_info=True, dtype=torch.float32,
                                                   local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load model weights from {source!r}: {exc}; {_load_hint(source)}") from exc
    report_key_mismatch(source, info.get("missing_keys", ()), info.get("unexpected_keys", ()),
                        max_missing=5, fix="check that the folder holds the weights its config.json describes")
    if info.get("mismatched_keys"):
        raise ConfigError(f"{source}: weights with the wrong shape: {info['mismatched_keys']}; the "
                          "weights do not match config.json")
    return model


def has_tokenizer(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in _TOKENIZER_FILES)


def set_cpu_threads(device: Any, threads: int) -> None:
    """``torch.set_num_threads`` on CPU (a process-wide setting); nothing on GPU."""
    import torch

    if device.type == "cpu" and threads > 0:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- the hf: encoder

class HFEncoder:
    """A Hugging Face text encoder (one model for both sides, or a question/ctx pair of folders).

    >>> enc = HFEncoder("hf:/path/to/model?pooling=mean&normalize=true")  # doctest: +SKIP
    >>> enc.encode_passages(["Paris"], ["Paris is the capital of France."]).shape  # doctest: +SKIP
    (1, 768)
    """

    def __init__(self, spec: str | HFSpec, *, threads: int = 1, device: Any = None, dtype: Any = None) -> None:
        parsed = spec if isinstance(spec, HFSpec) else parse_hf_spec(spec)
        self.spec = parsed.spec
        self.normalized = parsed.normalize
        dev, autocast_dtype = resolve_device(device, dtype)
        set_cpu_threads(dev, threads)

        def tower(model_path: str, tok_path: str, prefix: str, label: str) -> Tower:
            tokenizer = load_tokenizer(tok_path, source=label)
            model = load_pretrained(model_path, source=label)
            return Tower(model, tokenizer, pooling=parsed.pooling, max_length=parsed.max_length,
                         device=dev, autocast_dtype=autocast_dtype, prefix=prefix)

        with local_model_dir(parsed.source) as path, contextlib.ExitStack() as stack:
            self.identity = hf_identity(parsed, folder=path)
            self.query_format = self.identity["query_format"]
            two = os.path.isdir(path) and all(
                os.path.isfile(os.path.join(path, d, "config.json")) for d in TOWER_DIRS)
            tok_root = stack.enter_context(local_model_dir(parsed.tokenizer)) if parsed.tokenizer else None
            if two:
                paths = {d: os.path.join(path, d) for d in TOWER_DIRS}
                if tok_root is None and has_tokenizer(path):
                    tok_root = path
                self._question = tower(paths["question_encoder"], tok_root or paths["question_encoder"],
                                       parsed.query_prefix, f"{parsed.source}/question_encoder")
                self._passage = tower(paths["ctx_encoder"], tok_root or paths["ctx_encoder"],
                                      parsed.passage_prefix, f"{parsed.source}/ctx_encoder")
                if self._question.dim != self._passage.dim:
                    raise ConfigError(f"{parsed.source}: question_encoder ({self._question.dim}-d) and "
                                      f"ctx_encoder ({self._passage.dim}-d) disagree on the vector size")
            else:
                self._question = tower(path, tok_root or path, parsed.query_prefix, parsed.source)
                self._passage = Tower(self._question.model, self._question.tokenizer,
                                      pooling=parsed.pooling, max_length=parsed.max_length, device=dev,
                                      autocast_dtype=autocast_dtype, prefix=parsed.passage_prefix)
        self.dim = self._question.dim
        self.bi_encoder = two

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, dim)`` vectors of questions already written in :attr:`query_format`."""
        texts = [clean_text(t) for t in texts]
        return self._finish(self._question.encode(texts, [None] * len(texts)))

    def encode_passages(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        firsts, seconds = passage_inputs(titles, texts)
        return self._finish(self._passage.encode(firsts, seconds))

    def _finish(self, vectors: np.ndarray) -> np.ndarray:
        if self.normalized and len(vectors):
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def clean_text(text: str | None) -> str:
    """A text as DPR feeds it: ``str`` and stripped; ``None`` becomes empty."""
    return "" if text is None else str(text).strip()


def passage_inputs(titles: Sequence[str | None], texts: Sequence[str | None]) -> tuple[list[str], list[str | None]]:
    """DPR's passage input: ``(title, text)`` as a pair, or the text alone when the title is empty.

    >>> passage_inputs(["Paris", ""], ["Capital of France.", "No title."])
    (['Paris', 'No title.'], ['Capital of France.', None])
    """
    if len(titles) != len(texts):
        raise ValueError(f"encode_passages got {len(titles)} titles but {len(texts)} texts")
    firsts: list[str] = []
    seconds: list[str | None] = []
    for title, text in zip(titles, texts):
        title, text = clean_text(title), clean_text(text)
        firsts.append(title if title else text)
        seconds.append(text if title else None)
    return firsts, seconds
