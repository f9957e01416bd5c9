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
    "detect_language",
    "language",
    "normalize_lang",
    "parse_langs",
]


@dataclass(frozen=True)
class Language:
    """One language: canonical ``code``, English ``name``, writing ``script``, whether its text
    separates words with ``spaces`` (False for Chinese, Japanese, Thai, Khmer, Lao, Burmese), and
    its writing ``direction`` ("rtl" for Arabic, Persian, Hebrew; what a page's ``dir`` says).

    >>> Language("de", "German", "Latin", True).name
    'German'
    >>> language("ar").direction, language("ja").direction
    ('rtl', 'ltr')
    """

    code: str
    name: str
    script: str
    spaces: bool
    direction: str = "ltr"


_TABLE: tuple[Language, ...] = (
    Language("ar", "Arabic", "Arabic", True, "rtl"),
    Language("bn", "Bengali", "Bengali", True),
    Language("da", "Danish", "Latin", True),
    Language("de", "German", "Latin", True),
    Language("el", "Greek", "Greek", True),
    Language("en", "English", "Latin", True),
    Language("es", "Spanish", "Latin", True),
    Language("fa", "Persian", "Arabic", True, "rtl"),
    Language("fi", "Finnish", "Latin", True),
    Language("fr", "French", "Latin", True),
    Language("he", "Hebrew", "Hebrew", True, "rtl"),
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


# --- language detection among the served languages ---------------------------------------------

# Letter ranges of the scripts the table's languages are written in (the main blocks; a letter
# outside them counts as none). Kana is apart from Han: Kana means Japanese, Han alone Chinese.
_SCRIPT_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x024F, "Latin"), (0x1E00, 0x1EFF, "Latin"),
    (0x0370, 0x03FF, "Greek"), (0x1F00, 0x1FFF, "Greek"),
    (0x0400, 0x052F, "Cyrillic"),
    (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"), (0x0750, 0x077F, "Arabic"), (0xFB50, 0xFDFF, "Arabic"), (0xFE70, 0xFEFF, "Arabic"),
    (0x0900, 0x097F, "Devanagari"), (0x0980, 0x09FF, "Bengali"), (0x0B80, 0x0BFF, "Tamil"),
    (0x0C00, 0x0C7F, "Telugu"), (0x0E00, 0x0E7F, "Thai"), (0x0E80, 0x0EFF, "Lao"), (0x1000, 0x109F, "Myanmar"),
    (0x1780, 0x17FF, "Khmer"),
    (0x1100, 0x11FF, "Hangul"), (0x3130, 0x318F, "Hangul"), (0xAC00, 0xD7AF, "Hangul"),
    (0x3040, 0x30FF, "Kana"), (0x31F0, 0x31FF, "Kana"), (0xFF66, 0xFF9F, "Kana"),
    (0x3400, 0x4DBF, "Han"), (0x4E00, 0x9FFF, "Han"), (0xF900, 0xFAFF, "Han"), (0x20000, 0x2FA1F, "Han"),
)

# Which languages a script (other than Latin and Han) may mean, best guess first.
_SCRIPT_LANGS: dict[str, tuple[str, ...]] = {
    "Greek": ("el",), "Cyrillic": ("ru", "uk"), "Hebrew": ("he",), "Arabic": ("ar", "fa"),
    "Devanagari": ("hi",), "Bengali": ("bn",), "Tamil": ("ta",), "Telugu": ("te",), "Thai": ("th",),
    "Lao": ("lo",), "Myanmar": ("my",), "Khmer": ("km",), "Hangul": ("ko",), "Kana": ("ja",),
}

# Letters one language of a shared script has and the other lacks: Persian's پ چ ژ گ ک ی against
# Arabic; Ukrainian's і ї є ґ against Russian (whose ы э ё Ukrainian lacks).
_SCRIPT_MARKERS: dict[str, dict[str, str]] = {
    "Arabic": {"fa": "پچژگکی", "ar": "ةيكى"},
    "Cyrillic": {"uk": "іїєґ", "ru": "ыэёъ"},
}

# Frequent characters written one way in Simplified and another in Traditional Chinese, as pairs.
_HAN_PAIRS = ("这這 国國 说說 时時 为為 个個 来來 们們 会會 么麼 于於 过過 没沒 对對 里裡 后後 发發 长長 学學 还還 "
              "经經 谁誰 见見 问問 题題 车車 门門 书書 东東 电電 开開 关關 网網 华華 历歷 权權 戏戲 强強 导導 种種 间間 "
              "从從 现現 实實 进進 动動 体體 机機 无無 与與 产產 应應 点點 样樣 当當 两兩 业業 战戰 万萬 师師 亚亞 欧歐 "
              "际際 术術 乐樂 义義 岁歲 处處 剧劇 节節 级級 线線 总總 统統 马馬 鸟鳥 鱼魚 龙龍 风風 飞飛 场場 报報 写寫 "
              "画畫 语語 读讀 话話 诗詩 员員 队隊 赛賽 奖獎 军軍 买買 卖賣 钱錢 银銀 铁鐵 边邊 远遠 录錄 签簽 证證 兰蘭 "
              "罗羅 尔爾 纽紐 约約 伦倫 广廣 汉漢 韩韓 湾灣 岛島 壮壯 视視 影影 听聽 爱愛 钟鐘 页頁 张張 条條 观觀 "
              "别別 县縣 区區 医醫 药藥 厂廠 园園 图圖 馆館 贝貝 儿兒 头頭 脑腦 诞誕 选選 举舉 议議 党黨 伟偉 帝帝").split()
_SIMPLIFIED = {pair[0] for pair in _HAN_PAIRS if pair[0] != pair[1]}
_TRADITIONAL = {pair[1] for pair in _HAN_PAIRS if pair[0] != pair[1]}

# Latin-script languages: frequent function words (question words, articles, prepositions,
# auxiliaries) and letters only that language writes among the table's Latin-script languages.
# A word shared by several languages votes for each; an untied majority decides.
_FUNCTION_WORDS: dict[str, str] = {
    "en": "the of and in on is are was were what who whom whose where when which why how does did do many much "
          "year city country first called name with by from i you he she it can if have has will for to at",
    "es": "el la los las de del en es son qué quién quiénes dónde cuándo cómo cuál cuáles cuánto cuántos cuántas "
          "año ciudad se por con un una fue nació murió primera primer yo si para su",
    "fr": "le la les de du des est sont qui que quel quelle quels quelles où quand comment combien pourquoi "
          "année ville en dans un une a été il elle né née mort par sur je si ou avec pour",
    "de": "der die das den dem des ist sind war wer was wo wann wie welche welcher welches welchem welchen "
          "jahr stadt in im und von hat wurde ein eine einer auf zum zur ich wenn mit für",
    "it": "il lo la gli le di del della che chi cosa dove quando come quale quali quanto quanti anno città è "
          "sono fu nato nata in un una io se con per",
    "pt": "o a os as de do da dos das que quem onde quando como qual quais quanto quantos ano cidade é são foi "
          "nasceu em no na um uma eu se com para",
    "nl": "de het een van in is zijn was wie wat waar wanneer hoe welke welk jaar stad werd door op ik als met voor",
    "sv": "vem vad var när hur vilken vilket vilka år stad är och av på en ett född jag kan om har som blev till med den det",
    "da": "hvem hvad hvor hvornår hvordan hvilken hvilket hvilke år by er og af på en et født jeg kan hvis har som blev til med den det",
    "no": "hvem hva hvor når hvordan hvilken hvilket hvilke år by er og av på en et født jeg kan hvis om har som ble til med den det",
    "fi": "kuka mikä missä milloin miten mitkä minkä vuonna kaupunki on ja oli minä jos kanssa",
    "hu": "ki mi hol mikor hogyan melyik hány évben város az egy és volt van a meg ha hogy",
    "pl": "kto co gdzie kiedy jak który która które ile roku mieście jest był była w na i ja jeśli z dla",
    "tr": "kim ne nerede ne zaman nasıl hangi kaç yılında şehir bir ve mi mı mu mü ben eğer ile için kimdir",
    "ro": "cine ce unde când cum care câți anul oraș este a fost în și un o",
    "vi": "ai gì đâu nào khi bao nhiêu năm thành phố là của và có được người",
    "id": "siapa apa di mana kapan bagaimana berapa tahun kota adalah yang dan dari",
    "ms": "siapa apa di mana bila bagaimana berapa tahun bandar ialah adalah yang dan dari",
    "sw": "nani nini wapi lini vipi gani mwaka mji ni na ya wa",
}
_LETTERS: dict[str, str] = {
    "es": "ñ¿¡", "pt": "ãõ", "fr": "œ", "de": "ß", "tr": "ğışİ", "pl": "łśźżąęćń", "ro": "șțăţş",
    "vi": "ơưđạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ", "hu": "őű", "da": "æøå", "no": "æøå",
    "sv": "äåö", "fi": "äö",
}
_WORD_SETS: dict[str, frozenset[str]] = {lang: frozenset(words.split()) for lang, words in _FUNCTION_WORDS.items()}


def _script(ch: str) -> str | None:
    point = ord(ch)
    for start, end, script in _SCRIPT_RANGES:
        if start <= point <= end:
            return script if ch.isalpha() or script in ("Kana", "Han") else None
    return None


def detect_language(text: str, candidates: Iterable[str] | None = None) -> tuple[str | None, str]:
    """The language of ``text`` among ``candidates`` (codes; default every language of the table)
    and how it was told: ``(code, "script")`` when the letters' script names one candidate,
    ``(code, "letters")`` when letters only one candidate of that script writes decide (Persian
    against Arabic, Ukrainian against Russian, Traditional against Simplified Chinese),
    ``(code, "words")`` for Latin text by a vote of frequent function words and letters, or
    ``(None, why)`` when unsure (no letters, a script no candidate writes, no or tied votes).

    Hand-written on purpose: a library detector (lingua: about 96 MB of models and about 1 GB of
    memory when loaded) is too heavy for each Ingress replica, and this one only has to pick among
    the languages the app serves, for a question, where a wrong guess costs little (the page shows
    it and the user can pick the language). Measured on the demo questions (tests/test_languages.py).

    >>> detect_language("富士山の高さは？"), detect_language("مدينة"), detect_language("شهر", ["fa", "en"])
    (('ja', 'script'), ('ar', 'letters'), ('fa', 'script'))
    >>> detect_language("¿Quién escribió Don Quijote?", ["en", "es", "fr"])
    ('es', 'words')
    >>> detect_language("3776", ["en", "es"])
    (None, 'no letters')
    """
    allowed = list(dict.fromkeys(normalize_lang(c) for c in (candidates if candidates is not None else LANGUAGES)))
    counts: dict[str, int] = {}
    for ch in text:
        script = _script(ch)
        if script is not None:
            counts[script] = counts.get(script, 0) + 1
    if not counts:
        return None, "no letters"
    if counts.get("Kana") and "ja" in allowed:  # kana are Japanese only, even among more Han characters
        return "ja", "script"
    # Latin words inside text of another script are common (names, titles: "help me help you는 언제
    # 나왔나요"), the reverse is rare: a few letters of another script outweigh any number of Latin ones.
    others = {s: n for s, n in counts.items() if s != "Latin"}
    if others and (sum(others.values()) >= 2 or "Latin" not in counts):
        counts = others
    script = max(counts, key=lambda s: (counts[s], s == "Han"))  # a tie between Han and another: Han
    if script == "Latin":
        return _vote_latin(text, [c for c in allowed if LANGUAGES[c].script == "Latin"])
    if script == "Han":
        return _pick_chinese(text, allowed)
    langs = [c for c in _SCRIPT_LANGS.get(script, ()) if c in allowed]
    if not langs:
        return None, f"no candidate language is written in {script}"
    if len(langs) == 1:
        return langs[0], "script"
    markers = _SCRIPT_MARKERS.get(script, {})
    lowered = text.lower()
    hits = {lang: sum(ch in markers.get(lang, "") for ch in lowered) for lang in langs}
    best = max(hits.values())
    winners = [lang for lang, n in hits.items() if n == best]
    if best and len(winners) == 1:
        return winners[0], "letters"
    return langs[0], "script"  # no marker letters: the script's first language (Arabic, Russian)


def _pick_chinese(text: str, allowed: list[str]) -> tuple[str | None, str]:
    chinese = [c for c in ("zh_cn", "zh_tw", "zh_hk") if c in allowed]
    if not chinese:
        return None, "no candidate language is written in Han"
    simplified = sum(ch in _SIMPLIFIED for ch in text)
    traditional = sum(ch in _TRADITIONAL for ch in text)
    if traditional > simplified:
        trad = [c for c in chinese if c != "zh_cn"]
        if trad:
            return trad[0], "letters"
    if simplified > traditional and "zh_cn" in chinese:
        return "zh_cn", "letters"
    return chinese[0], "script"


def _vote_latin(text: str, langs: list[str]) -> tuple[str | None, str]:
    if not langs:
        return None, "no candidate language is written in Latin"
    lowered = text.lower()
    words = [w for w in "".join(ch if ch.isalpha() or ch == "'" else " " for ch in lowered).replace("'", " ").split()]
    votes = {lang: sum(w in _WORD_SETS.get(lang, frozenset()) for w in words)
             + sum(ch in _LETTERS.get(lang, "") for ch in lowered) for lang in langs}
    best = max(votes.values())
    winners = [lang for lang, n in votes.items() if n == best]
    if not best:
        return None, "no function words of a candidate language"
    if len(winners) > 1:
        return None, "tied between " + ", ".join(winners)
    return winners[0], "words"
