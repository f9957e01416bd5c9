"""``ray-cora pivot train-reranker``: fine-tune a cross-encoder on labelled paraphrase pairs with
Ray Train (``TorchTrainer``; DDP over gloo on CPU, nccl on GPU).

The defaults are Montero et al.'s recipe (docs/pivot.md says what was checked): ``--pawsx-dir``
(PAWS-X's ``x-final`` folder: the English file joined by ``id`` with each other language's,
cross-lingual pairs in both directions, :func:`ray_cora.data.pairs.cross_lingual_pawsx`; every
pair) and/or same-language ``--pawsx`` files, and ``--qqp`` files (drawn to make 25% of the
mixture, :func:`ray_cora.data.pairs.paper_mixture`),
3 epochs, lr 1e-5 decaying linearly to 0 at the last step, a two-label head trained with softmax
cross-entropy (``--loss softmax2``; ``--loss bce``: one logit, binary cross-entropy). Other pair
files (JSONL or TSV with ``sentence1``/``sentence2``/``label`` or ``question1``/``question2``/
``is_duplicate``) come in through ``--pairs`` with ``--mix`` weights. Each epoch every worker
reports a checkpoint (``save_pretrained`` folder) to ``<out>/ray-train/``; at the end the last
checkpoint is published as the artifact ``<out>/model/`` (manifest written last, with the mixture's
counts), which ``--reranker hf:<out>/model`` loads.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from typing import Any, Iterator, Sequence

import ray
import ray.train
import ray.train.torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ray_cora import storage
from ray_cora.configs.pivot import PivotTrainRerankerConfig
from ray_cora.configs.train import TRAIN_LOGGING_OPTIONS
from ray_cora.data.pairs import (
    PAWSX_LANGS,
    PAWSX_SPLITS,
    cross_lingual_pawsx,
    iter_pawsx,
    iter_qqp,
    paper_mixture,
    pawsx_files,
)
from ray_cora.data.records import BadRecords
from ray_cora.errors import ConfigError
from ray_cora.encoders.hf import parse_spec
from ray_cora.models.hf import load_hf_model
from ray_cora.pivot.rerank import RERANK_OPTIONS
from ray_cora.runtime import ray_session, worker_runtime_env
from ray_cora.train.loop import build_scheduler
from ray_cora.train.progress import LogSettings, ProgressMeter, format_duration
from ray_cora.train.progress import say as print_line
from ray_cora.train.tracking import MLflowRun, log_settings, tracking_callbacks

FIRST_KEYS = ("sentence1", "question1", "query")
SECOND_KEYS = ("sentence2", "question2", "candidate")
LABEL_KEYS = ("label", "is_duplicate")
MODEL_KIND = "cross-encoder"
# Outputs of the classification head each loss trains.
LOSS_HEADS = {"softmax2": 2, "bce": 1}


def iter_pairs(uri: str, *, bad_records: BadRecords | None = None) -> Iterator[dict[str, Any]]:
    """``{"a", "b", "label"}`` (label 0/1) from a JSONL or headed TSV pair file."""
    bad = bad_records if bad_records is not None else BadRecords("error")
    tsv = uri.removesuffix(".gz").endswith((".tsv", ".txt"))
    header: list[str] | None = None
    with storage.open_input(uri) as stream:
        for number, raw in enumerate(storage.iter_lines(stream), start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8").rstrip("\r")
                if tsv and header is None:
                    header = [h.strip().lower() for h in text.lstrip("\ufeff").split("\t")]
                    _pick(dict.fromkeys(header, ""), FIRST_KEYS, "header")
                    continue
                obj = dict(zip(header, text.split("\t"))) if tsv else json.loads(text)
                if not isinstance(obj, dict):
                    raise ValueError("expected a JSON object")
                a, b = _pick(obj, FIRST_KEYS, "first text"), _pick(obj, SECOND_KEYS, "second text")
                label = int(float(_pick(obj, LABEL_KEYS, "label")))
                if label not in (0, 1) or not str(a).strip() or not str(b).strip():
                    raise ValueError("texts must be non-empty and the label 0 or 1")
                yield {"a": str(a), "b": str(b), "label": label}
            except (UnicodeDecodeError, ValueError) as exc:
                bad.report(uri, number, str(exc), raw=raw)


def _pick(obj: dict[str, Any], keys: Sequence[str], what: str) -> Any:
    for key in keys:
        if key in obj:
            return obj[key]
    raise ValueError(f"no {what} column: expected one of {', '.join(keys)}")


def mix_pairs(sources: Sequence[list[dict[str, Any]]], weights: Sequence[float] | None, *,
              total: int | None, seed: int) -> list[dict[str, Any]]:
    """Every pair once (no weights), or ``total`` pairs drawn with the given share per source.

    >>> len(mix_pairs([[{"i": i} for i in range(10)], [{"j": 1}] * 10], [0.75, 0.25], total=8, seed=0))
    8
    """
    rng = random.Random(seed)
    if weights is None:
        pairs = [p for source in sources for p in source]
        rng.shuffle(pairs)
        return pairs[:total] if total else pairs
    if len(weights) != len(sources) or any(w < 0 for w in weights) or not sum(weights):
        raise ConfigError(f"--mix needs one non-negative weight per pairs file ({len(sources)}), got {list(weights)}")
    total = total or sum(len(s) for s in sources)
    shares = [w / sum(weights) for w in weights]
    pairs = []
    for source, share in zip(sources, shares):
        want = round(total * share)
        if want and not source:
            raise ConfigError("a pairs file with a non-zero --mix weight has no pairs")
        pairs.extend(rng.choice(source) for _ in range(want)) if want > len(source) else \
            pairs.extend(rng.sample(source, want))
    rng.shuffle(pairs)
    return pairs


def load_reranker_for_training(spec: str, *, num_labels: int = 1) -> Any:
    """The cross-encoder to fine-tune with a ``num_labels``-output head (a start model whose head
    has another size gets a new one: :func:`head_note` says so), in float32 whatever dtype its
    folder was saved in (transformers 5 loads ``dtype="auto"``; training wants float32 master weights)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    return load_hf_model(spec, AutoModelForSequenceClassification, options=RERANK_OPTIONS,
                         what="sequence-classification model", to_device=False, num_labels=num_labels,
                         ignore_mismatched_sizes=True, dtype=torch.float32)


def saved_head_size(spec: str) -> int | None:
    """``num_labels`` of a sequence-classification folder (its ``config.json``), else None (a plain
    encoder, or a model name in the Hugging Face cache)."""
    source, _ = parse_spec(spec, "hf", RERANK_OPTIONS)
    if "://" not in source and not os.path.isdir(os.path.expanduser(source)):
        return None
    loc = storage.resolve(os.path.expanduser(source)).join("config.json")
    if not loc.is_file():
        return None
    config = json.loads(storage.read_bytes(loc))
    if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return None
    return int(config.get("num_labels") or len(config.get("id2label") or {}) or 2)


def head_note(saved: int | None, loss: str) -> str | None:
    """The line that says a start model's head is replaced for ``loss``, or None.

    >>> head_note(1, "softmax2")
    'the start model has a 1-output head; --loss softmax2 trains a new 2-output head (use --loss bce to keep it)'
    >>> head_note(2, "softmax2") is None and head_note(None, "bce") is None
    True
    """
    want = LOSS_HEADS[loss]
    if saved is None or saved == want:
        return None
    other = next((name for name, size in LOSS_HEADS.items() if size == saved), None)
    keep = f" (use --loss {other} to keep it)" if other else ""
    return f"the start model has a {saved}-output head; --loss {loss} trains a new {want}-output head{keep}"


def pair_loss(logits: Any, labels: Any, loss: str) -> Any:
    """The training loss of a batch of pair logits: ``bce`` on ``(n, 1)`` logits (sigmoid = the
    paraphrase probability), ``softmax2`` cross-entropy on ``(n, 2)`` (softmax of label 1 = the
    paraphrase probability); either way what :func:`ray_cora.pivot.rerank.pair_probability` reads.

    >>> import torch
    >>> round(float(pair_loss(torch.zeros(2, 2), torch.tensor([0, 1]), "softmax2")), 4)
    0.6931
    """
    import torch.nn.functional as F

    if loss not in LOSS_HEADS:
        raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSS_HEADS)}")
    if logits.shape[-1] != LOSS_HEADS[loss]:
        raise ValueError(f"--loss {loss} needs {LOSS_HEADS[loss]} logits per pair, the model gives {logits.shape[-1]}")
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())


def read_training_pairs(config: Any) -> tuple[list[dict[str, Any]], dict[str, Any], BadRecords]:
    """The pairs a pivot training config names (``PairInputs``): the paper's mixture of its PAWS-X
    pairs — cross-lingual from ``pawsx_dir`` (:func:`~ray_cora.data.pairs.cross_lingual_pawsx`), plus
    any same-language ``pawsx`` files — and its ``qqp`` files, or its ``pairs`` files mixed by ``mix``;
    with the counts (``pawsx_languages``: per language, with ``pawsx_dir``) and the bad records skipped."""
    bad = BadRecords(config.on_bad_record)
    if config.pairs:
        sources = []
        for uri in config.pairs:
            sources.append(list(iter_pairs(uri, bad_records=bad)))
            if not sources[-1]:
                raise ConfigError(f"{uri}: no labelled pairs found")
        pairs = mix_pairs(sources, config.mix, total=config.max_pairs, seed=config.seed)
        return pairs, {"read": sum(len(s) for s in sources), "total": len(pairs)}, bad
    pawsx, per_language = [], None
    if config.pawsx_dir:
        split = config.pawsx_split or "train"
        english, others = pawsx_files(config.pawsx_dir, config.pawsx_langs or PAWSX_LANGS, split=split)
        for uri in [english, *(uri for _, uri in others)]:
            if not storage.resolve(uri).is_file():
                shipped = " and ".join(dict.fromkeys(PAWSX_SPLITS[split]))
                raise ConfigError(f"{uri}: no such file (--pawsx-dir, --pawsx-split {split}: PAWS-X "
                                  f"ships {shipped} in x-final/<lang>/)")
        pawsx, per_language = cross_lingual_pawsx(english, others, bad_records=bad)
    pawsx += [p for uri in config.pawsx for p in iter_pawsx(uri, bad_records=bad)]
    qqp = [p for uri in config.qqp for p in iter_qqp(uri, bad_records=bad)]
    if not pawsx and not qqp:
        given = [*([config.pawsx_dir] if config.pawsx_dir else []), *config.pawsx, *config.qqp]
        raise ConfigError(f"no labelled pairs in {', '.join(given)}")
    pairs, counts = paper_mixture(pawsx, qqp, pawsx_share=config.pawsx_share, seed=config.seed)
    if per_language is not None:
        counts["pawsx_languages"] = per_language
    return pairs, counts, bad


def languages_line(per_language: dict[str, dict[str, int]]) -> str:
    """What the job says about the cross-lingual PAWS-X pairs, per language.

    >>> languages_line({"de": {"ids": 40, "pairs": 80, "missing": 2, "not_in_english": 0, "label_conflicts": 1}})
    'PAWS-X en-xx/xx-en: de 80 (40 ids; 2 English ids not in de, 0 not in English, 1 label conflict)'
    """
    parts = [f"{lang} {c['pairs']} ({c['ids']} ids; {c['missing']} English ids not in {lang}, {c['not_in_english']} "
             f"not in English, {c['label_conflicts']} label conflict{'s' * (c['label_conflicts'] != 1)})"
             for lang, c in per_language.items()]
    return "PAWS-X en-xx/xx-en: " + "; ".join(parts)


def mixture_line(counts: dict[str, int], skipped: int) -> str:
    """What the job says about its training pairs.

    >>> mixture_line({"pawsx_read": 6, "qqp_read": 10, "pawsx_used": 6, "qqp_used": 2, "total": 8}, 0)
    'pairs: 8 = 6 PAWS-X (all read, 75.0%) + 2 QQP (of 10 read, 25.0%)'
    """
    if "pawsx_used" not in counts:
        line = f"pairs: {counts['total']} drawn from {counts['read']} read"
    else:
        total = max(counts["total"], 1)
        line = (f"pairs: {counts['total']} = {counts['pawsx_used']} PAWS-X (all read, "
                f"{100 * counts['pawsx_used'] / total:.1f}%) + {counts['qqp_used']} QQP (of {counts['qqp_read']} read, "
                f"{100 * counts['qqp_used'] / total:.1f}%)")
    return line + (f"; {skipped} bad line(s) skipped" if skipped else "")


def steps_per_epoch(pairs: int, *, num_workers: int, batch_size: int) -> int:
    """Optimizer steps each worker takes per epoch: Ray Train splits the pairs evenly (the
    remainder is dropped) and the last batch may be short.

    >>> steps_per_epoch(100, num_workers=2, batch_size=16), steps_per_epoch(101, num_workers=2, batch_size=25)
    (4, 2)
    """
    return max(1, math.ceil((pairs // num_workers) / batch_size))


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: its shard of the pairs, :func:`pair_loss` (``config["loss"]``)
    on the matching head, the learning rate decaying linearly (``lr_schedule="linear"``, after
    ``warmup_steps``) over the whole run. Rank 0 prints progress lines
    (:mod:`ray_cora.train.progress`), the epoch ends and each checkpoint."""
    import torch

    torch.manual_seed(config["seed"])
    log: LogSettings = config["log"]
    loaded = load_reranker_for_training(config["model"], num_labels=LOSS_HEADS[config["loss"]])
    tokenizer = loaded.tokenizer
    model = ray.train.torch.prepare_model(loaded.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    shard = ray.train.get_dataset_shard("train")
    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    per_epoch = config["steps_per_epoch"]
    meter = ProgressMeter(job=log.job, total_steps=per_epoch * config["epochs"], steps_per_epoch=per_epoch,
                          every_steps=log.every_steps, every_s=log.every_s)
    scheduler = (build_scheduler(optimizer, warmup_steps=config["warmup_steps"], total_steps=meter.total_steps)
                 if config["lr_schedule"] == "linear" else None)
    mlflow_run = MLflowRun(log, config.get("log_params") or {})
    step = 0

    def say(line: str) -> None:
        if rank == 0:
            print_line(line)

    say(f"{log.job}: training about {meter.total_steps} steps ({config['epochs']} epoch(s) of {per_epoch}, "
        f"{config['batch_size']} pairs per step per worker, {world} worker(s)); checkpoints in {log.run_uri}")
    for epoch in range(config["epochs"]):
        model.train()
        total, steps = 0.0, 0
        for batch in shard.iter_batches(batch_size=config["batch_size"], batch_format="numpy",
                                        local_shuffle_buffer_size=1024, local_shuffle_seed=config["seed"] + epoch):
            inputs = tokenizer(batch["a"].tolist(), batch["b"].tolist(), padding=True, truncation=True,
                               max_length=config["max_length"], return_tensors="pt").to(device)
            # Ray Data hands read-only arrays; a copy keeps torch from warning about (and aliasing) them.
            labels = torch.tensor(batch["label"], dtype=torch.long, device=device)
            loss = pair_loss(model(**inputs).logits, labels, config["loss"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_value = loss.item()
            total += loss_value
            steps += 1
            step += 1
            meter.add(loss=loss_value, samples=len(labels) * world)
            if rank == 0 and meter.due(step):
                metrics = meter.window(step=step, epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"])
                say(meter.line(metrics))
                mlflow_run.log(metrics, step=step)
        say(meter.epoch_line(epoch=epoch + 1, step=step))
        metrics = {"epoch": epoch + 1, "loss": total / max(steps, 1), "steps": steps, "step": step}
        name = f"epoch-{epoch + 1:04d}"
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                unwrapped = getattr(model, "module", model)
                unwrapped.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        say(f"{log.job}: checkpoint {log.run_uri}/{name} reported (epoch {epoch + 1}, step {step})")
        meter.pause_end()
    say(f"{log.job}: training done at step {step}, {format_duration(meter.clock() - meter.started)}")
    mlflow_run.close()


def train_reranker(config: PivotTrainRerankerConfig) -> dict[str, Any]:
    """Run the Ray Train job and publish ``<out>/model``; returns its manifest (with the mixture's
    counts under ``pairs``)."""

    pairs, counts, bad = read_training_pairs(config)
    out = storage.resolve(config.out)
    if bad.count:
        storage.write_bytes(out.join("bad_records.jsonl"), bad.to_jsonl())
    print(f"pivot train-reranker: {mixture_line(counts, bad.count)}", flush=True)
    if "pawsx_languages" in counts:
        print(f"pivot train-reranker: {languages_line(counts['pawsx_languages'])}", flush=True)
    note = head_note(saved_head_size(config.model), config.loss)
    if note:
        print(f"pivot train-reranker: {note}", flush=True)
    started = time.monotonic()
    log = log_settings(config, "pivot train-reranker", out.join("ray-train").uri)
    loop_config = {"model": config.model, "lr": config.lr, "epochs": config.epochs, "seed": config.seed,
                   "batch_size": config.batch_size, "max_length": config.max_length, "log": log,
                   "loss": config.loss, "lr_schedule": config.lr_schedule, "warmup_steps": config.warmup_steps,
                   "log_params": {k: v for k, v in config.to_dict().items() if k not in TRAIN_LOGGING_OPTIONS},
                   "steps_per_epoch": steps_per_epoch(len(pairs), num_workers=config.num_workers,
                                                      batch_size=config.batch_size)}
    rows = [{"a": p["a"], "b": p["b"], "label": p["label"]} for p in pairs]
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        trainer = TorchTrainer(
            train_loop, train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                         resources_per_worker={"CPU": config.cpus_per_worker}),
            run_config=RunConfig(name="ray-train", storage_path=out.path, storage_filesystem=out.fs,
                                 callbacks=tracking_callbacks(config.tensorboard_dir),
                                 worker_runtime_env=worker_runtime_env()),
            datasets={"train": ray.data.from_items(rows)})
        result = trainer.fit()
    if result.checkpoint is None:
        raise ConfigError("training reported no checkpoint (no pairs reached the workers?)")
    writer = storage.ArtifactWriter(out.join("model"), kind=MODEL_KIND, config=config.to_dict())
    with result.checkpoint.as_directory() as folder:
        for name in sorted(os.listdir(folder)):
            if os.path.isfile(os.path.join(folder, name)):
                with open(os.path.join(folder, name), "rb") as handle:
                    writer.write_bytes(name, handle.read())
    manifest = writer.commit({"metrics": result.metrics, "num_pairs": len(pairs), "pairs": counts,
                              "loss": config.loss, "skipped_records": bad.count})
    print(f"pivot train-reranker: finished: {len(pairs)} pairs, {config.epochs} epoch(s), "
          f"{result.metrics.get('step', '?')} steps in {format_duration(time.monotonic() - started)}, final loss "
          f"{result.metrics.get('loss', float('nan')):.4f}; checkpoint "
          f"{log.run_uri}/{os.path.basename(result.checkpoint.path.rstrip('/'))}; "
          f"model {out.join('model').uri} → --reranker hf:{out.join('model').uri}", flush=True)
    return manifest
