"""Config of ``ray-cora demo``."""

from __future__ import annotations

from pydantic import Field, field_validator

from ray_cora.configs.base import RayJobConfig
from ray_cora.demo import DEMO_PASSAGES, DEMO_QUESTIONS
from ray_cora.encoders import check_encoder_spec


class DemoConfig(RayJobConfig):
    """Embed the demo corpus with Ray Data, index it with FAISS, retrieve for every demo question."""

    out: str = Field("demo-out", description="Output folder or URI for report.md, metrics.json, "
                     "retrieval.jsonl and the index")
    encoder: str = Field("muse", description="Encoder spec for questions and passages")
    passages: str = Field(str(DEMO_PASSAGES), description="Passage file or folder (TSV/JSONL/Parquet)")
    questions: str = Field(str(DEMO_QUESTIONS), description="Questions in ray_cora's QA JSONL format")
    k: int = Field(10, ge=1, le=1000, description="Passages retrieved per question")
    batch_size: int = Field(64, ge=1, description="Texts per encoder batch")
    num_actors: int = Field(1, ge=1, description="Encoder actors in the Ray Data actor pool")
    actor_cpus: float = Field(0.5, gt=0, description="CPUs reserved per encoder actor (keep below the "
                              "machine's CPU count so read tasks can run)")

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        return check_encoder_spec(value)
