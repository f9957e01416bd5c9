"""Configs of ``ray-cora train-mdpr`` (the mDPR bi-encoder) and ``ray-cora train-mgen`` (the mGEN
generator); both run on Ray Train through :mod:`ray_cora.train.jobs`."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ray_cora.configs.base import TrainRunConfig
from ray_cora.configs.options import OptionGroup
from ray_cora.languages import normalize_lang

# The Ray Train jobs' progress and tracking options: how often rank 0 prints and reports, and the
# optional MLflow / TensorBoard logging. Runtime options: they may change when a run is resumed.
TRAIN_LOGGING_OPTIONS = ("log_every_steps", "log_every_s", "mlflow_tracking_uri", "mlflow_experiment",
                         "tensorboard_dir")


class TrainLoggingOptions(OptionGroup):
    """What a Ray Train job says while it runs (train-mdpr, train-mgen, pivot train-reranker)."""

    options_title: ClassVar[str | None] = "Progress and tracking"
    log_every_steps: int = Field(50, ge=0, description="Print a progress line (step/total, epoch, loss, samples/s, "
                                 "lr, elapsed, ETA) and report its metrics to Ray Train every N optimizer steps "
                                 "(0: only the time floor and the epoch lines)")
    log_every_s: float = Field(30.0, ge=0, description="Also print a progress line when this many seconds passed "
                               "since the last one, so a slow run shows life (0: off)")
    mlflow_tracking_uri: str | None = Field(None, description="Log params and metrics to this MLflow tracking URI "
                                            "from rank 0 (Ray's setup_mlflow; needs the mlflow package)")
    mlflow_experiment: str | None = Field(None, description="MLflow experiment name (default: the job's name; "
                                          "created if missing); needs --mlflow-tracking-uri")
    tensorboard_dir: str | None = Field(None, description="Write TensorBoard scalars to this local folder on the "
                                        "driver's node (a Ray Train callback; needs tensorboardX)")

    @model_validator(mode="after")
    def _experiment_needs_uri(self) -> "TrainLoggingOptions":
        if self.mlflow_experiment and not self.mlflow_tracking_uri:
            raise ValueError("option 'mlflow_experiment' needs mlflow_tracking_uri too (MLflow logging is on only "
                             "with a tracking URI)")
        return self


class TrainMDPRConfig(TrainLoggingOptions, TrainRunConfig):
    """Train mDPR (question + passage encoders, DPR loss with in-batch negatives gathered over all
    workers plus hard negatives) with Ray Train on DPR/CORA retriever JSON, JSONL or Parquet.
    Checkpoints go to <out>/ray-train/ (any storage URI, s3:// included); the trained encoders are
    published to <out>/model/ (question_encoder/, ctx_encoder/), usable as --encoder hf:<out>/model.
    Re-running the same command: a stopped run resumes from its latest checkpoint (the step count
    continues); a finished run (<out>/model published) is not trained again: it prints "already
    trained" and exits. Training options must match the first run's (<out>/run_config.json); to
    train from scratch delete <out> or use a new --out."""

    train: list[str] = Field(..., description="Training files or folders (DPR JSON array, .jsonl, .parquet)")
    out: str = Field(..., description="Output URI (local, file://, s3://)")
    init: str = Field(..., description="Start from this encoder: hf:<name-or-path> (e.g. mBERT) or dpr:<.cpt>")
    dev: list[str] = Field(default_factory=list, description="Dev files (DPR format): scored at each epoch end "
                           "(NLL, then average rank from val_av_rank_start_epoch, as CORA); the best epoch's "
                           "model is published")
    val_av_rank_start_epoch: int = Field(
        10000, ge=0, description="Dev score: NLL for this many epochs, then the positive's average rank "
        "(the best is reset at the switch; CORA's default 10000 = NLL throughout; CORA's README uses 30)")
    val_av_rank_hard_neg: int = Field(30, ge=0, description="Average-rank dev score: hard negatives per question")
    val_av_rank_other_neg: int = Field(30, ge=0, description="Average-rank dev score: other negatives per question")
    dev_batch_size: int = Field(48, ge=1, description="NLL dev score: questions per batch (in-batch negatives; "
                                "CORA: --dev_batch_size 6 on each of 8 GPUs)")
    query_format: Literal["plain", "tagged"] | None = Field(
        None, description="How training writes questions: plain, or tagged \"{question} [{lang}]\" as retrieval "
        "does; default: the --init encoder's format (dpr: tagged). Recorded in the exported model")
    lang: str = Field("en", description="Language of training/dev records without a lang field (DPR's NQ data "
                      "is English); used by the tagged query format")
    shared_encoder: bool = Field(False, description="One transformer for questions and passages")
    segment_ids: Literal["auto", "tokenizer", "zeros"] = Field(
        "auto", description="auto: zeros from a dpr: checkpoint (CORA), else the tokenizer's segment ids")
    hard_negatives: int = Field(1, ge=0, description="Hard negatives per question (from hard_negative_ctxs)")
    other_negatives: int = Field(0, ge=0, description="Other negatives per question (from negative_ctxs; CORA: 0)")
    shuffle_negatives: bool = Field(True, description="Draw the negatives from a pool shuffled each epoch (DPR); "
                                    "false: always the first ones")
    shuffle_positives: bool = Field(False, description="A random positive of positive_ctxs each epoch "
                                    "(DPR's --shuffle_positive_ctx); false: the first")
    max_length: int = Field(256, ge=8, description="Max tokens per question/passage")
    epochs: int = Field(1, ge=1, description="Passes over the training data")
    batch_size: int = Field(128, ge=1, description="Questions per step over all workers (global batch)")
    lr: float = Field(2e-5, gt=0, description="AdamW peak learning rate")
    warmup_steps: int = Field(300, ge=0, description="Linear learning-rate warm-up steps (then linear decay)")
    max_grad_norm: float = Field(2.0, ge=0, description="Gradient clipping norm (0: no clipping)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")

    @field_validator("lang")
    @classmethod
    def _known_lang(cls, value: str) -> str:
        return normalize_lang(value)


class TrainMGENConfig(TrainLoggingOptions, TrainRunConfig):
    """Train mGEN (any HF seq2seq model, mT5 for real runs) on retrieval JSONL
    {qid, lang, question, answers, ctxs}: input = question + [lang] once + top-k passages with
    titles (chosen as CORA's conversion script does, see passage_choice), target = the first
    answer. Defaults follow CORA's Table 10. Checkpoints go to <out>/ray-train/ (any storage URI,
    s3:// included); the model is published to <out>/model/. Re-running the same command: a
    stopped run resumes from its latest checkpoint (the step count continues); a finished run
    (<out>/model published) is not trained again: it prints "already trained" and exits. Training
    options must match the first run's (<out>/run_config.json); to train from scratch delete <out>
    or use a new --out."""

    train: list[str] = Field(..., description="Retrieval JSONL files or folders")
    dev: list[str] = Field(default_factory=list, description="Dev retrieval JSONL files or folders (as --train): "
                           "greedy-decoding EM at each epoch end; the best epoch's model is published (CORA: "
                           "val EM, mode max)")
    out: str = Field(..., description="Output URI (local, file://, s3://)")
    init: str = Field(..., description="Seq2seq model folder, s3:// folder or local-HF-cache name (e.g. google/mt5-base)")
    tokenizer: str | None = Field(None, description="Tokenizer source when the model folder has none")
    top_k: int = Field(15, ge=1, description="Passages per question in the input")
    passage_choice: Literal["answer_mix", "ranked"] = Field(
        "answer_mix", description="Training inputs' passages. answer_mix (CORA's conversion script): up to "
        "max_answer_passages retrieved passages containing a gold answer, the best-ranked others filling top_k, "
        "shuffled. ranked: the top_k as retrieved, as at inference")
    max_answer_passages: int = Field(3, ge=1, description="answer_mix: most answer-bearing passages per input")
    max_source_length: int = Field(1000, ge=8, description="mGEN input tokens")
    max_target_length: int = Field(25, ge=1, description="mGEN answer tokens")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing of the token cross-entropy")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout of the model")
    epochs: int = Field(1, ge=1, description="Passes over the training data")
    batch_size: int = Field(16, ge=1, description="Examples per optimizer step over all workers and accumulation steps")
    grad_accumulation: int = Field(2, ge=1, description="Micro-batches accumulated per optimizer step")
    lr: float = Field(3e-5, gt=0, description="AdamW peak learning rate")
    warmup_steps: int = Field(500, ge=0, description="Linear learning-rate warm-up steps (then linear decay)")
    weight_decay: float = Field(0.001, ge=0, description="AdamW weight decay")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    max_grad_norm: float = Field(0.1, ge=0, description="Gradient clipping norm (0: no clipping)")
