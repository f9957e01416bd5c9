"""Cross-lingual PAWS-X pairs as Montero et al.'s reranker is trained on them: PAWS-X's per-language
files joined by ``id`` (English side + the other language's side, both directions, the English
label), ids missing on either side counted, a label that differs between files located by
file:line; and those pairs as the 75% PAWS-X part of the mixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_cora.data.pairs import (
    PAWSX_HEADER,
    PAWSX_LANGS,
    cross_lingual_pawsx,
    paper_mixture,
    pawsx_files,
    pawsx_source,
)
from ray_cora.data.records import BadRecords
from ray_cora.errors import BadRecordError, ConfigError

# The same two sentences per id in every language (a stand-in for PAWS-X's translations).
WORDS = {"en": ("cat", "dog"), "de": ("Katze", "Hund"), "ja": ("猫", "犬"), "fr": ("chat", "chien")}


def _write(root: Path, lang: str, name: str, rows: list[tuple]) -> str:
    folder = root / "x-final" / lang
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(["\t".join(PAWSX_HEADER), *("\t".join(map(str, r)) for r in rows)]) + "\n",
                    encoding="utf-8")
    return str(path)


def _row(lang: str, i: int, label: int | None = None) -> tuple:
    one, two = WORDS[lang]
    return (i, f"{lang} {one} {i} .", f"{lang} {two} {i} .", i % 2 if label is None else label)


@pytest.fixture
def xfinal(tmp_path) -> Path:
    """English ids 1..10; German 1..8 (9, 10 untranslated) + 50 (no English row); Japanese 3..10."""
    _write(tmp_path, "en", "train.tsv", [_row("en", i) for i in range(1, 11)])
    _write(tmp_path, "de", "translated_train.tsv", [_row("de", i) for i in [*range(1, 9), 50]])
    _write(tmp_path, "ja", "translated_train.tsv", [_row("ja", i) for i in reversed(range(3, 11))])
    return tmp_path / "x-final"


def test_pairs_join_the_languages_by_id_in_both_directions_with_the_english_label(xfinal):
    english, others = pawsx_files(str(xfinal), ["de", "ja"])
    pairs, counts = cross_lingual_pawsx(english, others)
    assert counts == {"de": {"ids": 8, "pairs": 16, "missing": 2, "not_in_english": 1, "label_conflicts": 0},
                      "ja": {"ids": 8, "pairs": 16, "missing": 2, "not_in_english": 0, "label_conflicts": 0}}
    assert len(pairs) == 32 and {p["source"] for p in pairs} == {"pawsx"}
    by_key = {(p["id"], p["langs"]): p for p in pairs}
    assert len(by_key) == 32  # each id once per direction and language
    # English sentence1 with the other language's sentence2, and the reverse; English label.
    assert (by_key[("4", "en-ja")]["a"], by_key[("4", "en-ja")]["b"]) == ("en cat 4 .", "ja 犬 4 .")
    assert (by_key[("4", "ja-en")]["a"], by_key[("4", "ja-en")]["b"]) == ("ja 猫 4 .", "en dog 4 .")
    assert all(p["label"] == int(p["id"]) % 2 for p in pairs)
    # Every pair is cross-lingual: one side English, the other the joined language.
    for p in pairs:
        first, second = p["langs"].split("-")
        assert p["a"].startswith(first + " ") and p["b"].startswith(second + " ") and "en" in (first, second)
    assert {p["id"] for p in pairs if "de" in p["langs"]} == {str(i) for i in range(1, 9)}


def test_a_label_that_differs_between_files_is_a_bad_record_at_its_line(tmp_path):
    english = _write(tmp_path, "en", "train.tsv", [_row("en", i) for i in range(1, 5)])
    french = _write(tmp_path, "fr", "translated_train.tsv",
                    [_row("fr", 1), _row("fr", 2, label=0), _row("fr", 3, label=0), _row("fr", 4), _row("fr", 4)])
    # id 3: English label 1 (line 4 of the English file), French 0 on line 4 of its file.
    with pytest.raises(BadRecordError, match=r"fr/translated_train\.tsv:4: id 3: label 0, but .*en/train\.tsv:4 "
                                             r"\(English\) has 1"):
        cross_lingual_pawsx(english, [french])
    bad = BadRecords("skip")
    pairs, counts = cross_lingual_pawsx(english, [french], bad_records=bad)
    assert sorted({p["id"] for p in pairs}) == ["1", "2", "4"]
    assert counts["fr"] == {"ids": 3, "pairs": 6, "missing": 0, "not_in_english": 0, "label_conflicts": 1}
    assert [(r["line"], r["reason"].split(":")[0]) for r in bad.records] == [(4, "id 3"), (6, "id 4 repeats line 5")]


def test_languages_come_from_pawsx_folders_or_are_named(tmp_path, xfinal):
    german = str(xfinal / "de" / "translated_train.tsv")
    assert pawsx_source(german) == ("de", german)
    assert pawsx_source(f"ko={german}") == ("ko", german)
    with pytest.raises(ConfigError, match=r"cannot tell its language from its folder 'data'.*give it as LANG="):
        pawsx_source("/data/train.tsv")
    with pytest.raises(ConfigError, match="English file joined with English"):
        pawsx_source(str(xfinal / "en" / "train.tsv"))
    english = str(xfinal / "en" / "train.tsv")
    by_folder, _ = cross_lingual_pawsx(english, [german])
    named, counts = cross_lingual_pawsx(english, [("de", german)])
    assert by_folder == named and list(counts) == ["de"]
    with pytest.raises(ConfigError, match="languages given twice: de"):
        cross_lingual_pawsx(english, [german, ("de", german)])


def test_pawsx_files_follow_the_shipped_layout():
    english, others = pawsx_files("/d/x-final")
    assert english == "/d/x-final/en/train.tsv"
    assert others == [(lang, f"/d/x-final/{lang}/translated_train.tsv") for lang in PAWSX_LANGS]
    english, others = pawsx_files("/d/x-final", ["zh"], split="test")
    assert (english, others) == ("/d/x-final/en/test_2k.tsv", [("zh", "/d/x-final/zh/test_2k.tsv")])
    with pytest.raises(ConfigError, match="en is the pivot side"):
        pawsx_files("/d/x-final", ["de", "en"])
    with pytest.raises(ConfigError, match="'pawsx_split': 'valid' is not one of train, dev, test"):
        pawsx_files("/d/x-final", split="valid")


def test_cross_lingual_pairs_are_the_75_percent_pawsx_part_of_the_mixture(xfinal):
    pawsx, _ = cross_lingual_pawsx(*pawsx_files(str(xfinal), ["de", "ja"]))
    qqp = [{"a": f"q{i}", "b": f"r{i}", "label": i % 2, "source": "qqp"} for i in range(100)]
    pairs, counts = paper_mixture(pawsx, qqp, seed=0)
    # All 32 cross-lingual pairs, QQP drawn to a quarter of the pairs used (not of QQP's 100).
    assert counts == {"pawsx_read": 32, "qqp_read": 100, "pawsx_used": 32, "qqp_used": 11, "total": 43}
    assert sorted((p["id"], p["langs"]) for p in pairs if p["source"] == "pawsx") == \
        sorted((p["id"], p["langs"]) for p in pawsx)
