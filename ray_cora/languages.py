"""The language table: canonical codes, names, scripts, and the language sets of the QA benchmarks.

Canonical codes are the ones MKQA writes (``zh_cn``, ``zh_hk``, ``zh_tw``, ``no``, ``he``), so
MKQA records need no mapping; other spellings are accepted through :func:`normalize_lang`.

>>> normalize_lang("zh-Hant")
'zh_tw'
>>> language("th").spaces
False
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from ray_cora.errors import ConfigError

__all__ = [
    "CORA_MINING_LANGS",
    "Language",
    "LANGUAGES",
    "LANG_SETS",
    "MKQA_LANGS",
    "MUSE_LANGS",
    "XOR_TYDI_LANGS",
    "XQUAD_LANGS",
    "language",
    "normalize_lang",
    "parse_langs",
]


@dataclass(frozen=True)
class Language:
    """One language: canonical ``code``, English ``name``, writing ``script``, and whether its
    text separates words with ``spaces`` (False for Chinese, Japanese, Thai, Khmer, Lao, Burmese).

    >>> Language("de", "German", "Latin", True).name
    'German'
    """

    code: str
    name: str
    script: str
    spaces: bool


_TABLE: tuple[Language, ...] = (
    Language("ar", "Arabic", "Arabic", True),
    Language("bn", "Bengali", "Bengali", True),
    Language("da", "Danish", "Latin", True),
    Language("de", "German", "Latin", True),
    Language("el", "Greek", "Greek", True),
    Language("en", "English", "Latin", True),
    Language("es", "Spanish", "Latin", True),
    Language("fa", "Persian", "Arabic", True),
    Language("fi", "Finnish", "Latin", True),
    Language("fr", "French", "Latin", True),
    Language("he", "Hebrew", "Hebrew", True),
    Language("hi", "Hindi", "Devanagari", True),
    Language("hu", "Hungarian", "Latin", True),
    Language("id", "Indonesian", "Latin", True),
    Language("it", "Italian", "Latin", True),
    Language("ja", "Japanese", "Japanese", False),
    Language("km", "Khmer", "Khmer", False),
    Language("ko", "Korean", "Hangul", True),
    Language("lo", "Lao", "Lao", False),
    Language("ms", "Malay", "Latin", True),
    Language("my", "Burmese", "Myanmar", False),
    Language("nl", "Dutch", "Latin", True),
    Language("no", "Norwegian", "Latin", True),
    Language("pl", "Polish", "Latin", True),
    Language("pt", "Portuguese", "Latin", True),
    Language("ro", "Romanian", "Latin", True),
    Language("ru", "Russian", "Cyrillic", True),
    Language("sv", "Swedish", "Latin", True),
    Language("sw", "Swahili", "Latin", True),
    Language("ta", "Tamil", "Tamil", True),
    Language("te", "Telugu", "Telugu", True),
    Language("th", "Thai", "Thai", False),
    Language("tr", "Turkish", "Latin", True),
    Language("uk", "Ukrainian", "Cyrillic", True),
    Language("vi", "Vietnamese", "Latin", True),
    Language("zh_cn", "Chinese (Simplified)", "Han (Simplified)", False),
    Language("zh_hk", "Chinese (Hong Kong)", "Han (Traditional)", False),
    Language("zh_tw", "Chinese (Taiwan)", "Han (Traditional)", False),
)

LANGUAGES: dict[str, Language] = {lang.code: lang for lang in _TABLE}

# ISO 639-2 "undetermined": the language of a passage that no source gives (CORA's all_w100.tsv has
# no language column). Accepted wherever a code is, never guessed from, and reported as itself.
UNKNOWN_LANG = "und"

# Other spellings of a canonical code, after lower-casing and ``-`` -> ``_``.
_ALIASES: dict[str, str] = {
    "zh": "zh_cn",
    "zh_hans": "zh_cn",
    "zh_hans_cn": "zh_cn",
    "zh_hant": "zh_tw",
    "zh_hant_tw": "zh_tw",
    "zh_hant_hk": "zh_hk",
    "nb": "no",
    "iw": "he",
    "in": "id",
}

MKQA_LANGS: tuple[str, ...] = (
    "ar", "da", "de", "en", "es", "fi", "fr", "he", "hu", "it", "ja", "km", "ko",
    "ms", "nl", "no", "pl", "pt", "ru", "sv", "th", "tr", "vi", "zh_cn", "zh_hk", "zh_tw",
)
XOR_TYDI_LANGS: tuple[str, ...] = ("ar", "bn", "fi", "ja", "ko", "ru", "te")
XQUAD_LANGS: tuple[str, ...] = (
    "ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh_cn",
)
MUSE_LANGS: tuple[str, ...] = (
    "ar", "zh_cn", "zh_tw", "en", "fr", "de", "it", "ja", "ko", "nl", "pl", "pt", "es", "th",
    "tr", "ru",
)
# The 15 languages CORA's iterative training reaches through language links and translated
# synthetic mGEN answers (Asai et al. 2021, appendix A.2); the iterate job's default for both.
CORA_MINING_LANGS: tuple[str, ...] = (
    "ar", "fi", "ja", "ko", "ru", "es", "sv", "he", "th", "da", "fr", "it", "nl", "pl", "pt",
)

LANG_SETS: dict[str, tuple[str, ...]] = {
    "mkqa": MKQA_LANGS,
    "xor": XOR_TYDI_LANGS,
    "xor_tydi": XOR_TYDI_LANGS,
    "xquad": XQUAD_LANGS,
    "muse": MUSE_LANGS,
    "cora_mining": CORA_MINING_LANGS,
}


def normalize_lang(code: str) -> str:
    """Return the canonical code for ``code``: lower-case, ``-`` -> ``_``, aliases resolved.

    Raises :class:`ConfigError` naming the code and close matches when it is unknown.

    >>> normalize_lang("zh-TW"), normalize_lang("nb"), normalize_lang("iw")
    ('zh_tw', 'no', 'he')
    """
    key = str(code).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key in LANGUAGES or key == UNKNOWN_LANG:
        return key
    known = sorted(LANGUAGES) + sorted(_ALIASES)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = (
        "did you mean " + " or ".join(repr(_ALIASES.get(c, c)) for c in dict.fromkeys(close)) + "?"
        if close
        else "known codes: " + ", ".join(sorted(LANGUAGES)) + "."
    )
    raise ConfigError(
        f"unknown language code {code!r}; {hint} "
        "(the language table is LANGUAGES in ray_cora/languages.py)"
    )


def language(code: str) -> Language:
    """Return the :class:`Language` for ``code`` (any accepted spelling).

    >>> language("zh").script
    'Han (Simplified)'
    """
    return LANGUAGES[normalize_lang(code)]


def parse_langs(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Parse a comma-separated language list into canonical codes, de-duplicated, order kept.

    A set name (``mkqa``, ``xor``, ``xquad``, ``muse``) expands to that benchmark's languages.

    >>> parse_langs("ja, zh-Hans,en,ja")
    ('ja', 'zh_cn', 'en')
    >>> len(parse_langs("mkqa"))
    26
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: dict[str, None] = {}
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        named = LANG_SETS.get(item.lower().replace("-", "_"))
        for code in named if named is not None else (normalize_lang(item),):
            out[code] = None
    if not out:
        raise ConfigError(
            f"no language codes in {spec!r}; give a comma-separated list such as 'en,ja' "
            f"or one of the set names {', '.join(sorted(LANG_SETS))}"
        )
    return tuple(out)
