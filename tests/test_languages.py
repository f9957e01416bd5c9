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
