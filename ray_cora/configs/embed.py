"""``ray-cora embed``: the config of the corpus embedding job (the work is in ray_cora.pipelines)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ray_cora.configs.base import RayJobConfig
from ray_cora.configs.options import ActorPoolOptions, EncoderSpec, IndexOptions, PassageSourceOptions


class EmbedConfig(PassageSourceOptions, ActorPoolOptions, IndexOptions, RayJobConfig):
    """Embed a passage corpus on a Ray Data actor pool of encoder actors into a sharded FAISS index
    on any storage URI. Rerunning with the same --out resumes: finished shards are checksum-verified
    and skipped."""

    out: str = Field(..., description="Index URI: shards, plan.json and manifest.json (written last) go here")
    encoder: EncoderSpec = Field("muse", description="Passage encoder spec")
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first malformed passage (file:line); skip: leave it out, "
        "count it and write it to <out>/_quarantine/")
    shard_size: int = Field(100_000, ge=1, description="Passages per index shard")
    batch_size: int = Field(128, ge=1, description="Passages per encoder batch")
    actor_cpus: float = ActorPoolOptions.option("actor_cpus", 1.0)
    threads: int = Field(1, ge=1, description="Math threads per encoder actor on CPU")

