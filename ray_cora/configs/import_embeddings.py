"""Config of ``ray-cora import-embeddings`` (CORA/DPR released embedding pickles → a sharded index)."""

from __future__ import annotations

from pydantic import Field

from ray_cora.configs.base import JobConfig
from ray_cora.configs.options import EncoderSpec, IndexOptions, OptionalLangCode


class ImportEmbeddingsConfig(IndexOptions, JobConfig):
    """Convert CORA's wiki_emb_* (or DPR's wikipedia_passages_*) pickles of (id, vector) pairs into a
    sharded FAISS index, unpickling safely (only numpy globals are allowed). Each vector keeps its
    passage's language, from CORA's file names wiki_emb_<lang>_<n> (or --lang), so a corpus
    without a language column (CORA's all_w100.tsv) gets languages back at retrieval. IVF/PQ index
    types are trained once, on a seeded sample of all the files' vectors (a first pass over them)."""

    inputs: list[str] = Field(..., description="Embedding files, comma-separated, in order (path, file:// or "
                              "s3://); a name may be a glob, as CORA's \"wiki_emb_*\" (natural order)")
    out: str = Field(..., description="Index URI (shards + manifest.json)")
    encoder: EncoderSpec = Field(..., description="The encoder spec that made the vectors, recorded in the manifest "
                         "(e.g. dpr:/ckpt/mDPR_biencoder_best.cpt); queries use its question side and its "
                         "query format")
    passages: str | None = Field(None, description="The corpus the vectors embed (CORA's all_w100.tsv), recorded "
                                 "so retrieve and serve find passage texts without --passages")
    lang: OptionalLangCode = Field(None, description="Language of every vector (default: from CORA's file names "
                             "wiki_emb_<lang>_<n>; und where a name gives none)")
    shard_size: int = Field(1_000_000, ge=1, description="Vectors per shard")


