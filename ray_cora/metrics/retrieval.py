"""Retrieval recall: gold-passage recall@k and answer-string recall@k, per language (pure)."""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from typing import Iterable, Sequence

DEFAULT_KS = (1, 5, 10)


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def has_answer(text: str, answers: Iterable[str]) -> bool:
    """True when any answer string occurs in ``text`` (Unicode-normalised, case-folded).

    Substring matching works for languages written without spaces (ja, zh, th), unlike
    whitespace-token matching.

    >>> has_answer("富士山の標高は3776メートル", ["3776"])
    True
    """
    folded = _fold(text)
    return any(a and _fold(a) in folded for a in answers)


def first_gold_rank(ranked_pids: Sequence[str], gold_pids: Iterable[str]) -> int | None:
    """1-based rank of the first gold passage, or None when none was retrieved."""
    gold = set(gold_pids)
    return next((i for i, pid in enumerate(ranked_pids, start=1) if pid in gold), None)


def first_answer_rank(ranked_texts: Sequence[str], answers: Sequence[str]) -> int | None:
    return next((i for i, text in enumerate(ranked_texts, start=1) if has_answer(text, answers)), None)


def recall_by_language(rows: Iterable[dict], ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict]:
    """Aggregate per-question ranks into percentages per language, plus ``"all"`` (micro).

    Each row needs ``lang``, ``gold_rank`` and ``answer_rank`` (int or None); ``cross_lingual``
    is counted when present.
    """
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["lang"]].append(row)
        groups["all"].append(row)
    table = {}
    for lang in sorted(groups, key=lambda l: (l == "all", l)):
        items = groups[lang]
        n = len(items)
        entry: dict = {"count": n, "cross_lingual": sum(bool(r.get("cross_lingual")) for r in items)}
        for k in ks:
            entry[f"R@{k}"] = 100.0 * sum(r["gold_rank"] is not None and r["gold_rank"] <= k
                                          for r in items) / n
            entry[f"A@{k}"] = 100.0 * sum(r["answer_rank"] is not None and r["answer_rank"] <= k
                                          for r in items) / n
        table[lang] = entry
    return table
