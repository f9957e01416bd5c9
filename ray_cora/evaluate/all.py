"""``ray-cora evaluate all``: retrieve for every requested language, optionally answer with mGEN,
and score both into one evaluation folder."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ray_cora import storage
from ray_cora.configs.evaluate import EvaluateAllConfig
from ray_cora.configs.generate import GenerateConfig
from ray_cora.data.predictions import read_predictions
from ray_cora.data.retrieval import iter_retrieval
from ray_cora.encoders.hf import load_config
from ray_cora.errors import ConfigError
from ray_cora.evaluate.retrieval import score_retrieval_file
from ray_cora.languages import normalize_lang
from ray_cora.metrics.qa import score_predictions
from ray_cora.pipelines.generate import run_generate
from ray_cora.pipelines.retrieve import run_retrieval
from ray_cora.reports.evaluation import write_evaluation
from ray_cora.runtime import ray_session


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", "file://")) or os.path.exists(source)


def check_generator(source: str) -> None:
    """Fail before any work when --generator names a local folder that is not a seq2seq model
    (s3:// folders and Hugging Face cache names are checked where the model loads)."""
    if "://" in source and not source.startswith("file://"):
        return
    if not _looks_like_path(source):
        return
    path = storage.resolve(source).path if source.startswith("file://") else os.path.expanduser(source)
    if not os.path.isdir(path):
        raise ConfigError(f"--generator {source}: no such folder; pass an mGEN model folder (e.g. "
                          "<train-mgen out>/model, or CORA's mGEN_model; --generator-tokenizer only for a "
                          "folder without tokenizer files)")
    config = load_config(path, source=source)
    if not getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"--generator {source}: is a {config.model_type} model, not a seq2seq "
                          "(encoder-decoder) model such as mT5; pass an mGEN model folder")


def generate_config(config: EvaluateAllConfig, retrieval_uri: str, out: str) -> Any:
    """The `ray-cora generate` config that answers every question of the retrieval output."""
    return GenerateConfig.load(overrides={  # generate reads the parts the retrieval manifest lists
        "model": config.generator, "tokenizer": config.generator_tokenizer, "retrieval": [retrieval_uri],
        "out": out,
        "top_k": config.top_k, "decoding": config.decoding, "max_source_length": config.max_source_length,
        "max_target_length": config.max_target_length, "num_beams": config.num_beams,
        "batch_size": config.generate_batch_size, "actors": config.generate_actors,
        "actor_cpus": config.generate_actor_cpus, "actor_gpus": config.generate_actor_gpus,
        "ray_address": config.ray_address, "num_cpus": config.num_cpus})


def generate_answers(config: EvaluateAllConfig, retrieval_uri: str, out: str) -> dict:
    """Answer every retrieved question with mGEN through `ray-cora generate`'s own job (a Ray Data
    actor pool; a finished, verified predictions file made with the same settings is reused)."""
    return run_generate(generate_config(config, retrieval_uri, out))


def score_answers(retrieval_uri: str, predictions_uri: str, *, mode: str, sacrebleu: bool = True) -> dict:
    """Score a predictions JSONL with the `evaluate qa` scorer against the gold answers carried in
    the retrieval records (the same rows `evaluate qa --gold <questions>` reads)."""
    gold = [{"qid": str(r["qid"]), "lang": normalize_lang(r["lang"]), "answers": r["answers"]}
            for _, _, r in iter_retrieval(retrieval_uri)]
    return score_predictions(gold, read_predictions(predictions_uri), mode=mode, sacrebleu=sacrebleu)


def merge_answer_metrics(metrics: dict, qa: dict, *, model: str, predictions: str) -> dict:
    """Put the answer scores beside the retrieval ones: ``per_language[lang]`` gains f1, em, bleu, …
    (``count`` stays the number of questions retrieved for; ``qa_count`` is the number scored),
    ``macro`` gains the answer macros, ``mode`` becomes the scorer's and ``generation`` says what
    made and scored the answers. Returns ``metrics``, changed in place (pure otherwise)."""
    for lang, row in metrics["per_language"].items():
        scores = qa["per_language"].get(lang)
        if scores is None:  # every question of the language was skipped (xor: no gold answer)
            row.update({"qa_count": 0, "f1": None, "em": None, "bleu": None})
            continue
        row.update({k: v for k, v in scores.items() if k != "count"})
        row["qa_count"] = scores["count"]
    metrics["macro"].update({k: v for k, v in qa["macro"].items() if k not in ("count", "missing")})
    metrics["mode"] = qa["mode"]
    metrics["generation"] = {"model": model, "predictions": predictions, "mode": qa["mode"],
                             "scored": qa["macro"].get("count", 0), "missing": qa["missing"],
                             "unknown": qa["unknown"], "skipped_no_answer": qa["skipped_no_answer"]}
    return metrics


def run_evaluate_all(config: EvaluateAllConfig) -> dict:
    if config.generator:
        check_generator(config.generator)  # before any work is done
    root = storage.resolve(config.out)
    retrieval_uri = root.join("retrieval").uri
    predictions_uri = root.join("predictions.jsonl").uri
    # One Ray for both stages when there are two (each stage alone starts its own when needed).
    session = (ray_session(address=config.ray_address, num_cpus=config.num_cpus) if config.generator
               else contextlib.nullcontext())
    with session:
        run_retrieval(config.model_copy(update={"out": retrieval_uri}))
        if config.generator:
            generate_answers(config, retrieval_uri, predictions_uri)
    metrics = score_retrieval_file(retrieval_uri, ks=config.ks, heatmap_k=config.heatmap_k)
    if config.generator:
        qa = score_answers(retrieval_uri, predictions_uri, mode=config.qa_mode, sacrebleu=config.sacrebleu)
        merge_answer_metrics(metrics, qa, model=config.generator, predictions=predictions_uri)
        notes = []
        if config.qa_mode == "mkqa":
            notes.append("MKQA questions without an answer are not retrieved for, so they are not scored "
                         "(as in CORA's MKQA evaluation).")
        what = f"{config.dataset} retrieval + mGEN answers"
    else:
        metrics["generation"] = None
        notes = ["Generation: skipped (no --generator); pass an mGEN model folder to generate and score "
                 "answers, or score a predictions file with `evaluate qa`."]
        what = f"{config.dataset} retrieval"
    title = f"{what}, encoder {config.encoder or 'of the index'}, top-{config.k}"
    report = write_evaluation(metrics, root.uri, groups=config.groups, title=title,
                              heatmap_k=config.heatmap_k, notes=notes)
    print(report)
    plots = "per_language.png, retrieved_languages.png" + (", qa_per_language.png" if config.generator else "")
    print(f"wrote {root.uri}/metrics.json, report.md, {plots}")
    return metrics
