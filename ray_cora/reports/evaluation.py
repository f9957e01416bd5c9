"""The evaluation report: paper-style Markdown tables of retrieval and answer metrics, and the
folder `evaluate retrieval` / `evaluate all` write (metrics.json, report.md, PNG plots). Pure: no Ray."""

from __future__ import annotations

import json
from typing import Any, Sequence

from ray_cora import storage
from ray_cora.reports.plots import comparison_bar_chart, language_heatmap, per_language_bar_chart
from ray_cora.reports.tables import (CORA_MKQA_GROUPS, CORA_XOR_GROUPS, MACRO, default_groups, paper_table,
                                     side_by_side_table)


def _groups(choice: str, languages: Sequence[str]) -> dict[str, list[str]] | None:

    return {"auto": default_groups(languages), "mkqa": CORA_MKQA_GROUPS, "xor": CORA_XOR_GROUPS,
            "none": {"all": sorted(languages)}}[choice]


def qa_metric_names(mode: str) -> list[str]:
    """The answer metrics of a scorer mode, as the paper's tables show them."""
    return ["f1", "em", "bleu"] if mode == "xor" else ["f1", "em"]


def qa_section(metrics: dict, grouping: dict[str, list[str]] | None) -> str:
    """The answer-quality part of the report (only when answers were generated and scored)."""

    generation = metrics["generation"]
    mode, per_language = generation["mode"], metrics["per_language"]
    scorer = ("XOR-TyDi / CORA scorer (MeCab for ja, counters 年歳人년 removed, NLTK sentence BLEU)"
              if mode == "xor" else "official MKQA scorer (mixed segmentation for zh/ja/th/km, articles "
              "per language, answers + aliases)")
    parts = [f"## Answers (mGEN `{generation['model']}`)\n",
             f"Predictions: `{generation['predictions']}`, scored with the {scorer}, like `ray-cora "
             f"evaluate qa --mode {mode}`; gold answers from the retrieval records.\n",
             paper_table(per_language, qa_metric_names(mode), groups=grouping, title="Answer quality (%)")]
    if any("sacrebleu" in row for row in per_language.values()):
        parts.append(paper_table(per_language, ["sacrebleu"], groups=grouping,
                                 title="Corpus-level sacreBLEU (a modern extra figure, not the official BLEU)"))
    missing, unknown = generation["missing"]["count"], generation["unknown"]["count"]
    if missing or unknown:
        parts.append(f"{missing} questions without a prediction (scored 0), {unknown} predictions for no "
                     "question (ignored); see metrics.json.\n")
    parts.append("## Retrieval\n")
    return "\n".join(parts)


def retrieval_report(metrics: dict, *, groups: str = "auto", title: str | None = None,
                     notes: Sequence[str] = ()) -> str:
    """Markdown report: one paper-style table per metric family (answers first, when generated),
    plus counts and notes."""

    per_language = metrics["per_language"]
    grouping = _groups(groups, list(per_language))
    ks = metrics["ks"]
    parts = [f"# {title or 'Retrieval evaluation'}\n",
             f"Source: `{metrics['source']}`; {sum(r['count'] for r in per_language.values())} questions in "
             f"{len(per_language)} languages, up to {metrics['passages_per_question']} passages each. "
             "Percentages; `macro` averages the languages equally.\n"]
    if metrics.get("generation"):
        parts.append(qa_section(metrics, grouping))
    parts += ["- **R^L@k**: an answer string in the question's language occurs in a top-k passage.\n"
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
    plots = "Plots: `per_language.png` (recall per question language), `retrieved_languages.png` " \
        "(share of each passage language among the top passages, per question language)"
    if metrics.get("generation"):
        plots += ", `qa_per_language.png` (answer F1/EM per question language)"
    parts.append(plots + ".\n")
    return "\n".join(parts)


def write_evaluation(metrics: dict, out: str, *, groups: str = "auto", title: str | None = None,
                     heatmap_k: int = 10, notes: Sequence[str] = ()) -> str:
    """Write metrics.json, report.md, per_language.png and retrieved_languages.png; return the report."""

    root = storage.resolve(out)
    report = retrieval_report(metrics, groups=groups, title=title, notes=notes)
    k_plot = max([k for k in metrics["ks"] if k <= 20] or metrics["ks"][:1])
    per_language = metrics["per_language"]
    bars = [name for name in (f"R^L@{k_plot}", f"R^multi@{k_plot}", f"R^gold@{k_plot}")
            if any(name in row for row in per_language.values())]
    # Every file is rendered before any is written: a plot that cannot be drawn leaves no half
    # evaluation behind.
    files = {
        "per_language.png": per_language_bar_chart(
            per_language, bars, title=f"{title or 'Retrieval'}: recall@{k_plot} per question language"),
        "retrieved_languages.png": language_heatmap(
            metrics["retrieved_languages"], title=f"Languages of the top-{heatmap_k} passages"),
    }
    if metrics.get("generation"):
        mode = metrics["generation"]["mode"]
        files["qa_per_language.png"] = per_language_bar_chart(
            per_language, qa_metric_names(mode)[:2],
            title=f"{title or 'QA'}: answer F1 / EM per question language ({mode} scorer)")
    files["report.md"] = report.encode("utf-8")
    # metrics.json last: its presence means the evaluation finished.
    files["metrics.json"] = json.dumps(metrics, indent=2, ensure_ascii=False).encode("utf-8")
    for name, data in files.items():
        storage.write_bytes(root.join(name), data)
    return report


_FAMILIES = (("R^L", "answer in the question's language in the top {k}"),
             ("R^multi", "answer in any language in the top {k}"),
             ("R^gold", "gold passage in the top {k}"))


def comparison_rows(comparison: dict, metric: str) -> dict[str, dict[str, float | None]]:
    """``{language: {run: value}}`` of one metric over every run of a comparison, ``macro`` last."""
    runs = comparison["runs"]
    languages = sorted({lang for run in runs.values() for lang in run["per_language"]})
    rows = {lang: {label: run["per_language"].get(lang, {}).get(metric) for label, run in runs.items()}
            for lang in languages}
    # A language without the metric in any run (no gold passages for R^gold) gets no row.
    rows = {lang: values for lang, values in rows.items() if any(v is not None for v in values.values())}
    rows[MACRO] = {label: run["macro"].get(metric) for label, run in runs.items()}
    return rows


def comparison_metrics(comparison: dict) -> list[tuple[str, str]]:
    """``(metric, caption)`` of every metric some run of the comparison has, family by family."""
    found = []
    for family, caption in _FAMILIES:
        for k in comparison["ks"]:
            name = f"{family}@{k}"
            if any(name in run["macro"] for run in comparison["runs"].values()):
                found.append((name, caption.format(k=k)))
    return found


def plot_k(comparison: dict) -> int:
    """The cut-off the comparison plot shows: the largest k ≤ 20 that every run reaches."""
    common = sorted(set.intersection(*(set(run["ks"]) for run in comparison["runs"].values())))
    return max([k for k in common if k <= 20] or common[:1] or comparison["ks"][:1])


def comparison_report(comparison: dict, *, title: str | None = None) -> str:
    """Markdown report of ``evaluate retrieval --compare``: the runs, then one side-by-side table per
    metric (rows = question languages and macro, columns = runs, the best of each row in bold)."""
    runs = comparison["runs"]
    parts = [f"# {title or 'Retrieval comparison: ' + ' / '.join(runs)}\n",
             f"{comparison['questions']['scored']} questions, the same for every run, each run scored as "
             "`ray-cora evaluate retrieval` scores it alone. Percentages; `macro` averages the languages "
             "equally; the best run of each row is in **bold**.\n",
             "| run | retriever | source | passages per question |", "|---|---|---|---:|"]
    parts += [f"| {label} | {run.get('retriever') or '–'} | `{run['source']}` | {run['passages_per_question']} |"
              for label, run in runs.items()]
    first = next(iter(runs.values()))["per_language"]
    parts.append("\nQuestions per language: " + ", ".join(f"{lang} {row['count']}" for lang, row in first.items())
                 + ".\n")
    left_out = {label: n for label, n in comparison["questions"]["left_out"].items() if n}
    if left_out:
        parts.append("Questions not in every run were left out (--common-questions): "
                     + ", ".join(f"{n} of {label}" for label, n in left_out.items()) + ".\n")
    shallow: dict[tuple, list[str]] = {}
    for label, run in runs.items():
        if run.get("ks_left_out"):
            shallow.setdefault((tuple(run["ks_left_out"]), run["passages_per_question"]), []).append(label)
    for (ks, depth), labels in shallow.items():
        parts.append(f"k = {', '.join(map(str, ks))} left out for {', '.join(labels)}: only {depth} passages "
                     "per question.\n")
    for metric, caption in comparison_metrics(comparison):
        parts.append(side_by_side_table(comparison_rows(comparison, metric), list(runs),
                                        title=f"{metric}: {caption}"))
    k = plot_k(comparison)
    parts.append(f"Plot: `comparison.png` (recall@{k} per question language, one bar per run).\n")
    return "\n".join(parts)


def write_comparison(comparison: dict, out: str, *, title: str | None = None) -> str:
    """Write metrics.json (every run's metrics under its label), report.md and comparison.png;
    return the report."""
    root = storage.resolve(out)
    report = comparison_report(comparison, title=title)
    k = plot_k(comparison)
    panels = {name: comparison_rows(comparison, name) for name in (f"{family}@{k}" for family, _ in _FAMILIES)
              if any(name in run["macro"] for run in comparison["runs"].values())}
    # As write_evaluation: everything rendered first, metrics.json written last.
    files = {"comparison.png": comparison_bar_chart(panels, comparison["labels"],
                                                    title=f"{title or 'Retrieval'}: recall@{k} per run"),
             "report.md": report.encode("utf-8"),
             "metrics.json": json.dumps(comparison, indent=2, ensure_ascii=False).encode("utf-8")}
    for name, data in files.items():
        storage.write_bytes(root.join(name), data)
    return report


_LIST_LIMIT = 50  # qids listed in report.md; metrics.json and per_question.jsonl have them all



def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)



def qa_report_markdown(metrics: dict[str, Any], *, title: str | None = None) -> str:
    """The report: paper-style table (languages as columns), the scorer's extra figures, and
    every missing / unknown prediction (the first few by id)."""
    mode = metrics["mode"]
    per_language = metrics["per_language"]
    scorer = ("XOR-TyDi / CORA scorer (MeCab -Owakati for ja, counters 年歳人년 removed, NLTK "
              "sentence BLEU of the raw prediction)" if mode == "xor" else
              "official MKQA scorer (mixed segmentation for zh/ja/th/km, articles per language, "
              "answers + aliases, default no-answer threshold)")
    lines = [f"# {title or 'QA evaluation'}", "", f"Scored with the {scorer}; figures in percent.", ""]
    main_metrics = ["f1", "em", "bleu"] if mode == "xor" else ["f1", "em"]
    lines.append(paper_table(per_language, main_metrics))
    lines.append("Questions scored: " + ", ".join(f"{lang} {s['count']}" for lang, s in per_language.items())
                 + f" (total {metrics['macro'].get('count', 0)}).")
    if mode == "mkqa":
        extra = ["answerable_f1", "answerable_em", "unanswerable_em", "best_f1", "best_em",
                 "best_f1_threshold"]
        lines += ["", "MKQA answerable / unanswerable split, and the figures at the best "
                  "no-answer threshold (`best_*`, chosen per language to maximise F1 over "
                  "`no_answer_prob`, as the MKQA script does):", "",
                  paper_table(per_language, extra)]
    if any("sacrebleu" in s for s in per_language.values()):
        tokenizers = sorted({s["sacrebleu_tokenize"] for s in per_language.values()})
        lines += ["", f"Corpus-level sacreBLEU (a modern extra figure, not the official scorer's "
                  f"BLEU; tokenize={'/'.join(tokenizers)} by language):", "",
                  paper_table(per_language, ["sacrebleu"])]
    lines += ["", "| | count | languages |", "|---|---:|---|"]
    for key, label in (("missing", "gold questions without a prediction (scored 0)"),
                       ("unknown", "predictions for no gold question (ignored)")):
        info = metrics[key]
        langs = ", ".join(f"{k}: {v}" for k, v in info["by_language"].items()) or "–"
        lines.append(f"| {label} | {info['count']} | {langs} |")
    if metrics.get("predictions_outside_langs"):
        lines.append(f"| predictions in languages outside --langs (ignored) | "
                     f"{metrics['predictions_outside_langs']} | |")
    if metrics.get("skipped_no_answer"):
        lines.append(f"| gold questions without any answer (skipped, as the XOR scorer has none) | "
                     f"{metrics['skipped_no_answer']} | |")
    for key, label in (("missing", "Missing predictions"), ("unknown", "Unknown predictions")):
        examples = metrics[key]["examples"]
        if examples:
            shown = ", ".join(f"`{e['qid']}` ({e['lang']})" for e in examples[:_LIST_LIMIT])
            more = metrics[key]["count"] - min(len(examples), _LIST_LIMIT)
            lines += ["", f"{label}: {shown}" + (f" … and {more} more (see metrics.json / "
                                                  "per_question.jsonl)" if more else "")]
    return "\n".join(lines).rstrip() + "\n"
