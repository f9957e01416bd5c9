"""``ray-cora pivot train-encoder``: Montero et al.'s single-encoder baseline — a multilingual
sentence encoder fine-tuned for MIPS on the reranker's paraphrase pairs — on the shared Ray Train
loop (:mod:`ray_cora.train.loop`: resumable checkpoints, linear decay, DDP).

Training examples are the label-1 pairs of the mixture (:func:`ray_cora.train.reranker.read_training_pairs`:
``--pawsx-dir`` — cross-lingual PAWS-X pairs, English joined by ``id`` with each language — and/or
``--pawsx``, + ``--qqp``, as the paper mixes them; or ``--pairs``). Each step encodes both sides of a
batch of pairs with one transformer (the ``hf:`` spec's pooling) and minimises
:func:`symmetric_in_batch_loss`: each sentence's paraphrase among all the batch's other sides
(gathered from every worker, as mDPR's loss is), in both directions, since the pivot asks in
either language. The result is published as ``<out>/model`` — ``save_pretrained`` + tokenizer,
what ``hf:`` loads — so ``pivot build --encoder hf:<out>/model[?pooling=mean]`` uses it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import ray.data

from ray_cora import storage
from ray_cora.configs.pivot import PivotTrainEncoderConfig
from ray_cora.encoders.hf import (
    DEFAULT_MAX_LENGTH,
    Tower,
    load_pretrained,
    load_tokenizer,
    local_model_dir,
    pad_batch,
    parse_hf_spec,
    pool,
)
from ray_cora.errors import ConfigError
from ray_cora.models.mdpr import dpr_nll_loss, gather_keep_local_grad, world_size
from ray_cora.runtime import ray_session
from ray_cora.train.jobs import RUN_CONFIG, RUN_NAME, RUNTIME_OPTIONS, check_rerun
from ray_cora.train.loop import (
    LoopSettings,
    RunSettings,
    check_batching,
    fit,
    load_final_model,
    publish_model,
    read_progress,
    settings_dict,
)
from ray_cora.train.progress import format_duration
from ray_cora.train.reranker import languages_line, mixture_line, read_training_pairs
from ray_cora.train.tracking import log_settings

MODEL_KIND = "pivot-sentence-encoder"
JOB = "pivot train-encoder"


def symmetric_in_batch_loss(a: Any, b: Any) -> Any:
    """Mean of the two in-batch NLLs: each ``a[i]`` must pick ``b[i]`` among all ``b`` and each
    ``b[i]`` must pick ``a[i]`` among all ``a`` (inner products, as MIPS scores them).
    ``a``, ``b``: (n, dim).

    >>> import torch
    >>> v = torch.eye(3) * 9
    >>> float(symmetric_in_batch_loss(v, v)) < 1e-3, float(symmetric_in_batch_loss(v, v.flip(0))) > 1
    (True, True)
    """
    import torch

    targets = torch.arange(a.shape[0], device=a.device)
    return (dpr_nll_loss(a, b, targets) + dpr_nll_loss(b, a, targets)) / 2


def _encoder_module() -> Any:
    import torch

    class SentenceEncoder(torch.nn.Module):
        """One transformer, pooled: the vector MIPS compares."""

        def __init__(self, transformer: Any, pooling: str) -> None:
            super().__init__()
            self.transformer = transformer
            self.pooling = pooling

        def forward(self, features: dict[str, Any]) -> Any:
            hidden = self.transformer(**features).last_hidden_state  # (n, seq, hidden)
            return pool(hidden, features["attention_mask"], self.pooling)  # (n, hidden)

    return SentenceEncoder


@dataclass
class PairEncoderTask:
    """How the shared loop builds, feeds and exports the single encoder; picklable (only the spec
    and sizes travel). Sentences are tokenized by the :class:`~ray_cora.encoders.hf.Tower` the
    ``hf:`` encoder uses, so training sees what ``encode_queries`` will."""

    init: str
    max_length: int = 128
    _tower: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tower": None}

    @property
    def pooling(self) -> str:
        return parse_hf_spec(self.init).pooling

    def build(self) -> Any:
        """The start encoder from ``init`` (float32, CPU), as ``hf:`` loads it."""
        import torch

        spec = parse_hf_spec(self.init)
        with local_model_dir(spec.source) as path:
            tokenizer = load_tokenizer(path, source=spec.source)
            transformer = load_pretrained(path, source=spec.source)
        if getattr(transformer, "pooler", None) is not None:
            transformer.pooler = None  # unused by CLS/mean pooling; DDP wants every parameter used
        self._tower = Tower(transformer, tokenizer, pooling=spec.pooling, max_length=self.max_length,
                            device=torch.device("cpu"))
        return _encoder_module()(transformer, spec.pooling).train()

    def tower(self) -> Any:
        if self._tower is None:
            self.build()
        return self._tower

    def collate(self, examples: list[dict[str, Any]], *, epoch: int = 0) -> dict[str, Any]:
        """Both sides of each pair, tokenized and padded (no sampling: ``epoch`` is unused)."""
        tower = self.tower()
        pad = tower.tokenizer.pad_token_id
        return {side: pad_batch(tower.tokenize([ex[side] for ex in examples], [None] * len(examples)), pad)
                for side in ("a", "b")}

    def loss(self, model: Any, batch: dict[str, Any], device: Any) -> tuple[Any, Any]:
        """``(loss, what to back-propagate)``: the global-batch loss, and it × world size (each worker
        back-propagates through its own rows; DDP averages)."""
        a = model({k: v.to(device) for k, v in batch["a"].items()})
        b = model({k: v.to(device) for k, v in batch["b"].items()})
        loss = symmetric_in_batch_loss(gather_keep_local_grad(a.float()), gather_keep_local_grad(b.float()))
        return loss, loss * world_size()

    def dev_metrics(self, model: Any, examples: Sequence[dict[str, Any]], device: Any, *,
                    metric: str) -> dict[str, float]:
        raise ValueError("pivot train-encoder has no dev scoring")

    def export(self, model: Any, folder: str) -> None:
        """``save_pretrained`` + tokenizer: an ``hf:`` encoder folder."""
        import copy

        copy.deepcopy(model.transformer).cpu().float().save_pretrained(folder)
        self.tower().tokenizer.save_pretrained(folder)


def export_spec(model_uri: str, init: str, *, max_length: int) -> str:
    """The ``hf:`` spec of the published encoder: its folder with the start spec's pooling and the
    training length (when not the ``hf:`` default).

    >>> export_spec("/o/model", "hf:/base?pooling=mean", max_length=64)
    'hf:/o/model?pooling=mean&max_length=64'
    """
    spec = parse_hf_spec(init)
    options = [f"pooling={spec.pooling}"] if spec.pooling != "cls" else []
    if max_length != DEFAULT_MAX_LENGTH:
        options.append(f"max_length={max_length}")
    return f"hf:{model_uri}" + ("?" + "&".join(options) if options else "")


def train_pivot_encoder(config: PivotTrainEncoderConfig) -> dict[str, Any]:
    """Train the single encoder on the positive pairs and publish ``<out>/model``; returns its
    manifest (``encoder_spec``: what ``pivot build --encoder`` takes; ``pairs``: the mixture's counts)."""
    done = check_rerun(config, JOB)
    if done is not None:
        return {**done, "already_trained": True}
    started = time.monotonic()
    root = storage.resolve(config.out)
    pairs, counts, bad = read_training_pairs(config)
    if bad.count:
        storage.write_bytes(root.join("bad_records.jsonl"), bad.to_jsonl())
    positives = [{"a": p["a"], "b": p["b"]} for p in pairs if p["label"] == 1]
    print(f"{JOB}: {mixture_line(counts, bad.count)}; {len(positives)} paraphrase pairs (label 1) train the "
          "encoder", flush=True)
    if "pawsx_languages" in counts:
        print(f"{JOB}: {languages_line(counts['pawsx_languages'])}", flush=True)
    steps = check_batching(batch_size=config.batch_size, num_workers=config.num_workers, grad_accumulation=1,
                           examples=len(positives))
    task = PairEncoderTask(init=config.model, max_length=config.max_length)
    settings = LoopSettings(epochs=config.epochs, batch_size=config.batch_size, steps_per_epoch=steps, lr=config.lr,
                            warmup_steps=config.warmup_steps, max_grad_norm=config.max_grad_norm,
                            weight_decay=config.weight_decay, checkpoint_every=config.checkpoint_every,
                            seed=config.seed, use_gpu=config.use_gpu)
    run = RunSettings(num_workers=config.num_workers, use_gpu=config.use_gpu,
                      cpus_per_worker=config.cpus_per_worker, max_failures=config.max_failures)
    options = {k: v for k, v in config.to_dict().items() if k not in RUNTIME_OPTIONS}
    recorded = root.join(RUN_CONFIG)
    if not recorded.is_file():  # training starts now: a rerun must use the same options
        storage.write_bytes(recorded, json.dumps(options, indent=2, ensure_ascii=False).encode("utf-8"))
    log = log_settings(config, JOB, root.join(RUN_NAME).uri)
    dataset = ray.data.from_items([{"example": json.dumps(p, ensure_ascii=False)} for p in positives])
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        result = fit(task, settings, dataset, out=config.out, run=run, name=RUN_NAME, log=log,
                     log_params=options, tensorboard_dir=config.tensorboard_dir)
    if result.error is not None:
        raise result.error
    final = read_progress(result.checkpoint) if result.checkpoint is not None else None
    if final is None:
        raise ConfigError("training reported no checkpoint; see the Ray Train logs above")
    model, _ = load_final_model(task, result)
    model_uri = root.join("model").uri
    spec = export_spec(model_uri, config.model, max_length=config.max_length)
    manifest = publish_model(task, model, model_uri, kind=MODEL_KIND, config=config.to_dict(),
                             extra={"pairs": counts, "positives": len(positives), "skipped_records": bad.count,
                                    "steps": final["step"], "final": final, "encoder_spec": spec,
                                    "loop": settings_dict(settings)})
    print(f"{JOB}: finished: {final['step']}/{settings.total_steps} steps in "
          f"{format_duration(time.monotonic() - started)}, final loss {final.get('loss', float('nan')):.4f}; "
          f"model {model_uri} → pivot build --encoder {spec}", flush=True)
    return manifest
