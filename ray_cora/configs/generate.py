"""Config of ``ray-cora generate`` (mGEN answers on a Ray Data actor pool)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ray_cora.configs.base import RayJobConfig


class GenerateConfig(RayJobConfig):
    """Generate an answer for every question of a retrieval JSONL ({qid, lang, question, answers,
    ctxs:[{pid, lang, title, text, score}]}) with an mGEN model, on a Ray Data actor pool; writes
    predictions JSONL {qid, lang, prediction} (then a <out>.done.json marker; a rerun with a
    verified marker and the same generation settings does nothing, other settings are refused)."""

    model: str = Field(..., description="Seq2seq model folder (e.g. <train-mgen out>/model, CORA's mGEN_model), "
                       "s3:// folder or local-HF-cache name")
    retrieval: list[str] = Field(..., description="Retrieval JSONL file(s) or folder")
    out: str = Field(..., description="Predictions JSONL URI")
    tokenizer: str | None = Field(None, description="Tokenizer source when the model folder has none "
                                  "(CORA's mGEN_model: google/mt5-base)")
    top_k: int = Field(15, ge=1, description="Passages per question in the input")
    max_source_length: int = Field(1000, ge=8)
    max_target_length: int = Field(25, ge=1)
    num_beams: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1, description="Questions per generate() call")
    concurrency: int = Field(1, ge=1, description="Generator actors")
    actor_cpus: float = Field(1.0, gt=0)
    actor_gpus: float = Field(0.0, ge=0)
    on_bad_record: Literal["error", "skip"] = Field("error")



# The settings that make the answers: a finished predictions file made with other ones is refused.
GENERATION_SETTINGS = ("model", "tokenizer", "retrieval", "top_k", "max_source_length", "max_target_length",
                       "num_beams")
