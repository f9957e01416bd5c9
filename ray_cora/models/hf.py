"""Loading a transformers model (and its tokenizer) from an ``hf:`` spec: one helper for every
model that is not a sentence encoder (the pivot's cross-encoder and MT model, the reranker's
training start point).

``hf:<name-or-path-or-uri>[?option=value&...]``: a local folder, an ``s3://`` folder (copied to a
temporary directory while loading) or a name in the local Hugging Face cache — never a download.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ray_cora.encoders.hf import (
    load_tokenizer,
    local_model_dir,
    option_int,
    parse_spec,
    resolve_device,
    set_cpu_threads,
)
from ray_cora.errors import ConfigError


@dataclass
class HFModel:
    """What :func:`load_hf_model` returns: the parsed spec, and the model ready to run."""

    spec: str
    source: str
    options: dict[str, str]
    tokenizer: Any
    model: Any
    device: Any

    def option_int(self, key: str, default: int | None) -> int | None:
        return option_int(self.spec, self.options, key, default)


def load_hf_model(spec: str, auto_cls: Any, *, options: Sequence[str] = (), what: str = "model",
                  threads: int = 1, device: Any = None, to_device: bool = True,
                  **from_pretrained: Any) -> HFModel:
    """Parse ``spec`` (accepting only ``options`` as query options), load the tokenizer and
    ``auto_cls.from_pretrained(path, **from_pretrained)``; the model is put on ``device``
    (default: CUDA when available) in eval mode unless ``to_device`` is False (training code
    that places the model itself).

    >>> from transformers import AutoModelForSequenceClassification  # doctest: +SKIP
    >>> m = load_hf_model("hf:/models/xlmr-pawsx?max_length=128", AutoModelForSequenceClassification,
    ...                   options=("max_length",), what="sequence-classification model")  # doctest: +SKIP
    >>> m.option_int("max_length", 256)  # doctest: +SKIP
    128
    """
    source, parsed = parse_spec(spec, "hf", tuple(options))
    dev = None
    if to_device:
        dev, _ = resolve_device(device, None)
        set_cpu_threads(dev, threads)
    with local_model_dir(source) as path:
        tokenizer = load_tokenizer(path, source=source)
        try:
            model = auto_cls.from_pretrained(path, local_files_only=True, **from_pretrained)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load a {what} from {source!r}: {exc}; give a local folder with "
                              "config.json and weights, an s3:// folder, or a model name in the local "
                              "Hugging Face cache") from exc
    if to_device:
        model = model.to(dev).eval()
    return HFModel(spec, source, parsed, tokenizer, model, dev)
