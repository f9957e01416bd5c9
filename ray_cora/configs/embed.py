"""``ray-cora embed``: the config of the corpus embedding job (the work is in ray_cora.pipelines)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ray_cora.configs.base import RayJobConfig
from ray_cora.encoders import check_encoder_spec
from ray_cora.index.sharded import IndexSpec


class EmbedConfig(RayJobConfig):
    """Embed a passage corpus on a Ray Data actor pool into a sharded FAISS index on any storage URI.
    Rerunning with the same --out resumes: finished shards are checksum-verified and skipped."""

    passages: str = Field(..., description="Passage file or folder (TSV/JSONL/Parquet; path, file:// or s3://)")
    out: str = Field(..., description="Index URI: shards, plan.json and manifest.json (written last) go here")
    encoder: str = Field("muse", description="Passage encoder spec")
    format: Literal["tsv", "jsonl", "parquet"] | None = Field(None, description="Passage format (default: from file names)")
    lang: str | None = Field(None, description="Language of passages that have no lang field")
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first malformed passage (file:line); skip: leave it out, "
        "count it and write it to <out>/_quarantine/")
    shard_size: int = Field(100_000, ge=1, description="Passages per index shard")
    index_type: Literal["flat", "ivfpq", "hnsw"] = Field("flat", description="FAISS index per shard")
    hnsw_m: int = Field(32, ge=4, description="hnsw: graph degree M")
    ivf_nlist: int = Field(1024, ge=1, description="ivfpq: inverted lists per shard (capped by shard size)")
    pq_m: int = Field(64, ge=1, description="ivfpq: sub-quantizers (must divide the vector dimension)")
    pq_nbits: int = Field(8, ge=4, le=16, description="ivfpq: bits per sub-quantizer code")
    batch_size: int = Field(128, ge=1, description="Passages per encoder batch")
    concurrency: int = Field(1, ge=1, description="Encoder actors (one per GPU on GPU clusters)")
    actor_cpus: float = Field(1.0, gt=0, description="CPUs reserved per encoder actor (on a CPU-only "
                              "machine leave some for Ray's own tasks)")
    actor_gpus: float = Field(0.0, ge=0, description="GPUs per encoder actor (1 on GPU clusters)")
    threads: int = Field(1, ge=1, description="Math threads per encoder actor on CPU")

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        return check_encoder_spec(value)

    def index_spec(self) -> IndexSpec:
        return IndexSpec(self.index_type, hnsw_m=self.hnsw_m, ivf_nlist=self.ivf_nlist, pq_m=self.pq_m,
                         pq_nbits=self.pq_nbits)
