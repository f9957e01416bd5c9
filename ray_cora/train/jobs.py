"""Driver side of ``train-mdpr`` / ``train-mgen``: scan the data, run Ray Train, publish the model.

Callable from Python with a config object (the iterative loop composes them)::

    train_mdpr(TrainMDPRConfig(train=["train.json"], out="s3://b/mdpr", init="hf:/models/mbert"))

Re-running with the same ``out``:

- a run that stopped part-way (driver crash, Ctrl-C, out of failures) resumes from the latest
  checkpoint in ``<out>/ray-train/`` (Ray Train's run snapshot): the step count continues and the
  total number of steps is that of an uninterrupted run;
- a finished run (``<out>/model/manifest.json`` present) is not trained again: the job prints
  ``already trained`` and returns the published manifest (``already_trained: True`` in the
  returned dict). Delete ``<out>`` or pick a new ``out`` to train from scratch;
- either way the training settings must be those of the first run (recorded in
  ``<out>/run_config.json``; runtime options such as ``num_workers`` may change): otherwise a
  :class:`ConfigError` names the differing options.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ray_cora import storage
from ray_cora.configs.base import TrainRunConfig
from ray_cora.configs.train import TRAIN_LOGGING_OPTIONS, TrainMDPRConfig, TrainMGENConfig
from ray_cora.data.records import BadRecords
from ray_cora.data.training import iter_examples, scan
from ray_cora.errors import ConfigError, StorageError
from ray_cora.models.mdpr import MODEL_KIND as MDPR_MODEL_KIND
from ray_cora.models.mdpr import MDPRTask, evaluate_dev, export_spec
from ray_cora.models.mgen import MODEL_KIND as MGEN_MODEL_KIND
from ray_cora.models.mgen import MGENTask
from ray_cora.runtime import ray_session
from ray_cora.train.data import training_dataset
from ray_cora.train.loop import (
    LoopSettings,
    RunSettings,
    check_batching,
    fit,
    kept_checkpoint,
    load_checkpoint_model,
    publish_model,
    read_progress,
    settings_dict,
)
from ray_cora.train.progress import format_duration
from ray_cora.train.selection import SelectionRule
from ray_cora.train.tracking import log_settings

RUN_NAME = "ray-train"
RUN_CONFIG = "run_config.json"
# Options that may change between a run and its resumption: where and how wide it runs, where it
# writes (out). Not dev: it decides which checkpoint is kept and published.
# Nor how the run reports its progress (log_every_*, MLflow, TensorBoard).
RUNTIME_OPTIONS = frozenset({"ray_address", "num_cpus", "num_workers", "use_gpu", "cpus_per_worker",
                             "max_failures", "out", *TRAIN_LOGGING_OPTIONS})


def _training_options(config: TrainRunConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in RUNTIME_OPTIONS}


def check_rerun(config: TrainRunConfig, job: str) -> dict[str, Any] | None:
    """Before training into ``config.out``: refuse training options that differ from those
    recorded by an earlier run there (:class:`ConfigError` naming them), and return the published
    manifest when the model is already there (the run finished: nothing to train)."""
    root = storage.resolve(config.out)
    options = _training_options(config)
    recorded_loc = root.join(RUN_CONFIG)
    if recorded_loc.is_file():
        try:
            recorded = json.loads(storage.read_bytes(recorded_loc))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{recorded_loc.uri}: not valid JSON ({exc}); delete it to accept the current "
                              "options, or use a new --out") from exc
        changed = sorted(k for k in set(recorded) | set(options) if recorded.get(k) != options.get(k))
        if changed:
            detail = "; ".join(f"{k}: {recorded.get(k)!r} → {options.get(k)!r}" for k in changed)
            raise ConfigError(f"{config.out} holds a {job} run with other training options ({detail}); "
                              "re-run with the recorded options to resume or reuse it, or use a new --out "
                              f"(or delete {config.out}) to train from scratch")
    try:
        manifest = storage.Artifact(root.join("model")).manifest
    except StorageError:
        return None  # not published yet: train (or resume)
    print(f"{job}: already trained: {root.join('model').uri} ({manifest.get('steps')} steps) is published; "
          f"nothing to do. Delete {config.out} or use a new --out to train again.")
    return manifest


def _scan(config: TrainMDPRConfig | TrainMGENConfig, kind: str) -> tuple[int, int]:
    count, bad = scan(config.train, kind, config.on_bad_record)
    if bad.count:
        storage.write_bytes(storage.resolve(config.out).join("bad_records.jsonl"), bad.to_jsonl())
        print(f"skipped {bad.count} bad training record(s); listed in {config.out.rstrip('/')}/bad_records.jsonl")
    return count, bad.count


def _settings(config: TrainMDPRConfig | TrainMGENConfig, steps: int, *, grad_accumulation: int) -> LoopSettings:
    return LoopSettings(epochs=config.epochs, batch_size=config.batch_size, steps_per_epoch=steps, lr=config.lr,
                        warmup_steps=config.warmup_steps, max_grad_norm=config.max_grad_norm,
                        weight_decay=config.weight_decay, adam_eps=config.adam_eps,
                        grad_accumulation=grad_accumulation, checkpoint_every=config.checkpoint_every,
                        seed=config.seed, use_gpu=config.use_gpu)


def mdpr_selection(config: TrainMDPRConfig) -> SelectionRule:
    """CORA's mDPR rule (``train_dense_encoder.py`` ``validate_and_save``): dev NLL for
    ``val_av_rank_start_epoch`` epochs, then the average rank, lower is better."""
    return SelectionRule("nll", "min", switch_metric="avg_rank", switch_epoch=config.val_av_rank_start_epoch)


# CORA's mGEN rule (mGEN/callbacks_rag.py get_checkpoint_callback: monitor="val_em", mode="max").
MGEN_SELECTION = SelectionRule("em", "max")


def _read_dev(config: TrainMDPRConfig | TrainMGENConfig, kind: str) -> list[dict[str, Any]]:
    """The dev examples, read on the driver (they are small and travel to rank 0 with the config)."""
    if not config.dev:
        return []
    dev = list(iter_examples(config.dev, kind, BadRecords(config.on_bad_record)))
    if not dev:
        raise ConfigError(f"option 'dev': {', '.join(config.dev)} holds no valid {kind} record; fix the files "
                          "or leave --dev out")
    return dev


def _run(config: TrainMDPRConfig | TrainMGENConfig, task: Any, kind: str, *, grad_accumulation: int,
         model_kind: str, selection: SelectionRule | None, job: str) -> tuple[dict[str, Any], Any, Any]:
    started = time.monotonic()
    log = log_settings(config, job, storage.resolve(config.out).join(RUN_NAME).uri)
    count, skipped = _scan(config, kind)
    steps = check_batching(batch_size=config.batch_size, num_workers=config.num_workers,
                           grad_accumulation=grad_accumulation, examples=count)
    dev = _read_dev(config, kind)
    settings = _settings(config, steps, grad_accumulation=grad_accumulation)
    run = RunSettings(num_workers=config.num_workers, use_gpu=config.use_gpu,
                      cpus_per_worker=config.cpus_per_worker, max_failures=config.max_failures)
    recorded_loc = storage.resolve(config.out).join(RUN_CONFIG)
    if not recorded_loc.is_file():  # training starts now: a re-run must use the same options
        storage.write_bytes(recorded_loc, json.dumps(_training_options(config), indent=2,
                                                     ensure_ascii=False).encode("utf-8"))
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        result = fit(task, settings, training_dataset(config.train, kind), out=config.out, run=run,
                     name=RUN_NAME, dev=dev, selection=selection if dev else None, log=log,
                     log_params=_training_options(config), tensorboard_dir=config.tensorboard_dir)
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise ConfigError("training reported no checkpoint; see the Ray Train logs above")
    final = read_progress(result.checkpoint)
    selected = final.get("selection") or {}
    kept = selected.get("kept")
    model, kept_progress = load_checkpoint_model(task, kept_checkpoint(result) if dev else result.checkpoint)
    if kept is not None and kept_progress["step"] != kept["step"]:
        raise ConfigError(f"the best dev checkpoint (step {kept['step']}) is gone from {config.out}/{RUN_NAME} "
                          f"(Ray Train kept step {kept_progress['step']}); train into a new --out")
    model_uri = storage.resolve(config.out).join("model").uri
    extra = {"examples": count, "skipped_records": skipped, "steps": final["step"], "final": final_summary(final),
             "kept": kept, "dev_history": selected.get("history", []), "loop": settings_dict(settings)}
    manifest = publish_model(task, model, model_uri, kind=model_kind, config=config.to_dict(), extra=extra)
    print(summary_line(job, steps=final["step"], total_steps=settings.total_steps,
                       seconds=time.monotonic() - started, kept=kept,
                       checkpoint=f"{log.run_uri}/step-{kept_progress['step']:08d}", model_uri=model_uri), flush=True)
    return manifest, model, model_uri


def summary_line(job: str, *, steps: int, total_steps: int, seconds: float, kept: dict[str, Any] | None,
                 checkpoint: str, model_uri: str) -> str:
    """The run's last line: steps, time, the kept epoch and where the checkpoint and model are.

    >>> print(summary_line("train-mgen", steps=12, total_steps=12, seconds=75, checkpoint="o/ray-train/step-00000008",
    ...                    kept={"epoch": 2, "step": 8, "metric": "em", "value": 0.5}, model_uri="o/model"))
    train-mgen: finished: 12/12 steps in 0:01:15; best epoch 2 (dev em 0.5000, step 8); checkpoint o/ray-train/step-00000008; model o/model
    """
    best = (f"best epoch {kept['epoch']} (dev {kept['metric']} {kept['value']:.4f}, step {kept['step']})"
            if kept else "no dev set: the last step's model")
    return (f"{job}: finished: {steps}/{total_steps} steps in {format_duration(seconds)}; {best}; "
            f"checkpoint {checkpoint}; model {model_uri}")


def final_summary(progress: dict[str, Any]) -> dict[str, Any]:
    """The last checkpoint's progress without the dev history (recorded once, as ``dev_history``)."""
    return {k: v for k, v in progress.items() if k != "selection"}


def kept_line(kept: dict[str, Any] | None) -> str:
    """``"; kept epoch 2 (dev nll 0.4123)"`` for a run with dev data, else ``""``.

    >>> kept_line({"epoch": 2, "step": 8, "metric": "em", "value": 0.5})
    '; kept epoch 2 (dev em 0.5000)'
    """
    return f"; kept epoch {kept['epoch']} (dev {kept['metric']} {kept['value']:.4f})" if kept else ""


def mdpr_task(config: TrainMDPRConfig) -> MDPRTask:
    return MDPRTask(init=config.init, shared_encoder=config.shared_encoder, max_length=config.max_length,
                    hard_negatives=config.hard_negatives, other_negatives=config.other_negatives,
                    shuffle_negatives=config.shuffle_negatives, shuffle_positives=config.shuffle_positives,
                    seed=config.seed, segment_ids=config.segment_ids, query_format=config.query_format,
                    lang=config.lang, dev_batch_size=config.dev_batch_size,
                    val_av_rank_hard_neg=config.val_av_rank_hard_neg,
                    val_av_rank_other_neg=config.val_av_rank_other_neg)


def train_mdpr(config: TrainMDPRConfig) -> dict[str, Any]:
    """Train, publish ``<out>/model`` (``hf:`` bi-encoder folder: the best dev epoch's with ``dev``,
    else the last); returns its manifest with ``summary`` (``encoder_spec``, ``steps``, ``loss``,
    ``kept``, ``dev_history``, and ``dev``: the published model's ranking of the dev set)."""
    task = mdpr_task(config)
    done = check_rerun(config, "train-mdpr")
    if done is not None:
        summary_loc = storage.resolve(config.out).join("summary.json")
        if summary_loc.is_file():
            summary = json.loads(storage.read_bytes(summary_loc))
        else:  # stopped between publishing and the summary: rebuild the part the loop needs
            summary = {"encoder_spec": export_spec(storage.resolve(config.out).join("model").uri, task),
                       "steps": done["steps"], "loss": done["final"]["loss"], "kept": done.get("kept"),
                       "dev_history": done.get("dev_history", [])}
        return {**done, "summary": summary, "already_trained": True}
    manifest, _, model_uri = _run(config, task, "dpr", grad_accumulation=1, model_kind=MDPR_MODEL_KIND,
                                  selection=mdpr_selection(config), job="train-mdpr")
    spec = export_spec(model_uri, task)
    summary = {"encoder_spec": spec, "steps": manifest["steps"], "loss": manifest["final"]["loss"],
               "kept": manifest["kept"], "dev_history": manifest["dev_history"]}
    if config.dev:  # the published model through the hf: loader: what the embedding job computes
        dev = list(iter_examples(config.dev, "dpr", BadRecords(config.on_bad_record)))
        summary["dev"] = evaluate_dev(spec, dev, lang=config.lang)
    storage.write_bytes(storage.resolve(config.out).join("summary.json"),
                        json.dumps(summary, indent=2).encode("utf-8"))
    print(f"train-mdpr: {manifest['examples']} examples, {manifest['steps']} steps, final loss "
          f"{summary['loss']:.4f}{kept_line(summary['kept'])}"
          f"{'; dev ' + json.dumps(summary['dev']) if 'dev' in summary else ''} → --encoder {spec}")
    return {**manifest, "summary": summary}


def train_mgen(config: TrainMGENConfig) -> dict[str, Any]:
    """Train, publish ``<out>/model`` (a seq2seq folder ``Generator.load`` reads: the best dev EM
    epoch's with ``dev``, else the last); returns its manifest (``kept``, ``dev_history``)."""
    done = check_rerun(config, "train-mgen")
    if done is not None:
        return {**done, "already_trained": True}
    task = MGENTask(init=config.init, tokenizer=config.tokenizer, top_k=config.top_k,
                    max_source_length=config.max_source_length, max_target_length=config.max_target_length,
                    label_smoothing=config.label_smoothing, dropout=config.dropout,
                    passage_choice=config.passage_choice, max_answer_passages=config.max_answer_passages,
                    seed=config.seed)
    manifest, _, model_uri = _run(config, task, "retrieval", grad_accumulation=config.grad_accumulation,
                                  model_kind=MGEN_MODEL_KIND, selection=MGEN_SELECTION, job="train-mgen")
    print(f"train-mgen: {manifest['examples']} examples, {manifest['steps']} steps, final loss "
          f"{manifest['final']['loss']:.4f}{kept_line(manifest['kept'])} → --model {model_uri}")
    return manifest
