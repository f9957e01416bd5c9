"""``ray-cora evaluate retrieval`` and ``ray-cora evaluate all``: configs and the thin runs over the
pure scorers (:mod:`ray_cora.metrics.retrieval`), reports (:mod:`ray_cora.reports`) and plots."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Literal, Sequence

from pydantic import Field, field_validator

from ray_cora import storage
from ray_cora.config import JobConfig
from ray_cora.errors import BadRecordError, ConfigError
from ray_cora.retrieve_job import RetrieveConfig

GROUPINGS = ("auto", "mkqa", "xor", "none")


class EvaluateRetrievalConfig(JobConfig):
    """Score a retrieval output: R^L@k (an answer in the question's language is in a top-k passage),
    R^multi@k (an answer in any language is), gold-passage recall R^gold@k when gold pids are known
    (XQuAD), per language and macro. Writes metrics.json, report.md and PNG plots to --out."""

    retrieval: str = Field(..., description="`ray-cora retrieve` output folder, or retrieval JSONL file/folder")
    out: str = Field(..., description="Folder URI for metrics.json, report.md, per_language.png, "
                     "retrieved_languages.png")
    ks: list[int] = Field([1, 5, 10, 20, 100], description="Cut-offs k (those above the passages "
                          "retrieved per question are left out)")
    heatmap_k: int = Field(10, ge=1, description="Top passages counted in the retrieved-language heatmap")
    groups: Literal["auto", "mkqa", "xor", "none"] = Field(
        "auto", description="Column groups of the paper table: the CORA paper's MKQA (seen / mGEN-seen / "
        "unseen) or XOR-TyDi grouping, auto (by the languages present) or none")
    title: str | None = Field(None, description="Title of the report (default: from the input)")

    @field_validator("ks")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError("ks must be positive integers, e.g. 1,5,10,20,100")
        return sorted(set(value))


class EvaluateAllConfig(RetrieveConfig):
    """One Ray job: retrieve for every requested language in parallel (one Ray Data stream; blocks
    of different languages run side by side on the actor pools), then — with --generator — answer
    every question with mGEN (`ray-cora generate` on an actor pool) and score the answers like
    `evaluate qa`; retrieval is scored like `evaluate retrieval`. Outputs: <out>/retrieval/ and
    <out>/predictions.jsonl (both resumable) and <out>/metrics.json, report.md, PNGs."""

    ks: list[int] = Field([1, 5, 10, 20, 100], description="Cut-offs k for R^L@k / R^multi@k / R^gold@k")
    heatmap_k: int = Field(10, ge=1, description="Top passages counted in the retrieved-language heatmap")
    groups: Literal["auto", "mkqa", "xor", "none"] = Field("auto", description="Column groups of the paper table")
    generator: str | None = Field(None, description="mGEN model folder, as `ray-cora generate --model` takes "
                                  "(e.g. <train-mgen out>/model or CORA's mGEN_model); without it only "
                                  "retrieval is run and scored")
    generator_tokenizer: str | None = Field(None, description="Tokenizer of --generator when its folder has "
                                            "none (CORA's mGEN_model: google/mt5-base)")
    mode: Literal["xor", "mkqa"] | None = Field(None, description="Scorer of the answers, as `evaluate qa "
                                                "--mode` (default: mkqa for --dataset mkqa, else xor; CORA's "
                                                "paper scored MKQA with the xor scorer: pass xor to compare)")
    top_k: int = Field(15, ge=1, description="Retrieved passages given to mGEN per question (as `generate "
                       "--top-k`; at most --k are there)")
    max_source_length: int = Field(1000, ge=8, description="mGEN input tokens")
    max_target_length: int = Field(25, ge=1, description="mGEN answer tokens")
    num_beams: int = Field(1, ge=1, description="Beam size of mGEN's decoding")
    generate_batch_size: int = Field(16, ge=1, description="Questions per mGEN generate() call")
    generate_actors: int = Field(1, ge=1, description="mGEN actors")
    generate_actor_cpus: float = Field(1.0, gt=0, description="CPUs per mGEN actor")
    generate_actor_gpus: float = Field(0.0, ge=0, description="GPUs per mGEN actor")
    sacrebleu: bool = Field(True, description="Also report corpus-level sacreBLEU per language (a modern "
                            "extra figure, not the official BLEU)")

    @property
    def qa_mode(self) -> str:
        """The scorer: --mode, else the dataset's own (MKQA's for mkqa, XOR-TyDi/CORA's otherwise)."""
        return self.mode or ("mkqa" if self.dataset == "mkqa" else "xor")


# --- pure helpers ----------------------------------------------------------------------------


def _groups(choice: str, languages: Sequence[str]) -> dict[str, list[str]] | None:
    from ray_cora.reports import CORA_MKQA_GROUPS, CORA_XOR_GROUPS, default_groups

    return {"auto": default_groups(languages), "mkqa": CORA_MKQA_GROUPS, "xor": CORA_XOR_GROUPS,
            "none": {"all": sorted(languages)}}[choice]


def score_retrieval_file(uri: str, *, ks: Sequence[int], heatmap_k: int) -> dict:
    """Stream a retrieval output and aggregate its metrics (memory: a few ints per question)."""
    from ray_cora.languages import normalize_lang
    from ray_cora.metrics.retrieval import retrieval_metrics, score_retrieval_row
    from ray_cora.pipelines.retrieve import iter_retrieval

    scored, max_ctxs = [], 0
    for source, line, record in iter_retrieval(uri):
        try:
            record["lang"] = normalize_lang(record["lang"])
        except ConfigError as exc:
            raise BadRecordError(source, line, f"field 'lang': {exc}",
                                 hint="use a code of ray_cora/languages.py") from None
        max_ctxs = max(max_ctxs, len(record["ctxs"]))
        scored.append(score_retrieval_row(record, heatmap_k=heatmap_k))
    if not scored:
        raise ConfigError(f"{uri}: no retrieval records to score")
    usable = [k for k in ks if k <= max_ctxs] or [min(ks)]
    metrics = retrieval_metrics(scored, usable)
    dropped = [k for k in ks if k not in usable]
    return {"mode": "retrieval", "source": uri, "passages_per_question": max_ctxs, "ks_left_out": dropped,
            **metrics}


def qa_metric_names(mode: str) -> list[str]:
    """The answer metrics of a scorer mode, as the paper's tables show them."""
    return ["f1", "em", "bleu"] if mode == "xor" else ["f1", "em"]


def qa_section(metrics: dict, grouping: dict[str, list[str]] | None) -> str:
    """The answer-quality part of the report (only when answers were generated and scored)."""
    from ray_cora.reports import paper_table

    generation = metrics["generation"]
    mode, per_language = generation["mode"], metrics["per_language"]
    scorer = ("XOR-TyDi / CORA scorer (MeCab for ja, counters 年歳人년 removed, NLTK sentence BLEU)"
              if mode == "xor" else "official MKQA scorer (mixed segmentation for zh/ja/th/km, articles "
              "per language, answers + aliases)")
    parts = [f"## Answers (mGEN `{generation['model']}`)\n",
             f"Predictions: `{generation['predictions']}`, scored with the {scorer}, like `ray-cora "
             f"evaluate qa --mode {mode}`; gold answers from the retrieval records.\n",
             paper_table(per_language, qa_metric_names(mode), groups=grouping, title="Answer quality (%)")]
    if any("sacrebleu" in row for row in per_language.values()):
        parts.append(paper_table(per_language, ["sacrebleu"], groups=grouping,
                                 title="Corpus-level sacreBLEU (a modern extra figure, not the official BLEU)"))
    missing, unknown = generation["missing"]["count"], generation["unknown"]["count"]
    if missing or unknown:
        parts.append(f"{missing} questions without a prediction (scored 0), {unknown} predictions for no "
                     "question (ignored); see metrics.json.\n")
    parts.append("## Retrieval\n")
    return "\n".join(parts)


def retrieval_report(metrics: dict, *, groups: str = "auto", title: str | None = None,
                     notes: Sequence[str] = ()) -> str:
    """Markdown report: one paper-style table per metric family (answers first, when generated),
    plus counts and notes."""
    from ray_cora.reports import paper_table

    per_language = metrics["per_language"]
    grouping = _groups(groups, list(per_language))
    ks = metrics["ks"]
    parts = [f"# {title or 'Retrieval evaluation'}\n",
             f"Source: `{metrics['source']}`; {sum(r['count'] for r in per_language.values())} questions in "
             f"{len(per_language)} languages, up to {metrics['passages_per_question']} passages each. "
             "Percentages; `macro` averages the languages equally.\n"]
    if metrics.get("generation"):
        parts.append(qa_section(metrics, grouping))
    parts += ["- **R^L@k**: an answer string in the question's language occurs in a top-k passage.\n"
             "- **R^multi@k**: an answer string in any language of the dataset occurs in a top-k passage.\n"
             "- **R^gold@k**: a gold passage is among the top k (only where gold passages are known).\n\n"
             "Matching is Unicode-NFKC, case-folded substring matching (it works for ja/zh/th, which "
             "have no spaces).\n"]
    families = [("R^L", "Answer recall in the question's language"), ("R^multi", "Answer recall in any language"),
                ("R^gold", "Gold-passage recall")]
    for family, caption in families:
        names = [f"{family}@{k}" for k in ks]
        if any(name in row for row in per_language.values() for name in names):
            parts.append(paper_table(per_language, names, groups=grouping, title=caption))
    parts.append(paper_table({lang: {"questions": float(row["count"])} for lang, row in per_language.items()},
                             ["questions"], groups=grouping, title="Questions per language"))
    if metrics.get("ks_left_out"):
        parts.append(f"k = {', '.join(map(str, metrics['ks_left_out']))} left out: only "
                     f"{metrics['passages_per_question']} passages were retrieved per question.\n")
    parts.extend(f"{note}\n" for note in notes)
    plots = "Plots: `per_language.png` (recall per question language), `retrieved_languages.png` " \
        "(share of each passage language among the top passages, per question language)"
    if metrics.get("generation"):
        plots += ", `qa_per_language.png` (answer F1/EM per question language)"
    parts.append(plots + ".\n")
    return "\n".join(parts)


def write_evaluation(metrics: dict, out: str, *, groups: str = "auto", title: str | None = None,
                     heatmap_k: int = 10, notes: Sequence[str] = ()) -> str:
    """Write metrics.json, report.md, per_language.png and retrieved_languages.png; return the report."""
    from ray_cora.plots import language_heatmap, per_language_bar_chart

    root = storage.resolve(out)
    report = retrieval_report(metrics, groups=groups, title=title, notes=notes)
    k_plot = max([k for k in metrics["ks"] if k <= 20] or metrics["ks"][:1])
    per_language = metrics["per_language"]
    bars = [name for name in (f"R^L@{k_plot}", f"R^multi@{k_plot}", f"R^gold@{k_plot}")
            if any(name in row for row in per_language.values())]
    storage.write_bytes(root.join("per_language.png"), per_language_bar_chart(
        per_language, bars, title=f"{title or 'Retrieval'}: recall@{k_plot} per question language"))
    storage.write_bytes(root.join("retrieved_languages.png"), language_heatmap(
        metrics["retrieved_languages"], title=f"Languages of the top-{heatmap_k} passages"))
    if metrics.get("generation"):
        mode = metrics["generation"]["mode"]
        storage.write_bytes(root.join("qa_per_language.png"), per_language_bar_chart(
            per_language, qa_metric_names(mode)[:2],
            title=f"{title or 'QA'}: answer F1 / EM per question language ({mode} scorer)"))
    storage.write_bytes(root.join("report.md"), report.encode("utf-8"))
    # metrics.json last: its presence means the evaluation finished.
    storage.write_bytes(root.join("metrics.json"), json.dumps(metrics, indent=2, ensure_ascii=False).encode("utf-8"))
    return report


# --- runs ------------------------------------------------------------------------------------


def run_evaluate_retrieval(config: EvaluateRetrievalConfig) -> dict:
    metrics = score_retrieval_file(config.retrieval, ks=config.ks, heatmap_k=config.heatmap_k)
    report = write_evaluation(metrics, config.out, groups=config.groups, title=config.title,
                              heatmap_k=config.heatmap_k)
    print(report)
    print(f"wrote {storage.resolve(config.out).uri}/metrics.json, report.md, per_language.png, "
          "retrieved_languages.png")
    return metrics


# --- generation and answer scoring ------------------------------------------------------------


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", "file://")) or os.path.exists(source)


def check_generator(source: str) -> None:
    """Fail before any work when --generator names a local folder that is not a seq2seq model
    (s3:// folders and Hugging Face cache names are checked where the model loads)."""
    from ray_cora.encoders.hf import load_config

    if "://" in source and not source.startswith("file://"):
        return
    if not _looks_like_path(source):
        return
    path = storage.resolve(source).path if source.startswith("file://") else os.path.expanduser(source)
    if not os.path.isdir(path):
        raise ConfigError(f"--generator {source}: no such folder; pass an mGEN model folder (e.g. "
                          "<train-mgen out>/model, or CORA's mGEN_model with --generator-tokenizer)")
    config = load_config(path, source=source)
    if not getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"--generator {source}: is a {config.model_type} model, not a seq2seq "
                          "(encoder-decoder) model such as mT5; pass an mGEN model folder")


def generate_config(config: EvaluateAllConfig, retrieval_uri: str, out: str) -> Any:
    """The `ray-cora generate` config that answers every question of the retrieval output."""
    from ray_cora.generate_job import GenerateConfig

    return GenerateConfig.load(overrides={  # generate reads the parts the retrieval manifest lists
        "model": config.generator, "tokenizer": config.generator_tokenizer, "retrieval": [retrieval_uri],
        "out": out,
        "top_k": config.top_k, "max_source_length": config.max_source_length,
        "max_target_length": config.max_target_length, "num_beams": config.num_beams,
        "batch_size": config.generate_batch_size, "concurrency": config.generate_actors,
        "actor_cpus": config.generate_actor_cpus, "actor_gpus": config.generate_actor_gpus,
        "ray_address": config.ray_address, "num_cpus": config.num_cpus})


def generate_answers(config: EvaluateAllConfig, retrieval_uri: str, out: str) -> dict:
    """Answer every retrieved question with mGEN through `ray-cora generate`'s own job (a Ray Data
    actor pool; a finished, verified predictions file made with the same settings is reused)."""
    from ray_cora.generate_job import run_generate

    return run_generate(generate_config(config, retrieval_uri, out))


def score_answers(retrieval_uri: str, predictions_uri: str, *, mode: str, sacrebleu: bool = True) -> dict:
    """Score a predictions JSONL with the `evaluate qa` scorer against the gold answers carried in
    the retrieval records (the same rows `evaluate qa --gold <questions>` reads)."""
    from ray_cora.languages import normalize_lang
    from ray_cora.metrics.qa import score_predictions
    from ray_cora.pipelines.retrieve import iter_retrieval
    from ray_cora.predictions import read_predictions

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
    from ray_cora.pipelines.retrieve import run_retrieval
    from ray_cora.runtime import ray_session

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
