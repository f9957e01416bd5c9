"""``ray-cora index-bm25``: the config of the sharded BM25 index job (the work is in
ray_cora.pipelines.lexical)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ray_cora.configs.base import RayJobConfig
from ray_cora.configs.options import PassageSourceOptions, TaskOptions
from ray_cora.index.bm25 import DEFAULT_B, DEFAULT_K1


class LexicalIndexConfig(PassageSourceOptions, TaskOptions, RayJobConfig):
    """Index a passage corpus for BM25 on Ray Data: one task per shard of the corpus plan writes one
    term-postings part per passage language; manifest.json (with each language's passage count and
    average length, which make scores comparable across shards) is written last. Rerunning with the
    same --out resumes: finished shards are checksum-verified and skipped."""

    out: str = Field(..., description="Lexical index URI, e.g. <dense index>/lexical: shards/, plan.json and "
                     "manifest.json (written last)")
    tokenizer: Literal["language", "whitespace"] = Field(
        "language", description="language: one term rule per language (ray_cora.index.bm25); whitespace: "
        "the naive baseline")
    k1: float = Field(DEFAULT_K1, gt=0, description="BM25 k1 recorded as the index's default (a search setting: "
                      "the files do not depend on it)")
    b: float = Field(DEFAULT_B, ge=0, le=1, description="BM25 b recorded as the index's default")
    shard_size: int = Field(1_000_000, ge=1, description="Passages per shard (one task; its parts are built in "
                            "memory, ~1 KB per passage while building)")
