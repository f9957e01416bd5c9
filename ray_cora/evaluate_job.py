"""``ray-cora evaluate retrieval`` and ``ray-cora evaluate all``: configs and the thin runs over the
pure scorers (:mod:`ray_cora.metrics.retrieval`), reports (:mod:`ray_cora.reports`) and plots."""

from __future__ import annotations

import json
from typing import Literal, Sequence

from pydantic import Field, field_validator

from ray_cora import storage
from ray_cora.config import JobConfig
from ray_cora.errors import BadRecordError, ConfigError, RayCoraError
from ray_cora.retrieve_job import RetrieveConfig

GROUPINGS = ("auto", "mkqa", "xor", "none")


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
        "auto", description="Column groups of the paper table: the CORA paper's MKQA (seen / mGEN-seen / "
        "unseen) or XOR-TyDi grouping, auto (by the languages present) or none")
    title: str | None = Field(None, description="Title of the report (default: from the input)")

    @field_validator("ks")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError("ks must be positive integers, e.g. 1,5,10,20,100")
        return sorted(set(value))


class EvaluateAllConfig(RetrieveConfig):
    """One Ray job: retrieve for every requested language in parallel (one Ray Data stream; blocks
    of different languages run side by side on the actor pools), then score it like `evaluate
    retrieval`. Outputs: <out>/retrieval/ (resumable) and <out>/metrics.json, report.md, PNGs."""

    ks: list[int] = Field([1, 5, 10, 20, 100], description="Cut-offs k for R^L@k / R^multi@k / R^gold@k")
    heatmap_k: int = Field(10, ge=1, description="Top passages counted in the retrieved-language heatmap")
    groups: Literal["auto", "mkqa", "xor", "none"] = Field("auto", description="Column groups of the paper table")
    generator: str | None = Field(None, description="Answer generator (mGEN) checkpoint: not available yet; "
                                  "without it generation is skipped and only retrieval is scored")


# --- pure helpers ----------------------------------------------------------------------------


def _groups(choice: str, languages: Sequence[str]) -> dict[str, list[str]] | None:
    from ray_cora.reports import CORA_MKQA_GROUPS, CORA_XOR_GROUPS, default_groups

    return {"auto": default_groups(languages), "mkqa": CORA_MKQA_GROUPS, "xor": CORA_XOR_GROUPS,
            "none": {"all": sorted(languages)}}[choice]


def score_retrieval_file(uri: str, *, ks: Sequence[int], heatmap_k: int) -> dict:
    """Stream a retrieval output and aggregate its metrics (memory: a few ints per question)."""
    from ray_cora.languages import normalize_lang
    from ray_cora.metrics.retrieval import retrieval_metrics, score_retrieval_row
    from ray_cora.pipelines.retrieve import iter_retrieval

    scored, max_ctxs = [], 0
    for source, line, record in iter_retrieval(uri):
        try:
            record["lang"] = normalize_lang(record["lang"])
        except ConfigError as exc:
            raise BadRecordError(source, line, f"field 'lang': {exc}",
                                 hint="use a code of ray_cora/languages.py") from None
        max_ctxs = max(max_ctxs, len(record["ctxs"]))
        scored.append(score_retrieval_row(record, heatmap_k=heatmap_k))
    if not scored:
        raise ConfigError(f"{uri}: no retrieval records to score")
    usable = [k for k in ks if k <= max_ctxs] or [min(ks)]
    metrics = retrieval_metrics(scored, usable)
    dropped = [k for k in ks if k not in usable]
    return {"mode": "retrieval", "source": uri, "passages_per_question": max_ctxs, "ks_left_out": dropped,
            **metrics}


def retrieval_report(metrics: dict, *, groups: str = "auto", title: str | None = None,
                     notes: Sequence[str] = ()) -> str:
    """Markdown report: one paper-style table per metric family, plus counts and notes."""
    from ray_cora.reports import paper_table

    per_language = metrics["per_language"]
    grouping = _groups(groups, list(per_language))
    ks = metrics["ks"]
    parts = [f"# {title or 'Retrieval evaluation'}\n",
             f"Source: `{metrics['source']}`; {sum(r['count'] for r in per_language.values())} questions in "
             f"{len(per_language)} languages, up to {metrics['passages_per_question']} passages each. "
             "Percentages; `macro` averages the languages equally.\n",
             "- **R^L@k**: an answer string in the question's language occurs in a top-k passage.\n"
             "- **R^multi@k**: an answer string in any language of the dataset occurs in a top-k passage.\n"
             "- **R^gold@k**: a gold passage is among the top k (only where gold passages are known).\n\n"
             "Matching is Unicode-NFKC, case-folded substring matching (it works for ja/zh/th, which "
             "have no spaces).\n"]
    families = [("R^L", "Answer recall in the question's language"), ("R^multi", "Answer recall in any language"),
                ("R^gold", "Gold-passage recall")]
    for family, caption in families:
        names = [f"{family}@{k}" for k in ks]
        if any(name in row for row in per_language.values() for name in names):
            parts.append(paper_table(per_language, names, groups=grouping, title=caption))
    parts.append(paper_table({lang: {"questions": float(row["count"])} for lang, row in per_language.items()},
                             ["questions"], groups=grouping, title="Questions per language"))
    if metrics.get("ks_left_out"):
        parts.append(f"k = {', '.join(map(str, metrics['ks_left_out']))} left out: only "
                     f"{metrics['passages_per_question']} passages were retrieved per question.\n")
    parts.extend(f"{note}\n" for note in notes)
    parts.append("Plots: `per_language.png` (recall per question language), `retrieved_languages.png` "
                 "(share of each passage language among the top passages, per question language).\n")
    return "\n".join(parts)


def write_evaluation(metrics: dict, out: str, *, groups: str = "auto", title: str | None = None,
                     heatmap_k: int = 10, notes: Sequence[str] = ()) -> str:
    """Write metrics.json, report.md, per_language.png and retrieved_languages.png; return the report."""
    from ray_cora.plots import language_heatmap, per_language_bar_chart

    root = storage.resolve(out)
    report = retrieval_report(metrics, groups=groups, title=title, notes=notes)
    k_plot = max([k for k in metrics["ks"] if k <= 20] or metrics["ks"][:1])
    per_language = metrics["per_language"]
    bars = [name for name in (f"R^L@{k_plot}", f"R^multi@{k_plot}", f"R^gold@{k_plot}")
            if any(name in row for row in per_language.values())]
    storage.write_bytes(root.join("per_language.png"), per_language_bar_chart(
        per_language, bars, title=f"{title or 'Retrieval'}: recall@{k_plot} per question language"))
    storage.write_bytes(root.join("retrieved_languages.png"), language_heatmap(
        metrics["retrieved_languages"], title=f"Languages of the top-{heatmap_k} passages"))
    storage.write_bytes(root.join("report.md"), report.encode("utf-8"))
    # metrics.json last: its presence means the evaluation finished.
    storage.write_bytes(root.join("metrics.json"), json.dumps(metrics, indent=2, ensure_ascii=False).encode("utf-8"))
    return report


# --- runs ------------------------------------------------------------------------------------


def run_evaluate_retrieval(config: EvaluateRetrievalConfig) -> dict:
    metrics = score_retrieval_file(config.retrieval, ks=config.ks, heatmap_k=config.heatmap_k)
    report = write_evaluation(metrics, config.out, groups=config.groups, title=config.title,
                              heatmap_k=config.heatmap_k)
    print(report)
    print(f"wrote {storage.resolve(config.out).uri}/metrics.json, report.md, per_language.png, "
          "retrieved_languages.png")
    return metrics


class GeneratorNotConfigured(RayCoraError):
    """Generation was asked for, but no mGEN generator exists yet."""


def generate_answers(config: EvaluateAllConfig, retrieval_uri: str) -> None:
    """The generation hook of `evaluate all`: the mGEN generator (ray_cora/train/) is not wired in."""
    raise GeneratorNotConfigured(
        f"--generator {config.generator}: no generator configured — answer generation (mGEN) is not "
        "available in this version; leave --generator out to run and score retrieval only")


def run_evaluate_all(config: EvaluateAllConfig) -> dict:
    from ray_cora.pipelines.retrieve import run_retrieval

    if config.generator:
        generate_answers(config, "")  # fails before any work is done
    root = storage.resolve(config.out)
    retrieval_uri = root.join("retrieval").uri
    run_retrieval(config.model_copy(update={"out": retrieval_uri}))
    metrics = score_retrieval_file(retrieval_uri, ks=config.ks, heatmap_k=config.heatmap_k)
    metrics["generation"] = None
    note = ("Generation: skipped (no generator configured); answer F1/EM/BLEU come with mGEN "
            "(`evaluate qa` scores a predictions file).")
    title = f"{config.dataset} retrieval, encoder {config.encoder or 'of the index'}, top-{config.k}"
    report = write_evaluation(metrics, root.uri, groups=config.groups, title=title,
                              heatmap_k=config.heatmap_k, notes=[note])
    print(report)
    print(f"wrote {root.uri}/metrics.json, report.md, per_language.png, retrieved_languages.png")
    return metrics
