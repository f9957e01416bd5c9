"""mGEN: a multilingual seq2seq generator (mT5 for real runs) answering from retrieved passages.

:class:`Generator` is the inference API (``Generator.load(path).answer(questions, langs, passages)``)
used by ``ray-cora generate``, ``evaluate all`` and Serve; it loads any HF seq2seq folder, including
CORA's released ``mGEN_model`` (its tokenizer is read from the folder, as CORA's ``eval_mgen.py``
does; ``tokenizer=`` only for a folder of weights without tokenizer files). How it decodes is a
*preset* (:data:`DECODING_PRESETS`):

``cora`` — exactly what CORA does at evaluation (AkariAsai/CORA): the input line of
``mGEN/convert_dpr_retrieval_results_to_seq2seq.py`` (dev split, ``--add_lang``; :func:`cora_source`)::

    <Q>: {question} [{lang}] <P>:<0: {title}> {text} <1: {title}> {text}...

with CORA's own spacing and its ``.replace("\\n", "")``, then ``mGEN/eval_mgen.py``: ``line.strip()``,
``tokenizer(..., padding=True, truncation=True)`` with no ``max_length`` (CORA's ``batch_encode_plus``,
gone in transformers 5; it cuts at the tokenizer's ``model_max_length``, which mT5's does not set, so
nothing is cut), ``generate(num_beams=4, min_length=1, max_length=20, early_stopping=False,
num_return_sequences=1, bad_words_ids=[[0, 0]])`` (``--max_length 20`` of CORA's README; it counts
the decoder's start token) and ``batch_decode(skip_special_tokens=True)`` with the clean-up of
transformers 4.2.1 (the version CORA pins), answers not stripped. CORA's ``question`` is the
``question`` field of its retrieval output, which is the query its retriever saw
(``dense_retriever.py --add_lang`` writes ``"{question} [{lang}]"`` there), so CORA's inputs carry
the tag twice (CORA issue #3); ray_cora's records keep the plain question and the encoder's input in
``query``, so ``answer(..., queries=)`` takes it and the preset uses it as CORA's question. Left
as they are: CORA's file round trip (a lone ``\r`` in a passage would split its line in two) and
the retrieval reader's checks (questions stripped, a title that is not a string read as ``""``).

``greedy`` — ray_cora's own, the faster one: :func:`format_source` (the tag once, titles and texts
with newlines folded and stripped), cut to 1000 tokens (from the end, so the question and tag
survive), greedy search for at most 25 new tokens, answers stripped.

``Generator.load`` picks what the model folder records (``ray_cora_generator.json``, written by
:meth:`MGENTask.export`: models trained by ``ray-cora train-mgen`` decode ``greedy``, as they are
trained on :func:`format_source` inputs), else ``cora``. ``num_beams``, ``max_source_length`` and
``max_target_length`` override the preset when given.

Training inputs are :func:`format_source` strings, the target is the first answer, at most
``max_target_length`` tokens; the passages are chosen as CORA's conversion script does
(:func:`training_passages`): up to 3 retrieved passages that contain a gold answer, the best-ranked
ones without filling the rest, shuffled; inference reads the top-k as ranked. CORA's train split
tags NQ questions (``lang`` "NONE") and XOR's English-span questions ``[en]``; ray_cora's NQ reader
gives NQ questions the language ``en``, and its XOR records carry no English-span mark (their own
language is the tag).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ray_cora import storage
from ray_cora.encoders.hf import has_tokenizer, load_config, load_tokenizer, local_model_dir
from ray_cora.errors import ConfigError
from ray_cora.metrics.qa import exact_match, f1
from ray_cora.metrics.retrieval import passage_has_answer

# torch / transformers are imported inside the functions that use them (3.4 s + 2.0 s cold here):
# input formatting (format_source, cora_source, training_passages) is imported by drivers and Serve's ingress,
# which never run the model.

MODEL_KIND = "mgen-generator"
DEFAULT_MAX_SOURCE = 1000
DEFAULT_MAX_TARGET = 25
GENERATOR_FILE = "ray_cora_generator.json"  # what a model folder says about its decoding (MGENTask.export)
DecodingName = Literal["cora", "greedy"]
DEFAULT_DECODING: DecodingName = "cora"  # a folder that records nothing: CORA's mGEN_model, any HF seq2seq
DEV_BATCH_SIZE = 32  # questions per generate() call when scoring dev answers during training


def format_source(question: str, lang: str, passages: Sequence[dict[str, Any]], *, top_k: int) -> str:
    """The generator's input text for one question (the ``greedy`` preset's and training's).

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


def cora_source(question: str, lang: str, passages: Sequence[dict[str, Any]], *, top_k: int) -> str:
    """The line CORA's ``convert_dpr_retrieval_results_to_seq2seq.py`` writes for one dev/test
    question with ``--add_lang`` (``load_dpr_results``: ``paragraphs = ctxs[:top_n]``), character for
    character: the ``cora`` preset's input (``eval_mgen.py`` then strips the line it reads back).
    ``question`` is CORA's: its retrieval output's ``question``, i.e. the query the retriever saw.

    >>> cora_source("Wer? [de]", "de", [{"title": "Faust", "text": "Von\\nGoethe. "}, {"title": "B", "text": "b"}],
    ...             top_k=5)
    '<Q>: Wer? [de] [de] <P>:<0: Faust> VonGoethe. <1: B> b'
    """
    # CORA (load_dpr_results), the same loop:
    #     context = ""
    #     for idx, para in enumerate(paragraphs):
    #         if len(context) > 0 and context[-1] != " ":
    #             context += " "
    #         context += "<{0}: {1}> ".format(idx, para["title"])
    #         context += para["text"]
    context = ""
    for index, passage in enumerate(list(passages)[:top_k]):
        if len(context) > 0 and context[-1] != " ":
            context += " "
        context += f"<{index}: {passage.get('title', '')}> "
        context += passage.get("text", "")
    if top_k == 0:  # CORA's --top_n 0: "<Q>: {0} [{1}]".format(item["question"], item["lang"]).replace("\n", "")
        return f"<Q>: {question} [{lang}]".replace("\n", "")
    # main(): source_f_val.write("<Q>: {0} [{1}] <P>:{2}".format(item["question"], item["lang"],
    #                            item["context"]).replace("\n", "") + "\n")
    return f"<Q>: {question} [{lang}] <P>:{context}".replace("\n", "")


@dataclass(frozen=True)
class Decoding:
    """One way of turning a question and its passages into an answer (see the module docstring).

    ``max_source_length`` None: ``truncation=True`` without ``max_length``, i.e. cut at the
    tokenizer's own ``model_max_length`` (none for mT5), as CORA's ``eval_mgen.py``.
    ``count_start_token``: ``max_target_length`` is ``generate``'s ``max_length`` (CORA's
    ``--max_length``: the decoder's start token counts) rather than ``max_new_tokens``.
    """

    name: str
    source: Literal["cora", "ray_cora"]
    max_source_length: int | None
    num_beams: int
    max_target_length: int
    count_start_token: bool
    min_length: int | None = None
    early_stopping: bool | None = None
    num_return_sequences: int | None = None
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    clean_up_tokenization_spaces: bool = False
    strip: bool = False

    def generate_kwargs(self) -> dict[str, Any]:
        """The ``model.generate`` keywords besides the inputs (always deterministic: no sampling)."""
        kwargs: dict[str, Any] = {"num_beams": self.num_beams, "do_sample": False}
        if self.count_start_token:
            kwargs["max_length"] = self.max_target_length
        else:
            kwargs["max_new_tokens"] = self.max_target_length
        if self.min_length is not None:
            kwargs["min_length"] = self.min_length
        if self.early_stopping is not None:
            kwargs["early_stopping"] = self.early_stopping
        if self.num_return_sequences is not None:
            kwargs["num_return_sequences"] = self.num_return_sequences
        if self.bad_words_ids is not None:
            kwargs["bad_words_ids"] = [list(ids) for ids in self.bad_words_ids]
        return kwargs


DECODING_PRESETS: dict[str, Decoding] = {
    # AkariAsai/CORA mGEN/eval_mgen.py (defaults --num_beams 4 --min_length 1; README: --max_length 20):
    # model.generate(input_ids, attention_mask=..., num_beams=4, min_length=1, max_length=20,
    #                early_stopping=False, num_return_sequences=1, bad_words_ids=[[0, 0]])
    # and tokenizer.batch_decode(outputs, skip_special_tokens=True): transformers 4.2.1's decode
    # cleans up tokenization spaces by default (transformers 5's does not), so True here.
    "cora": Decoding("cora", source="cora", max_source_length=None, num_beams=4, max_target_length=20,
                     count_start_token=True, min_length=1, early_stopping=False, num_return_sequences=1,
                     bad_words_ids=((0, 0),), clean_up_tokenization_spaces=True, strip=False),
    # ray_cora's faster decoding: one hypothesis, at most 25 new tokens, inputs cut at 1000 tokens.
    "greedy": Decoding("greedy", source="ray_cora", max_source_length=DEFAULT_MAX_SOURCE, num_beams=1,
                       max_target_length=DEFAULT_MAX_TARGET, count_start_token=False, strip=True),
}


def decoding_preset(name: str, *, num_beams: int | None = None, max_source_length: int | None = None,
                    max_target_length: int | None = None) -> Decoding:
    """The preset ``name`` with the settings given (not None) in place of its own.

    >>> decoding_preset("cora", num_beams=2).generate_kwargs()["num_beams"]
    2
    >>> decoding_preset("greedy").max_source_length
    1000
    """
    if name not in DECODING_PRESETS:
        raise ConfigError(f"unknown decoding {name!r}; expected one of {', '.join(DECODING_PRESETS)}")
    given = {"num_beams": num_beams, "max_source_length": max_source_length, "max_target_length": max_target_length}
    return dataclasses.replace(DECODING_PRESETS[name], **{k: v for k, v in given.items() if v is not None})


def generator_record(decoding: str, **extra: Any) -> dict[str, Any]:
    """What :data:`GENERATOR_FILE` holds: the model kind and the decoding it was made for."""
    return {"kind": MODEL_KIND, "decoding": decoding, **extra}


def recorded_decoding(source: str) -> str | None:
    """The decoding preset the model folder ``source`` records (local folder, ``file://`` or
    ``s3://``; a Hugging Face cache name records none): its :data:`GENERATOR_FILE`, else
    ``greedy`` for a folder published by ``ray-cora train-mgen`` before that file existed (its
    ``manifest.json`` is of kind ``mgen-generator``), else None (use :data:`DEFAULT_DECODING`)."""
    root = storage.resolve(source if "://" in source else os.path.expanduser(source))
    record = root.join(GENERATOR_FILE)
    if record.is_file():
        try:
            value = json.loads(storage.read_bytes(record)).get("decoding")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise ConfigError(f"{record.uri}: not a JSON object ({exc}); delete it or write "
                              f'{{"decoding": "greedy"}} into it') from None
        if value not in DECODING_PRESETS:
            raise ConfigError(f"{record.uri}: decoding {value!r} is not one of {', '.join(DECODING_PRESETS)}; "
                              "fix the file or pass --decoding")
        return value
    manifest = root.join(storage.MANIFEST_NAME)
    if manifest.is_file():
        with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            if json.loads(storage.read_bytes(manifest)).get("kind") == MODEL_KIND:
                return "greedy"
    return None


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


def _load_model_and_tokenizer(source: str, tokenizer: str | None, *, dropout: float | None = None,
                              dtype: Any = None) -> tuple[Any, Any]:
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
            # dtype None: transformers 5's "auto" (the saved dtype); training passes float32.
            model = AutoModelForSeq2SeqLM.from_pretrained(path, config=config, local_files_only=True,
                                                          **({"dtype": dtype} if dtype else {}))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load seq2seq weights from {source!r}: {exc}") from exc
        # CORA's eval_mgen.py reads the tokenizer from the model folder; only a folder of weights
        # alone needs one named.
        if tokenizer is None and not has_tokenizer(path):
            raise ConfigError(f"{source}: no tokenizer files in the model folder (only weights and "
                              "config.json); pass the tokenizer, e.g. tokenizer=google/mt5-base (mT5's, "
                              "what CORA's mGEN_model uses) from the local Hugging Face cache or a folder")
        tok_source = tokenizer or source
        with (local_model_dir(tokenizer) if tokenizer else contextlib.nullcontext(path)) as tok_path:
            tok = load_tokenizer(tok_path, source=tok_source)
    return model, tok


class Generator:
    """Answers questions from passages with a seq2seq model, decoding as the preset ``decoding``
    says (``"cora"``, ``"greedy"`` or a :class:`Decoding`); ``num_beams``, ``max_source_length``
    and ``max_target_length`` override the preset's when given.

    >>> gen = Generator.load("/models/mGEN_model")  # doctest: +SKIP
    >>> gen.answer(["Wer schrieb Faust?"], ["de"], [[{"title": "Faust", "text": "Von Goethe."}]])  # doctest: +SKIP
    ['Goethe']
    """

    def __init__(self, model: Any, tokenizer: Any, *, top_k: int = 15, decoding: str | Decoding = DEFAULT_DECODING,
                 max_source_length: int | None = None, max_target_length: int | None = None,
                 num_beams: int | None = None, device: Any = None) -> None:
        import torch

        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.top_k = top_k
        overrides = {"num_beams": num_beams, "max_source_length": max_source_length,
                     "max_target_length": max_target_length}
        if isinstance(decoding, Decoding):
            self.decoding = dataclasses.replace(decoding, **{k: v for k, v in overrides.items() if v is not None})
        else:
            self.decoding = decoding_preset(decoding, **overrides)

    @property
    def max_source_length(self) -> int | None:
        return self.decoding.max_source_length

    @property
    def max_target_length(self) -> int:
        return self.decoding.max_target_length

    @property
    def num_beams(self) -> int:
        return self.decoding.num_beams

    @classmethod
    def load(cls, source: str, *, tokenizer: str | None = None, decoding: str | Decoding | None = None,
             **kwargs: Any) -> Generator:
        """Load from a local folder, ``s3://`` folder or local-HF-cache name (nothing is downloaded);
        ``decoding`` None: what the folder records (:func:`recorded_decoding`), else ``cora``."""
        chosen = decoding or recorded_decoding(source) or DEFAULT_DECODING
        model, tok = _load_model_and_tokenizer(source, tokenizer)
        return cls(model, tok, decoding=chosen, **kwargs)

    def sources(self, questions: Sequence[str], langs: Sequence[str], passages: Sequence[Sequence[dict[str, Any]]],
                queries: Sequence[str | None] | None = None) -> list[str]:
        """The input strings, one per question. ``queries[i]`` (the retrieval record's ``query``,
        what the retriever encoded) is CORA's question for the ``cora`` preset, where given."""
        if self.decoding.source == "ray_cora":
            return [format_source(q, l, p, top_k=self.top_k) for q, l, p in zip(questions, langs, passages)]
        queries = list(queries) if queries is not None else [None] * len(questions)
        # eval_mgen.py: questions.append(line.strip()) for each line of the converted file
        return [cora_source(query if query is not None else q, l, p, top_k=self.top_k).strip()
                for q, l, p, query in zip(questions, langs, passages, queries)]

    def encode(self, sources: Sequence[str]) -> Any:
        """The padded ``input_ids`` / ``attention_mask`` of ``sources`` on the generator's device."""
        # CORA: tokenizer.batch_encode_plus(questions, return_tensors="pt", padding=True, truncation=True);
        # transformers 5 removed batch_encode_plus, and calling the tokenizer is the same call.
        limit = {} if self.decoding.max_source_length is None else {"max_length": self.decoding.max_source_length}
        return self.tokenizer(list(sources), return_tensors="pt", padding=True, truncation=True,
                              **limit).to(self.device)

    def answer(self, questions: Sequence[str], langs: Sequence[str], passages: Sequence[Sequence[dict[str, Any]]],
               queries: Sequence[str | None] | None = None) -> list[str]:
        """One answer per question; ``queries`` as in :meth:`sources`."""
        import torch

        if not (len(questions) == len(langs) == len(passages)) or (queries is not None and
                                                                    len(queries) != len(questions)):
            raise ValueError(f"answer() got {len(questions)} questions, {len(langs)} langs, {len(passages)} "
                             f"passage lists{f' and {len(queries)} queries' if queries is not None else ''}; "
                             "give one of each per question")
        if not questions:
            return []
        enc = self.encode(self.sources(questions, langs, passages, queries))
        with torch.inference_mode():
            out = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                      **self.decoding.generate_kwargs())
        return self.decode(out)

    def decode(self, token_ids: Any) -> list[str]:
        """Answers from generated token ids, cleaned up as the preset says."""
        texts = self.tokenizer.batch_decode(token_ids, skip_special_tokens=True,
                                            clean_up_tokenization_spaces=self.decoding.clean_up_tokenization_spaces)
        return [t.strip() for t in texts] if self.decoding.strip else list(texts)


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
        import torch

        # float32 master weights whatever the folder was saved in (bf16 autocast is the loop's job)
        model, self._tok = _load_model_and_tokenizer(self.init, self.tokenizer, dropout=self.dropout,
                                                     dtype=torch.float32)
        return model.train()

    def tok(self) -> Any:
        if self._tok is None:
            self.build()
        return self._tok

    def collate(self, examples: list[dict[str, Any]], *, epoch: int = 0) -> dict[str, Any]:
        """Input and label ids; ``epoch`` is not used: the passage draw (:func:`training_passages`)
        is the same every epoch, as CORA's training files are written once."""
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
        """Save the model and tokenizer, and :data:`GENERATOR_FILE`: trained on :func:`format_source`
        inputs, the model decodes with the ``greedy`` preset unless told otherwise."""
        model.save_pretrained(folder)
        self.tok().save_pretrained(folder)
        record = generator_record("greedy", trained_with={"top_k": self.top_k, "max_source_length":
                                                          self.max_source_length,
                                                          "max_target_length": self.max_target_length})
        with open(os.path.join(folder, GENERATOR_FILE), "w", encoding="utf-8") as stream:
            json.dump(record, stream, indent=2)

    def dev_metrics(self, model: Any, examples: Sequence[dict[str, Any]], device: Any, *,
                    metric: str = "em") -> dict[str, float]:
        """Exact match and token F1 (XOR-TyDi's scorer, :mod:`ray_cora.metrics.qa`) of the greedy
        answers from the ranked top-k passages, as inference reads them; higher is better (CORA's
        mGEN checkpoints are kept by val EM, ``callbacks_rag.py`` ``get_checkpoint_callback``)."""
        if metric not in ("em", "f1"):
            raise ValueError(f"mGEN has no dev metric {metric!r}; expected em or f1")
        generator = self.generator(model, device=device)
        predictions: list[str] = []
        for start in range(0, len(examples), DEV_BATCH_SIZE):
            chunk = examples[start:start + DEV_BATCH_SIZE]
            predictions += generator.answer([ex["question"] for ex in chunk], [ex["lang"] for ex in chunk],
                                            [ex["ctxs"] for ex in chunk])
        n = max(len(examples), 1)
        return {"em": sum(exact_match(p, ex["answers"], ex["lang"], mode="xor")
                          for p, ex in zip(predictions, examples)) / n,
                "f1": sum(f1(p, ex["answers"], ex["lang"], mode="xor") for p, ex in zip(predictions, examples)) / n}

    def generator(self, model: Any, **kwargs: Any) -> Generator:
        settings = {"top_k": self.top_k, "decoding": "greedy", "max_source_length": self.max_source_length,
                    "max_target_length": self.max_target_length, **kwargs}
        return Generator(model, self.tok(), **settings)
