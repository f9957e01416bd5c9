"""Configs of ``ray-cora train-mdpr`` (the mDPR bi-encoder) and ``ray-cora train-mgen`` (the mGEN
generator); both run on Ray Train through :mod:`ray_cora.train.jobs`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ray_cora.configs.base import TrainRunConfig


class TrainMDPRConfig(TrainRunConfig):
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
    dev: list[str] = Field(default_factory=list, description="Dev files: average rank / top-k of the positive")
    shared_encoder: bool = Field(False, description="One transformer for questions and passages")
    segment_ids: Literal["auto", "tokenizer", "zeros"] = Field(
        "auto", description="auto: zeros from a dpr: checkpoint (CORA), else the tokenizer's segment ids")
    hard_negatives: int = Field(1, ge=0, description="Hard negatives per question")
    max_length: int = Field(256, ge=8, description="Max tokens per question/passage")
    epochs: int = Field(1, ge=1, description="Passes over the training data")
    batch_size: int = Field(128, ge=1, description="Questions per step over all workers (global batch)")
    lr: float = Field(2e-5, gt=0, description="AdamW peak learning rate")
    warmup_steps: int = Field(300, ge=0, description="Linear learning-rate warm-up steps (then linear decay)")
    max_grad_norm: float = Field(2.0, ge=0, description="Gradient clipping norm (0: no clipping)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")


class TrainMGENConfig(TrainRunConfig):
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
