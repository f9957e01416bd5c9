"""``ray-cora pivot build|run|calibrate|train-reranker|train-encoder``: one config model per job, and entry points."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ray_cora.configs.base import RayJobConfig, TrainRunConfig
from ray_cora.configs.options import ActorPoolOptions, EncoderSpec, IndexOptions, OptionalLangCode, OptionGroup
from ray_cora.configs.train import TrainLoggingOptions
from ray_cora.data.pairs import PAWSX_LANGS
from ray_cora.encoders import check_encoder_spec
from ray_cora.pivot.rerank import check_reranker_spec


def _reranker(value: str | None) -> str | None:
    if value:
        return check_reranker_spec(value)
    return None


class PivotBuildConfig(ActorPoolOptions, IndexOptions, RayJobConfig):
    """Embed English (question, answer[, answer QID]) records into a pivot database: a sharded
    FAISS index of the questions plus a Parquet answer table, on a Ray Data actor pool of encoder
    actors."""

    questions: str = Field(..., description="English QA records (path or URI)")
    dataset: Literal["jsonl", "nq", "squad", "xquad"] = Field(
        "jsonl", description="Input format: jsonl ({qid, question, answer|answers, answer_qid?}), "
        "nq (NQ-open), squad/xquad (SQuAD v1.1 JSON, English)")
    out: str = Field(..., description="Output folder or URI of the database")
    encoder: EncoderSpec = Field("muse", description="Sentence encoder spec (muse, or hf:<model>?pooling=mean "
                         "for LaBSE / paraphrase-multilingual models)")
    shard_size: int = Field(100_000, ge=1, description="Questions per index shard (and answer part); a "
                            "rerun after a crash redoes only missing or damaged shards")
    batch_size: int = Field(256, ge=1, description="Questions per encoder batch")
    threads: int = Field(1, ge=1, description="CPU threads per encoder actor")



class _PivotQueryConfig(ActorPoolOptions, RayJobConfig):
    """A pivot job that answers questions on a Ray Data actor pool of pipeline actors (encoder,
    reranker and translator in each)."""

    db: str = Field(..., description="Pivot database folder or URI (from `ray-cora pivot build`)")
    questions: str = Field(..., description="Questions to answer (path or URI)")
    dataset: Literal["mkqa", "xor", "nq", "xquad", "squad", "jsonl"] = Field(
        "jsonl", description="Question file format")
    lang: OptionalLangCode = Field(None, description="Keep only this language (for xquad/squad: the file's language)")
    reranker: str | None = Field(None, description="Cross-encoder spec hf:<seq-classification model> "
                                 "(RM-MIPS); without it the MIPS top-1 is the match")
    labels: str | None = Field(None, description="Wikidata label table (`ray-cora wikidata labels` output "
                               "or an entity JSONL) for answer translation")
    translator: str | None = Field(None, description="Machine translation fallback: "
                                   "hf:<seq2seq model>?style=marian|m2m|plain&langs=...")
    k: int = Field(10, ge=1, le=1000, description="English questions retrieved by MIPS (and reranked)")
    batch_size: int = Field(64, ge=1, description="Questions per actor batch")
    threads: int = Field(1, ge=1, description="CPU threads per pipeline actor (encoder, reranker, MT)")
    mmap: bool = Field(False, description="Memory-map the database's index shards (actors on one machine "
                       "share them; for databases of millions of questions)")


    @field_validator("reranker")
    @classmethod
    def _rerank(cls, value: str | None) -> str | None:
        return _reranker(value)


class PivotRunConfig(_PivotQueryConfig):
    """Answer questions through the English pivot database (MIPS, optional cross-encoder rerank,
    answer translation, abstention) on a Ray Data actor pool; writes predictions JSONL."""

    out: str = Field(..., description="Output folder or URI: parts/<lang>-<n>.jsonl predictions (one "
                     "block each) + manifest.json; `ray-cora evaluate qa --predictions` reads the folder")
    block_size: int = Field(1024, ge=1, description="Questions per output part (one language each); a "
                            "rerun after a crash redoes only unfinished parts")
    threshold: float | None = Field(None, description="Abstain below this score")
    calibration: str | None = Field(None, description="calibration.json from `ray-cora pivot calibrate` "
                                    "(its threshold is used unless --threshold is given)")


class PivotCalibrateConfig(_PivotQueryConfig):
    """Pick the smallest score threshold reaching a target precision on a labelled dev set."""

    out: str = Field(..., description="Output folder or URI (calibration.json, dev predictions)")
    target_precision: float = Field(0.8, gt=0, le=1, description="Precision to reach on answered questions")
    correct_by: Literal["answer", "qid"] = Field(
        "answer", description="answer: the translated prediction matches a gold answer; qid: the matched "
        "English question is the dev question's own (same qid or source_qid)")


# The Ray Train run options the reranker's training does not use (see PivotTrainRerankerConfig).
RERANKER_UNUSED_RUN_OPTIONS = ("checkpoint_every", "max_failures")

# Montero et al., "Pivot Through English" (MIA 2022), A.2-A.3 as issue 18 quotes them: the reranker
# (XLM-R large) is fine-tuned for 3 epochs at lr 1e-5 with a linearly decaying learning rate, on all
# of PAWS-X (75% of the mixture) and QQP (25%). docs/pivot.md says what could be checked here.
PAPER = "Montero et al. 2022, A.2-A.3"


class PairInputs(OptionGroup):
    """The labelled paraphrase pairs a pivot training job reads (train-reranker, train-encoder)."""

    options_title: ClassVar[str | None] = "Paraphrase pairs"
    pawsx_dir: str | None = Field(None, description="PAWS-X's x-final folder as Google ships it (x-final/<lang>/"
                                  "train.tsv, translated_train.tsv, dev_2k.tsv, test_2k.tsv): cross-lingual pairs, "
                                  "the English file joined by id with each --pawsx-langs file, both directions "
                                  "(English s1 + other s2, other s1 + English s2), the English label; every pair "
                                  f"is used ({PAPER}: all of PAWS-X, 0.75 of the mixture)")
    pawsx_langs: list[str] | None = Field(None, description="With --pawsx-dir: the languages joined with English "
                                          f"(default: all PAWS-X ships, {','.join(PAWSX_LANGS)})")
    # None is train; left None so a run recorded before this option existed still resumes.
    pawsx_split: Literal["train", "dev", "test"] | None = Field(
        None, description="With --pawsx-dir: which files: train (en/train.tsv + <lang>/translated_train.tsv; the "
        "default), dev (dev_2k.tsv), test (test_2k.tsv)")
    pawsx: list[str] = Field(default_factory=list, description="PAWS-X TSV files read each on its own "
                             "(same-language pairs; id sentence1 sentence2 label, e.g. x-final/en/train.tsv); every "
                             "pair is used, beside --pawsx-dir's if both are given")
    qqp: list[str] = Field(default_factory=list, description="QQP TSV files (id qid1 qid2 question1 question2 "
                           "is_duplicate; GLUE QQP/train.tsv): pairs are drawn (seeded) to make 1 - pawsx_share of "
                           f"the mixture ({PAPER}: 0.25)")
    pawsx_share: float = Field(0.75, gt=0, le=1, description="PAWS-X's share of the --pawsx + --qqp mixture, "
                               f"counted on the pairs used ({PAPER}: 0.75)")
    pairs: list[str] = Field(default_factory=list, description="Other labelled pair files instead: JSONL or headed "
                             "TSV with sentence1/sentence2/label or question1/question2/is_duplicate (not with "
                             "--pawsx/--qqp)")
    mix: list[float] | None = Field(None, description="With --pairs: sampling weight per file, e.g. 0.75,0.25 "
                                    "(default: every pair once)")
    max_pairs: int | None = Field(None, ge=1, description="With --pairs: use at most this many pairs (with --mix: "
                                  "the sample size)")

    @model_validator(mode="after")
    def _one_kind_of_input(self) -> "PairInputs":
        if self.pairs and (self.pawsx or self.qqp or self.pawsx_dir):
            raise ValueError("give --pawsx-dir/--pawsx/--qqp (the paper's mixture) or --pairs (other pair files), "
                             "not both")
        if not (self.pairs or self.pawsx or self.qqp or self.pawsx_dir):
            raise ValueError("no training pairs: give --pawsx-dir (or --pawsx) and --qqp files (or --pairs)")
        if (self.mix is not None or self.max_pairs is not None) and not self.pairs:
            raise ValueError("--mix and --max-pairs apply to --pairs only; --pawsx/--qqp use --pawsx-share")
        if not self.pawsx_dir and (self.pawsx_langs is not None or self.pawsx_split is not None):
            raise ValueError("--pawsx-langs and --pawsx-split choose files under --pawsx-dir: give --pawsx-dir")
        if self.pawsx_langs is not None and not self.pawsx_langs:
            raise ValueError("--pawsx-langs is empty: name at least one language to join with English")
        return self


class PivotTrainRerankerConfig(PairInputs, TrainLoggingOptions, TrainRunConfig):
    """Fine-tune a cross-encoder on labelled paraphrase pairs with Ray Train; the defaults are
    Montero et al.'s recipe (all of PAWS-X 75% + QQP 25%, 3 epochs, lr 1e-5 decaying linearly,
    two-way softmax head). Of the Ray Train run options it does not use --checkpoint-every (a
    checkpoint is reported after every epoch) or --max-failures (a failed worker ends the run; a
    rerun starts it again): other values than their defaults are refused. --on-bad-record applies
    to the pairs files."""

    model: str = Field(..., description="Start model: hf:<seq-classification model or encoder> (the paper: "
                       "XLM-R large)")
    out: str = Field(..., description="Output folder or URI: Ray Train checkpoints, and model/ at the end")
    loss: Literal["softmax2", "bce"] = Field(
        "softmax2", description="softmax2: two-label head, softmax cross-entropy (the paper fine-tunes XLM-R as "
        "a PAWS-X/QQP paraphrase classifier, a two-label sequence classifier; it does not name the loss: see "
        "docs/pivot.md); bce: one-logit head, binary cross-entropy. A start model with the other head size "
        "gets a new head")
    epochs: int = Field(3, ge=1, description=f"Passes over the pairs ({PAPER}: 3)")
    lr: float = Field(1e-5, gt=0, description=f"AdamW peak learning rate ({PAPER}: 1e-5 for XLM-R large)")
    lr_schedule: Literal["linear", "constant"] = Field(
        "linear", description=f"linear: warm up over --warmup-steps, then decay linearly to 0 at the last step "
        f"({PAPER}); constant: --lr throughout")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps before the decay")
    batch_size: int = Field(16, ge=1, description="Pairs per step per worker")
    max_length: int = Field(128, ge=8, description="Tokens per pair")

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return _reranker(value)

    @model_validator(mode="after")
    def _unused_run_options(self) -> "PivotTrainRerankerConfig":
        unused = [name for name in RERANKER_UNUSED_RUN_OPTIONS
                  if getattr(self, name) != type(self).model_fields[name].default]
        if unused:
            raise ValueError(f"pivot train-reranker does not use {', '.join(unused)}: leave "
                             f"{'it' if len(unused) == 1 else 'them'} at the default")
        return self


def _hf_encoder(value: str) -> str:
    if not value.strip().startswith("hf:"):
        raise ValueError(f"{value!r}: train-encoder fine-tunes an hf: encoder (hf:<folder>[?pooling=mean]); "
                         "muse and dpr: checkpoints cannot be trained here")
    return check_encoder_spec(value)


class PivotTrainEncoderConfig(PairInputs, TrainLoggingOptions, TrainRunConfig):
    """The single-encoder baseline of Montero et al.: a multilingual sentence encoder fine-tuned for
    MIPS on the reranker's paraphrase pairs (its label-1 pairs; in-batch negatives, both directions)
    with the shared Ray Train loop. Publishes <out>/model, an hf: encoder folder for `pivot build
    --encoder hf:<out>/model` (the pooling of --model is kept). The paper states no recipe of its
    own for it: the defaults are the reranker's (3 epochs, lr 1e-5, linear decay). A stopped run
    resumes from its latest checkpoint in <out>/ray-train; a finished one is not trained again."""

    model: str = Field(..., description="Start encoder: hf:<folder or cached name>[?pooling=mean] (e.g. a "
                       "multilingual MiniLM / XLM-R sentence encoder)")
    out: str = Field(..., description="Output folder or URI: Ray Train checkpoints, and model/ at the end")
    epochs: int = Field(3, ge=1, description="Passes over the positive pairs (the reranker's recipe)")
    lr: float = Field(1e-5, gt=0, description="AdamW peak learning rate, decaying linearly to 0 (the reranker's "
                      "recipe)")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps before the decay")
    batch_size: int = Field(32, ge=1, description="Positive pairs per step over all workers: each pair's other "
                            "side is the positive, every other pair's its in-batch negatives")
    max_length: int = Field(128, ge=8, description="Tokens per sentence")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0: no clipping)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return _hf_encoder(value)
