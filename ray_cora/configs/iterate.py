"""Config of ``ray-cora iterate``: CORA's iterative training with cross-lingual data mining (Algorithm 1)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from ray_cora.configs.base import JobConfig, RayJobConfig
from ray_cora.configs.embed import EmbedConfig
from ray_cora.configs.generate import GenerateConfig
from ray_cora.configs.options import LangCode, OptionalLangCode
from ray_cora.configs.retrieve import RetrieveConfig
from ray_cora.configs.train import TrainMDPRConfig, TrainMGENConfig
from ray_cora.demo import DEMO_PASSAGES, DEMO_QUESTIONS, DEMO_WIKIDATA_LABELS
from ray_cora.errors import ConfigError
from ray_cora.languages import CORA_MINING_LANGS, parse_langs

TINY = "tiny"

# The stage jobs whose options can be set per stage, and the options the loop sets itself.
STAGE_JOBS: dict[str, tuple[type[JobConfig], tuple[str, ...]]] = {
    "mdpr": (TrainMDPRConfig, ("train", "out", "init", "lang", "ray_address", "num_cpus")),
    "embed": (EmbedConfig, ("passages", "out", "encoder", "format", "lang", "ray_address", "num_cpus")),
    "retrieve": (RetrieveConfig,
                 ("index", "questions", "dataset", "out", "encoder", "lang", "langs", "k", "passages",
                  "passage_format", "passage_store", "check_encoder", "ray_address", "num_cpus")),
    "mgen": (TrainMGENConfig, ("train", "out", "init", "tokenizer", "top_k", "ray_address", "num_cpus")),
    "generate": (GenerateConfig, ("model", "retrieval", "out", "tokenizer", "top_k", "ray_address", "num_cpus")),
}


class IterateConfig(RayJobConfig):
    """CORA's Algorithm 1 as one resumable Ray job. For t = 1..T: train mDPR on B_t (from round t-1's
    model) → re-embed the corpus and rebuild the index → retrieve for every training question →
    train mGEN (answer translation through Wikidata labels switched on after an epoch) → score the
    dev set → (t < T) mine: retrieved passages and, for English questions, the same entity's
    articles in other languages (Wikidata sitelinks) become candidates that mGEN labels;
    B_t+1 = B_t + the new positives/negatives. Every stage writes <out>/round-<t>/<stage>/ with a
    marker written last; a rerun skips finished stages (checksums verified) and resumes the rest.
    Each round writes stats.json and summary.md. Stage options go in YAML mappings (mdpr:, embed:,
    retrieve:, mgen:, generate:) or as JSON on the command line (--mdpr '{"epochs": 2}'), which is merged
    into the YAML's mapping key by key (the YAML's other mdpr options stay)."""

    out: str = Field(..., description="Output URI: round-<t>/<stage>/ folders, summary.md, iterate.json")
    rounds: int = Field(3, ge=1, description="T: rounds (CORA: 3 = initial training + two iterations)")
    questions: str = Field(str(DEMO_QUESTIONS), description="Training questions (QA file) to retrieve for "
                           "and mine; default: the demo questions")
    dataset: Literal["mkqa", "xor", "xquad", "squad", "nq", "jsonl"] = Field("jsonl", description="Format of --questions")
    train: list[str] = Field(default_factory=list, description="B_1: DPR retriever JSON/JSONL/Parquet files "
                             "(CORA's released training data); default: built from the gold_pids of --questions")
    train_lang: LangCode = Field("en", description="Language of --train records without a lang field (DPR's NQ data, "
                            "CORA's initial mDPR data, is English): language-link mining starts from English ones")
    initial_positives: Literal["same-language", "any-language"] = Field(
        "same-language", description="When B_1 is built from gold_pids: keep only gold passages in the "
        "question's language (what CORA starts from), or all")
    dev_questions: str | None = Field(None, description="Dev QA file (default: a --dev-fraction of --questions, "
                                      "split by question id)")
    dev_dataset: Literal["mkqa", "xor", "xquad", "squad", "nq", "jsonl"] | None = Field(
        None, description="Format of --dev-questions (default: --dataset)")
    dev_fraction: float = Field(0.2, ge=0, lt=1, description="Share of --questions' ids held out as dev "
                                "when no --dev-questions is given (0: no dev scoring)")
    dev_mode: Literal["xor", "mkqa"] = Field("xor", description="Scorer of the dev answers")
    corpus: str = Field(str(DEMO_PASSAGES), description="Multilingual passage corpus (TSV/JSONL/Parquet)")
    corpus_format: Literal["tsv", "jsonl", "parquet"] | None = Field(None, description="Corpus format "
                                                                      "(default: from file names)")
    corpus_lang: OptionalLangCode = Field(None, description="Language of corpus passages without a lang column "
                                    "(default: und, or what --corpus-langs records)")
    corpus_langs: str | None = Field(None, description="An index whose per-pid languages fill in passages the "
                                     "corpus gives none (e.g. `ray-cora import-embeddings` of CORA's wiki_emb_* "
                                     "beside its all_w100.tsv)")
    wikidata: str | None = Field(str(DEMO_WIKIDATA_LABELS), description="Wikidata labels + sitelinks: a "
                                 "`ray-cora wikidata labels` output folder or an entity JSONL; empty: no "
                                 "language-link mining and no answer translation")
    link_langs: str = Field(",".join(CORA_MINING_LANGS), description="Languages whose articles language links "
                            "reach (CORA A.2's 15: ar fi ja ko ru es sv he th da fr it nl pl pt; a list or a set "
                            "name such as mkqa)")
    synthetic_langs: str = Field(",".join(CORA_MINING_LANGS), description="Languages English answers are "
                                 "translated into for synthetic mGEN examples (CORA A.2's 15)")
    synthetic_max_langs: int = Field(10, ge=1, description="Synthetic mGEN data: at most this many of "
                                     "--synthetic-langs sampled per English question (CORA A.2: 10)")
    synthetic_fraction: float = Field(0.5, gt=0, le=1, description="Synthetic mGEN data: share of the sampled "
                                      "(question, language) pairs with a translated answer kept (CORA A.2: 50%)")
    seed: int = Field(0, description="Seed of the synthetic-data draws")
    mdpr_init: str = Field(..., description="mDPR start: hf:<mBERT name/path>, dpr:<.cpt>, or 'tiny' (a small "
                           "random BERT built from the corpus text: smoke tests only)")
    mgen_init: str = Field(..., description="mGEN start: seq2seq folder/name (google/mt5-base), or 'tiny'")
    mgen_tokenizer: str | None = Field(None, description="Tokenizer when the mGEN folder has none")
    keep_first_question_encoder: bool = Field(False, description="Encode questions with round 1's question "
                                              "encoder in every round (CORA's appendix)")
    k: int = Field(100, ge=1, le=2000, description="Passages retrieved per question")
    top_k: int = Field(15, ge=1, description="Passages per question in mGEN's input")
    mine_k: int = Field(10, ge=1, description="Top retrieved passages per training question that become "
                        "mining candidates")
    answer_translation_after_epoch: int = Field(
        3, ge=0, description="Round 1's mGEN training: after this many epochs, add the synthetic examples "
        "(English questions with answers translated through Wikidata labels; CORA A.2: after the 3rd epoch of "
        "initial training, not in later rounds); >= mgen epochs: never")
    mdpr: dict[str, Any] = Field(default_factory=dict, description="Options of train-mdpr (JSON/YAML mapping)")
    embed: dict[str, Any] = Field(default_factory=dict, description="Options of embed")
    retrieve: dict[str, Any] = Field(default_factory=dict, description="Options of retrieve")
    mgen: dict[str, Any] = Field(default_factory=dict, description="Options of train-mgen")
    generate: dict[str, Any] = Field(default_factory=dict, description="Options of generate (dev answers "
                                     "and mining labels)")

    @field_validator("mdpr", "embed", "retrieve", "mgen", "generate", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected a JSON object such as '{{\"epochs\": 2}}' ({exc.msg})") from None
        return value

    @field_validator("link_langs", "synthetic_langs")
    @classmethod
    def _langs(cls, value: str) -> str:
        return ",".join(parse_langs(value))

    @field_validator("mdpr", "embed", "retrieve", "mgen", "generate")
    @classmethod
    def _stage_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        stage = info.field_name
        reserved = STAGE_JOBS[stage][1]
        job_cls = STAGE_JOBS[stage][0]
        try:  # old names (aliases) under the options' own names: {"concurrency": 8} → {"actors": 8}
            options = job_cls.canonical(options)
        except ValueError as exc:
            raise ValueError(f"{stage}: {exc}") from None
        for key in options:
            if key in reserved:
                raise ValueError(f"{stage}.{key} is set by the iterative loop itself; leave it out")
            if key not in job_cls.model_fields:
                known = ", ".join(k for k in job_cls.model_fields if k not in reserved)
                raise ValueError(f"{stage}.{key} is not an option of {job_cls.__name__} (known: {known})")
        return options

    def stage_config(self, stage: str, **loop_values: Any) -> Any:
        """The stage job's own config: the loop's values over the user's stage options."""
        cls = STAGE_JOBS[stage][0]
        try:
            return cls.model_validate({**getattr(self, stage), **loop_values})
        except Exception as exc:  # pydantic ValidationError: name the stage
            raise ConfigError(f"iterate option '{stage}': {exc}") from None
