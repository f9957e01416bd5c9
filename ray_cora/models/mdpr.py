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
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ray_cora.encoders import load_encoder
from ray_cora.encoders.hf import Tower, clean_text, pad_batch, passage_inputs, pool
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


def ctx_slots(example: dict[str, Any], hard_negatives: int) -> tuple[list[dict[str, str]], list[bool]]:
    """A question's passages: its positive, then ``hard_negatives`` slots filled from
    ``hard_negatives`` then ``negatives``; missing slots are padding (mask False).

    >>> ex = {"positive": {"title": "A", "text": "a"}, "hard_negatives": [], "negatives": [{"title": "", "text": "n"}]}
    >>> ctx_slots(ex, 2)[1]
    [True, True, False]
    """
    pool = [*example.get("hard_negatives", []), *example.get("negatives", [])][:hard_negatives]
    slots = [example["positive"], *pool]
    mask = [True] * len(slots) + [False] * (hard_negatives + 1 - len(slots))
    slots += [{"title": "", "text": ""}] * (hard_negatives + 1 - len(slots))
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


@dataclass
class MDPRTask:
    """How to build, feed and export the bi-encoder; picklable (only settings travel)."""

    init: str
    shared_encoder: bool = False
    max_length: int = 256
    hard_negatives: int = 1
    segment_ids: str = "auto"  # auto | tokenizer | zeros
    _towers: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_towers": None}

    @property
    def zeros(self) -> bool:
        if self.segment_ids not in ("auto", "tokenizer", "zeros"):
            raise ConfigError(f"option 'segment_ids': {self.segment_ids!r} is not auto, tokenizer or zeros")
        return self.segment_ids == "zeros" or (self.segment_ids == "auto" and self.init.strip().startswith("dpr:"))

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

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Tokenize questions and their passage slots exactly as the ``hf:``/``dpr:`` encoder will."""
        import torch


        q_tower, c_tower = self.towers()
        questions = [clean_text(ex["question"]) for ex in examples]
        ctxs, mask = [], []
        for ex in examples:
            slots, slot_mask = ctx_slots(ex, self.hard_negatives)
            ctxs.extend(slots)
            mask.extend(slot_mask)
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
        positive = torch.arange(q_all.shape[0], device=device) * (self.hard_negatives + 1)
        loss = dpr_nll_loss(q_all, c_all, positive, mask)
        return loss, loss * world_size()

    def export(self, model: Any, folder: str) -> None:
        """``question_encoder/`` and ``ctx_encoder/`` (``save_pretrained`` + tokenizer): ``hf:<folder>``."""
        q_tower, c_tower = self.towers()
        for name, module, tower in (("question_encoder", model.question_model, q_tower),
                                    ("ctx_encoder", model.ctx_model, c_tower)):
            target = os.path.join(folder, name)
            module = copy.deepcopy(module).cpu().float()
            if self.zeros:
                _tie_token_types(module)
            module.save_pretrained(target)
            tower.tokenizer.save_pretrained(target)


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


def evaluate_dev(spec: str, examples: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Rank every dev question's positive among all dev passages (positives and hard negatives),
    encoding through the exported ``hf:`` spec: what the embedding job will compute."""
    encoder = load_encoder(spec, device="cpu")
    titles, texts, positive = [], [], []
    for ex in examples:
        positive.append(len(texts))
        for ctx in [ex["positive"], *ex["hard_negatives"]]:
            titles.append(ctx["title"])
            texts.append(ctx["text"])
    q = encoder.encode_queries([ex["question"] for ex in examples])
    c = encoder.encode_passages(titles, texts)
    return ranking_metrics(q @ c.T, positive)
