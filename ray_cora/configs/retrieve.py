"""``ray-cora retrieve``: the config of the batch retrieval job (the work is in ray_cora.pipelines.retrieve)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ray_cora.configs.base import RayJobConfig
from ray_cora.configs.options import OptionalEncoderSpec, OptionalLangCode, SearchOptions
from ray_cora.languages import parse_langs


class RetrieveConfig(SearchOptions, RayJobConfig):
    """Retrieve the top-k passages of a sharded index for every question of a QA set, on Ray Data
    (query-encoder actors → shard-searcher actors). Writes <out>/parts/*.jsonl, one line per question
    {qid, lang, question, answers, answers_all, gold_pids, ctxs: [{pid, lang, title, text, score}]}, and
    manifest.json last. Rerunning with the same --out resumes: finished blocks are skipped."""

    index: str | None = Field(None, description="Sharded dense index URI (made by `ray-cora embed`); needed by "
                              "--retriever dense and hybrid")
    retriever: Literal["dense", "bm25", "hybrid"] = Field(
        "dense", description="dense: the --index alone; bm25: the --lexical-index alone (a question searches "
        "its own language's passages; a language the index lacks gets no passages); hybrid: both, fused per "
        "question language by --fusion (ray_cora.index.fusion). bm25/hybrid records give each passage "
        "`retrievers`: its rank in each list")
    lexical_index: str | None = Field(None, description="Sharded BM25 index URI (made by `ray-cora index-bm25`); "
                                      "needed by --retriever bm25 and hybrid")
    fusion: str | None = Field(None, description="Fusion weights (fusion.json, or a folder holding one; made by "
                               "`ray-cora tune fusion`) for --retriever hybrid (default: the one in "
                               "--lexical-index, else in --index, else equal-weight RRF)")
    lexical_actors: int = Field(1, ge=1, description="BM25 searcher actors (each memory-maps the whole lexical "
                                "index: one copy in memory per machine)")
    questions: str = Field(..., description="QA file URI (for xquad/squad also a folder of xquad.<lang>.json)")
    dataset: Literal["mkqa", "xor", "xquad", "squad", "nq", "jsonl"] = Field(
        ..., description="Format of --questions")
    out: str = Field(..., description="Output folder URI: parts/, passage-store/ (default) and manifest.json")
    lang: OptionalLangCode = Field(None, description="Only questions in this language")
    langs: str | None = Field(None, description="Only questions in these languages (a,b,... or mkqa/xor/xquad)")
    encoder: OptionalEncoderSpec = Field(None, description="Query encoder spec (default: the one recorded in the index "
                                "manifest; for dpr: checkpoints the question encoder is used)")
    k: int = Field(100, ge=1, le=2000, description="Passages per question",
                   json_schema_extra={"short": "-k"})
    passages: str | None = Field(None, description="Corpus the index was built from, for passage texts "
                                 "(default: the one the index manifest names)")
    passage_format: Literal["tsv", "jsonl", "parquet"] | None = Field(None, description="Corpus format "
                                                                       "(default: from file names)")
    passage_store: str | None = Field(None, description="pid→passage store (built from --passages "
                                      "when absent; default <out>/passage-store); reuse it across runs")
    passage_langs: str | None = Field(None, description="Index whose per-pid languages fill in passages the corpus "
                                      "gives none, as CORA's all_w100.tsv (default: --index; `import-embeddings` "
                                      "records them from CORA's wiki_emb_<lang>_<n> names)")
    store_buckets: int | None = Field(None, ge=1, description="Buckets of a new passage store (default: one "
                                      "per ~64 MB of corpus, at least 16; building sorts one bucket in memory "
                                      "at a time)")
    add_lang: bool | None = Field(None, description="Write the question the query encoder reads as '{question} "
                                  "[{lang}]' (true, CORA's mDPR --add_lang) or plain (false); default: the "
                                  "query format recorded with the index's encoder (dpr: checkpoints: tagged). "
                                  "Records keep the plain question and add `query`")
    check_encoder: bool = Field(True, description="Refuse a query encoder that is not the model that built the "
                                "index (compared by checkpoint checksum and options); false: search with another "
                                "of the same vector size on purpose (CORA's B.5: round 1's question encoder over "
                                "a later round's passages)")
    answers_all: bool = Field(True, description="Add answers_all: the question's answers in every language "
                              "of the QA file (for R^multi); costs one extra pass over the file")
    block_size: int = Field(256, ge=1, description="Questions per block (the unit of work and of resume)")
    encoder_actors: int = Field(1, ge=1, description="Query-encoder actors")
    writer_actors: int = Field(1, ge=1, description="Search-and-write actors")
    search_actors: int = Field(1, ge=1, description="Actors the index shards are spread over")
    actor_cpus: float = Field(0.5, gt=0, description="CPUs per encoder / writer actor")
    search_actor_cpus: float = Field(0.25, gt=0, description="CPUs per shard-searcher actor")
    actor_gpus: float = Field(0.0, ge=0, description="GPUs per query-encoder actor")
    threads: int = Field(1, ge=1, description="Math threads per encoder actor on CPU")
    timeout_s: float = Field(600, gt=0, description="Longest wait for one block's search")



    @field_validator("langs")
    @classmethod
    def _known_langs(cls, value: str | None) -> str | None:
        return ",".join(parse_langs(value)) if value else None

    @model_validator(mode="after")
    def _one_selection(self) -> "RetrieveConfig":
        if self.lang and self.langs:
            raise ValueError("pass either --lang or --langs, not both")
        if self.retriever != "bm25" and not self.index:
            raise ValueError(f"--retriever {self.retriever} needs --index (a dense index made by `ray-cora embed`)")
        if self.retriever != "dense" and not self.lexical_index:
            raise ValueError(f"--retriever {self.retriever} needs --lexical-index (made by `ray-cora index-bm25`)")
        return self
