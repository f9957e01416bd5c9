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


def passage_has_answer(passage: dict, answers: Iterable[str]) -> bool:
    """A retrieved passage's own ``has_answer`` flag when it carries one (CORA's DPR output does,
    from its tokenised match), else whether an answer occurs in its title or text.

    >>> passage_has_answer({"title": "Faust", "text": "by Goethe", "has_answer": False}, ["Goethe"])
    False
    """
    flag = passage.get("has_answer")
    if isinstance(flag, bool):
        return flag
    return has_answer(f"{passage.get('title') or ''} {passage.get('text') or ''}", answers)


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


# --- Retrieval evaluation as in the CORA paper (R^L@k, R^multi@k) ------------------------------

PAPER_KS = (1, 5, 10, 20, 100)


def score_retrieval_row(row: dict, *, heatmap_k: int = 10) -> dict:
    """Ranks one retrieval record needs for every metric (1-based, None when not found).

    ``row`` is a line of ``ray-cora retrieve`` output: ``lang``, ``answers`` (the question's
    language), optional ``answers_all`` (answers in every language of the dataset, e.g. MKQA's 26;
    defaults to ``answers``), optional ``gold_pids`` and ``ctxs`` (ranked, each with ``text`` and
    ``lang``). ``ctx_langs`` counts the languages of the top ``heatmap_k`` passages.

    >>> r = score_retrieval_row({"lang": "ja", "answers": ["東京"], "answers_all": ["東京", "Tokyo"],
    ...     "ctxs": [{"pid": "a", "lang": "en", "text": "Tokyo is big"},
    ...              {"pid": "b", "lang": "ja", "text": "東京都"}]})
    >>> r["rank_lang"], r["rank_multi"], r["rank_gold"], r["ctx_langs"]
    (2, 1, None, {'en': 1, 'ja': 1})
    """
    ctxs = row.get("ctxs") or []
    texts = [c.get("text") or "" for c in ctxs]
    answers = row.get("answers") or []
    answers_all = row.get("answers_all") or answers
    gold = row.get("gold_pids") or []
    ctx_langs: dict[str, int] = {}
    for ctx in ctxs[:heatmap_k]:
        ctx_langs[ctx.get("lang") or "?"] = ctx_langs.get(ctx.get("lang") or "?", 0) + 1
    return {
        "lang": row["lang"],
        "rank_lang": first_answer_rank(texts, answers) if answers else None,
        "rank_multi": first_answer_rank(texts, answers_all) if answers_all else None,
        "rank_gold": first_gold_rank([c["pid"] for c in ctxs], gold) if gold else None,
        "has_gold": bool(gold),
        "ctx_langs": ctx_langs,
    }


def retrieval_metrics(scored: Iterable[dict], ks: Sequence[int] = PAPER_KS) -> dict:
    """Aggregate :func:`score_retrieval_row` results: percentages per question language.

    ``R^L@k``: an answer in the question's language is in a top-k passage. ``R^multi@k``: an
    answer in any language is. ``R^gold@k`` (only for languages whose questions have gold
    passages, e.g. XQuAD): a gold passage is in the top k. ``macro`` averages the languages
    equally; ``retrieved_languages`` counts passage languages per question language.
    """
    per_lang: dict[str, dict] = {}
    langs_of: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for item in scored:
        entry = per_lang.setdefault(item["lang"], {"count": 0, "with_gold": 0,
                                                   **{f"hits_{m}@{k}": 0 for m in ("L", "multi", "gold")
                                                      for k in ks}})
        entry["count"] += 1
        entry["with_gold"] += item["has_gold"]
        for name, rank in (("L", item["rank_lang"]), ("multi", item["rank_multi"]), ("gold", item["rank_gold"])):
            for k in ks:
                entry[f"hits_{name}@{k}"] += rank is not None and rank <= k
        for plang, count in item["ctx_langs"].items():
            langs_of[item["lang"]][plang] += count
    table: dict[str, dict] = {}
    for lang in sorted(per_lang):
        entry = per_lang[lang]
        n = entry["count"]
        row: dict = {"count": n}
        for k in ks:
            row[f"R^L@{k}"] = 100.0 * entry[f"hits_L@{k}"] / n
            row[f"R^multi@{k}"] = 100.0 * entry[f"hits_multi@{k}"] / n
        if entry["with_gold"]:
            row["with_gold"] = entry["with_gold"]
            for k in ks:
                row[f"R^gold@{k}"] = 100.0 * entry[f"hits_gold@{k}"] / entry["with_gold"]
        table[lang] = row
    metric_names = [m for m in {key for row in table.values() for key in row} if m.startswith("R^")]
    macro = {}
    for name in sorted(metric_names):
        values = [row[name] for row in table.values() if name in row]
        macro[name] = sum(values) / len(values)
    return {"ks": list(ks), "per_language": table, "macro": macro,
            "retrieved_languages": {q: dict(sorted(c.items())) for q, c in sorted(langs_of.items())}}
