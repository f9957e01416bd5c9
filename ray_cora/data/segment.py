"""Word tokens for cutting articles into fixed-size passages, one rule per language (pure, no Ray).

Passages are counted in tokens (DPR/CORA: 100 "words"). What a token is depends on the language:

==========================  ================================================  ==================
language                    with its optional package installed               without it
==========================  ================================================  ==================
written with spaces         whitespace-separated words (DPR's ``w100``)       (no package)
``zh_cn``, ``zh_hk``,       ``jieba`` words (its dictionary ships in the      character rule
``zh_tw``                   wheel)
``ja``                      ``fugashi`` + ``unidic-lite`` (MeCab) morphemes   character rule
``th``                      ``pythainlp`` ``newmm`` words (dictionary ships   character rule
                            in the wheel; nothing is downloaded)
``km``, ``lo``, ``my``      (no package used)                                 character rule
==========================  ================================================  ==================

The **character rule**: every character of a script written without spaces (Han, kana,
Bopomofo, Thai, Lao, Khmer, Myanmar) is one token, together with the combining marks that follow
it (Thai vowel signs, dakuten) and, in Khmer and Burmese, the consonant stacked under it by a
coeng/virama, so a passage never starts or ends in the middle of a written syllable. A run of
other letters and digits (``Tokyo``, ``2024``, a Hangul word) is one token; any other
non-space character (punctuation) is one token. Whitespace is never a token.

The optional packages are imported lazily; if one is missing (or fails to load) the language
falls back to the character rule, said once with ``logging.info``. ``backend="chars"`` forces the
character rule, for output that does not depend on what is installed. :func:`segmenter_name` says
which rule a language gets here, so a job can record it beside its output.

Passage text is cut from the original text between the first and last token, so nothing is
re-spelled: whitespace runs become one space, except that a line break between two CJK
characters (Han, kana, CJK punctuation) is removed; no space is ever inserted between CJK
characters.

>>> segment("Mount Fuji is 3,776 m high.", "en")
['Mount', 'Fuji', 'is', '3,776', 'm', 'high.']
>>> segment("富士山は2024年", "ja", backend="chars")
['富', '士', '山', 'は', '2024', '年']
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import unicodedata
from typing import Callable, Literal

from ray_cora.languages import language, normalize_lang

__all__ = ["Backend", "segment", "token_spans", "segmenter_name", "normalize_whitespace", "join_span"]

log = logging.getLogger(__name__)

Backend = Literal["auto", "chars"]
Span = tuple[int, int]

# Scripts written without spaces between words (character rule: one character, one token).
_NO_SPACE_RANGES = (
    "\u0e00-\u0e7f"  # Thai
    "\u0e80-\u0eff"  # Lao
    "\u1000-\u109f\ua9e0-\ua9ff\uaa60-\uaa7f"  # Myanmar
    "\u1780-\u17ff\u19e0-\u19ff"  # Khmer
    "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3038-\u303b"  # CJK radicals, iteration marks
    "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f\U0001b000-\U0001b16f"  # kana
    "\u3100-\u312f\u31a0-\u31bf"  # Bopomofo
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"  # Han
)
# Han, kana and CJK punctuation/full-width forms: a line break between two of these is dropped.
_CJK_RANGES = (
    "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u31f0-\u31ff\u3100-\u312f\u31a0-\u31bf"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U0001b000-\U0001b16f\U00020000-\U0003ffff"
)
# Khmer coeng and Myanmar virama stack the next consonant under the current one.
_JOINERS = "\u17d2\u1039"

# Which optional segmenter a language uses when it is installed.
_LANG_BACKEND = {"zh_cn": "jieba", "zh_hk": "jieba", "zh_tw": "jieba", "ja": "fugashi", "th": "pythainlp"}


def _ranges(codepoints: list[int]) -> str:
    """A regex character-class body for a sorted list of code points."""
    parts, start, prev = [], None, None
    for cp in codepoints:
        if start is None:
            start = prev = cp
        elif cp == prev + 1:
            prev = cp
        else:
            parts.append((start, prev))
            start = prev = cp
    if start is not None:
        parts.append((start, prev))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in parts)


@functools.lru_cache(maxsize=1)
def _char_rule() -> re.Pattern[str]:
    marks = _ranges([cp for cp in range(sys.maxunicode + 1)
                     if unicodedata.category(chr(cp)).startswith("M")] + [0x200C, 0x200D])
    ns, join = _NO_SPACE_RANGES, _JOINERS
    return re.compile(
        rf"[{ns}](?:[{join}][{ns}]|[{marks}])*"  # one no-space-script character (+ marks, stacks)
        rf"|[^\W{ns}](?:[^\W{ns}]|[{marks}])*"  # a run of other letters/digits
        rf"|\S[{marks}]*"  # anything else that is not a space: punctuation
    )


_WHITESPACE = re.compile(r"\S+")
_SPACES = re.compile(r"\s+")
_CJK = re.compile(rf"[{_CJK_RANGES}]")


def _spans_whitespace(text: str) -> list[Span]:
    return [m.span() for m in _WHITESPACE.finditer(text)]


def _spans_chars(text: str) -> list[Span]:
    return [m.span() for m in _char_rule().finditer(text)]


def _spans_from_words(text: str, words: list[str]) -> list[Span]:
    """Locate a segmenter's words in ``text`` in order; any part it skipped gets the char rule."""
    spans: list[Span] = []
    pos = 0
    for word in words:
        for piece in word.split():
            start = text.find(piece, pos)
            if start < 0:  # the segmenter changed the text; fall back for the rest
                return spans + [(a + pos, b + pos) for a, b in _spans_chars(text[pos:])]
            if text[pos:start].strip():
                spans.extend((a + pos, b + pos) for a, b in _spans_chars(text[pos:start]))
            spans.append((start, start + len(piece)))
            pos = start + len(piece)
    if text[pos:].strip():
        spans.extend((a + pos, b + pos) for a, b in _spans_chars(text[pos:]))
    return spans


def _load_jieba() -> Callable[[str], list[Span]]:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return lambda text: [(a, b) for w, a, b in jieba.tokenize(text) if w.strip()]


def _load_fugashi() -> Callable[[str], list[Span]]:
    import fugashi

    tagger = fugashi.Tagger()  # finds unidic-lite (or unidic) on its own; raises if neither
    return lambda text: _spans_from_words(text, [w.surface for w in tagger(text)])


def _load_pythainlp() -> Callable[[str], list[Span]]:
    from pythainlp.tokenize import word_tokenize

    word_tokenize("ทดสอบ", engine="newmm")  # loads the bundled dictionary now, not mid-task
    return lambda text: _spans_from_words(
        text, word_tokenize(text, engine="newmm", keep_whitespace=False))


_LOADERS: dict[str, Callable[[], Callable[[str], list[Span]]]] = {
    "jieba": _load_jieba, "fugashi": _load_fugashi, "pythainlp": _load_pythainlp,
}
_PACKAGES = {"jieba": "jieba", "fugashi": "fugashi unidic-lite", "pythainlp": "pythainlp"}


@functools.lru_cache(maxsize=None)
def _optional(name: str) -> Callable[[str], list[Span]] | None:
    try:
        return _LOADERS[name]()
    except Exception as exc:  # ImportError, or a package present but unusable (no dictionary)
        log.info("segmenter %s unavailable (%s: %s); using the character rule instead "
                 "(pip install %s for word segmentation)", name, type(exc).__name__, exc, _PACKAGES[name])
        return None


def segmenter_name(lang: str, backend: Backend = "auto") -> str:
    """The rule :func:`segment` applies to ``lang`` in this process: ``whitespace``, ``chars``,
    ``jieba``, ``fugashi`` or ``pythainlp``.

    >>> segmenter_name("de")
    'whitespace'
    >>> segmenter_name("km")
    'chars'
    """
    if backend not in ("auto", "chars"):
        raise ValueError(f"segmenter backend must be 'auto' or 'chars', got {backend!r}")
    code = normalize_lang(lang)
    if language(code).spaces:
        return "whitespace"
    name = _LANG_BACKEND.get(code)
    if backend == "auto" and name and _optional(name) is not None:
        return name
    return "chars"


def token_spans(text: str, lang: str, backend: Backend = "auto") -> list[Span]:
    """``(start, end)`` character offsets of the tokens of ``text`` (see the module docstring).

    >>> token_spans("東京 Tower", "ja", backend="chars")
    [(0, 1), (1, 2), (3, 8)]
    """
    name = segmenter_name(lang, backend)
    if name == "whitespace":
        return _spans_whitespace(text)
    if name == "chars":
        return _spans_chars(text)
    return _optional(name)(text)  # type: ignore[misc]


def segment(text: str, lang: str, backend: Backend = "auto") -> list[str]:
    """The tokens of ``text`` in language ``lang``; whitespace is never part of a token."""
    return [text[a:b] for a, b in token_spans(text, lang, backend)]


def normalize_whitespace(text: str, lang: str) -> str:
    """Trim, turn each whitespace run into one space; for languages written without spaces, drop
    a run that holds a line break between two CJK characters.

    >>> normalize_whitespace(" a \\n\\n b ", "en")
    'a b'
    >>> normalize_whitespace("東京。\\n大阪 Osaka", "ja")
    '東京。大阪 Osaka'
    """
    text = text.strip()
    if language(lang).spaces:
        return " ".join(text.split())

    def repl(m: re.Match[str]) -> str:
        if ("\n" in m.group() or "\r" in m.group()) and m.start() > 0 and m.end() < len(text) \
                and _CJK.match(text[m.start() - 1]) and _CJK.match(text[m.end()]):
            return ""
        return " "

    return _SPACES.sub(repl, text)


def join_span(text: str, spans: list[Span], lang: str) -> str:
    """The text of tokens ``spans`` (consecutive, non-empty), whitespace-normalised as above."""
    return normalize_whitespace(text[spans[0][0]:spans[-1][1]], lang)
