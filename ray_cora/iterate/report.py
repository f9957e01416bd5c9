"""Markdown summaries of the iterative job (pure): one per round and one over all rounds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def mining_table(mining: dict[str, Any]) -> str:
    """New positives/negatives per (question language → passage language) pair, by source."""
    lines = ["| question → passage | retrieval + | retrieval − | language links + | language links − | new pair |",
             "|---|---:|---:|---:|---:|:---:|"]
    for row in mining["by_language_pair"]:
        by_source = row.get("by_source") or {}
        cells = [by_source.get(src, {}).get(kind, 0) for src in ("retrieval", "language_link")
                 for kind in ("positives", "negatives")]
        lines.append(f"| {row['question_lang']} → {row['passage_lang']} | " + " | ".join(map(str, cells))
                     + f" | {'yes' if row['new_pair'] and row['positives'] else ''} |")
    return "\n".join(lines) + "\n"


def synthetic_table(synthetic: dict[str, Any]) -> str:
    """Synthetic mGEN examples per language: sampled pairs, without a translation, kept."""
    lines = ["| language | sampled | no translated answer | kept |", "|---|---:|---:|---:|"]
    for lang, row in sorted(synthetic["per_language"].items()):
        lines.append(f"| {lang} | {row['sampled']} | {row['no_translation']} | {row['kept']} |")
    return "\n".join(lines) + "\n"


def _kept(part: dict[str, Any]) -> str:
    """"kept epoch N (dev metric X)" when the training kept its best dev checkpoint."""
    kept = part.get("kept")
    if not kept:
        return ""
    return f"; kept epoch {kept['epoch']} ({kept['metric']} {_fmt(kept['value'])} on dev)"


def dev_table(dev: dict[str, Any]) -> str:
    """Dev metrics per language (R^L@10, R^multi@10, F1 when answers were generated)."""
    per_language = dev["per_language"]
    metrics = [m for m in ("R^L@10", "R^multi@10", "R^gold@10", "f1", "em")
               if any(m in row for row in per_language.values())]
    langs = sorted(per_language)
    lines = ["| metric | " + " | ".join(langs) + " | macro |", "|---|" + "---:|" * (len(langs) + 1)]
    for metric in metrics:
        cells = [_fmt(per_language[lang].get(metric)) for lang in langs]
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {_fmt(dev['macro'].get(metric))} |")
    return "\n".join(lines) + "\n"


def round_summary(stats: dict[str, Any]) -> str:
    t = stats["round"]
    mdpr, mgen = stats["mdpr"], stats["mgen"]
    parts = [f"# Round {t}\n",
             f"- Training data B_{t}: {stats['train_records']} DPR records ({len(stats['train_files'])} file(s)).",
             (f"- mDPR: {mdpr['steps']} steps, final loss {_fmt(mdpr['loss'])}{_kept(mdpr)}, "
              f"encoder `{mdpr['encoder_spec']}`."),
             (f"- mGEN: {mgen['steps']} steps in {mgen['phases']} phase(s){_kept(mgen)}, "
              f"{mgen['synthetic_examples']} synthetic translated-answer examples; model `{mgen['model']}`."),
             ""]
    if mgen.get("synthetic"):
        synthetic = mgen["synthetic"]
        parts += ["## Synthetic mGEN examples (CORA A.2)\n",
                  (f"{synthetic['english_questions']} English questions; up to {synthetic['max_langs']} languages "
                   f"sampled per question ({synthetic['sampled']} pairs), {synthetic['candidates']} with a "
                   f"translated answer, {synthetic['kept']} kept ({synthetic['keep_fraction']:.0%}, seed "
                   f"{synthetic['seed']}).\n"),
                  synthetic_table(synthetic)]
    if stats.get("dev"):
        parts += ["## Dev set\n", dev_table(stats["dev"])]
    mining = stats.get("mining")
    if mining:
        sources = mining["by_source"]
        dropped = mining.get("language_link_dropped_no_translation") or {}
        parts += [f"## Mining for round {t + 1}\n",
                  (f"{mining['candidates']} candidates labelled by mGEN: {mining['positives']} positives, "
                   f"{mining['negatives']} negatives; {mining['new_records']} new DPR records. From retrieval: "
                   f"{sources['retrieval']['positives']} positives / {sources['retrieval']['negatives']} negatives; "
                   f"from language links: {sources['language_link']['positives']} / "
                   f"{sources['language_link']['negatives']}.\n"),
                  ("Language-link articles dropped for lack of a translated answer: "
                   + (", ".join(f"{lang} {n}" for lang, n in dropped.items()) or "none") + ".\n"),
                  ("Mined negatives of questions without a mined positive: "
                   f"{mining.get('records_with_mined_negatives_only', 0)} record(s) with the question's known "
                   f"positive; {mining.get('negatives_without_positive', 0)} negative(s) of questions without any "
                   "positive left out.\n"),
                  "Language pairs with positives that B_1 did not have: "
                  + (", ".join(mining["new_positive_pairs"]) or "none") + ".\n",
                  mining_table(mining)]
    else:
        parts.append("Last round: no mining.\n")
    return "\n".join(parts)


def _kept_epoch(part: dict[str, Any] | None) -> str:
    kept = (part or {}).get("kept")
    return f"{kept['epoch']} ({kept['metric']} {_fmt(kept['value'])})" if kept else "last"


def overall_summary(rounds: Sequence[dict[str, Any]]) -> str:
    """One row per round: data size, the epochs kept, mined pairs, dev macro metrics."""
    metrics = ("R^L@10", "R^multi@10", "f1", "em")
    lines = ["# Iterative training (CORA Algorithm 1)\n",
             "| round | B_t records | mDPR epoch kept | mGEN epoch kept | mined positives | mined negatives | "
             "new language pairs | " + " | ".join(f"dev {m}" for m in metrics) + " |",
             "|---:|---:|---|---|---:|---:|---|" + "---:|" * len(metrics)]
    for stats in rounds:
        mining = stats.get("mining") or {}
        macro = (stats.get("dev") or {}).get("macro", {})
        lines.append(f"| {stats['round']} | {stats['train_records']} | {_kept_epoch(stats.get('mdpr'))} | "
                     f"{_kept_epoch(stats.get('mgen'))} | {_fmt(mining.get('positives'))} | "
                     f"{_fmt(mining.get('negatives'))} | {', '.join(mining.get('new_positive_pairs', [])) or '–'} | "
                     + " | ".join(_fmt(macro.get(m)) for m in metrics) + " |")
    lines.append("\nDev metrics are percentages, macro-averaged over languages; mining columns describe the "
                 "pairs a round added for the next one; \"epoch kept\" is the best dev checkpoint a training "
                 "published (\"last\" without a dev set). Per-round details: `round-<t>/summary.md`.\n")
    return "\n".join(lines)
