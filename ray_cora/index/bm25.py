"""In-language BM25: the ``bm25s`` library over tokens fit for each language (pure, no Ray).

:func:`bm25_tokens` turns a text into index terms by one rule per language:

=============================  ==========================================================
language                       terms
=============================  ==========================================================
``zh_cn``, ``zh_hk``, ``zh_tw``  ``jieba`` words (via :mod:`ray_cora.data.segment`)
``ja``                         ``fugashi`` + ``unidic-lite`` (MeCab) morphemes
``th``                         ``pythainlp`` ``newmm`` words
``km``, ``lo``, ``my``          the character rule of :mod:`ray_cora.data.segment`
                               (also zh/ja/th when their package is missing)
every other language           Unicode words: maximal runs of letters and digits together
                               with their combining marks (Arabic harakat, Devanagari
                               vowel signs stay inside the word); ``_`` and punctuation split
=============================  ==========================================================

For every language the text is NFKC-normalised first, terms are case-folded, and a term with no
letter or digit (punctuation) is dropped. There are no stop words and no stemming: the same rule
for all languages, so differences between languages come from the segmenters, not from uneven
stop lists. :func:`term_rule` says which rule a language gets in this process.

``tokenizer="whitespace"`` is the naive baseline the rule above replaces: case-folded text split
on whitespace only. On Chinese or Thai a whole clause becomes one term and almost nothing matches.

Scoring is Okapi BM25 as ``bm25s`` computes it (``method="lucene"``) with Anserini/Pyserini's
defaults ``k1=0.9, b=0.4``. A passage that shares no term with the question is not retrieved (as in
Lucene), so a search may return fewer than k passages.

>>> bm25_tokens("Mount Fuji's height: 3,776 m.", "en")
['mount', 'fuji', 's', 'height', '3', '776', 'm']
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections import defaultdict
from typing import Iterable, Literal, Sequence

from ray_cora.data.segment import segment, segmenter_name
from ray_cora.errors import ConfigError
from ray_cora.languages import normalize_lang

__all__ = ["Tokenizer", "TOKENIZERS", "bm25_tokens", "term_rule", "BM25Index", "InLanguageBM25"]

Tokenizer = Literal["language", "whitespace"]
TOKENIZERS: tuple[str, ...] = ("language", "whitespace")

# Anserini / Pyserini defaults, used by the BM25 baselines of DPR and its successors.
DEFAULT_K1 = 0.9
DEFAULT_B = 0.4


@functools.lru_cache(maxsize=1)
def _unicode_word() -> re.Pattern[str]:
    marks = "".join(chr(cp) for cp in range(sys.maxunicode + 1)
                    if unicodedata.category(chr(cp)).startswith("M"))
    marks = re.escape(marks) + "\u200c\u200d"  # plus zero-width (non-)joiners
    return re.compile(rf"[^\W_](?:[^\W_]|[{marks}])*")


def _is_term(token: str) -> bool:
    return any(ch.isalnum() for ch in token)


def term_rule(lang: str, tokenizer: Tokenizer = "language") -> str:
    """The rule :func:`bm25_tokens` applies: ``whitespace``, ``unicode-words``, ``jieba``,
    ``fugashi``, ``pythainlp`` or ``chars``.

    >>> term_rule("de"), term_rule("de", "whitespace")
    ('unicode-words', 'whitespace')
    """
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"unknown BM25 tokenizer {tokenizer!r}; accepted: {', '.join(TOKENIZERS)}")
    if tokenizer == "whitespace":
        return "whitespace"
    name = segmenter_name(lang)
    return "unicode-words" if name == "whitespace" else name


def bm25_tokens(text: str, lang: str, tokenizer: Tokenizer = "language") -> list[str]:
    """Index terms of ``text`` in language ``lang`` (see the module docstring for the rule).

    >>> bm25_tokens("東京 Tower", "ja", "whitespace")
    ['東京', 'tower']
    """
    rule = term_rule(lang, tokenizer)
    text = unicodedata.normalize("NFKC", text)
    if rule == "whitespace":
        return text.casefold().split()
    if rule == "unicode-words":
        return [m.group().casefold() for m in _unicode_word().finditer(text)]
    return [t.casefold() for t in segment(text, lang) if _is_term(t)]


class BM25Index:
    """BM25 over the passages of one language.

    Each passage is a dict with ``pid``, ``title`` and ``text``; its title and text are indexed
    together.

    >>> index = BM25Index([{"pid": "a", "title": "", "text": "Der Rhein fließt nach Norden."},
    ...                    {"pid": "b", "title": "", "text": "Die Donau fließt nach Osten."}], "de")
    >>> index.search(["Wohin fließt die Donau?"], k=2)[1]
    [['b', 'a']]
    """

    def __init__(self, passages: Sequence[dict], lang: str, *, tokenizer: Tokenizer = "language",
                 k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> None:
        import bm25s

        if not passages:
            raise ConfigError(f"no passages to index for language {lang!r}")
        self.lang = normalize_lang(lang)
        self.tokenizer = tokenizer
        self.rule = term_rule(self.lang, tokenizer)
        self.pids = [p["pid"] for p in passages]
        corpus = [bm25_tokens(f"{p.get('title') or ''}\n{p['text']}", self.lang, tokenizer)
                  for p in passages]
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        self._bm25.index(corpus, show_progress=False)

    def __len__(self) -> int:
        return len(self.pids)

    def search(self, questions: Sequence[str], k: int) -> tuple[list[list[float]], list[list[str]]]:
        """(scores, pids) per question, best first, at most ``k``; passages scoring 0 (no shared
        term) are left out."""
        if not questions:
            return [], []
        queries = [bm25_tokens(q, self.lang, self.tokenizer) for q in questions]
        docs, scores = self._bm25.retrieve(queries, k=min(k, len(self.pids)), show_progress=False)
        out_scores, out_pids = [], []
        for row_docs, row_scores in zip(docs, scores):
            keep = [(float(s), self.pids[d]) for d, s in zip(row_docs, row_scores) if s > 0]
            out_scores.append([s for s, _ in keep])
            out_pids.append([pid for _, pid in keep])
        return out_scores, out_pids


class InLanguageBM25:
    """One :class:`BM25Index` per passage language; a question searches only the passages of its
    own language (the in-language baseline of multilingual retrieval).

    >>> bm25 = InLanguageBM25([{"pid": "en1", "lang": "en", "title": "", "text": "Paris is in France"},
    ...                        {"pid": "fr1", "lang": "fr", "title": "", "text": "Paris est en France"}])
    >>> bm25.search(["Where is Paris?"], ["en"], k=5)[1]
    [['en1']]
    """

    def __init__(self, passages: Iterable[dict], *, tokenizer: Tokenizer = "language",
                 k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> None:
        by_lang: dict[str, list[dict]] = defaultdict(list)
        for passage in passages:
            by_lang[normalize_lang(passage["lang"])].append(passage)
        self.indexes = {lang: BM25Index(group, lang, tokenizer=tokenizer, k1=k1, b=b)
                        for lang, group in sorted(by_lang.items())}

    @property
    def languages(self) -> list[str]:
        return list(self.indexes)

    def search(self, questions: Sequence[str], langs: Sequence[str],
               k: int) -> tuple[list[list[float]], list[list[str]]]:
        """(scores, pids) per question, from the index of that question's language."""
        if len(questions) != len(langs):
            raise ValueError(f"need one language per question: {len(questions)} questions, {len(langs)} langs")
        rows: dict[str, list[int]] = defaultdict(list)
        for i, lang in enumerate(langs):
            rows[normalize_lang(lang)].append(i)
        missing = sorted(set(rows) - set(self.indexes))
        if missing:
            raise ConfigError(f"no passages in language {', '.join(missing)} for in-language BM25 "
                              f"(passage languages: {', '.join(self.indexes) or 'none'})")
        scores: list[list[float]] = [[] for _ in questions]
        pids: list[list[str]] = [[] for _ in questions]
        for lang, idx in rows.items():
            got_scores, got_pids = self.indexes[lang].search([questions[i] for i in idx], k)
            for i, s, p in zip(idx, got_scores, got_pids):
                scores[i], pids[i] = s, p
        return scores, pids
