"""Config of ``ray-cora generate`` (mGEN answers on a Ray Data actor pool)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ray_cora.configs.base import RayJobConfig
from ray_cora.configs.options import ActorPoolOptions, DecodingOptions


class GenerateConfig(DecodingOptions, ActorPoolOptions, RayJobConfig):
    """Generate an answer for every question of a retrieval JSONL ({qid, lang, question, query?, answers,
    ctxs:[{pid, lang, title, text, score}]}) with an mGEN model, on a Ray Data actor pool of
    generator actors (an actor's CPU threads: its --actor-cpus, rounded down, at least 1); writes
    predictions JSONL {qid, lang, prediction} (then a <out>.done.json marker; a rerun with a
    verified marker and the same generation settings, the decoding preset included, does nothing,
    other settings are refused). --decoding cora decodes as CORA's eval_mgen.py (use --batch-size 8,
    its --eval_batch_size, for the same batches)."""

    model: str = Field(..., description="Seq2seq model folder (e.g. <train-mgen out>/model, CORA's mGEN_model), "
                       "s3:// folder or local-HF-cache name")
    retrieval: list[str] = Field(..., description="Retrieval JSONL file(s) or folder")
    out: str = Field(..., description="Predictions JSONL URI")
    tokenizer: str | None = Field(None, description="Tokenizer source when the model folder has no tokenizer "
                                  "files (mT5's: google/mt5-base)")
    top_k: int = Field(15, ge=1, description="Passages per question in the input")
    batch_size: int = Field(16, ge=1, description="Questions per generate() call")
    actor_cpus: float = ActorPoolOptions.option("actor_cpus", 1.0)
    on_bad_record: Literal["error", "skip"] = Field("error", description="error: stop at the first malformed "
                                                    "retrieval record; skip: count it and go on")



# The settings that make the answers: a finished predictions file made with other ones is refused.
# ``decoding`` is recorded resolved (the model folder's preset when --decoding is not given).
GENERATION_SETTINGS = ("model", "tokenizer", "retrieval", "top_k", "max_source_length", "max_target_length",
                       "num_beams", "decoding")
