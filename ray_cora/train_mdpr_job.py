"""``ray-cora train-mdpr``: train the mDPR bi-encoder on Ray Train and export it as an ``hf:`` folder."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ray_cora.config import TrainRunConfig


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
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(128, ge=1, description="Questions per step over all workers (global batch)")
    lr: float = Field(2e-5, gt=0)
    warmup_steps: int = Field(300, ge=0)
    max_grad_norm: float = Field(2.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_eps: float = Field(1e-8, gt=0)


def run_train_mdpr(config: TrainMDPRConfig, **test_hooks: Any) -> dict[str, Any]:
    from ray_cora.train.jobs import train_mdpr

    return train_mdpr(config, **test_hooks)
