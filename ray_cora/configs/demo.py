"""Config of ``ray-cora demo``."""

from __future__ import annotations

from pydantic import Field

from ray_cora.configs.base import RayJobConfig
from ray_cora.configs.options import ActorPoolOptions, EncoderSpec
from ray_cora.demo import DEMO_PASSAGES, DEMO_QUESTIONS


class DemoConfig(ActorPoolOptions, RayJobConfig):
    """Embed the demo corpus with Ray Data (an actor pool of encoder actors), index it with FAISS,
    retrieve for every demo question; then answer a few of them through the English pivot (RM-MIPS
    over the demo pivot database, answers translated back with its Wikidata labels)."""

    out: str = Field("demo-out", description="Output folder or URI for report.md, metrics.json, "
                     "retrieval.jsonl, pivot.jsonl, the index and the pivot database")
    encoder: EncoderSpec = Field("muse", description="Encoder spec for questions and passages")
    passages: str = Field(str(DEMO_PASSAGES), description="Passage file or folder (TSV/JSONL/Parquet)")
    questions: str = Field(str(DEMO_QUESTIONS), description="Questions in ray_cora's QA JSONL format")
    k: int = Field(10, ge=1, le=1000, description="Passages retrieved per question")
    batch_size: int = Field(64, ge=1, description="Texts per encoder batch")
    pivot_questions: int = Field(7, ge=1, le=100, description="Questions answered through the English pivot: "
                                 "one per script first (the demo's 7 non-English scripts), entity answers first")
    pivot_threshold: float | None = Field(None, description="Pivot abstention threshold (as serve's "
                                          "--pivot-threshold; default none: always answer, as serve does)")

