from __future__ import annotations

import pytest

from ray_cora.errors import ConfigError
from ray_cora.languages import (
    LANGUAGES,
    MKQA_LANGS,
    MUSE_LANGS,
    XOR_TYDI_LANGS,
    XQUAD_LANGS,
    Language,
    language,
    normalize_lang,
    parse_langs,
)

MKQA_CODES = (
    "ar da de en es fi fr he hu it ja km ko ms nl no pl pt ru sv th tr vi zh_cn zh_hk zh_tw"
).split()


def test_mkqa_codes_exactly_as_mkqa_writes_them():
    assert MKQA_LANGS == tuple(MKQA_CODES)
    assert all(code in LANGUAGES for code in MKQA_CODES)


def test_named_sets_are_canonical_and_in_the_table():
    assert XOR_TYDI_LANGS == ("ar", "bn", "fi", "ja", "ko", "ru", "te")
    assert set(XQUAD_LANGS) == {"ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi",
                                "zh_cn"}
    assert len(MUSE_LANGS) == 16 and {"zh_cn", "zh_tw", "th", "ja"} <= set(MUSE_LANGS)
    for code in (*MKQA_LANGS, *XOR_TYDI_LANGS, *XQUAD_LANGS, *MUSE_LANGS, "ta"):
        assert LANGUAGES[code].code == code


def test_language_entries():
    assert language("ja") == Language("ja", "Japanese", "Japanese", False)
    assert language("zh_tw").script == "Han (Traditional)"
    assert language("zh_cn").script == "Han (Simplified)"
    assert language("he").script == "Hebrew"
    assert language("ko").script == "Hangul"
    assert not language("th").spaces and not language("km").spaces
    assert language("de").spaces and language("ru").script == "Cyrillic"
    with pytest.raises(AttributeError):
        language("en").code = "xx"  # frozen


@pytest.mark.parametrize(
    "given, canonical",
    [
        ("EN", "en"),
        (" ja ", "ja"),
        ("zh", "zh_cn"),
        ("zh-CN", "zh_cn"),
        ("zh_Hans", "zh_cn"),
        ("zh-Hant", "zh_tw"),
        ("zh-HK", "zh_hk"),
        ("nb", "no"),
        ("iw", "he"),
        ("zh_tw", "zh_tw"),
    ],
)
def test_normalize_lang(given, canonical):
    assert normalize_lang(given) == canonical


def test_unknown_code_names_it_and_suggests():
    with pytest.raises(ConfigError) as err:
        normalize_lang("zh_cm")
    msg = str(err.value)
    assert "'zh_cm'" in msg
    assert "zh_cn" in msg and "did you mean" in msg
    assert "ray_cora/languages.py" in msg


def test_unknown_code_without_close_match_lists_known_codes():
    with pytest.raises(ConfigError, match="known codes: ar, bn"):
        normalize_lang("qqqqqq")


def test_parse_langs():
    assert parse_langs("ja,zh, en ,JA,zh_cn") == ("ja", "zh_cn", "en")
    assert parse_langs("mkqa") == MKQA_LANGS
    assert parse_langs("xor") == XOR_TYDI_LANGS
    assert parse_langs("XQuAD") == XQUAD_LANGS
    assert parse_langs("muse") == MUSE_LANGS
    assert parse_langs("te,xor") == ("te", "ar", "bn", "fi", "ja", "ko", "ru")
    assert parse_langs(["de", "nb"]) == ("de", "no")
    with pytest.raises(ConfigError, match="no language codes"):
        parse_langs(" , ")
    with pytest.raises(ConfigError, match="'klingon'"):
        parse_langs("en,klingon")


# --- detect_language (issue 20: the page's auto-detect) ------------------------------------------

from ray_cora.languages import detect_language  # noqa: E402


def test_every_language_has_a_direction_and_only_the_right_to_left_ones_say_rtl():
    assert {code for code, lang in LANGUAGES.items() if lang.direction == "rtl"} == {"ar", "fa", "he"}
    assert {lang.direction for lang in LANGUAGES.values()} == {"ltr", "rtl"}


@pytest.mark.parametrize("text, candidates, expected", [
    ("東京タワーの高さは？", None, ("ja", "script")),          # kana among more Han characters: Japanese
    ("富士山的海拔是多少米？", None, ("zh_cn", "script")),      # Han alone: the first Chinese candidate
    ("這座塔是誰設計的？", None, ("zh_tw", "letters")),         # traditional forms (這 誰 設)
    ("这座塔是谁设计的？", None, ("zh_cn", "letters")),
    ("這座塔是誰設計的？", ["zh_hk", "en"], ("zh_hk", "letters")),
    ("富士山的海拔是多少米？", ["ja", "en"], (None, "no candidate language is written in Han")),
    ("برج ایفل در چه سالی ساخته شد؟", None, ("fa", "letters")),  # Persian ی and چ
    ("Хто написав «Кобзар»? Їх було багато", None, ("uk", "letters")),
    ("Кто написал «Войну и мир»?", None, ("ru", "script")),
    ("help me help you는 언제 나왔나요", None, ("ko", "script")),  # a Latin title inside Korean
    ("Wann wurde die Bastille gestürmt?", None, ("de", "words")),
    ("In welchem Land liegt Angkor Wat?", ["de", "en"], ("de", "words")),
    ("In welchem Land liegt Angkor Wat?", None, (None, "tied between de, nl")),
    ("Mount Everest", None, (None, "no function words of a candidate language")),
    ("3,776 ?", None, (None, "no letters")),
    ("في أي عام", ["en", "de"], (None, "no candidate language is written in Arabic")),
])
def test_detect_language_rules(text, candidates, expected):
    assert detect_language(text, candidates) == expected


def test_detect_language_checks_its_candidates():
    with pytest.raises(ConfigError, match="'xx'"):
        detect_language("hello", ["en", "xx"])
    assert detect_language("¿Dónde nació Mozart?", ["ES", "pt"]) == ("es", "words")


def _accuracy(pairs, candidates=None) -> tuple[float, float, int]:
    """(share detected right, share detected wrong (not None), count) over (lang, text) pairs."""
    got = [detect_language(text, candidates)[0] for _, text in pairs]
    right = sum(g == lang for g, (lang, _) in zip(got, pairs))
    wrong = sum(g is not None and g != lang for g, (lang, _) in zip(got, pairs))
    return right / len(pairs), wrong / len(pairs), len(pairs)


def test_detect_language_on_the_demo_questions():
    """Every demo question (10 languages, 237 questions) among every language of the table.
    Measured: 236 of 237 (99.6 %), none wrong; the one miss is a tie (de/nl: 'In welchem Land liegt
    Angkor Wat?'). The word lists were written looking at these questions: the held-out sets follow."""
    from tests.support import read_jsonl
    from ray_cora.demo import DEMO_QUESTIONS

    right, wrong, n = _accuracy([(q["lang"], q["question"]) for q in read_jsonl(DEMO_QUESTIONS)])
    print(f"demo questions: {right:.3f} right, {wrong:.3f} wrong of {n}")
    assert n == 237 and right >= 0.98 and wrong <= 0.01


def test_detect_language_on_xquad_questions():
    """Held out (the rules were not tuned on it): XQuAD's 1,190 questions in 9 languages, among the
    12 XQuAD languages. Measured: 10,600 of 10,710 (99.0 %) right, 9 (0.08 %) wrong; the misses are
    mostly ties between Latin-script languages (Turkish, German) left to the user."""
    import json

    from tests.support import shared_data

    folder = shared_data("xquad")
    pairs = []
    for name in ("ar", "de", "en", "es", "ru", "th", "tr", "vi", "zh"):
        data = json.loads((folder / f"xquad.{name}.json").read_text(encoding="utf-8"))
        lang = "zh_cn" if name == "zh" else name
        pairs += [(lang, qa["question"]) for article in data["data"] for paragraph in article["paragraphs"]
                  for qa in paragraph["qas"]]
    right, wrong, n = _accuracy(pairs, XQUAD_LANGS)
    print(f"xquad questions: {right:.3f} right, {wrong:.3f} wrong of {n}")
    assert n == 10710 and right >= 0.97 and wrong <= 0.005


def test_detect_language_on_the_mkqa_sample():
    """Held out, and hard: 6 MKQA queries in its 26 languages, many around an English title ('keeping
    up with the kardashians kylie og kendall episoder'), Danish against Norwegian, zh_hk against zh_tw
    (the same script: told apart by nothing here). Measured: 119 of 156 (76.3 %) right, 22 (14.1 %) wrong."""
    import gzip
    import json

    from tests.support import shared_data

    with gzip.open(shared_data("mkqa", "mkqa_sample.jsonl.gz"), "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    pairs = [(lang, query) for record in records for lang, query in record["queries"].items()]
    right, wrong, n = _accuracy(pairs, MKQA_LANGS)
    print(f"mkqa sample: {right:.3f} right, {wrong:.3f} wrong of {n}")
    assert n == 156 and right >= 0.70 and wrong <= 0.2
