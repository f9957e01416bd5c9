"""Markdown summaries of the iterative job (pure): one per round and one over all rounds."""

from __future__ import annotations

from typing import Any, Sequence


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def mining_table(mining: dict[str, Any]) -> str:
    """New positives/negatives per (question language → passage language) pair."""
    lines = ["| question → passage | positives | negatives | new pair |", "|---|---:|---:|:---:|"]
    for row in mining["by_language_pair"]:
        lines.append(f"| {row['question_lang']} → {row['passage_lang']} | {row['positives']} | "
                     f"{row['negatives']} | {'yes' if row['new_pair'] and row['positives'] else ''} |")
    return "\n".join(lines) + "\n"


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
    parts = [f"# Round {t}\n",
             f"- Training data B_{t}: {stats['train_records']} DPR records ({len(stats['train_files'])} file(s)).",
             f"- mDPR: {stats['mdpr']['steps']} steps, final loss {_fmt(stats['mdpr']['loss'])}, "
             f"encoder `{stats['mdpr']['encoder_spec']}`.",
             f"- mGEN: {stats['mgen']['steps']} steps in {stats['mgen']['phases']} phase(s), "
             f"{stats['mgen']['synthetic_examples']} synthetic translated-answer examples; model `{stats['mgen']['model']}`.",
             ""]
    if stats.get("dev"):
        parts += ["## Dev set\n", dev_table(stats["dev"])]
    mining = stats.get("mining")
    if mining:
        sources = mining["by_source"]
        parts += [f"## Mining for round {t + 1}\n",
                  f"{mining['candidates']} candidates labelled by mGEN: {mining['positives']} positives, "
                  f"{mining['negatives']} negatives; {mining['new_records']} new DPR records. From retrieval: "
                  f"{sources['retrieval']['positives']} positives / {sources['retrieval']['negatives']} negatives; "
                  f"from language links: {sources['language_link']['positives']} / "
                  f"{sources['language_link']['negatives']}.\n",
                  "Language pairs with positives that B_1 did not have: "
                  + (", ".join(mining["new_positive_pairs"]) or "none") + ".\n",
                  mining_table(mining)]
    else:
        parts.append("Last round: no mining.\n")
    return "\n".join(parts)


def overall_summary(rounds: Sequence[dict[str, Any]]) -> str:
    """One row per round: data size, mined pairs, dev macro metrics."""
    metrics = ("R^L@10", "R^multi@10", "f1", "em")
    lines = ["# Iterative training (CORA Algorithm 1)\n",
             "| round | B_t records | mined positives | mined negatives | new language pairs | "
             + " | ".join(f"dev {m}" for m in metrics) + " |",
             "|---:|---:|---:|---:|---|" + "---:|" * len(metrics)]
    for stats in rounds:
        mining = stats.get("mining") or {}
        macro = (stats.get("dev") or {}).get("macro", {})
        lines.append(f"| {stats['round']} | {stats['train_records']} | {_fmt(mining.get('positives'))} | "
                     f"{_fmt(mining.get('negatives'))} | {', '.join(mining.get('new_positive_pairs', [])) or '–'} | "
                     + " | ".join(_fmt(macro.get(m)) for m in metrics) + " |")
    lines.append("\nDev metrics are percentages, macro-averaged over languages; mining columns describe the "
                 "pairs a round added for the next one. Per-round details: `round-<t>/summary.md`.\n")
    return "\n".join(lines)
