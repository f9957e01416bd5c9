"""``ray-cora passages``: Wikipedia (wikiextractor ``--json`` output) -> 100-token passages as
Parquet shards with a manifest. The config lives here; the work in
:mod:`ray_cora.pipelines.build_passages` (imported only when the job runs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ray_cora.configs.base import RayJobConfig
from ray_cora.configs.options import TaskOptions
from ray_cora.data.wiki import WikiOptions, parse_input
from ray_cora.errors import ConfigError


class PassagesConfig(TaskOptions, RayJobConfig):
    """Split wikiextractor --json dumps (one folder per language) into fixed-size passages
    (pid, lang, title, text), written as Parquet shards, one or more per input file, and a
    manifest.json committed last. A rerun skips input files whose shards are already written.
    A unit of work (--tasks, --task-cpus) is one input file."""

    inputs: list[str] = Field(..., description="LANG=URI pairs, one per language: wikiextractor "
                              "--json output folders or files (.bz2/.gz ok), as in "
                              "en=s3://bucket/enwiki,ja=/data/jawiki")
    out: str = Field(..., description="Output folder or URI for the Parquet shards and manifest.json")
    passage_tokens: int = Field(100, ge=1, description="Tokens per passage (words; for zh/ja/th/km/lo/my "
                                "see ray_cora.data.segment)")
    min_tail_tokens: int = Field(20, ge=0, description="Drop an article's last piece when it has this "
                                 "many tokens or fewer (0 keeps every tail, as DPR)")
    min_article_tokens: int = Field(20, ge=0, description="Drop articles with fewer tokens than this")
    drop_disambiguation: bool = Field(True, description="Drop disambiguation pages (title marker such "
                                      "as '(disambiguation)', or a 'may refer to:' list)")
    segmenter: Literal["auto", "chars"] = Field(
        "auto", description="auto: word segmenters where installed (jieba for zh, fugashi+unidic-lite "
        "for ja, pythainlp for th), else one token per character; chars: always one token per "
        "character for languages written without spaces")
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first malformed input line (file:line); skip: count "
        "it, write it to _quarantine/ and go on")
    rows_per_shard: int = Field(100_000, ge=1, description="Most passages in one Parquet file; the "
                                "passages of an input file past that go to its next piece (-001, -002)")
    resume: bool = Field(True, description="Keep shards a previous run committed for the same input "
                         "and options; false redoes every input file")

    @field_validator("inputs")
    @classmethod
    def _one_folder_per_language(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one LANG=URI input")
        try:
            pairs = [parse_input(spec) for spec in value]
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        langs = [lang for lang, _ in pairs]
        if len(set(langs)) != len(langs):
            twice = sorted({lang for lang in langs if langs.count(lang) > 1})
            raise ValueError(f"language {', '.join(twice)} given more than once; give one folder per "
                             "language (put several dumps of one language under one folder)")
        return [f"{lang}={uri}" for lang, uri in pairs]

    @model_validator(mode="after")
    def _tail_below_passage(self) -> "PassagesConfig":
        if self.min_tail_tokens >= self.passage_tokens:
            raise ValueError(f"min_tail_tokens ({self.min_tail_tokens}) must be smaller than "
                             f"passage_tokens ({self.passage_tokens})")
        return self

    def input_pairs(self) -> list[tuple[str, str]]:
        return [parse_input(spec) for spec in self.inputs]

    def wiki_options(self) -> WikiOptions:
        return WikiOptions(self.passage_tokens, self.min_tail_tokens, self.min_article_tokens,
                           self.drop_disambiguation, self.segmenter)
