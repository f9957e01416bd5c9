from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from ray_cora.data.qa import (
    DATASETS,
    QA_FIELDS,
    iter_qa,
    iter_squad_paragraphs,
    squad_paragraph_pid,
)
from ray_cora.data.records import BadRecords
from ray_cora.errors import BadRecordError, ConfigError
from ray_cora.languages import MKQA_LANGS
from tests.support import REPO_ROOT

REPO = REPO_ROOT
SHARED_DATA = REPO.parent / "shared" / "data"
MKQA_SAMPLE = SHARED_DATA / "mkqa" / "mkqa_sample.jsonl.gz"
XQUAD_DIR = SHARED_DATA / "xquad"
XQUAD_FILE_LANGS = ("ar", "de", "en", "es", "ru", "th", "tr", "vi", "zh")

needs_mkqa = pytest.mark.skipif(
    not MKQA_SAMPLE.exists(), reason=f"real MKQA sample not found at {MKQA_SAMPLE}"
)
needs_xquad = pytest.mark.skipif(
    not (XQUAD_DIR / "xquad.en.json").exists(), reason=f"real XQuAD files not found in {XQUAD_DIR}"
)

# The six records of the MKQA sample, by answer type (looked up in the file).
DATE_Q = "36228854473990432"
MOUNTAIN_Q = "-7449157003522518870"
GLADIATOR_Q = "7631360939705650347"
LONG_ANSWER_Q = "7721692200040168186"
UNANSWERABLE_QS = ("2961317153244610375", "2904274678882358283")
ANSWERABLE_QS = (DATE_Q, MOUNTAIN_Q, GLADIATOR_Q)


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, (str, bytes)) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def check_stats(stats: dict) -> None:
    assert stats["read"] == (stats["yielded"] + stats["filtered_unanswerable"]
                             + stats["filtered_lang"] + stats["bad"])


def check_schema(rec: dict) -> None:
    assert tuple(rec) == QA_FIELDS
    assert isinstance(rec["qid"], str) and rec["qid"]
    assert rec["question"] == rec["question"].strip() and rec["question"]
    assert len(rec["answers"]) == len(set(rec["answers"]))
    assert isinstance(rec["gold_pids"], list)


# --- MKQA (real sample) ------------------------------------------------------------------------


@needs_mkqa
def test_mkqa_default_filters_unanswerable_and_long_answer():
    stats: dict = {}
    recs = list(iter_qa(str(MKQA_SAMPLE), dataset="mkqa", stats=stats))
    for rec in recs:
        check_schema(rec)
    per_lang = Counter(r["lang"] for r in recs)
    assert set(per_lang) == set(MKQA_LANGS)
    assert set(per_lang.values()) == {3}
    assert {r["qid"] for r in recs} == set(ANSWERABLE_QS)
    assert stats == {"read": 6 * 26, "yielded": 3 * 26, "filtered_unanswerable": 3 * 26,
                     "filtered_lang": 0, "bad": 0}
    check_stats(stats)


@needs_mkqa
def test_mkqa_keep_unanswerable():
    recs = list(iter_qa(str(MKQA_SAMPLE), dataset="mkqa", keep_unanswerable=True))
    assert len(recs) == 6 * 26
    by_key = {(r["qid"], r["lang"]): r for r in recs}
    assert by_key[(LONG_ANSWER_Q, "ja")]["answer_type"] == "long_answer"
    assert by_key[(LONG_ANSWER_Q, "ja")]["answers"] == []
    for qid in UNANSWERABLE_QS:
        assert by_key[(qid, "fr")]["answer_type"] == "unanswerable"
        assert by_key[(qid, "fr")]["answers"] == []


@needs_mkqa
def test_mkqa_answers_include_aliases_and_en_question():
    recs = {(r["qid"], r["lang"]): r for r in iter_qa(str(MKQA_SAMPLE), dataset="mkqa")}
    gladiator = recs[(GLADIATOR_Q, "en")]
    assert gladiator["answers"] == ["Ridley Scott", "Sir Ridley Scott"]
    assert gladiator["answer_type"] == "entity"
    date_en = recs[(DATE_Q, "en")]
    assert date_en["answer_type"] == "date"
    assert date_en["answers"][:2] == ["2017", "2017-05-18"]
    assert "18 May 2017" in date_en["answers"]
    assert date_en["answers"].count("2017") == 1  # text and alias de-duplicated
    assert "2017 5月 18" in recs[(DATE_Q, "zh_cn")]["answers"]
    assert recs[(MOUNTAIN_Q, "zh_cn")]["answers"] == ["大力士魔山"]
    ja = recs[(GLADIATOR_Q, "ja")]
    assert ja["question"] == "2000年に公開された映画「グラディエーター」の監督は誰ですか？"
    assert ja["en_question"] == (
        "who is the director of the film gladiator which was released in 2000")
    assert ja["answers"] == ["リドリー・スコット"]
    assert ja["gold_pids"] == []


@needs_mkqa
def test_mkqa_language_selection():
    recs = list(iter_qa(str(MKQA_SAMPLE), dataset="mkqa", lang="zh-TW"))
    assert [r["lang"] for r in recs] == ["zh_tw"] * 3
    recs = list(iter_qa(str(MKQA_SAMPLE), dataset="mkqa", langs=["ko", "ja"]))
    assert [r["lang"] for r in recs[:2]] == ["ko", "ja"] and len(recs) == 6
    with pytest.raises(ConfigError, match="MKQA has no language bn"):
        iter_qa(str(MKQA_SAMPLE), dataset="mkqa", lang="bn")


def test_mkqa_no_answer_string_is_filtered_and_missing_lang_is_bad(tmp_path):
    base = {"example_id": 7, "query": "q en",
            "queries": {c: f"q {c}" for c in MKQA_LANGS},
            "answers": {c: [{"type": "entity", "text": "A", "aliases": [None, "", "B"]}]
                        for c in MKQA_LANGS}}
    no_text = json.loads(json.dumps(base))
    no_text["example_id"] = 8
    no_text["answers"]["ja"] = [{"type": "entity", "text": None, "aliases": []}]
    no_ja = json.loads(json.dumps(base))
    no_ja["example_id"] = 9
    del no_ja["queries"]["ja"]
    path = write_jsonl(tmp_path / "m.jsonl", [base, no_text, no_ja])
    bad = BadRecords("skip")
    stats: dict = {}
    recs = list(iter_qa(str(path), dataset="mkqa", langs=["en", "ja"], bad_records=bad,
                        stats=stats))
    assert [(r["qid"], r["lang"]) for r in recs] == [("7", "en"), ("7", "ja"), ("8", "en"),
                                                     ("9", "en")]
    assert recs[0]["answers"] == ["A", "B"] and recs[0]["en_question"] == "q en"
    assert [(b["line"], b["reason"]) for b in bad.records] == [(3, "missing field 'queries.ja'")]
    assert stats["filtered_unanswerable"] == 1 and stats["bad"] == 1
    check_stats(stats)
    with pytest.raises(BadRecordError, match=r"m\.jsonl:3: missing field 'queries\.ja'"):
        list(iter_qa(str(path), dataset="mkqa", lang="ja"))


# --- XQuAD (real files) ------------------------------------------------------------------------


@needs_xquad
def test_xquad_all_languages_parallel():
    ids_by_lang = {}
    for code in XQUAD_FILE_LANGS:
        stats: dict = {}
        recs = list(iter_qa(str(XQUAD_DIR / f"xquad.{code}.json"), dataset="xquad", stats=stats))
        assert len(recs) == 1190, code
        assert stats["yielded"] == stats["read"] == 1190
        expected_lang = "zh_cn" if code == "zh" else code
        assert {r["lang"] for r in recs} == {expected_lang}
        assert all(r["answer_type"] == "span" and r["answers"] for r in recs)
        ids_by_lang[code] = [r["qid"] for r in recs]
    assert len(set(ids_by_lang["en"])) == 1190
    for code in XQUAD_FILE_LANGS:
        assert ids_by_lang[code] == ids_by_lang["en"], code


@needs_xquad
def test_xquad_gold_pids_and_paragraphs():
    es_path = str(XQUAD_DIR / "xquad.es.json")
    paragraphs = list(iter_squad_paragraphs(es_path))
    assert len(paragraphs) == 240
    assert len({p["pid"] for p in paragraphs}) == 240
    assert paragraphs[0]["pid"] == squad_paragraph_pid("es", 0, 0) == "xquad-es-0-0"
    assert paragraphs[0]["title"] == "Super_Bowl_50" and paragraphs[0]["lang"] == "es"
    text_of = {p["pid"]: p["text"] for p in paragraphs}
    es = list(iter_qa(es_path, dataset="xquad"))
    en = {r["qid"]: r for r in iter_qa(str(XQUAD_DIR / "xquad.en.json"), dataset="xquad")}
    for rec in es:
        (pid,) = rec["gold_pids"]
        assert pid in text_of
        assert any(a in text_of[pid] for a in rec["answers"])  # answers are spans of the gold
        assert en[rec["qid"]]["gold_pids"] == [pid.replace("-es-", "-en-")]
        assert rec["en_question"] is None
    first = es[0]
    assert first["qid"] == "56beb4343aeaaa14008c925b" and first["answers"] == ["308"]
    assert first["gold_pids"] == [squad_paragraph_pid("es", 0, 0)]
    assert en[first["qid"]]["en_question"] == en[first["qid"]]["question"]


@needs_xquad
def test_xquad_lang_override_and_zh_name():
    zh = next(iter_qa(str(XQUAD_DIR / "xquad.zh.json"), dataset="xquad"))
    assert zh["lang"] == "zh_cn" and zh["gold_pids"] == ["xquad-zh_cn-0-0"]
    de_as_given = next(iter_squad_paragraphs(str(XQUAD_DIR / "xquad.de.json"), lang="DE"))
    assert de_as_given["pid"] == "xquad-de-0-0"


SQUAD_DOC = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
    {"context": "Paris is in France.", "qas": [
        {"id": "a1", "question": " Where is Paris? ", "answers": [{"text": "France"},
                                                                 {"text": "France"}]},
        {"id": "a2", "question": "What is in France?", "answers": [{"text": "Paris"}]},
    ]},
    {"context": "Second.", "qas": [{"id": "a3", "question": "Q3", "answers": []}]},
]}]}


def test_squad_needs_a_language(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(SQUAD_DOC))
    with pytest.raises(ConfigError, match="--lang"):
        iter_qa(str(path), dataset="xquad")
    recs = list(iter_qa(str(path), dataset="xquad", lang="fr", keep_unanswerable=True))
    assert [(r["qid"], r["lang"], r["gold_pids"]) for r in recs] == [
        ("a1", "fr", ["xquad-fr-0-0"]), ("a2", "fr", ["xquad-fr-0-0"]),
        ("a3", "fr", ["xquad-fr-0-1"])]
    assert recs[0]["question"] == "Where is Paris?" and recs[0]["answers"] == ["France"]
    assert recs[2]["answer_type"] == "unanswerable"
    stats: dict = {}
    assert len(list(iter_qa(str(path), dataset="xquad", lang="fr", stats=stats))) == 2
    assert stats["filtered_unanswerable"] == 1
    # SQuAD proper is English, and its pids cannot collide with XQuAD's English ones.
    squad = list(iter_qa(str(path), dataset="squad"))
    assert squad[0]["lang"] == "en" and squad[0]["gold_pids"] == ["squad-en-0-0"]


def test_squad_json_syntax_error_has_line(tmp_path):
    path = tmp_path / "xquad.de.json"
    path.write_text('{\n  "data": [\n    {"title": "x",,}\n  ]\n}\n')
    with pytest.raises(BadRecordError, match=r"xquad\.de\.json:3: invalid JSON"):
        list(iter_qa(str(path), dataset="xquad"))


def test_squad_bad_question_is_located(tmp_path):
    doc = json.loads(json.dumps(SQUAD_DOC))
    del doc["data"][0]["paragraphs"][0]["qas"][1]["question"]
    path = tmp_path / "xquad.en.json"
    text = json.dumps(doc, indent=2)
    path.write_text(text)
    a2_line = next(i for i, line in enumerate(text.splitlines(), 1) if '"a2"' in line)
    with pytest.raises(BadRecordError) as err:
        list(iter_qa(str(path), dataset="xquad"))
    assert err.value.line == a2_line
    assert "qas[1]" in err.value.reason and "'question'" in err.value.reason
    bad = BadRecords("skip")
    stats: dict = {}
    recs = list(iter_qa(str(path), dataset="xquad", bad_records=bad, stats=stats))
    assert [r["qid"] for r in recs] == ["a1"]
    assert bad.count == 1 and stats["bad"] == 1
    check_stats(stats)


# --- XOR, NQ, our jsonl, gz --------------------------------------------------------------------


def test_xor(tmp_path):
    path = write_jsonl(tmp_path / "xor.jsonl", [
        {"id": "-801", "question": "ジョン・レノンはいつ死んだ？", "answers": ["1980年12月8日"],
         "lang": "ja"},
        {"id": "x2", "question": "কে?", "answers": ["a", "a", " b "], "lang": "bn"},
        {"id": "x3", "question": "Кто?", "answers": [], "lang": "ru"},
    ])
    stats: dict = {}
    recs = list(iter_qa(str(path), dataset="xor", stats=stats))
    assert [(r["qid"], r["lang"]) for r in recs] == [("-801", "ja"), ("x2", "bn")]
    assert recs[1]["answers"] == ["a", "b"] and recs[0]["en_question"] is None
    assert stats == {"read": 3, "yielded": 2, "filtered_unanswerable": 1, "filtered_lang": 0,
                     "bad": 0}
    stats = {}
    recs = list(iter_qa(str(path), dataset="xor", langs=["bn", "ru"], keep_unanswerable=True,
                        stats=stats))
    assert [r["qid"] for r in recs] == ["x2", "x3"] and recs[1]["answers"] == []
    assert stats["filtered_lang"] == 1
    check_stats(stats)


def test_nq_qid_is_index_among_nonblank_lines(tmp_path):
    path = write_jsonl(tmp_path / "nq.jsonl", [
        {"question": "who wrote hamlet", "answer": ["Shakespeare", "William Shakespeare"]},
        "",
        "   ",
        {"question": "capital of france", "answer": ["Paris"], "id": 42},
        {"question": "largest planet", "answer": ["Jupiter"]},
    ])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a UTF-8 BOM is tolerated
    recs = list(iter_qa(str(path), dataset="nq"))
    assert [r["qid"] for r in recs] == ["0", "42", "2"]
    assert all(r["lang"] == "en" for r in recs)
    assert recs[0]["en_question"] == "who wrote hamlet"
    with pytest.raises(ConfigError, match="English"):
        iter_qa(str(path), dataset="nq", lang="ja")


def test_own_jsonl_defaults_and_gz(tmp_path):
    rows = [
        {"qid": "q1", "lang": "zh-Hant", "question": "誰？", "answers": ["甲"], "extra": 1},
        {"qid": "q2", "lang": "en", "question": "who?", "answers": ["x"], "answer_type": "entity",
         "en_question": "who?", "gold_pids": ["p1", "p1", "p2"]},
    ]
    path = tmp_path / "qs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    recs = list(iter_qa(path.as_uri(), dataset="jsonl"))
    assert recs[0] == {"qid": "q1", "lang": "zh_tw", "question": "誰？", "answers": ["甲"],
                       "answer_type": "unknown", "en_question": None, "gold_pids": []}
    assert recs[1]["gold_pids"] == ["p1", "p2"] and recs[1]["answer_type"] == "entity"


def test_demo_questions_file_reads():
    path = REPO / "ray_cora" / "demo" / "assets" / "questions.jsonl"
    if not path.exists():
        pytest.skip(f"demo question file not written yet: {path}")
    stats: dict = {}
    recs = list(iter_qa(str(path), dataset="jsonl", keep_unanswerable=True, stats=stats))
    assert recs and stats["bad"] == 0


def test_unknown_dataset_and_lang():
    with pytest.raises(ConfigError) as err:
        iter_qa("x.jsonl", dataset="tydi")
    assert all(name in str(err.value) for name in DATASETS)
    with pytest.raises(ConfigError, match="'xx'"):
        iter_qa("x.jsonl", dataset="xor", lang="xx")
    with pytest.raises(ConfigError, match="either lang or langs"):
        iter_qa("x.jsonl", dataset="xor", lang="ja", langs=["ko"])


# --- bad input ---------------------------------------------------------------------------------


GOOD = {"id": "g", "question": "q?", "answers": ["a"], "lang": "fi"}


def test_bad_json_line_is_located(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [GOOD, '{"id": "b", "question": '])
    with pytest.raises(BadRecordError) as err:
        list(iter_qa(str(path), dataset="xor"))
    assert f"{path}:2: invalid JSON" in str(err.value)


def test_missing_field_is_named(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"id": "b", "answers": ["a"], "lang": "fi"}])
    with pytest.raises(BadRecordError, match=r"x\.jsonl:1: missing field 'question'"):
        list(iter_qa(str(path), dataset="xor"))


def test_invalid_utf8_line(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [GOOD, b'{"id": "\xff\xfe", "question": "q"}'])
    with pytest.raises(BadRecordError, match=r"x\.jsonl:2: invalid UTF-8"):
        list(iter_qa(str(path), dataset="xor"))


def test_skip_policy_keeps_good_records_and_counts_bad(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [
        GOOD,                                                           # 1 ok
        "not json",                                                     # 2 bad JSON
        {**GOOD, "id": "e", "answers": []},                             # 3 unanswerable
        {**GOOD, "id": "t", "answers": "a"},                            # 4 wrong type
        b'{"id": "\xc3\x28"}',                                          # 5 invalid UTF-8
        "",                                                             # 6 blank, ignored
        {**GOOD, "id": "k", "lang": "klingon"},                         # 7 unknown lang
        {**GOOD, "id": "q", "question": "   "},                         # 8 empty question
        [1, 2],                                                         # 9 not an object
        {**GOOD, "id": "d", "lang": "da"},                              # 10 other lang
        {**GOOD, "id": "last"},                                         # 11 ok
    ])
    bad = BadRecords("skip")
    stats: dict = {}
    recs = list(iter_qa(str(path), dataset="xor", lang="fi", bad_records=bad, stats=stats))
    assert [r["qid"] for r in recs] == ["g", "last"]
    assert [b["line"] for b in bad.records] == [2, 4, 5, 7, 8, 9]
    reasons = [b["reason"] for b in bad.records]
    assert "'answers'" in reasons[1] and "invalid UTF-8" in reasons[2]
    assert "klingon" in reasons[3] and "'question'" in reasons[4] and "list" in reasons[5]
    assert stats == {"read": 10, "yielded": 2, "filtered_unanswerable": 1, "filtered_lang": 1,
                     "bad": 6}
    check_stats(stats)


def test_unanswerable_types_are_filtered_even_with_answer_strings(tmp_path):
    path = write_jsonl(tmp_path / "qs.jsonl", [
        {"qid": "1", "lang": "en", "question": "a?", "answers": ["x"],
         "answer_type": "long_answer"},
        {"qid": "2", "lang": "en", "question": "b?", "answers": ["y"],
         "answer_type": "unanswerable"},
        {"qid": "3", "lang": "en", "question": "c?", "answers": ["z"], "answer_type": "entity"},
    ])
    assert [r["qid"] for r in iter_qa(str(path), dataset="jsonl")] == ["3"]
    kept = list(iter_qa(str(path), dataset="jsonl", keep_unanswerable=True))
    assert [r["qid"] for r in kept] == ["1", "2", "3"] and kept[0]["answers"] == ["x"]


@needs_mkqa
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_lines_split_across_read_chunks(monkeypatch, chunk):
    import ray_cora.storage as storage

    expected = list(iter_qa(str(MKQA_SAMPLE), dataset="mkqa", lang="ja"))
    monkeypatch.setattr(storage, "_CHUNK", chunk)
    assert list(iter_qa(str(MKQA_SAMPLE), dataset="mkqa", lang="ja")) == expected
    assert len(expected) == 3


# --- damaged and hostile inputs: one line each, naming the file and line ------------------------


def _jsonl_qa_line(**fields) -> str:
    return json.dumps({"qid": "1", "lang": "en", "question": "Who?", "answers": ["Ann"], **fields}) + "\n"


def test_a_damaged_gz_is_a_storage_error_naming_file_and_line(tmp_path):
    data = gzip.compress("".join(_jsonl_qa_line(qid=str(i)) for i in range(2000)).encode())
    damaged = tmp_path / "qa.jsonl.gz"
    damaged.write_bytes(data[: len(data) // 2] + b"\x00garbage" * 8)
    from ray_cora.errors import StorageError

    with pytest.raises(StorageError, match=r"qa\.jsonl\.gz:\d+: cannot read the file on after line \d+ "
                                           r"\(.*\): it is damaged"):
        list(iter_qa(str(damaged), dataset="jsonl"))


def test_json_nested_too_deeply_is_a_bad_record_not_a_recursion_error(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(_jsonl_qa_line() + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(BadRecordError, match=r"qa\.jsonl:2: JSON nested too deeply to read"):
        list(iter_qa(str(path), dataset="jsonl"))
    squad = tmp_path / "xquad.en.json"
    squad.write_text('{"data": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(BadRecordError, match=r"xquad\.en\.json:1: JSON nested too deeply to read"):
        list(iter_qa(str(squad), dataset="xquad"))


def test_a_lone_surrogate_is_a_bad_record_naming_the_field(tmp_path):
    path = tmp_path / "qa.jsonl"
    # json.dumps writes the lone surrogate as the escape "\ud800", which json.loads reads back.
    path.write_text(_jsonl_qa_line() + _jsonl_qa_line(qid="2", question="a\ud800b")
                    + _jsonl_qa_line(qid="3", answers=["ok", "x\udfffy"]))
    with pytest.raises(BadRecordError, match=r"qa\.jsonl:2: field 'question' holds a lone surrogate"):
        list(iter_qa(str(path), dataset="jsonl"))
    bad = BadRecords("skip")
    records = list(iter_qa(str(path), dataset="jsonl", bad_records=bad))
    assert [r["qid"] for r in records] == ["1"] and bad.count == 2


def test_a_huge_question_is_cut_at_the_documented_cap_and_counted(tmp_path):
    from ray_cora.data.qa import MAX_QUESTION_CHARS

    path = tmp_path / "qa.jsonl"
    path.write_text(_jsonl_qa_line(question="x" * (MAX_QUESTION_CHARS * 50)) + _jsonl_qa_line(qid="2"))
    stats: dict[str, int] = {}
    records = list(iter_qa(str(path), dataset="jsonl", stats=stats))
    assert [len(r["question"]) for r in records] == [MAX_QUESTION_CHARS, len("Who?")]
    assert stats["truncated"] == 1 and stats["yielded"] == 2
