"""In-language BM25 (ray_cora/index/bm25.py) and the metric functions of the XQuAD retrieval
benchmark (jobs/benchmarks/xquad_retrieval.py) on tiny hand-made cases."""

from __future__ import annotations

import pytest

from ray_cora.errors import ConfigError, RayCoraError
from ray_cora.index.bm25 import BM25Index, InLanguageBM25, bm25_tokens, term_rule
from tests.support import load_benchmark

# --- tokenizers --------------------------------------------------------------------------------


def test_latin_text_is_lowercased_and_split_at_punctuation():
    assert term_rule("en") == "unicode-words"
    assert bm25_tokens("Hello, WORLD! It's Super_Bowl_50 (2016).", "en") == [
        "hello", "world", "it", "s", "super", "bowl", "50", "2016"]
    # Full-width forms are folded by NFKC; German ß case-folds the same in query and passage.
    assert bm25_tokens("ＡＢＣ Straße", "de") == ["abc", "strasse"]
    assert bm25_tokens("STRASSE", "de") == ["strasse"]


def test_combining_marks_stay_inside_the_word():
    # Arabic harakat (category Mn) would split a word under a plain \w+ rule.
    assert bm25_tokens("كَتَبَ الطالبُ", "ar") == ["كَتَبَ", "الطالبُ"]
    assert bm25_tokens("Đội phòng ngự", "vi") == ["đội", "phòng", "ngự"]


def test_chinese_is_segmented_into_words_by_jieba():
    assert term_rule("zh") == "jieba"
    tokens = bm25_tokens("黑豹队的防守只丢了308分，在联赛中排名第六（NFL）", "zh")
    assert {"黑豹", "防守", "联赛", "排名", "308", "nfl"} <= set(tokens)
    assert "，" not in tokens and "（" not in tokens  # punctuation is not a term
    # Whitespace finds one term per clause: nothing a question would share with it.
    assert bm25_tokens("黑豹队的防守只丢了308分，在联赛中排名第六", "zh", "whitespace") == [
        "黑豹队的防守只丢了308分,在联赛中排名第六"]


def test_thai_is_segmented_into_words_by_pythainlp():
    assert term_rule("th") == "pythainlp"
    tokens = bm25_tokens("ทีมรับของแพนเธอร์สได้อันดับที่หกของลีก", "th")
    assert {"ทีม", "ของ", "ลีก"} <= set(tokens)
    assert len(tokens) >= 6
    assert len(bm25_tokens("ทีมรับของแพนเธอร์สได้อันดับที่หกของลีก", "th", "whitespace")) == 1


def test_japanese_is_segmented_into_morphemes_by_fugashi():
    assert term_rule("ja") == "fugashi"
    tokens = bm25_tokens("富士山の高さは３７７６メートルです。", "ja")
    assert {"の", "は", "3776", "メートル"} <= set(tokens)
    assert "。" not in tokens


def test_unknown_tokenizer_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown BM25 tokenizer 'spaces'.*language, whitespace"):
        bm25_tokens("x", "en", "spaces")  # type: ignore[arg-type]


# --- BM25 search -------------------------------------------------------------------------------

PASSAGES = [
    {"pid": "en-rhine", "lang": "en", "title": "Rhine", "text": "The Rhine flows north into the North Sea."},
    {"pid": "en-danube", "lang": "en", "title": "Danube", "text": "The Danube flows east into the Black Sea."},
    {"pid": "en-fuji", "lang": "en", "title": "Fuji", "text": "Mount Fuji is the highest mountain in Japan."},
    {"pid": "de-rhine", "lang": "de", "title": "Rhein", "text": "Der Rhein fließt nach Norden in die Nordsee."},
    {"pid": "de-danube", "lang": "de", "title": "Donau", "text": "Die Donau fließt nach Osten ins Schwarze Meer."},
    {"pid": "zh-panthers", "lang": "zh_cn", "title": "", "text": "黑豹队的防守只丢了308分，在联赛中排名第六。"},
    {"pid": "zh-broncos", "lang": "zh_cn", "title": "", "text": "野马队的进攻在季后赛中表现出色，赢得了冠军。"},
    {"pid": "th-panthers", "lang": "th", "title": "", "text": "ทีมรับของแพนเธอร์สเสียคะแนนเพียง 308 แต้ม"},
    {"pid": "th-broncos", "lang": "th", "title": "", "text": "ทีมบรองโกส์ชนะการแข่งขันชิงแชมป์"},
    {"pid": "ja-fuji", "lang": "ja", "title": "", "text": "富士山は日本で一番高い山です。"},
    {"pid": "ja-tokyo", "lang": "ja", "title": "", "text": "東京は日本の首都で、人口が多い都市です。"},
]


def test_bm25_ranks_the_right_passage_first_in_every_language():
    bm25 = InLanguageBM25(PASSAGES)
    assert bm25.languages == ["de", "en", "ja", "th", "zh_cn"]
    questions = [("Into which sea does the Danube flow?", "en", "en-danube"),
                 ("Wohin fließt der Rhein?", "de", "de-rhine"),
                 ("黑豹队的防守丢了多少分？", "zh_cn", "zh-panthers"),
                 ("ทีมรับของแพนเธอร์สเสียกี่แต้ม", "th", "th-panthers"),
                 ("日本の首都はどこですか", "ja", "ja-tokyo")]
    scores, pids = bm25.search([q for q, _, _ in questions], [lang for _, lang, _ in questions], k=3)
    assert [row[0] for row in pids] == [gold for _, _, gold in questions]
    assert all(row == sorted(row, reverse=True) and row[0] > 0 for row in scores)


def test_search_stays_in_the_question_language():
    bm25 = InLanguageBM25(PASSAGES)
    # "Rhein", "Donau" and "fließt" are German words; an English question made of them still only
    # sees English passages, and a German one only German passages.
    _, pids = bm25.search(["Rhein Donau fließt Rhine"] * 2, ["en", "de"], k=10)
    assert pids[0] == ["en-rhine"]
    assert set(pids[1]) == {"de-rhine", "de-danube"}


def test_passages_without_a_shared_term_are_not_retrieved_and_k_is_capped():
    index = BM25Index([p for p in PASSAGES if p["lang"] == "en"], "en")
    scores, pids = index.search(["Danube sea", "completely unrelated words"], k=50)
    assert pids[0][0] == "en-danube" and set(pids[0]) == {"en-danube", "en-rhine"}  # "sea" in both
    assert pids[1] == [] and scores[1] == []


def test_whitespace_tokenizer_misses_what_the_language_tokenizer_finds():
    zh = [p for p in PASSAGES if p["lang"] == "zh_cn"]
    question = ["黑豹队的防守丢了多少分？"]
    assert BM25Index(zh, "zh", tokenizer="language").search(question, k=2)[1][0][0] == "zh-panthers"
    assert BM25Index(zh, "zh", tokenizer="whitespace").search(question, k=2)[1] == [[]]


def test_a_question_language_without_passages_is_a_clear_error():
    bm25 = InLanguageBM25(PASSAGES)
    with pytest.raises(RayCoraError, match="no passages in language ru .*passage languages: de, en, ja, th, zh_cn"):
        bm25.search(["Где Рейн?"], ["ru"], k=5)


# --- benchmark metrics -------------------------------------------------------------------------


def test_benchmark_metrics_on_a_hand_made_case():
    bench = load_benchmark("xquad_retrieval")
    texts = {
        "xquad-en-0-0": "The Panthers defense gave up 308 points.",
        "xquad-de-0-0": "Die Verteidigung der Panthers ließ 308 Punkte zu.",
        "xquad-en-0-1": "Denver won Super Bowl 50.",
        "xquad-de-0-1": "Denver gewann den Super Bowl 50.",
        "xquad-en-1-0": "Nothing relevant here, except the word Punkte.",
    }
    corpus_langs = ["de", "en"]
    questions = [
        # q1/en: English answer "308 points" only in the English gold passage, ranked 2nd.
        {"qid": "q1", "lang": "en", "answers": ["308 points"], "gold_pids": ["xquad-en-0-0"]},
        # q1/de: its German answer "308 Punkte" is nowhere in the top 3; the English answer is (rank 3).
        # Its gold paragraph in German is absent; the English translation is at rank 3.
        {"qid": "q1", "lang": "de", "answers": ["308 Punkte zu"], "gold_pids": ["xquad-de-0-0"]},
        # q2/de: the German gold passage is first.
        {"qid": "q2", "lang": "de", "answers": ["Denver"], "gold_pids": ["xquad-de-0-1"]},
    ]
    ranked = [
        ["xquad-en-0-1", "xquad-en-0-0", "xquad-de-0-1"],
        ["xquad-en-1-0", "xquad-de-0-1", "xquad-en-0-0"],
        ["xquad-de-0-1", "xquad-en-0-1"],
    ]
    assert bench.parallel_pids("xquad-zh_cn-3-1", ["en", "zh_cn"]) == ["xquad-en-3-1", "xquad-zh_cn-3-1"]
    multi = {"q1": ["308 points", "308 Punkte zu"], "q2": ["Denver"]}
    expected = [
        {"R^L": 2, "R^multi": 2, "gold_L": 2, "gold_any": 2},
        {"R^L": None, "R^multi": 3, "gold_L": None, "gold_any": 3},
        {"R^L": 1, "R^multi": 1, "gold_L": 1, "gold_any": 1},
    ]
    for q, pids, want in zip(questions, ranked, expected):
        gold_any = bench.parallel_pids(q["gold_pids"][0], corpus_langs)
        got = bench.question_ranks(pids, texts, answers=q["answers"], multi_answers=multi[q["qid"]],
                                   gold_pids=q["gold_pids"], gold_any_pids=gold_any)
        assert got == want, q

    table = bench.score_run(questions, ranked, texts, corpus_langs, ks=(1, 3))
    assert table["en"] == {"count": 1, "R^L@1": 0.0, "R^L@3": 100.0, "R^multi@1": 0.0, "R^multi@3": 100.0,
                           "gold_L@1": 0.0, "gold_L@3": 100.0, "gold_any@1": 0.0, "gold_any@3": 100.0}
    assert table["de"] == {"count": 2, "R^L@1": 50.0, "R^L@3": 50.0, "R^multi@1": 50.0, "R^multi@3": 100.0,
                           "gold_L@1": 50.0, "gold_L@3": 50.0, "gold_any@1": 50.0, "gold_any@3": 100.0}
    # Macro weighs each language the same (not each question): de 50 and en 0 at k=1 → 25.
    assert table["macro"]["count"] == 3
    assert table["macro"]["gold_L@1"] == 25.0 and table["macro"]["gold_L@3"] == 75.0

    lang_of = {pid: pid.split("-")[1] for pid in texts}
    mix = bench.language_mix(questions, ranked, lang_of, k=2)
    assert mix == {"de": {"de": 50.0, "en": 50.0}, "en": {"en": 100.0}}
