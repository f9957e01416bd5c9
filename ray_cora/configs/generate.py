"""Config of ``ray-cora generate`` (mGEN answers on a Ray Data actor pool)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ray_cora.configs.base import RayJobConfig
from ray_cora.configs.options import ActorPoolOptions


class GenerateConfig(ActorPoolOptions, RayJobConfig):
    """Generate an answer for every question of a retrieval JSONL ({qid, lang, question, answers,
    ctxs:[{pid, lang, title, text, score}]}) with an mGEN model, on a Ray Data actor pool of
    generator actors (an actor's CPU threads: its --actor-cpus, rounded down, at least 1); writes
    predictions JSONL {qid, lang, prediction} (then a <out>.done.json marker; a rerun with a
    verified marker and the same generation settings does nothing, other settings are refused)."""

    model: str = Field(..., description="Seq2seq model folder (e.g. <train-mgen out>/model, CORA's mGEN_model), "
                       "s3:// folder or local-HF-cache name")
    retrieval: list[str] = Field(..., description="Retrieval JSONL file(s) or folder")
    out: str = Field(..., description="Predictions JSONL URI")
    tokenizer: str | None = Field(None, description="Tokenizer source when the model folder has none "
                                  "(CORA's mGEN_model: google/mt5-base)")
    top_k: int = Field(15, ge=1, description="Passages per question in the input")
    max_source_length: int = Field(1000, ge=8, description="mGEN input tokens")
    max_target_length: int = Field(25, ge=1, description="mGEN answer tokens")
    num_beams: int = Field(1, ge=1, description="Beam size of mGEN's decoding")
    batch_size: int = Field(16, ge=1, description="Questions per generate() call")
    actor_cpus: float = ActorPoolOptions.option("actor_cpus", 1.0)
    on_bad_record: Literal["error", "skip"] = Field("error", description="error: stop at the first malformed "
                                                    "retrieval record; skip: count it and go on")



# The settings that make the answers: a finished predictions file made with other ones is refused.
GENERATION_SETTINGS = ("model", "tokenizer", "retrieval", "top_k", "max_source_length", "max_target_length",
                       "num_beams")
