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


# Language groups of the CORA paper (Asai et al., NeurIPS 2021, arXiv:2107.11976), §3.1. MKQA
# (Tables 2-3, 26 languages): "seen" languages have annotated training data for both mDPR and mGEN
# (NQ for en; XOR-TyDi QA for ar, fi, ja, ko, ru); "mDPR-seen" ones (es, sv, he, th) are seen by
# mDPR's training only, "mGEN-seen" ones by mGEN's only (through the Wikidata-linked synthetic
# data, A.2), as §3.1 groups them; the remaining 9 are unseen (the abstract: "26 languages, 9 of
# which are unseen during training"). XOR-TyDi QA (Table 1): its 7 languages (ar, bn, fi, ja, ko,
# ru, te), all seen.
# Note: CORA scored MKQA with the XOR scorer over answerable questions only (eval_mkqa_all.py),
# i.e. `--mode xor`, not the official MKQA scorer.
CORA_MKQA_GROUPS: dict[str, list[str]] = {
    "seen": ["en", "ar", "fi", "ja", "ko", "ru"],
    "mDPR-seen": ["es", "sv", "he", "th"],
    "mGEN-seen": ["da", "de", "fr", "it", "nl", "pl", "pt"],
    "unseen": ["hu", "vi", "ms", "km", "no", "tr", "zh_cn", "zh_hk", "zh_tw"],
}
CORA_XOR_GROUPS: dict[str, list[str]] = {"seen": ["ar", "bn", "fi", "ja", "ko", "ru", "te"]}
MACRO = "macro"


def default_groups(languages: Sequence[str]) -> dict[str, list[str]]:
    """The paper's grouping that fits ``languages``: XOR-TyDi's when every language is one of its
    seven, else MKQA's (languages outside both land in an ``other`` group)."""
    return CORA_XOR_GROUPS if set(languages) <= set(CORA_XOR_GROUPS["seen"]) else CORA_MKQA_GROUPS


def _group_columns(languages: Sequence[str], groups: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    present = set(languages)
    placed: set[str] = set()
    columns = []
    for name, members in groups.items():
        chosen = [lang for lang in members if lang in present and lang not in placed]
        placed.update(chosen)
        if chosen:
            columns.append((name, chosen))
    rest = [lang for lang in languages if lang not in placed]
    if rest:
        columns.append(("other", sorted(rest)))
    return columns


def paper_table(per_language: dict[str, dict[str, float]], metrics: Sequence[str], *,
                groups: dict[str, list[str]] | None = None, title: str | None = None) -> str:
    """Markdown table laid out like the CORA paper's Tables 2-3: one row per metric, languages as
    columns ordered by group (a header row names each group), then the macro average over the
    languages shown. A ``"macro"`` (or ``"all"``) key of ``per_language`` is not a language: it is
    ignored, the macro column is recomputed. Missing values print as ``–``.

    >>> print(paper_table({"ja": {"f1": 30.0}, "en": {"f1": 50.0}}, ["f1"]))  # doctest: +NORMALIZE_WHITESPACE
    | | seen | | |
    |---|---:|---:|---:|
    | metric | en | ja | macro |
    | f1 | 50.0 | 30.0 | 40.0 |
    <BLANKLINE>
    """
    languages = [lang for lang in per_language if lang not in (MACRO, "all")]
    columns = _group_columns(languages, groups if groups is not None else default_groups(languages))
    ordered = [lang for _, members in columns for lang in members]
    group_cells = []
    for name, members in columns:
        group_cells += [name] + [""] * (len(members) - 1)
    lines = [f"### {title}\n"] if title else []
    lines.append("| | " + " | ".join(group_cells + [""]) + " |")
    lines.append("|---|" + "|".join(["---:"] * (len(ordered) + 1)) + "|")
    lines.append("| metric | " + " | ".join(ordered + [MACRO]) + " |")
    for metric in metrics:
        values = [per_language[lang].get(metric) for lang in ordered]
        present = [float(v) for v in values if v is not None]
        macro = sum(present) / len(present) if present else None
        cells = [f"{v:.1f}" if v is not None else "–" for v in values + [macro]]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def side_by_side_table(rows: dict[str, dict[str, float | None]], columns: Sequence[str], *,
                       first: str = "language", title: str | None = None) -> str:
    """Markdown table comparing runs: one row per key of ``rows`` (languages, then ``macro``), one
    column per run; the best value of each row (as shown, to one decimal; ties all) in bold.
    Missing values print as ``–``.

    >>> print(side_by_side_table({"ja": {"dense": 40.0, "bm25": 60.0}}, ["dense", "bm25"]))
    | language | dense | bm25 |
    |---|---:|---:|
    | ja | 40.0 | **60.0** |
    <BLANKLINE>
    """
    lines = [f"### {title}\n"] if title else []
    lines.append("| " + " | ".join([first, *columns]) + " |")
    lines.append("|---|" + "|".join(["---:"] * len(columns)) + "|")
    for name, values in rows.items():
        shown = [f"{values[c]:.1f}" if values.get(c) is not None else None for c in columns]
        best = max((float(v) for v in shown if v is not None), default=None)
        cells = ["–" if v is None else f"**{v}**" if len(columns) > 1 and float(v) == best else v for v in shown]
        label = f"**{name}**" if name == MACRO else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
