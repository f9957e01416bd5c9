"""Configs of ``ray-cora evaluate qa`` and ``ray-cora predictions convert``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ray_cora.configs.base import JobConfig
from ray_cora.data.qa import DATASETS

Mode = Literal["xor", "mkqa"]



Format = Literal["ours", "xor", "mkqa"]



class EvaluateQAConfig(JobConfig):
    """Score QA predictions exactly as the official scorers do (xor: XOR-TyDi/CORA, mkqa: MKQA)
    and write metrics.json, report.md, per_language.png and per_question.jsonl to --out."""

    mode: Mode = Field(..., description="Scorer to mirror: xor (XOR-TyDi / CORA: MeCab for ja, "
                       "NLTK BLEU) or mkqa (MKQA: mixed segmentation, articles per language)")
    dataset: str = Field(..., description=f"Layout of the gold file(s): {', '.join(DATASETS)}")
    gold: list[str] = Field(..., description="Gold QA file(s), comma-separated (e.g. one XQuAD "
                            "file per language)")
    predictions: str = Field(..., description="Predictions: JSONL {qid, lang, prediction} "
                             "(or the official formats, see --predictions-format)")
    predictions_format: Format = Field("ours", description="ours (JSONL keyed by qid+lang), xor "
                                       "({id: answer} JSON) or mkqa (a {lang}.jsonl file or folder)")
    langs: list[str] | None = Field(None, description="Languages to score (codes or a set name "
                                    "such as mkqa); default: every language of the gold file")
    lang: str | None = Field(None, description="Language of a single-language gold file without "
                             "a language field (XQuAD/SQuAD), or of xor/mkqa-format predictions")
    keep_unanswerable: bool | None = Field(
        None, description="Score questions without a short answer (default: yes in mkqa mode, as "
        "the MKQA scorer does; no in xor mode, as CORA's tables)")
    sacrebleu: bool = Field(True, description="Also compute corpus-level sacreBLEU per language "
                            "(a modern extra figure, not the official BLEU)")
    title: str | None = Field(None, description="Title of the report")
    out: str = Field(..., description="Output folder: path, file:// or s3://")

    @model_validator(mode="after")
    def _one_selection(self) -> "EvaluateQAConfig":
        if self.lang and self.langs:
            raise ValueError("pass either --lang (the gold file's language) or --langs (languages to "
                             "score), not both: with --lang, only that language is scored")
        return self


class ConvertPredictionsConfig(JobConfig):
    """Convert predictions between our JSONL and the official scorers' formats."""

    from_format: Format = Field(..., description="Input format: ours, xor ({id: answer} JSON) or "
                                "mkqa ({lang}.jsonl file, or a folder of them)")
    to_format: Format = Field(..., description="Output format: ours (JSONL file), xor (JSON file) "
                              "or mkqa (a folder of {lang}.jsonl files)")
    input: str = Field(..., description="Input file (or folder for mkqa)")
    out: str = Field(..., description="Output file (folder for --to-format mkqa)")
    lang: str | None = Field(None, description="Language of every input record when the format "
                             "has none (xor; mkqa file not named {lang}.jsonl); on output, keep "
                             "only this language")
    gold: list[str] | None = Field(None, description="Gold file(s) giving each XOR id its language")
    dataset: str = Field("xor", description="Layout of --gold")
