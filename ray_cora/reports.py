"""Markdown tables for per-language results (pure)."""

from __future__ import annotations

from typing import Sequence

from ray_cora.languages import LANGUAGES


def language_name(code: str) -> str:
    lang = LANGUAGES.get(code)
    return lang.name if lang else code


def retrieval_markdown(table: dict[str, dict], ks: Sequence[int]) -> str:
    """Rows = languages (then ``all``), columns = counts and recall percentages.

    ``R@k``: a gold passage is in the top k. ``A@k``: an answer string occurs in a top-k passage.
    """
    header = ["language", "questions", "cross-lingual"] + [f"R@{k}" for k in ks] + [f"A@{k}" for k in ks]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 2 * len(ks)) + "|"]
    for lang, row in table.items():
        label = "**all**" if lang == "all" else f"{lang} ({language_name(lang)})"
        cells = [label, str(row["count"]), str(row["cross_lingual"])]
        cells += [f"{row[f'R@{k}']:.1f}" for k in ks] + [f"{row[f'A@{k}']:.1f}" for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
