"""Config of ``ray-cora import-embeddings`` (CORA/DPR released embedding pickles → a sharded index)."""

from __future__ import annotations

from pydantic import Field

from ray_cora.configs.base import JobConfig


class ImportEmbeddingsConfig(JobConfig):
    """Convert CORA's wiki_emb_* (or DPR's wikipedia_passages_*) pickles of (id, vector) pairs into a
    sharded FAISS index, unpickling safely (only numpy globals are allowed)."""

    inputs: list[str] = Field(..., description="Embedding files, comma-separated, in order (path, file:// or s3://)")
    out: str = Field(..., description="Index URI (shards + manifest.json)")
    encoder: str = Field(..., description="The encoder spec that made the vectors, recorded in the manifest "
                         "(e.g. dpr:/ckpt/mDPR_biencoder_best.cpt); queries must use its question side")
    shard_size: int = Field(1_000_000, ge=1, description="Vectors per shard")
