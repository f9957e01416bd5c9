"""The answer scorers, pinned on hand-computed values for the cases where the official scripts'
rules matter (Japanese MeCab, Chinese characters, articles, counters, aliases, No Answer)."""

from __future__ import annotations

import math

import pytest

from ray_cora.errors import ConfigError
from ray_cora.metrics.qa import (
    Prediction,
    exact_match,
    f1,
    mkqa_tokens,
    normalize_mkqa,
    normalize_xor,
    score_predictions,
    xor_bleu,
)

pytest.importorskip("MeCab", reason="xor-mode Japanese scoring needs the eval extra (mecab-python3)")


# --- xor mode (XOR-TyDi / CORA scorer) ------------------------------------------------------


def test_xor_japanese_is_scored_on_mecab_tokens():
    # MeCab splits 東京都 into 東京 / 都: P = 1/2, R = 1 -> F1 = 2/3. Unsegmented it would be one
    # token that never matches (which is what happens to Chinese, whitespace-split by the script).
    assert f1("東京都", ["東京"], "ja") == pytest.approx(2 / 3)
    assert f1("東京都", ["東京"], "zh_cn") == 0.0
    # The scorer turns ・ into a space in the prediction only, while MeCab keeps ・ as a token of
    # the gold (it is not ASCII punctuation): the identical string gets F1 2*1*(2/3)/(5/3) = 0.8.
    assert f1("リドリー・スコット", ["リドリー・スコット"], "ja") == pytest.approx(0.8)
    assert exact_match("リドリー・スコット", ["リドリー・スコット"], "ja") == 0.0


def test_xor_counter_characters_are_removed():
    assert exact_match("1990年", ["1990"], "ja") == 1.0
    assert exact_match("30歳", ["30"], "en") == 1.0
    assert exact_match("2017년", ["2017"], "ko") == 1.0
    assert exact_match("5人", ["5"], "zh_cn") == 1.0
    assert normalize_xor("  The (1990年), ") == "the 1990"


def test_xor_keeps_articles_as_the_script_does():
    assert exact_match("the Beatles", ["Beatles"], "en") == 0.0
    assert f1("the Beatles", ["Beatles"], "en") == pytest.approx(2 / 3)


def test_xor_max_over_golds_and_empty_prediction():
    assert f1("Barack Obama", ["Michelle", "Obama", "Barack Hussein Obama"], "en") == pytest.approx(0.8)
    assert f1("", ["Obama"], "en") == 0.0
    assert exact_match("", ["Obama"], "en") == 0.0
    assert xor_bleu("", ["Obama"], "en") == 0.0


def test_xor_bleu_is_nltk_sentence_bleu_on_characters():
    # p1 = 4/5, p2 = 3/4, p3 = 2/3, p4 = 1/2, equal lengths (BP = 1): BLEU = (0.2) ** 0.25.
    assert xor_bleu("abcde", ["abcdf"], "en") == pytest.approx(0.2 ** 0.25)
    assert xor_bleu("Tokyo", "Tokyo", "en") == pytest.approx(1.0)
    # For ja the references are MeCab's output ('東京 \n'): no 3-gram of the raw prediction is in
    # it, and NLTK without smoothing then gives (almost exactly) 0 even for a correct answer.
    assert xor_bleu("東京", ["東京"], "ja") < 1e-100


# --- mkqa mode (official MKQA scorer) --------------------------------------------------------


def test_mkqa_mixed_segmentation_scores_characters():
    # The MKQA script's own test: 5 shared characters, 6 predicted, 7 gold -> 10/13.
    assert f1("这个一个苹果", ["这是还是苹果", "这是另一个苹果"], "zh_cn", "mkqa") == pytest.approx(10 / 13)
    assert exact_match("这个一个苹果", ["这是另一个苹果"], "zh_cn", "mkqa") == 0.0
    # Every non-space character is a token there, Latin and digits included.
    assert mkqa_tokens("東京 Tower", "ja") == ["東", "京", "t", "o", "w", "e", "r"]
    assert f1("ビョルンソン", ["ハフソー・ユリウス・ビョルンソン"], "ja", "mkqa") == pytest.approx(6 / 11)
    # No counter removal in mkqa mode: 1990年 is 5 tokens against 4 -> 8/9.
    assert f1("1990年", ["1990"], "zh_cn", "mkqa") == pytest.approx(8 / 9)
    # Whitespace languages keep words: "東京都" is one token in Korean.
    assert f1("東京都", ["東京"], "ko", "mkqa") == 0.0


@pytest.mark.parametrize("lang, prediction, gold", [
    ("en", "The Beatles", "Beatles"),
    ("de", "Die Ärzte", "Ärzte"),
    ("de", "des Kaisers", "Kaisers"),
    ("es", "la casa", "casa"),
    ("fr", "la Joconde", "Joconde"),
    ("it", "il Gattopardo", "Gattopardo"),
    ("pt", "os Lusíadas", "Lusíadas"),
    ("nl", "het Rijksmuseum", "Rijksmuseum"),
    ("hu", "az alma", "alma"),
    ("ar", "التفاحة", "تفاحة"),
])
def test_mkqa_removes_the_articles_of_the_language(lang, prediction, gold):
    assert exact_match(prediction, [gold], lang, "mkqa") == 1.0


def test_mkqa_articles_are_per_language():
    assert exact_match("Die Ärzte", ["Ärzte"], "en", "mkqa") == 0.0  # "die" is no English article
    assert exact_match("The Beatles", ["Beatles"], "de", "mkqa") == 0.0
    # The script's French pattern has no closing \b, so a leading "le" goes even inside a word.
    assert exact_match("lemon", ["mon"], "fr", "mkqa") == 1.0
    assert exact_match("lemon", ["mon"], "en", "mkqa") == 0.0
    # ... and "le" is tried before "les": "les Misérables" keeps an "s".
    assert normalize_mkqa("les Misérables", "fr") == "s misérables"


def test_mkqa_aliases_and_no_answer():
    golds = ["Ridley Scott", "Sir Ridley Scott"]
    assert exact_match("sir ridley scott!", golds, "en", "mkqa") == 1.0
    # No Answer (empty gold list) agrees only with an empty prediction.
    assert f1("", [], "en", "mkqa") == 1.0
    assert exact_match("", [], "en", "mkqa") == 1.0
    assert f1("Paris", [], "en", "mkqa") == 0.0
    assert f1("", ["Paris"], "en", "mkqa") == 0.0
    # A gold made only of an article normalises to nothing and then matches No Answer.
    assert f1("", ["the"], "en", "mkqa") == 1.0


def test_mkqa_binary_answer_wins_over_prediction_text():
    gold = [{"qid": "1", "lang": "en", "answers": ["yes"]}, {"qid": "2", "lang": "en", "answers": []}]
    preds = {("1", "en"): Prediction("wrong answer", binary_answer="YES"),
             ("2", "en"): Prediction("", binary_answer="no")}
    rows: list[dict] = []
    metrics = score_predictions(gold, preds, mode="mkqa", sacrebleu=False, per_question=rows)
    assert [(r["f1"], r["em"]) for r in rows] == [(1.0, 1.0), (0.0, 0.0)]
    assert metrics["per_language"]["en"]["answerable_f1"] == 100.0
    assert metrics["per_language"]["en"]["unanswerable_em"] == 0.0


def test_mkqa_summaries_and_best_threshold():
    gold = [{"qid": "a", "lang": "en", "answers": ["Paris"]},
            {"qid": "b", "lang": "en", "answers": []}]
    preds = {("a", "en"): Prediction("Paris", no_answer_prob=0.2),
             ("b", "en"): Prediction("London", no_answer_prob=0.8)}
    stats = score_predictions(gold, preds, mode="mkqa", sacrebleu=False)["per_language"]["en"]
    # Default threshold: a right (1), b answered although unanswerable (0).
    assert (stats["f1"], stats["em"]) == (50.0, 50.0)
    assert (stats["answerable_count"], stats["unanswerable_count"]) == (1, 1)
    # Threshold search: start at 1 (b right when everything is suppressed); releasing a (0.2)
    # gives 2, releasing b (0.8) gives 1 -> best 2/2 at threshold 0.2, which suppresses b.
    assert stats["best_f1"] == 100.0
    assert stats["best_f1_threshold"] == 0.2
    assert stats["best_em"] == 100.0
    assert stats["best_unanswerable_em"] == 100.0


def test_score_predictions_counts_missing_and_unknown_and_averages_languages():
    gold = [{"qid": "1", "lang": "en", "answers": ["Paris"]},
            {"qid": "2", "lang": "en", "answers": ["Rome"]},
            {"qid": "1", "lang": "ja", "answers": ["パリ"]}]
    preds = {("1", "en"): "Paris", ("1", "ja"): "パリ", ("9", "en"): "Oslo"}
    m = score_predictions(gold, preds, mode="xor", sacrebleu=False)
    assert m["mode"] == "xor"
    en, ja = m["per_language"]["en"], m["per_language"]["ja"]
    assert (en["count"], en["f1"], en["em"], en["missing"]) == (2, 50.0, 50.0, 1)
    assert (ja["count"], ja["f1"], ja["em"]) == (1, 100.0, 100.0)
    assert en["bleu"] == pytest.approx(50.0)  # "Paris" vs "Paris": 1; missing: 0
    assert m["macro"]["f1"] == pytest.approx(75.0)
    assert m["missing"]["count"] == 1 and m["missing"]["examples"] == [{"qid": "2", "lang": "en"}]
    assert m["unknown"]["count"] == 1 and m["unknown"]["examples"] == [{"qid": "9", "lang": "en"}]


def test_sacrebleu_is_a_separate_corpus_figure():
    gold = [{"qid": "1", "lang": "en", "answers": ["the cat sat on the mat"]},
            {"qid": "2", "lang": "en", "answers": ["a dog"]}]
    preds = {("1", "en"): "the cat sat on the mat", ("2", "en"): "a dog"}
    stats = score_predictions(gold, preds, mode="xor")["per_language"]["en"]
    assert stats["sacrebleu"] == pytest.approx(100.0)
    assert stats["sacrebleu_tokenize"] == "13a"
    # The official (sentence, character) BLEU of the same predictions is also 100 here, but the
    # two are different figures and reported under different keys.
    assert stats["bleu"] == pytest.approx(100.0)


def test_bad_mode_and_duplicate_gold_are_errors():
    with pytest.raises(ConfigError, match="unknown scoring mode"):
        f1("a", ["a"], "en", mode="squad")
    with pytest.raises(ConfigError, match="twice"):
        score_predictions([{"qid": "1", "lang": "en", "answers": ["a"]}] * 2, {}, mode="xor")


def test_macro_of_mkqa_is_the_rounded_mean_of_rounded_languages():
    gold = [{"qid": str(i), "lang": lang, "answers": ["x y z"]} for i in range(3) for lang in ("en", "de")]
    preds = {("0", "en"): "x", ("0", "de"): "x y"}
    m = score_predictions(gold, preds, mode="mkqa", sacrebleu=False)
    # en: F1 (0.5 + 0 + 0) / 3 = 16.67; de: 0.8 / 3 = 26.67; macro of the rounded = 21.67.
    assert m["per_language"]["en"]["f1"] == 16.67
    assert m["per_language"]["de"]["f1"] == 26.67
    assert math.isclose(m["macro"]["f1"], 21.67)
