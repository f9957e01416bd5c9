"""mGEN: a multilingual seq2seq generator (mT5 for real runs) answering from retrieved passages.

Input (CORA's format, with the language tag written **once** — CORA's own code appends it twice,
its issue #3)::

    <Q>: {question} [{lang}] <P>:<0: {title}> {text} <1: {title}> {text} ...

over the top-k passages, truncated (from the end, so the question and tag survive) to
``max_source_length`` tokens; the target is the first answer, at most ``max_target_length``
tokens. Training inputs choose their passages as CORA's
``convert_dpr_retrieval_results_to_seq2seq.py`` does (:func:`training_passages`): up to 3 retrieved
passages that contain a gold answer, the best-ranked ones without filling the rest, shuffled;
inference reads the top-k as ranked. :class:`Generator` is the inference API
(``Generator.load(path).answer(questions, langs, passages)``) used by ``ray-cora generate`` and
by Serve; it loads any HF seq2seq folder, including CORA's released ``mGEN_model``
(``config.json`` + ``pytorch_model.bin``; its tokenizer is mT5's: pass ``tokenizer=`` when the
folder has none).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from ray_cora.encoders.hf import has_tokenizer, load_config, load_tokenizer, local_model_dir
from ray_cora.errors import ConfigError
from ray_cora.metrics.retrieval import passage_has_answer

# torch / transformers are imported inside the functions that use them (3.4 s + 2.0 s cold here):
# input formatting (format_source, training_passages) is imported by drivers and Serve's ingress, which never run the model.

MODEL_KIND = "mgen-generator"
DEFAULT_MAX_SOURCE = 1000
DEFAULT_MAX_TARGET = 25


def format_source(question: str, lang: str, passages: Sequence[dict[str, Any]], *, top_k: int) -> str:
    """The generator's input text for one question.

    >>> format_source("Wer schrieb Faust?", "de", [{"title": "Faust", "text": "Von Goethe."}], top_k=5)
    '<Q>: Wer schrieb Faust? [de] <P>:<0: Faust> Von Goethe.'
    """
    parts = []
    for index, passage in enumerate(list(passages)[:top_k]):
        title = str(passage.get("title") or "").replace("\n", " ").strip()
        text = str(passage.get("text") or "").replace("\n", " ").strip()
        parts.append(f"<{index}: {title}> {text}")
    head = f"<Q>: {question.replace(chr(10), ' ').strip()} [{lang}]"
    return f"{head} <P>:{' '.join(parts)}" if parts else head


PASSAGE_CHOICES = ("answer_mix", "ranked")


def training_passages(example: dict[str, Any], *, top_k: int, choice: str = "answer_mix",
                      max_answer_passages: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """The passages one training input shows the generator.

    ``ranked``: the first ``top_k`` retrieved, what inference sees. ``answer_mix`` (CORA): up to
    ``max_answer_passages`` of the retrieved passages containing a gold answer (a random sample
    when there are more), then the best-ranked passages without one up to ``top_k``, in random
    order, so the generator learns to find the answer wherever it sits and is not taught to make
    one up when retrieval ranked it low. A passage's own ``has_answer`` (CORA's DPR output carries
    one) wins over string matching. The draw depends only on ``seed`` and the question, so every
    epoch and every resumed run sees the same inputs, as with CORA's files written once.

    >>> ex = {"qid": "1", "question": "q", "answers": ["Goethe"],
    ...       "ctxs": [{"title": "a", "text": "x"}, {"title": "b", "text": "y"}, {"title": "c", "text": "by Goethe"}]}
    >>> sorted(p["title"] for p in training_passages(ex, top_k=2))
    ['a', 'c']
    >>> [p["title"] for p in training_passages(ex, top_k=2, choice="ranked")]
    ['a', 'b']
    """
    ctxs = list(example["ctxs"])
    if choice == "ranked":
        return ctxs[:top_k]
    if choice != "answer_mix":
        raise ValueError(f"unknown passage choice {choice!r}; expected one of {', '.join(PASSAGE_CHOICES)}")
    answers = example.get("answers") or []
    with_answer, without = [], []
    for ctx in ctxs:
        (with_answer if passage_has_answer(ctx, answers) else without).append(ctx)
    rng = random.Random(f"{seed}\x1f{example.get('qid', '')}\x1f{example['question']}")
    if len(with_answer) > max_answer_passages:
        with_answer = rng.sample(with_answer, max_answer_passages)
    chosen = with_answer[:top_k] + without[:max(0, top_k - len(with_answer))]
    rng.shuffle(chosen)
    return chosen


def _load_model_and_tokenizer(source: str, tokenizer: str | None, *, dropout: float | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForSeq2SeqLM


    with local_model_dir(source) as path:
        config = load_config(path, source=source)
        if not getattr(config, "is_encoder_decoder", False):
            raise ConfigError(f"{source}: is a {config.model_type} model, not a seq2seq (encoder-decoder) "
                              "model such as mT5; mGEN needs one")
        if dropout is not None:
            for name in ("dropout_rate", "dropout"):
                if hasattr(config, name):
                    setattr(config, name, dropout)
        try:
            model = AutoModelForSeq2SeqLM.from_pretrained(path, config=config)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load seq2seq weights from {source!r}: {exc}") from exc
        if tokenizer is None and not has_tokenizer(path):
            raise ConfigError(f"{source}: no tokenizer files in the model folder (CORA's mGEN_model ships "
                              "without one); pass the tokenizer, e.g. tokenizer=google/mt5-base from the "
                              "local Hugging Face cache or a folder")
        tok_source = tokenizer or source
        with (local_model_dir(tokenizer) if tokenizer else contextlib.nullcontext(path)) as tok_path:
            tok = load_tokenizer(tok_path, source=tok_source)
    return model, tok


class Generator:
    """Answers questions from passages with a seq2seq model.

    >>> gen = Generator.load("/models/mGEN_model", tokenizer="google/mt5-base")  # doctest: +SKIP
    >>> gen.answer(["Wer schrieb Faust?"], ["de"], [[{"title": "Faust", "text": "Von Goethe."}]])  # doctest: +SKIP
    ['Goethe']
    """

    def __init__(self, model: Any, tokenizer: Any, *, top_k: int = 15, max_source_length: int = DEFAULT_MAX_SOURCE,
                 max_target_length: int = DEFAULT_MAX_TARGET, num_beams: int = 1, device: Any = None) -> None:
        import torch

        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.top_k, self.max_source_length = top_k, max_source_length
        self.max_target_length, self.num_beams = max_target_length, num_beams

    @classmethod
    def load(cls, source: str, *, tokenizer: str | None = None, **kwargs: Any) -> "Generator":
        """Load from a local folder, ``s3://`` folder or local-HF-cache name (nothing is downloaded)."""
        model, tok = _load_model_and_tokenizer(source, tokenizer)
        return cls(model, tok, **kwargs)

    def answer(self, questions: Sequence[str], langs: Sequence[str],
               passages: Sequence[Sequence[dict[str, Any]]]) -> list[str]:
        """One answer per question (greedy, or beam search with ``num_beams`` > 1)."""
        import torch

        if not (len(questions) == len(langs) == len(passages)):
            raise ValueError(f"answer() got {len(questions)} questions, {len(langs)} langs and "
                             f"{len(passages)} passage lists; give one of each per question")
        if not questions:
            return []
        sources = [format_source(q, l, p, top_k=self.top_k) for q, l, p in zip(questions, langs, passages)]
        enc = self.tokenizer(sources, max_length=self.max_source_length, truncation=True, padding=True,
                             return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                      max_new_tokens=self.max_target_length, num_beams=self.num_beams,
                                      do_sample=False)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True,
                                                               clean_up_tokenization_spaces=False)]


@dataclass
class MGENTask:
    """How to build, feed and export the generator; picklable (only settings travel)."""

    init: str
    tokenizer: str | None = None
    top_k: int = 15
    max_source_length: int = DEFAULT_MAX_SOURCE
    max_target_length: int = DEFAULT_MAX_TARGET
    label_smoothing: float = 0.1
    dropout: float = 0.1
    passage_choice: str = "answer_mix"
    max_answer_passages: int = 3
    seed: int = 0
    _tok: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}

    def build(self) -> Any:
        model, self._tok = _load_model_and_tokenizer(self.init, self.tokenizer, dropout=self.dropout)
        return model.train()

    def tok(self) -> Any:
        if self._tok is None:
            self.build()
        return self._tok

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        tok = self.tok()
        sources = [format_source(ex["question"], ex["lang"],
                                 training_passages(ex, top_k=self.top_k, choice=self.passage_choice,
                                                   max_answer_passages=self.max_answer_passages, seed=self.seed),
                                 top_k=self.top_k) for ex in examples]
        enc = tok(sources, max_length=self.max_source_length, truncation=True, padding=True, return_tensors="pt")
        labels = tok([ex["answers"][0] for ex in examples], max_length=self.max_target_length, truncation=True,
                     padding=True, return_tensors="pt")["input_ids"]
        labels[labels == tok.pad_token_id] = -100
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}

    def loss(self, model: Any, batch: dict[str, Any], device: Any) -> tuple[Any, Any]:
        """Label-smoothed token cross-entropy (padding ignored)."""
        import torch.nn.functional as F

        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**batch).logits  # (n, target_len, vocab)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                               ignore_index=-100, label_smoothing=self.label_smoothing)
        return loss, loss

    def export(self, model: Any, folder: str) -> None:
        model.save_pretrained(folder)
        self.tok().save_pretrained(folder)

    def generator(self, model: Any, **kwargs: Any) -> Generator:
        return Generator(model, self.tok(), top_k=self.top_k, max_source_length=self.max_source_length,
                         max_target_length=self.max_target_length, **kwargs)
