"""Driver side of ``train-mdpr`` / ``train-mgen``: scan the data, run Ray Train, publish the model.

Callable from Python with a config object (the iterative loop composes them)::

    train_mdpr(TrainMDPRConfig(train=["train.json"], out="s3://b/mdpr", init="hf:/models/mbert"))
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ray_cora import storage
from ray_cora.train import data
from ray_cora.train.loop import LoopSettings, RunSettings, check_batching, fit, load_final_model, publish_model, settings_dict

if TYPE_CHECKING:
    from ray_cora.train_mdpr_job import TrainMDPRConfig
    from ray_cora.train_mgen_job import TrainMGENConfig

RUN_NAME = "ray-train"


def _scan(config: Any, kind: str) -> tuple[int, int]:
    count, bad = data.scan(config.train, kind, config.on_bad_record)
    if bad.count:
        storage.write_bytes(storage.resolve(config.out).join("bad_records.jsonl"), bad.to_jsonl())
        print(f"skipped {bad.count} bad training record(s); listed in {config.out.rstrip('/')}/bad_records.jsonl")
    return count, bad.count


def _settings(config: Any, steps: int, *, grad_accumulation: int, hooks: dict[str, Any]) -> LoopSettings:
    return LoopSettings(epochs=config.epochs, batch_size=config.batch_size, steps_per_epoch=steps, lr=config.lr,
                        warmup_steps=config.warmup_steps, max_grad_norm=config.max_grad_norm,
                        weight_decay=config.weight_decay, adam_eps=config.adam_eps,
                        grad_accumulation=grad_accumulation, checkpoint_every=config.checkpoint_every,
                        seed=config.seed, use_gpu=config.use_gpu,
                        kill_worker_at_step=hooks.get("kill_worker_at_step"), kill_marker=hooks.get("kill_marker"))


def _run(config: Any, task: Any, kind: str, *, grad_accumulation: int, model_kind: str,
         hooks: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    from ray_cora.runtime import ray_session

    count, skipped = _scan(config, kind)
    steps = check_batching(batch_size=config.batch_size, num_workers=config.num_workers,
                           grad_accumulation=grad_accumulation, examples=count)
    settings = _settings(config, steps, grad_accumulation=grad_accumulation, hooks=hooks)
    run = RunSettings(num_workers=config.num_workers, use_gpu=config.use_gpu,
                      cpus_per_worker=config.cpus_per_worker, max_failures=config.max_failures)
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        result = fit(task, settings, data.training_dataset(config.train, kind), out=config.out, run=run,
                     name=RUN_NAME)
    if result.error is not None:
        raise result.error
    model, progress = load_final_model(task, result)
    model_uri = storage.resolve(config.out).join("model").uri
    extra = {"examples": count, "skipped_records": skipped, "steps": progress["step"], "final": progress,
             "loop": settings_dict(settings)}
    manifest = publish_model(task, model, model_uri, kind=model_kind, config=config.to_dict(), extra=extra)
    return manifest, model, model_uri


def train_mdpr(config: "TrainMDPRConfig", **hooks: Any) -> dict[str, Any]:
    """Train, publish ``<out>/model`` (``hf:`` bi-encoder folder); returns its manifest."""
    from ray_cora.train.mdpr import MODEL_KIND, MDPRTask, evaluate_dev, export_spec

    task = MDPRTask(init=config.init, shared_encoder=config.shared_encoder, max_length=config.max_length,
                    hard_negatives=config.hard_negatives, segment_ids=config.segment_ids)
    manifest, _, model_uri = _run(config, task, "dpr", grad_accumulation=1, model_kind=MODEL_KIND, hooks=hooks)
    spec = export_spec(model_uri, task)
    summary = {"encoder_spec": spec, "steps": manifest["steps"], "loss": manifest["final"]["loss"]}
    if config.dev:
        dev = list(data.iter_examples(config.dev, "dpr", data.BadRecords(config.on_bad_record)))
        summary["dev"] = evaluate_dev(spec, dev)
    storage.write_bytes(storage.resolve(config.out).join("summary.json"),
                        json.dumps(summary, indent=2).encode("utf-8"))
    print(f"train-mdpr: {manifest['examples']} examples, {manifest['steps']} steps, final loss "
          f"{summary['loss']:.4f}{'; dev ' + json.dumps(summary['dev']) if 'dev' in summary else ''} "
          f"→ --encoder {spec}")
    return {**manifest, "summary": summary}


def train_mgen(config: "TrainMGENConfig", **hooks: Any) -> dict[str, Any]:
    """Train, publish ``<out>/model`` (a seq2seq folder ``Generator.load`` reads); returns its manifest."""
    from ray_cora.train.mgen import MODEL_KIND, MGENTask

    task = MGENTask(init=config.init, tokenizer=config.tokenizer, top_k=config.top_k,
                    max_source_length=config.max_source_length, max_target_length=config.max_target_length,
                    label_smoothing=config.label_smoothing, dropout=config.dropout)
    manifest, _, model_uri = _run(config, task, "retrieval", grad_accumulation=config.grad_accumulation,
                                  model_kind=MODEL_KIND, hooks=hooks)
    print(f"train-mgen: {manifest['examples']} examples, {manifest['steps']} steps, final loss "
          f"{manifest['final']['loss']:.4f} → --model {model_uri}")
    return manifest
