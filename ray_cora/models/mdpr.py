"""mDPR: a question encoder and a passage encoder trained with DPR's loss on Ray Train.

Loss (:func:`dpr_nll_loss`): the negative log-likelihood of each question's positive passage
among *all* passages of the global batch — every worker's positives and hard negatives, gathered
with ``all_gather`` (:func:`gather_keep_local_grad`) — as DPR does. Each worker back-propagates
``world_size × loss`` through its own rows only; DDP then averages, so the gradient equals the
single-process gradient of the same global batch (tested against it with two gloo processes).

Initialisation: any ``hf:`` spec (a single encoder such as mBERT: both towers start from it, or a
``question_encoder/`` + ``ctx_encoder/`` folder) or a CORA/DPR ``dpr:`` ``.cpt`` — loaded by the
same code as the embedding job (:mod:`ray_cora.encoders.hf`, :mod:`ray_cora.encoders.dpr`).

**Segment ids.** ``hf:`` encoders feed the tokenizer's segment ids (1 on a passage's text after
its title); ``dpr:`` feeds zeros, as CORA did. Training tokenizes with the very
:class:`~ray_cora.encoders.hf.Tower` the encoder uses; ``segment_ids=auto`` keeps CORA's zeros
when starting from a ``dpr:`` checkpoint and the tokenizer's ids otherwise. The export is always
an ``hf:`` folder; after zeros-training the token-type embedding row 0 is copied into every row,
so ``hf:`` (which feeds 1s on the text) computes exactly what training computed.

**Passages per question** (:func:`ctx_slots`) as DPR's ``create_biencoder_input``: the positive,
``other_negatives`` of ``negative_ctxs`` (CORA: 0) and ``hard_negatives`` of ``hard_negative_ctxs``
(CORA: 1), the pools shuffled per epoch by an RNG keyed on (seed, epoch, the example) — the same
draw after a resume and on any worker split.

**Questions** are written in the retriever's query format (``plain`` / ``tagged``: ``"{question}
[{lang}]"``, the init encoder's unless ``query_format`` says otherwise) and the export records it
in ``ray_cora_encoder.json``, so ``hf:<out>/model`` is queried the way it was trained.

**Dev scores** (:meth:`MDPRTask.dev_metrics`) are CORA's ``validate_nll`` and
``validate_average_rank``; which one decides at an epoch is :mod:`ray_cora.train.selection`'s rule.
"""

from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_cora.encoders import format_query, load_encoder, spec_query_format
from ray_cora.encoders.hf import Tower, clean_text, pad_batch, passage_inputs, pool
from ray_cora.encoders.identity import QUERY_FORMAT_FILE, parse_query_format, query_format_name
from ray_cora.errors import ConfigError

# torch / transformers are imported inside the functions that use them (3.4 s + 2.0 s cold here):
# the DPR loss helpers and export spec are imported by drivers that never touch a tensor on the driver (Ray workers do).

MODEL_KIND = "mdpr-bi-encoder"


# ---------------------------------------------------------------- loss (pure tensor math)

def dpr_nll_loss(questions: Any, ctxs: Any, positive_index: Any, ctx_mask: Any = None) -> Any:
    """Mean NLL of each question's positive among all ``ctxs`` (inner-product scores).

    ``questions`` (nq, dim), ``ctxs`` (nc, dim), ``positive_index`` (nq,) int, ``ctx_mask`` (nc,)
    bool with False for padding slots (never a candidate).

    >>> import torch
    >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); c = torch.tensor([[9.0, 0.0], [0.0, 9.0]])
    >>> float(dpr_nll_loss(q, c, torch.tensor([0, 1]))) < 1e-3
    True
    """
    import torch
    import torch.nn.functional as F

    scores = questions @ ctxs.T  # (nq, nc)
    if ctx_mask is not None:
        scores = scores.masked_fill(~ctx_mask[None, :], torch.finfo(scores.dtype).min)
    return F.cross_entropy(scores.float(), positive_index)


def gather_keep_local_grad(tensor: Any) -> Any:
    """Concatenate ``tensor`` from every DDP worker (rank order); only this worker's rows carry
    gradient. Without an initialised process group it is the identity."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[dist.get_rank()] = tensor
    return torch.cat(parts)


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


PADDING_CTX = {"title": "", "text": ""}


def sample_rng(seed: int, epoch: int, example: dict[str, Any]) -> random.Random:
    """The RNG of one example's draw in one epoch: a function of (seed, epoch, the example's
    question, language and first positive) only, never of global random state, so a resumed run
    and any split of the data over workers draw the same passages. (CORA reseeds the global
    ``random`` with ``seed + epoch + iteration`` for the same reason, ``_train_epoch``: "to be able
    to resume shuffled ctx- pools"; a per-example key also survives a different worker split.)
    ``random.Random`` hashes a ``str`` seed with SHA-512: stable across processes."""
    positive = example["positive"]
    return random.Random(f"{seed}\x1f{epoch}\x1f{example.get('lang', '')}\x1f{example['question']}"
                         f"\x1f{positive.get('title', '')}\x1f{positive['text']}")


def ctx_slots(example: dict[str, Any], hard_negatives: int, other_negatives: int = 0, *, shuffle: bool = False,
              shuffle_positives: bool = False, seed: int = 0, epoch: int = 0) -> tuple[list[dict[str, str]], list[bool]]:
    """A question's ``1 + other_negatives + hard_negatives`` passage slots, as DPR's
    ``BiEncoder.create_biencoder_input`` (AkariAsai/CORA ``mDPR/dpr/models/biencoder.py``) builds
    them: ``[positive] + negative_ctxs[:other] + hard_negative_ctxs[:hard]``, both pools shuffled
    first when ``shuffle`` (:func:`sample_rng`), the positive a random one of ``positives`` when
    ``shuffle`` and ``shuffle_positives`` (else the first). Slots a short pool leaves empty are
    padding at the end (mask False), so every question has the same number of slots.

    >>> ex = {"question": "q", "positive": {"title": "A", "text": "a"}, "hard_negatives": [],
    ...       "negatives": [{"title": "", "text": "n"}]}
    >>> ctx_slots(ex, 2)[1], ctx_slots(ex, 1, 1)[1]
    ([True, False, False], [True, True, False])
    """
    positives = example.get("positives") or [example["positive"]]
    others = list(example.get("negatives", []))
    hards = list(example.get("hard_negatives", []))
    positive = positives[0]
    if shuffle:
        rng = sample_rng(seed, epoch, example)
        if shuffle_positives:
            positive = positives[rng.randrange(len(positives))]
        rng.shuffle(others)
        rng.shuffle(hards)
    slots = [positive, *others[:other_negatives], *hards[:hard_negatives]]
    size = 1 + other_negatives + hard_negatives
    mask = [True] * len(slots) + [False] * (size - len(slots))
    slots += [PADDING_CTX] * (size - len(slots))
    return slots, mask


# ---------------------------------------------------------------- model

def _module_classes():
    import torch


    class BiEncoder(torch.nn.Module):
        """Question and passage transformers (the same module when ``shared``), pooled vectors."""

        def __init__(self, question: Any, ctx: Any, *, pooling: str, shared: bool) -> None:
            super().__init__()
            self.question_model = question
            self.ctx_model = question if shared else ctx
            self.pooling = pooling
            self.shared = shared

        def encode(self, model: Any, batch: dict[str, Any]) -> Any:
            hidden = model(**batch).last_hidden_state  # (n, seq, hidden)
            return pool(hidden, batch["attention_mask"], self.pooling)  # (n, hidden)

        def forward(self, questions: dict[str, Any], ctxs: dict[str, Any]) -> tuple[Any, Any]:
            return self.encode(self.question_model, questions), self.encode(self.ctx_model, ctxs)

    return BiEncoder


# CORA's train_dense_encoder.py defaults for the average-rank validation (--val_av_rank_*).
VAL_AV_RANK_HARD_NEG = 30
VAL_AV_RANK_OTHER_NEG = 30
VAL_AV_RANK_MAX_QUESTIONS = 10000
ENCODE_CHUNK = 128  # rows per forward pass at dev time (CORA's --val_av_rank_bsz)


@dataclass
class MDPRTask:
    """How to build, feed and export the bi-encoder; picklable (only settings travel).

    Questions are written in ``query_format`` (``plain``/``tagged``; None: the format of the
    ``init`` encoder, :func:`ray_cora.encoders.spec_query_format`) with the record's ``lang``, else
    ``lang``, before tokenizing, exactly as retrieval writes them; :meth:`export` records the format
    in the folder, so ``hf:<folder>`` retrieves with it.
    """

    init: str
    shared_encoder: bool = False
    max_length: int = 256
    hard_negatives: int = 1
    other_negatives: int = 0
    shuffle_negatives: bool = True
    shuffle_positives: bool = False
    seed: int = 0
    segment_ids: str = "auto"  # auto | tokenizer | zeros
    query_format: str | None = None  # plain | tagged | None (the init encoder's)
    lang: str = "en"  # of records without one (DPR's NQ data is English)
    dev_batch_size: int = 48  # questions per dev NLL batch (in-batch negatives)
    val_av_rank_hard_neg: int = VAL_AV_RANK_HARD_NEG
    val_av_rank_other_neg: int = VAL_AV_RANK_OTHER_NEG
    _towers: Any = field(default=None, repr=False, compare=False)
    _template: str | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_towers": None}

    @property
    def zeros(self) -> bool:
        if self.segment_ids not in ("auto", "tokenizer", "zeros"):
            raise ConfigError(f"option 'segment_ids': {self.segment_ids!r} is not auto, tokenizer or zeros")
        return self.segment_ids == "zeros" or (self.segment_ids == "auto" and self.init.strip().startswith("dpr:"))

    @property
    def slots_per_question(self) -> int:
        return 1 + self.other_negatives + self.hard_negatives

    @property
    def query_template(self) -> str:
        """The template training writes questions in (``{question}`` or ``{question} [{lang}]``)."""
        if self._template is None:
            self._template = (parse_query_format(self.query_format, where="option 'query_format'")
                              if self.query_format is not None else spec_query_format(self.init))
        return self._template

    def query_texts(self, examples: Sequence[dict[str, Any]]) -> list[str]:
        """What the question encoder sees: each question in :attr:`query_template`, cleaned as the
        encoder's ``encode_queries`` cleans the text retrieval hands it."""
        return [clean_text(format_query(self.query_template, ex["question"], ex.get("lang") or self.lang))
                for ex in examples]

    def build(self) -> Any:
        """Load the towers from ``init`` (the encoders' own loading code), on CPU, float32."""
        import torch


        encoder = load_encoder(self.init, device="cpu")
        question, passage = getattr(encoder, "_question", None), getattr(encoder, "_passage", None)
        if question is None or passage is None:
            raise ConfigError(f"--init {self.init!r}: mDPR trains hf: or dpr: encoders (a transformer per "
                              "tower), not this encoder")
        if question.projection is not None or passage.projection is not None:
            raise ConfigError(f"--init {self.init!r}: the checkpoint has an encode_proj projection layer, which "
                              "the hf: export cannot hold; start from a checkpoint without projection_dim")
        q_model = question.model
        c_model = passage.model
        if c_model is q_model and not self.shared_encoder:
            c_model = copy.deepcopy(q_model)  # DPR: both towers start from the same weights
        for tower_model in (q_model, c_model):
            if getattr(tower_model, "pooler", None) is not None:
                tower_model.pooler = None  # unused by CLS/mean pooling; DDP wants every parameter used
        BiEncoder = _module_classes()
        model = BiEncoder(q_model, c_model, pooling=question.pooling, shared=self.shared_encoder)
        cpu = torch.device("cpu")
        self._towers = tuple(Tower(m, t.tokenizer, pooling=question.pooling, max_length=self.max_length, device=cpu,
                                   zero_token_types=self.zeros) for m, t in ((q_model, question), (c_model, passage)))
        return model.train()

    def towers(self) -> tuple[Any, Any]:
        if self._towers is None:
            self.build()
        return self._towers

    def slots(self, example: dict[str, Any], *, epoch: int) -> tuple[list[dict[str, str]], list[bool]]:
        """One training question's passage slots in ``epoch`` (:func:`ctx_slots`)."""
        return ctx_slots(example, self.hard_negatives, self.other_negatives, shuffle=self.shuffle_negatives,
                         shuffle_positives=self.shuffle_positives, seed=self.seed, epoch=epoch)

    def collate(self, examples: list[dict[str, Any]], *, epoch: int = 0) -> dict[str, Any]:
        """Tokenize questions and their passage slots exactly as the ``hf:``/``dpr:`` encoder will;
        the negatives are drawn for ``epoch`` (the same draw whenever that epoch is run)."""
        return self._tensors(examples, [self.slots(ex, epoch=epoch) for ex in examples])

    def _tensors(self, examples: Sequence[dict[str, Any]],
                 slots: Sequence[tuple[list[dict[str, str]], list[bool]]]) -> dict[str, Any]:
        import torch

        q_tower, c_tower = self.towers()
        questions = self.query_texts(examples)
        ctxs = [c for ex_slots, _ in slots for c in ex_slots]
        mask = [m for _, ex_mask in slots for m in ex_mask]
        firsts, seconds = passage_inputs([c["title"] for c in ctxs], [c["text"] for c in ctxs])
        q_feats = q_tower.tokenize(questions, [None] * len(questions))
        c_feats = c_tower.tokenize(firsts, seconds)
        return {"questions": pad_batch(q_feats, q_tower.tokenizer.pad_token_id),
                "ctxs": pad_batch(c_feats, c_tower.tokenizer.pad_token_id),
                "ctx_mask": torch.tensor(mask, dtype=torch.bool)}

    def loss(self, model: Any, batch: dict[str, Any], device: Any) -> tuple[Any, Any]:
        """``(loss, what to back-propagate)``: the global-batch NLL, and it × world size."""
        import torch

        q_vecs, c_vecs = model({k: v.to(device) for k, v in batch["questions"].items()},
                               {k: v.to(device) for k, v in batch["ctxs"].items()})
        q_all = gather_keep_local_grad(q_vecs.float())  # (world × nq, dim)
        c_all = gather_keep_local_grad(c_vecs.float())  # (world × nc, dim)
        mask = gather_keep_local_grad(batch["ctx_mask"].to(device))
        positive = torch.arange(q_all.shape[0], device=device) * self.slots_per_question
        loss = dpr_nll_loss(q_all, c_all, positive, mask)
        return loss, loss * world_size()

    # ------------------------------------------------------------ dev scores (CORA's validation)

    def dev_metrics(self, model: Any, examples: Sequence[dict[str, Any]], device: Any, *,
                    metric: str) -> dict[str, float]:
        """Dev scores of the (unwrapped, eval-mode) bi-encoder for the selection ``metric``:
        ``nll`` (:meth:`dev_nll`) or ``avg_rank`` (:meth:`dev_average_rank`); lower is better."""
        if metric == "nll":
            return self.dev_nll(model, examples, device)
        if metric == "avg_rank":
            return self.dev_average_rank(model, examples, device)
        raise ValueError(f"mDPR has no dev metric {metric!r}; expected nll or avg_rank")

    def _encode_chunked(self, model: Any, tower_model: Any, feats: dict[str, Any], device: Any) -> Any:
        import torch

        n = feats["input_ids"].shape[0]
        parts = [model.encode(tower_model, {k: v[i:i + ENCODE_CHUNK].to(device) for k, v in feats.items()}).float()
                 for i in range(0, n, ENCODE_CHUNK)]
        return torch.cat(parts) if parts else torch.empty(0)

    def _dev_vectors(self, model: Any, examples: Sequence[dict[str, Any]], slots: Sequence[Any],
                     device: Any) -> tuple[Any, Any, Any]:
        batch = self._tensors(examples, slots)
        q = self._encode_chunked(model, model.question_model, batch["questions"], device)  # (nq, dim)
        c = self._encode_chunked(model, model.ctx_model, batch["ctxs"], device)  # (nq × slots, dim)
        return q, c, batch["ctx_mask"].to(device)

    def dev_nll(self, model: Any, examples: Sequence[dict[str, Any]], device: Any) -> dict[str, float]:
        """CORA's ``validate_nll``: the training loss on the dev file, in batches of
        ``dev_batch_size`` questions (in-batch negatives) with the first ``hard_negatives`` /
        ``other_negatives`` of each pool (no shuffling), averaged over batches; ``nll_correct`` is
        the share of questions whose positive scores highest."""
        import torch

        losses, correct = [], 0
        size = self.slots_per_question
        with torch.no_grad():
            for start in range(0, len(examples), self.dev_batch_size):
                chunk = examples[start:start + self.dev_batch_size]
                slots = [ctx_slots(ex, self.hard_negatives, self.other_negatives) for ex in chunk]
                q, c, mask = self._dev_vectors(model, chunk, slots, device)
                positive = torch.arange(len(chunk), device=q.device) * size
                losses.append(float(dpr_nll_loss(q, c, positive, mask)))
                scores = (q @ c.T).masked_fill(~mask[None, :], float("-inf"))
                correct += int((scores.argmax(dim=1) == positive).sum())
        return {"nll": sum(losses) / max(len(losses), 1), "nll_correct": correct / max(len(examples), 1)}

    def dev_average_rank(self, model: Any, examples: Sequence[dict[str, Any]], device: Any) -> dict[str, float]:
        """CORA's ``validate_average_rank``: every dev question's positive ranked among the passages
        of all dev questions (each brings its positive, ``val_av_rank_other_neg`` other and
        ``val_av_rank_hard_neg`` hard negatives, unshuffled), at most 10000 questions. Ranks count
        from 1 here (CORA logs them from 0: its figure is one less); top-k accuracies come along."""
        import torch

        examples = list(examples)[:VAL_AV_RANK_MAX_QUESTIONS]
        slots = [ctx_slots(ex, self.val_av_rank_hard_neg, self.val_av_rank_other_neg) for ex in examples]
        kept = [([c for c, m in zip(s, mask) if m], [True] * sum(mask)) for s, mask in slots]  # no padding
        positive, offset = [], 0
        for ex_slots, _ in kept:
            positive.append(offset)
            offset += len(ex_slots)
        with torch.no_grad():
            q, c, _ = self._dev_vectors(model, examples, kept, device)
            ranks = positive_ranks(q, c, torch.tensor(positive, device=q.device))
        return {"avg_rank": float(ranks.float().mean()),
                **{f"top{k}": float((ranks <= k).float().mean()) for k in (1, 5, 20)}}

    def export(self, model: Any, folder: str) -> None:
        """``question_encoder/`` and ``ctx_encoder/`` (``save_pretrained`` + tokenizer) and the query
        format (:data:`~ray_cora.encoders.identity.QUERY_FORMAT_FILE`): ``hf:<folder>``."""
        q_tower, c_tower = self.towers()
        for name, module, tower in (("question_encoder", model.question_model, q_tower),
                                    ("ctx_encoder", model.ctx_model, c_tower)):
            target = os.path.join(folder, name)
            module = copy.deepcopy(module).cpu().float()
            if self.zeros:
                _tie_token_types(module)
            module.save_pretrained(target)
            tower.tokenizer.save_pretrained(target)
        # folder_query_format reads this file at the folder an hf: spec names, not in its towers.
        with open(os.path.join(folder, QUERY_FORMAT_FILE), "w", encoding="utf-8") as stream:
            json.dump({"query_format": query_format_name(self.query_template)}, stream)


def positive_ranks(questions: Any, ctxs: Any, positive_index: Any, *, chunk: int = 1024) -> Any:
    """Rank (1 = best) of each question's positive among all ``ctxs`` by inner product, computed
    ``chunk`` questions at a time (the full score matrix of a large dev set does not fit).

    >>> import torch
    >>> positive_ranks(torch.tensor([[1.0], [-1.0]]), torch.tensor([[2.0], [1.0]]), torch.tensor([0, 0])).tolist()
    [1, 2]
    """
    import torch

    parts = []
    for start in range(0, questions.shape[0], chunk):
        scores = questions[start:start + chunk] @ ctxs.T  # (chunk, nc)
        rows = torch.arange(scores.shape[0], device=scores.device)
        pos = scores[rows, positive_index[start:start + chunk]]
        parts.append(1 + (scores > pos[:, None]).sum(dim=1))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _tie_token_types(module: Any) -> None:
    """Copy token-type row 0 into every row: segment id 1 then means what 0 meant in training."""
    import torch

    embeddings = getattr(getattr(module, "embeddings", None), "token_type_embeddings", None)
    if embeddings is not None:
        with torch.no_grad():
            embeddings.weight[:] = embeddings.weight[0]


def export_spec(out: str, task: MDPRTask) -> str:
    """The ``hf:`` spec the embedding job should use for an export of ``task``."""
    q_tower, _ = task.towers()
    options = []
    if q_tower.pooling != "cls":
        options.append(f"pooling={q_tower.pooling}")
    if task.max_length != 256:
        options.append(f"max_length={task.max_length}")
    return f"hf:{out}" + ("?" + "&".join(options) if options else "")


# ---------------------------------------------------------------- dev metric (pure)

def ranking_metrics(scores: Any, positive_index: Sequence[int], *, ks: Sequence[int] = (1, 5, 20)) -> dict[str, float]:
    """Average rank (1 = best) of each question's positive among all candidates, and top-k accuracy.

    >>> import numpy as np
    >>> ranking_metrics(np.array([[3.0, 1.0], [3.0, 1.0]]), [0, 1], ks=(1,))
    {'avg_rank': 1.5, 'top1': 0.5}
    """
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive_index)
    pos_scores = scores[np.arange(len(pos)), pos]
    ranks = 1 + (scores > pos_scores[:, None]).sum(axis=1)
    out = {"avg_rank": float(ranks.mean())}
    out.update({f"top{k}": float((ranks <= k).mean()) for k in ks})
    return out


def evaluate_dev(spec: str, examples: Sequence[dict[str, Any]], *, lang: str = "en") -> dict[str, float]:
    """Rank every dev question's positive among all dev passages (positives and hard negatives),
    encoding through the exported ``hf:`` spec with its query format (``lang`` for records
    without one): what the embedding and retrieval jobs will compute."""
    encoder = load_encoder(spec, device="cpu")
    titles, texts, positive = [], [], []
    for ex in examples:
        positive.append(len(texts))
        for ctx in [ex["positive"], *ex["hard_negatives"]]:
            titles.append(ctx["title"])
            texts.append(ctx["text"])
    q = encoder.encode_queries([format_query(encoder.query_format, ex["question"], ex.get("lang") or lang)
                                for ex in examples])
    c = encoder.encode_passages(titles, texts)
    return ranking_metrics(q @ c.T, positive)
