"""Config of ``ray-cora tune fusion`` (learn the hybrid's dense/BM25 fusion per language on dev data)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ray_cora.configs.base import JobConfig


class TuneFusionConfig(JobConfig):
    """Learn how to fuse the dense and the BM25 lists of each question language on labelled dev
    questions: a grid over weighted RRF (k) and a convex combination of normalised scores (min-max /
    z-score / rank), dense weight 0..1 (0 and 1 switch a side off), best gold@1 + gold@10. Languages
    with fewer than --min-dev-questions get the setting tuned on all dev questions pooled. Writes
    fusion.json into --index (manifest rewritten last) or to --out. Runs in this process."""

    dense: str = Field(..., description="Retrieval output of the dense retriever on the dev questions "
                       "(`ray-cora retrieve` folder or JSONL), with gold_pids")
    bm25: str = Field(..., description="Retrieval output of the lexical (BM25) retriever on the same questions")
    neutral: str | None = Field(None, description="Optional retrieval output of BM25 hits for the questions' "
                                "language-neutral terms in the other languages' indexes: tunes the setting of "
                                "languages with no lexical index (unset: the setting measured on XQuAD)")
    cross_lingual: bool = Field(True, description="Languages with no lexical index: fuse the dense list with "
                                "BM25 hits of the question's language-neutral terms (numbers, Latin-script names) "
                                "in the other languages' indexes, with the setting measured on XQuAD (or the one "
                                "--neutral tunes); false: the dense list alone")
    index: str | None = Field(None, description="Committed index folder to write fusion.json into (its "
                              "manifest is rewritten last)")
    out: str | None = Field(None, description="Instead of --index: the file URI to write fusion.json to")
    min_dev_questions: int = Field(50, ge=1, description="Dev questions a language needs to be tuned on its own")
    weight_step: float = Field(0.05, gt=0, le=0.5, description="Step of the dense-weight grid from 0 to 1")
    methods: list[Literal["rrf", "convex"]] = Field(["rrf", "convex"], description="Fusion methods tried")
    rrf_ks: list[int] = Field([5, 20, 60, 200], description="RRF constants k tried")
    normalizations: list[Literal["minmax", "zscore", "rank"]] = Field(
        ["minmax", "zscore", "rank"], description="Score normalisations tried by the convex combination")
    depth: int = Field(100, ge=1, description="Passages of each list that take part in the fusion")
    dry_run: bool = Field(False, description="Print the chosen settings, write nothing")

    @field_validator("rrf_ks")
    @classmethod
    def _ks(cls, value: list[int]) -> list[int]:
        if not value or any(k < 0 for k in value):
            raise ValueError("rrf_ks must be non-negative integers, e.g. 5,20,60,200")
        return sorted(set(value))

    @model_validator(mode="after")
    def _one_target(self) -> "TuneFusionConfig":
        if not self.dry_run and bool(self.index) == bool(self.out):
            raise ValueError("give exactly one of --index (a committed index folder) or --out (a file URI)")
        return self
