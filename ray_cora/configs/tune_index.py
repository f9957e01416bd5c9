"""Config of ``ray-cora tune-index`` (choose an index's search-time parameter on held-out queries)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ray_cora.configs.base import JobConfig
from ray_cora.configs.options import OptionalEncoderSpec


class TuneIndexConfig(JobConfig):
    """Sweep a committed index's search-time parameter (IVF nprobe, HNSW efSearch) on held-out
    questions and make the cheapest value reaching --recall (within --max-ms-per-query) the index's
    default: tuning.json is added beside the shards and manifest.json rewritten last. Recall is
    measured against the same index searched with nothing left out (every list probed). Runs in
    this process: the index is opened as a Serve replica opens it."""

    index: str = Field(..., description="Committed sharded index URI (ray-cora embed / import-embeddings --out)")
    questions: str | None = Field(None, description="Held-out QA file whose questions are the queries "
                                  "(encoded with the index's encoder and query format)")
    dataset: Literal["mkqa", "xor", "xquad", "squad", "nq", "jsonl"] = Field("jsonl", description="Format of "
                                                                              "--questions")
    query_vectors: str | None = Field(None, description="Instead of --questions: a .npy file of (n, dim) "
                                      "float32 query vectors")
    encoder: OptionalEncoderSpec = Field(None, description="Query encoder (default: the one the index records)")
    max_queries: int = Field(500, ge=1, description="Most held-out queries used (a seeded sample when there "
                             "are more)")
    seed: int = Field(0, description="Seed of the query sample")
    k: int = Field(100, ge=1, le=2000, description="Recall is measured at this k (retrieve's --k)")
    recall: float = Field(0.95, gt=0, le=1, description="Recall@k target, against the index searched "
                          "exhaustively")
    max_ms_per_query: float | None = Field(None, gt=0, description="Latency budget per query in a batch "
                                           "of --batch-size (unset: none)")
    batch_size: int = Field(64, ge=1, description="Queries per search call while timing")
    repeats: int = Field(3, ge=1, description="Timed runs per value (the fastest counts)")
    threads: int = Field(0, ge=0, description="FAISS (OpenMP) threads; 0: FAISS's default (all cores)")
    dry_run: bool = Field(False, description="Print the sweep and the choice, change nothing")

    @model_validator(mode="after")
    def _one_query_source(self) -> "TuneIndexConfig":
        if bool(self.questions) == bool(self.query_vectors):
            raise ValueError("give exactly one of --questions (a QA file) or --query-vectors (a .npy file)")
        return self
