"""Configs of ``ray-cora evaluate retrieval`` and ``ray-cora evaluate all``."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ray_cora.configs.base import JobConfig
from ray_cora.configs.options import DecodingOptions
from ray_cora.configs.retrieve import RetrieveConfig

GROUPINGS = ("auto", "mkqa", "xor", "none")
# A run label: what a table column and a metrics.json key are named by; no "/" or ":" so that
# `label=URI` never splits a path or a URI scheme.
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def split_labelled_run(entry: str) -> tuple[str | None, str]:
    """``label=URI`` → ``(label, URI)``; a bare URI (or one whose text before ``=`` is no label,
    as in ``s3://b/k=v``) → ``(None, URI)``.

    >>> split_labelled_run("bm25=runs/bm25"), split_labelled_run("runs/dense")
    (('bm25', 'runs/bm25'), (None, 'runs/dense'))
    """
    label, sep, uri = entry.partition("=")
    if sep and _LABEL.fullmatch(label.strip()) and uri.strip():
        return label.strip(), uri.strip()
    return None, entry.strip()



class EvaluateRetrievalConfig(JobConfig):
    """Score a retrieval output: R^L@k (an answer in the question's language is in a top-k passage),
    R^multi@k (an answer in any language is), gold-passage recall R^gold@k when gold pids are known
    (XQuAD), per language and macro. Writes metrics.json, report.md and PNG plots to --out."""

    retrieval: str = Field(..., description="`ray-cora retrieve` output folder, or retrieval JSONL file/folder")
    out: str = Field(..., description="Folder URI for metrics.json, report.md, per_language.png, "
                     "retrieved_languages.png")
    ks: list[int] = Field([1, 5, 10, 20, 100], description="Cut-offs k (those above the passages "
                          "retrieved per question are left out)")
    heatmap_k: int = Field(10, ge=1, description="Top passages counted in the retrieved-language heatmap")
    groups: Literal["auto", "mkqa", "xor", "none"] = Field(
        "auto", description="Column groups of the paper table: the CORA paper's MKQA (seen / mDPR-seen / "
        "mGEN-seen / unseen) or XOR-TyDi grouping, auto (by the languages present) or none")
    title: str | None = Field(None, description="Title of the report (default: from the input)")
    compare: list[str] = Field([], description="Other retrieval outputs of the same questions to score beside "
                               "--retrieval, as LABEL=URI or URI (label: the manifest's retriever, else the "
                               "folder name); writes side-by-side tables, comparison.png and every run's "
                               "metrics under its label")
    label: str | None = Field(None, description="Label of --retrieval's run in a --compare report (default: "
                              "the manifest's retriever, else the folder name)")
    common_questions: bool = Field(False, description="With --compare: score only the questions every run has "
                                   "(the report says how many were left out) instead of refusing runs whose "
                                   "questions differ")

    @field_validator("ks")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError("ks must be positive integers, e.g. 1,5,10,20,100")
        return sorted(set(value))

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        if value is not None and not _LABEL.fullmatch(value):
            raise ValueError(f"a label is letters, digits and _.+- (no '/', ':' or '='), e.g. dense")
        return value

    @model_validator(mode="after")
    def _runs(self) -> "EvaluateRetrievalConfig":
        if self.compare:
            labels = [self.label] + [split_labelled_run(entry)[0] for entry in self.compare]
            given = [label for label in labels if label is not None]
            twice = sorted({label for label in given if given.count(label) > 1})
            if twice:
                raise ValueError(f"--compare / --label: the label {twice[0]!r} names two runs: give each run "
                                 "its own, as --compare bm25=URI,hybrid=URI")
        elif self.label is not None or self.common_questions:
            option = "--label" if self.label is not None else "--common-questions"
            raise ValueError(f"{option} only applies with --compare: add --compare LABEL=URI, or drop {option}")
        return self

    @property
    def runs(self) -> list[tuple[str | None, str]]:
        """``(label or None, uri)`` of --retrieval, then of every --compare run, in order."""
        return [(self.label, self.retrieval)] + [split_labelled_run(entry) for entry in self.compare]



class EvaluateAllConfig(DecodingOptions, RetrieveConfig):
    """One Ray job: retrieve for every requested language in parallel (one Ray Data stream; blocks
    of different languages run side by side on the actor pools), then — with --generator — answer
    every question with mGEN (`ray-cora generate` on an actor pool) and score the answers like
    `evaluate qa`; retrieval is scored like `evaluate retrieval`. Outputs: <out>/retrieval/ and
    <out>/predictions.jsonl (both resumable) and <out>/metrics.json, report.md, PNGs."""

    ks: list[int] = Field([1, 5, 10, 20, 100], description="Cut-offs k for R^L@k / R^multi@k / R^gold@k")
    heatmap_k: int = Field(10, ge=1, description="Top passages counted in the retrieved-language heatmap")
    groups: Literal["auto", "mkqa", "xor", "none"] = Field("auto", description="Column groups of the paper table")
    generator: str | None = Field(None, description="mGEN model folder, as `ray-cora generate --model` takes "
                                  "(e.g. <train-mgen out>/model or CORA's mGEN_model); without it only "
                                  "retrieval is run and scored")
    generator_tokenizer: str | None = Field(None, description="Tokenizer of --generator when its folder has no "
                                            "tokenizer files (mT5's: google/mt5-base)")
    mode: Literal["xor", "mkqa"] | None = Field(None, description="Scorer of the answers, as `evaluate qa "
                                                "--mode` (default: mkqa for --dataset mkqa, else xor; CORA's "
                                                "paper scored MKQA with the xor scorer: pass xor to compare)")
    top_k: int = Field(15, ge=1, description="Retrieved passages given to mGEN per question (as `generate "
                       "--top-k`; at most --k are there)")
    generate_batch_size: int = Field(16, ge=1, description="Questions per mGEN generate() call")
    generate_actors: int = Field(1, ge=1, description="mGEN actors")
    generate_actor_cpus: float = Field(1.0, gt=0, description="CPUs per mGEN actor")
    generate_actor_gpus: float = Field(0.0, ge=0, description="GPUs per mGEN actor")
    sacrebleu: bool = Field(True, description="Also report corpus-level sacreBLEU per language (a modern "
                            "extra figure, not the official BLEU)")

    @property
    def qa_mode(self) -> str:
        """The scorer: --mode, else the dataset's own (MKQA's for mkqa, XOR-TyDi/CORA's otherwise)."""
        return self.mode or ("mkqa" if self.dataset == "mkqa" else "xor")
