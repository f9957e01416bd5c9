"""``ray-cora pivot train-reranker``: fine-tune a cross-encoder on labelled paraphrase pairs with
Ray Train (``TorchTrainer``; DDP over gloo on CPU, nccl on GPU).

Pairs come from JSONL or TSV files with ``sentence1``/``sentence2``/``label`` (PAWS-X) or
``question1``/``question2``/``is_duplicate`` (QQP). The paper's recipe is XLM-R large on 75%
PAWS-X + 25% QQP at lr 1e-5: ``--pairs pawsx.tsv,qqp.tsv --mix 0.75,0.25``. Each epoch every
worker reports a checkpoint (``save_pretrained`` folder) to ``<out>/ray-train/``; at the end the
last checkpoint is published as the artifact ``<out>/model/`` (manifest written last), which
``--reranker hf:<out>/model`` loads.
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
from ray_cora.data.records import BadRecords
from ray_cora.errors import ConfigError
from ray_cora.models.hf import load_hf_model
from ray_cora.pivot.rerank import RERANK_OPTIONS
from ray_cora.runtime import ray_session, worker_runtime_env
from ray_cora.train.progress import LogSettings, ProgressMeter, format_duration
from ray_cora.train.progress import say as print_line
from ray_cora.train.tracking import MLflowRun, log_settings, tracking_callbacks

FIRST_KEYS = ("sentence1", "question1", "query")
SECOND_KEYS = ("sentence2", "question2", "candidate")
LABEL_KEYS = ("label", "is_duplicate")
MODEL_KIND = "cross-encoder"


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


def load_reranker_for_training(spec: str) -> Any:
    """The cross-encoder to fine-tune (one-logit head), in float32 whatever dtype its folder was
    saved in (transformers 5 loads ``dtype="auto"``; training wants float32 master weights)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    return load_hf_model(spec, AutoModelForSequenceClassification, options=RERANK_OPTIONS,
                         what="sequence-classification model", to_device=False, num_labels=1,
                         dtype=torch.float32)


def steps_per_epoch(pairs: int, *, num_workers: int, batch_size: int) -> int:
    """Optimizer steps each worker takes per epoch: Ray Train splits the pairs evenly (the
    remainder is dropped) and the last batch may be short.

    >>> steps_per_epoch(100, num_workers=2, batch_size=16), steps_per_epoch(101, num_workers=2, batch_size=25)
    (4, 2)
    """
    return max(1, math.ceil((pairs // num_workers) / batch_size))


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: its shard of the pairs, BCE on the one-logit head. Rank 0
    prints progress lines (:mod:`ray_cora.train.progress`), the epoch ends and each checkpoint."""
    import torch

    torch.manual_seed(config["seed"])
    log: LogSettings = config["log"]
    loaded = load_reranker_for_training(config["model"])
    tokenizer = loaded.tokenizer
    model = ray.train.torch.prepare_model(loaded.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    loss_fn = torch.nn.BCEWithLogitsLoss()
    shard = ray.train.get_dataset_shard("train")
    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    per_epoch = config["steps_per_epoch"]
    meter = ProgressMeter(job=log.job, total_steps=per_epoch * config["epochs"], steps_per_epoch=per_epoch,
                          every_steps=log.every_steps, every_s=log.every_s)
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
            labels = torch.as_tensor(batch["label"], dtype=torch.float32, device=device)
            loss = loss_fn(model(**inputs).logits[:, 0], labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss)
            steps += 1
            step += 1
            meter.add(loss=float(loss), samples=len(labels) * world)
            if rank == 0 and meter.due(step):
                metrics = meter.window(step=step, epoch=epoch + 1, lr=config["lr"])
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
    """Run the Ray Train job and publish ``<out>/model``; returns its manifest."""

    sources = []
    bad = BadRecords(config.on_bad_record)
    for uri in config.pairs:
        sources.append(list(iter_pairs(uri, bad_records=bad)))
        if not sources[-1]:
            raise ConfigError(f"{uri}: no labelled pairs found")
    pairs = mix_pairs(sources, config.mix, total=config.max_pairs, seed=config.seed)
    out = storage.resolve(config.out)
    started = time.monotonic()
    log = log_settings(config, "pivot train-reranker", out.join("ray-train").uri)
    loop_config = {"model": config.model, "lr": config.lr, "epochs": config.epochs, "seed": config.seed,
                   "batch_size": config.batch_size, "max_length": config.max_length, "log": log,
                   "log_params": {k: v for k, v in config.to_dict().items() if k not in TRAIN_LOGGING_OPTIONS},
                   "steps_per_epoch": steps_per_epoch(len(pairs), num_workers=config.num_workers,
                                                      batch_size=config.batch_size)}
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        trainer = TorchTrainer(
            train_loop, train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                         resources_per_worker={"CPU": config.cpus_per_worker}),
            run_config=RunConfig(name="ray-train", storage_path=out.path, storage_filesystem=out.fs,
                                 callbacks=tracking_callbacks(config.tensorboard_dir),
                                 worker_runtime_env=worker_runtime_env()),
            datasets={"train": ray.data.from_items(pairs)})
        result = trainer.fit()
    if result.checkpoint is None:
        raise ConfigError("training reported no checkpoint (no pairs reached the workers?)")
    writer = storage.ArtifactWriter(out.join("model"), kind=MODEL_KIND, config=config.to_dict())
    with result.checkpoint.as_directory() as folder:
        for name in sorted(os.listdir(folder)):
            if os.path.isfile(os.path.join(folder, name)):
                with open(os.path.join(folder, name), "rb") as handle:
                    writer.write_bytes(name, handle.read())
    manifest = writer.commit({"metrics": result.metrics, "num_pairs": len(pairs), "skipped_records": bad.count})
    print(f"pivot train-reranker: finished: {len(pairs)} pairs, {config.epochs} epoch(s), "
          f"{result.metrics.get('step', '?')} steps in {format_duration(time.monotonic() - started)}, final loss "
          f"{result.metrics.get('loss', float('nan')):.4f}; checkpoint "
          f"{log.run_uri}/{os.path.basename(result.checkpoint.path.rstrip('/'))}; "
          f"model {out.join('model').uri} → --reranker hf:{out.join('model').uri}", flush=True)
    return manifest
