"""``ray-cora pivot build|run|calibrate|train-reranker``: one config model per job, and entry points."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ray_cora.configs.base import RayJobConfig, TrainRunConfig
from ray_cora.configs.options import ActorPoolOptions, EncoderSpec, IndexOptions, OptionalLangCode
from ray_cora.configs.train import TrainLoggingOptions
from ray_cora.pivot.rerank import check_reranker_spec


def _reranker(value: str | None) -> str | None:
    if value:
        return check_reranker_spec(value)
    return None


class PivotBuildConfig(ActorPoolOptions, IndexOptions, RayJobConfig):
    """Embed English (question, answer[, answer QID]) records into a pivot database: a sharded
    FAISS index of the questions plus a Parquet answer table, on a Ray Data actor pool of encoder
    actors."""

    questions: str = Field(..., description="English QA records (path or URI)")
    dataset: Literal["jsonl", "nq", "squad", "xquad"] = Field(
        "jsonl", description="Input format: jsonl ({qid, question, answer|answers, answer_qid?}), "
        "nq (NQ-open), squad/xquad (SQuAD v1.1 JSON, English)")
    out: str = Field(..., description="Output folder or URI of the database")
    encoder: EncoderSpec = Field("muse", description="Sentence encoder spec (muse, or hf:<model>?pooling=mean "
                         "for LaBSE / paraphrase-multilingual models)")
    shard_size: int = Field(100_000, ge=1, description="Questions per index shard (and answer part); a "
                            "rerun after a crash redoes only missing or damaged shards")
    batch_size: int = Field(256, ge=1, description="Questions per encoder batch")
    threads: int = Field(1, ge=1, description="CPU threads per encoder actor")



class _PivotQueryConfig(ActorPoolOptions, RayJobConfig):
    """A pivot job that answers questions on a Ray Data actor pool of pipeline actors (encoder,
    reranker and translator in each)."""

    db: str = Field(..., description="Pivot database folder or URI (from `ray-cora pivot build`)")
    questions: str = Field(..., description="Questions to answer (path or URI)")
    dataset: Literal["mkqa", "xor", "nq", "xquad", "squad", "jsonl"] = Field(
        "jsonl", description="Question file format")
    lang: OptionalLangCode = Field(None, description="Keep only this language (for xquad/squad: the file's language)")
    reranker: str | None = Field(None, description="Cross-encoder spec hf:<seq-classification model> "
                                 "(RM-MIPS); without it the MIPS top-1 is the match")
    labels: str | None = Field(None, description="Wikidata label table (`ray-cora wikidata labels` output "
                               "or an entity JSONL) for answer translation")
    translator: str | None = Field(None, description="Machine translation fallback: "
                                   "hf:<seq2seq model>?style=marian|m2m|plain&langs=...")
    k: int = Field(10, ge=1, le=1000, description="English questions retrieved by MIPS (and reranked)")
    batch_size: int = Field(64, ge=1, description="Questions per actor batch")
    threads: int = Field(1, ge=1, description="CPU threads per pipeline actor (encoder, reranker, MT)")
    mmap: bool = Field(False, description="Memory-map the database's index shards (actors on one machine "
                       "share them; for databases of millions of questions)")


    @field_validator("reranker")
    @classmethod
    def _rerank(cls, value: str | None) -> str | None:
        return _reranker(value)


class PivotRunConfig(_PivotQueryConfig):
    """Answer questions through the English pivot database (MIPS, optional cross-encoder rerank,
    answer translation, abstention) on a Ray Data actor pool; writes predictions JSONL."""

    out: str = Field(..., description="Output folder or URI: parts/<lang>-<n>.jsonl predictions (one "
                     "block each) + manifest.json; `ray-cora evaluate qa --predictions` reads the folder")
    block_size: int = Field(1024, ge=1, description="Questions per output part (one language each); a "
                            "rerun after a crash redoes only unfinished parts")
    threshold: float | None = Field(None, description="Abstain below this score")
    calibration: str | None = Field(None, description="calibration.json from `ray-cora pivot calibrate` "
                                    "(its threshold is used unless --threshold is given)")


class PivotCalibrateConfig(_PivotQueryConfig):
    """Pick the smallest score threshold reaching a target precision on a labelled dev set."""

    out: str = Field(..., description="Output folder or URI (calibration.json, dev predictions)")
    target_precision: float = Field(0.8, gt=0, le=1, description="Precision to reach on answered questions")
    correct_by: Literal["answer", "qid"] = Field(
        "answer", description="answer: the translated prediction matches a gold answer; qid: the matched "
        "English question is the dev question's own (same qid or source_qid)")


# The Ray Train run options the reranker's training does not use (see PivotTrainRerankerConfig).
RERANKER_UNUSED_RUN_OPTIONS = ("checkpoint_every", "max_failures")


class PivotTrainRerankerConfig(TrainLoggingOptions, TrainRunConfig):
    """Fine-tune a cross-encoder on labelled paraphrase pairs (PAWS-X / QQP style) with Ray Train.
    Of the Ray Train run options it does not use --checkpoint-every (a checkpoint is reported after
    every epoch) or --max-failures (a failed worker ends the run; a rerun starts it again): other
    values than their defaults are refused. --on-bad-record applies to the pairs files."""

    model: str = Field(..., description="Start model: hf:<seq-classification model or encoder>")
    pairs: list[str] = Field(..., description="Labelled pair files: JSONL or TSV with sentence1/sentence2/"
                             "label (PAWS-X) or question1/question2/is_duplicate (QQP)")
    mix: list[float] | None = Field(None, description="Sampling weight per pairs file, e.g. 0.75,0.25 "
                                    "(default: every pair once)")
    out: str = Field(..., description="Output folder or URI: Ray Train checkpoints, and model/ at the end")
    epochs: int = Field(1, ge=1, description="Passes over the pairs")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (the paper: 1e-5 for XLM-R large)")
    batch_size: int = Field(16, ge=1, description="Pairs per step per worker")
    max_length: int = Field(128, ge=8, description="Tokens per pair")
    max_pairs: int | None = Field(None, ge=1, description="Use at most this many pairs (with --mix: "
                                  "the sample size)")

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return _reranker(value)

    @model_validator(mode="after")
    def _unused_run_options(self) -> "PivotTrainRerankerConfig":
        unused = [name for name in RERANKER_UNUSED_RUN_OPTIONS
                  if getattr(self, name) != type(self).model_fields[name].default]
        if unused:
            raise ValueError(f"pivot train-reranker does not use {', '.join(unused)}: leave "
                             f"{'it' if len(unused) == 1 else 'them'} at the default")
        return self
