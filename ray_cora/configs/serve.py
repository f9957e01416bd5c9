"""Options of the Serve application: what it hosts, its input limits and its batching (pure)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ray_cora.configs.base import JobConfig, RayJobConfig
from ray_cora.configs.options import DecodingOptions, OptionalEncoderSpec, SearchOptions


class ServeAppOptions(SearchOptions, DecodingOptions, JobConfig):
    """What the application serves. ``serve run ray_cora.serve.app:build_app index=s3://...`` and
    the ``args:`` of a ``serve deploy`` config are validated against these fields."""

    index: str | None = Field(None, description="Sharded FAISS index URI (ray-cora embed --out); "
                              "default: the demo corpus, embedded and indexed at replica start")
    passages: str | None = Field(None, description="Passage file or folder the index was built from "
                                 "(TSV/JSONL/Parquet); without passage_store a passage store is built from "
                                 "it at replica start. Default: the corpus the index manifest names, or the "
                                 "demo corpus when there is no index")
    passage_store: str | None = Field(None, description="Committed passage store URI (ray-cora retrieve's "
                                      "--passage-store): texts and titles are looked up there by pid, "
                                      "bucket by bucket; needs index")
    passage_cache_buckets: int = Field(64, ge=1, description="Passage-store buckets each Retriever replica "
                                       "keeps memory-mapped (LRU; a lookup reads only the rows it returns)")
    shard_groups: int = Field(1, ge=1, le=1024, description="Split the index's shards over this many "
                              "IndexShardGroup actors (IndexShardGroup0..N-1, the Retriever's deployment-"
                              "scoped actors; group g holds shards g, g+N, ...); the Retriever fans each query "
                              "batch out to every group and merges the top-k exactly. 1: the Retriever holds "
                              "the whole index; needs index when above 1")
    shard_group_copies: int = Field(1, ge=1, le=64, description="Copies of each shard group's actor "
                                    "(IndexShardGroup<g>-<c>, c = 0..C-1; with 1 the names stay IndexShardGroup<g>): "
                                    "the Retriever sends each search to one copy per group in turn and skips a "
                                    "dead copy while another answers. Throughput and availability; every copy "
                                    "holds its group's shards, so the index takes C times its memory; needs "
                                    "shard_groups above 1")
    shard_group_cpus: float | None = Field(None, gt=0, description="CPUs reserved for each IndexShardGroup "
                                           "actor (default: replica_cpus)")
    shard_group_memory: int | None = Field(None, gt=0, description="Bytes of Ray's memory resource reserved "
                                           "for each IndexShardGroup actor (its FAISS shards live in its heap; "
                                           "default: none reserved)")
    lexical_index: str | None = Field(None, description="Sharded BM25 index URI (ray-cora index-bm25 --out) over "
                                      "the same corpus: /v1/retrieve then answers in bm25 and hybrid mode too "
                                      "(the request's `retriever`). Each Retriever replica memory-maps it and "
                                      "searches it itself, also with shard_groups above 1")
    fusion: str | None = Field(None, description="Fusion weights for hybrid mode (fusion.json, or a folder holding "
                               "one; ray-cora tune fusion). Default: the one in lexical_index, else in index, "
                               "else equal-weight RRF for every language; needs lexical_index")
    retriever: Literal["dense", "bm25", "hybrid"] | None = Field(
        None, description="The retriever of a request that names none (and of /v1/answer): dense, bm25 or hybrid "
        "(the dense and BM25 lists fused per question language). Default: hybrid when lexical_index is given, "
        "else dense; bm25 and hybrid need lexical_index")
    encoder: OptionalEncoderSpec = Field(None, description="Question encoder spec; must be the model that built "
                                         "the index (compared by checkpoint checksum and options). Default: the one "
                                         "the index manifest records (mUSE without an index)")
    generator: str | None = Field(None, description="mGEN (HF seq2seq) checkpoint path or URI; "
                                  "without one /v1/answer answers 503 'no generator configured'")
    generator_tokenizer: str | None = Field(None, description="Tokenizer folder/name for a generator "
                                            "checkpoint without tokenizer files (mT5's: google/mt5-base)")
    answer_passages: int = Field(5, ge=1, le=100, description="Retrieved passages the generator reads")
    pivot_db: str | None = Field(None, description="Pivot database URI (ray-cora pivot build --out); "
                                 "without one /v1/pivot answers 503 'no pivot database configured'")
    pivot_labels: str | None = Field(None, description="Wikidata labels URI (ray-cora wikidata labels "
                                     "--out) used to translate pivot answers")
    pivot_reranker: str | None = Field(None, description="Cross-encoder checkpoint for pivot reranking")
    pivot_threshold: float | None = Field(None, description="Pivot abstention threshold (pivot calibrate)")
    max_question_chars: int = Field(1000, ge=1, le=100_000, description="Longest question accepted "
                                    "(characters); longer ones get 422")
    max_k: int = Field(100, ge=1, le=10_000, description="Largest k a client may ask /v1/retrieve for")
    default_k: int = Field(10, ge=1, description="k when a request does not give one")
    max_nprobe: int = Field(1024, ge=1, description="Largest nprobe a /v1/retrieve request may ask for "
                            "(IVF indexes; a request's nprobe overrides the index's for that request)")
    max_ef_search: int = Field(4096, ge=1, description="Largest ef_search a /v1/retrieve request may ask "
                               "for (HNSW indexes)")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key; when "
                                    "it is set, requests need the header Authorization: Bearer <key> (or "
                                    "X-API-Key: <key>), 401 otherwise")
    max_batch_size: int = Field(16, ge=1, le=1024, description="Largest batch of the encoder, generator "
                                "and pivot deployments (1: no batching). A lone request runs at once; "
                                "requests arriving while a batch runs form the next one")
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=10, description="Accepted for older configs, no "
                                        "effect: batches never wait to fill (ray_cora.serve.core.Batcher)")
    max_replicas: int = Field(2, ge=1, description="Autoscaling upper bound of each deployment")
    replica_cpus: float = Field(0.25, gt=0, description="CPUs reserved per replica (local runs; "
                                "cluster/serve_config.yaml sets GPUs for the encoder and generator)")
    replica_gpus: float = Field(0, ge=0, description="GPUs per encoder/generator replica")
    health_check_period_s: float = Field(10.0, gt=0, description="How often Serve checks each replica "
                                         "(a dead replica is replaced after a failed check)")
    max_queued_requests: int = Field(256, ge=1, description="Requests each model deployment (Retriever, "
                                     "Generator, PivotReranker) queues beyond those its replicas run; past "
                                     "that a request gets 503 with Retry-After at once (load shedding)")
    readiness_timeout_s: float = Field(5.0, gt=0, le=60, description="GET /readyz answers 503 unless every "
                                       "model deployment (Retriever, Generator, PivotReranker) answers a "
                                       "ping within this many seconds")


    @model_validator(mode="after")
    def _k_in_range(self) -> "ServeAppOptions":
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) is above max_k ({self.max_k})")
        if self.passage_store and not self.index:
            raise ValueError("passage_store needs index: without an index the demo corpus is embedded "
                             "from passages at start-up")
        if self.shard_groups > 1 and not self.index:
            raise ValueError(f"shard_groups={self.shard_groups} needs index: the demo index is built "
                             "inside the Retriever replica, so there is nothing to split; pass index=<URI> "
                             "(ray-cora embed --out) or leave shard_groups at 1")
        if self.retriever in ("bm25", "hybrid") and not self.lexical_index:
            raise ValueError(f"retriever={self.retriever} needs lexical_index: pass lexical_index=<URI> (ray-cora "
                             "index-bm25 --out) or leave retriever at dense")
        if self.fusion and not self.lexical_index:
            raise ValueError("fusion needs lexical_index: the fusion weights say how to fuse the dense and BM25 "
                             "lists; pass lexical_index=<URI> (ray-cora index-bm25 --out) or drop fusion")
        if self.shard_group_copies > 1 and self.shard_groups == 1:
            raise ValueError(f"shard_group_copies={self.shard_group_copies} needs shard_groups above 1: with 1 "
                             "the Retriever holds the index and scales with its replicas (max_replicas); "
                             "set shard_groups or leave shard_group_copies at 1")
        return self

    @property
    def default_retriever(self) -> str:
        """``retriever``, else hybrid with a lexical index, else dense.

        >>> ServeAppOptions().default_retriever, ServeAppOptions(lexical_index="/bm25").default_retriever
        ('dense', 'hybrid')
        """
        return self.retriever or ("hybrid" if self.lexical_index else "dense")


class ServeConfig(ServeAppOptions, RayJobConfig):
    """Serve the HTTP API (POST /v1/retrieve, /v1/answer, /v1/pivot; GET /healthz; /docs) on Ray Serve.
    Without --index the demo corpus is embedded with mUSE at replica start; --pivot-db demo builds
    the demo pivot database."""

    host: str = Field("127.0.0.1", description="Address Serve's HTTP proxy binds (0.0.0.0 exposes it "
                      "to the network)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    throughput_optimized: bool = Field(True, description="Start Ray with Ray Serve's throughput-optimized "
                                       "mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1: gRPC between replicas, user code "
                                       "on each replica's event loop, direct ingress on the same host); only "
                                       "when this command starts Ray itself: on a cluster the nodes' "
                                       "environment decides (cluster/ sets it)")

    def app_options(self) -> ServeAppOptions:
        return ServeAppOptions.model_validate({k: v for k, v in self.to_dict().items()
                                               if k in ServeAppOptions.model_fields})
