"""`ray-cora evaluate qa` and `ray-cora predictions convert` end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_cora.cli import main
from ray_cora.data.predictions import Prediction, read_mkqa_predictions, read_predictions, read_xor_predictions
from tests.support import shared_data

# Real MKQA sample ids (../shared/data/mkqa/mkqa_sample.jsonl.gz).
DATE = "36228854473990432"  # 2017 / 2017-05-18 and date aliases
LONG = "7721692200040168186"  # long_answer: No Answer for the MKQA scorer
UNANS_1 = "2961317153244610375"
UNANS_2 = "2904274678882358283"
MOUNTAIN = "-7449157003522518870"  # Hafþór Júlíus Björnsson (+ aliases); ja ハフソー・ユリウス・ビョルンソン
RIDLEY = "7631360939705650347"  # Ridley Scott, alias Sir Ridley Scott; ja リドリー・スコット; zh 雷德利·斯科特


def _write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_evaluate_qa_mkqa_on_the_real_sample(tmp_path, capsys):
    gold = shared_data("mkqa", "mkqa_sample.jsonl.gz")
    preds = _write_jsonl(tmp_path / "preds.jsonl", [
        {"qid": DATE, "lang": "en", "prediction": "May 18, 2017"},  # F1 1 (alias 2017 May, 18), EM 0
        {"qid": RIDLEY, "lang": "en", "prediction": "Sir Ridley Scott"},  # alias: EM 1
        {"qid": MOUNTAIN, "lang": "en", "prediction": "Hafthor Bjornsson"},  # F1 0.8 (alias)
        {"qid": UNANS_1, "lang": "en", "prediction": ""},  # right No Answer: 1 / 1
        {"qid": UNANS_2, "lang": "en", "prediction": "Kylie"},  # unanswerable, answered: 0
        # en LONG missing: 0
        {"qid": RIDLEY, "lang": "ja", "prediction": "リドリー・スコット"},  # EM 1
        {"qid": MOUNTAIN, "lang": "ja", "prediction": "ビョルンソン"},  # 6 of 16 chars: F1 6/11
        {"qid": DATE, "lang": "ja", "prediction": "2017年"},  # 4 of 5 chars: F1 8/9
        {"qid": UNANS_1, "lang": "ja", "prediction": ""},
        {"qid": LONG, "lang": "ja", "prediction": None},  # null = "" = No Answer: right
        # ja UNANS_2 missing
        {"qid": RIDLEY, "lang": "zh_cn", "prediction": "雷德利斯科特"},  # 6 of 7 chars: F1 12/13
        {"qid": "999", "lang": "en", "prediction": "nothing"},  # unknown qid
        {"qid": RIDLEY, "lang": "ko", "prediction": "x"},  # outside --langs
    ])
    out = tmp_path / "eval"
    rc = main(["evaluate", "qa", "--mode", "mkqa", "--dataset", "mkqa", "--gold", str(gold),
               "--predictions", preds, "--langs", "en,ja,zh_cn", "--out", str(out), "--sacrebleu", "false"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "mkqa"
    en, ja, zh = (metrics["per_language"][k] for k in ("en", "ja", "zh_cn"))
    # en: F1 (1 + 1 + 0.8 + 1 + 0 + 0) / 6, EM (0 + 1 + 0 + 1 + 0 + 0) / 6.
    assert (en["count"], en["f1"], en["em"]) == (6, 63.33, 33.33)
    assert (en["answerable_count"], en["answerable_f1"], en["unanswerable_em"]) == (3, 93.33, 33.33)
    # MKQA's threshold walk (all no_answer_prob 0, file order): 3 -> 4 -> 5 -> 5.8 (then "" +0,
    # Kylie -1, missing -1): best 5.8 / 6 at threshold 0, which suppresses nothing.
    assert (en["best_f1"], en["best_em"], en["best_f1_threshold"]) == (96.67, 33.33, 0.0)
    # ja: F1 (1 + 6/11 + 8/9 + 1 + 1 + 0) / 6 = 73.91, EM 3/6.
    assert (ja["f1"], ja["em"]) == (73.91, 50.0)
    # zh_cn: one prediction (12/13), five missing.
    assert (zh["f1"], zh["em"], zh["missing"]) == (15.38, 0.0, 5)
    assert metrics["macro"]["f1"] == round((63.33 + 73.91 + 15.38) / 3, 2)
    assert metrics["missing"]["count"] == 7
    assert metrics["unknown"]["examples"] == [{"qid": "999", "lang": "en"}]
    assert metrics["predictions_outside_langs"] == 1
    report = (out / "report.md").read_text()
    assert "| f1 | 63.3 | 73.9 | 15.4 | 50.9 |" in report  # seen: en, ja; unseen: zh_cn
    assert "`999` (en)" in report and "Missing predictions" in report
    assert (out / "per_language.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "per_question.jsonl").read_text().splitlines()) == 18
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"metrics.json", "report.md", "per_language.png", "per_question.jsonl"}
    assert "63.3" in capsys.readouterr().out


def test_evaluate_qa_xor_mode_reads_official_xor_predictions(tmp_path):
    pytest.importorskip("MeCab", reason="xor-mode Japanese scoring needs the eval extra")
    gold = _write_jsonl(tmp_path / "xor_dev.jsonl", [
        {"id": "-101", "lang": "ja", "question": "日本の首都は？", "answers": ["東京"]},
        {"id": "202", "lang": "ja", "question": "いつ？", "answers": ["1990年"]},
        {"id": "303", "lang": "ko", "question": "언제?", "answers": ["2017년"]},
        {"id": "404", "lang": "fi", "question": "Kuka?", "answers": ["Sauli Niinistö"]},
    ])
    # The XOR scorer's own format: {id: answer}, here with a "lang_" prefix the scorer strips.
    preds = tmp_path / "xor_preds.json"
    preds.write_text(json.dumps({"ja_-101": "東京都", "202": "1990", "303": "2017", "505": "x"},
                                ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "eval"
    rc = main(["evaluate", "qa", "--mode", "xor", "--dataset", "xor", "--gold", gold,
               "--predictions", str(preds), "--predictions-format", "xor", "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    ja, ko, fi = (metrics["per_language"][k] for k in ("ja", "ko", "fi"))
    # ja: 東京都 -> MeCab 東京 / 都 vs 東京: F1 2/3, EM 0; 1990 vs 1990年 (counter removed): 1, 1.
    assert ja["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert ja["em"] == pytest.approx(50.0)
    assert (ko["f1"], ko["em"]) == (100.0, 100.0)
    assert (fi["f1"], fi["missing"]) == (0.0, 1)
    assert metrics["macro"]["f1"] == pytest.approx((ja["f1"] + 100.0 + 0.0) / 3)
    assert 0.0 <= ja["bleu"] <= 100.0 and "sacrebleu" in ja
    assert metrics["unknown"]["count"] == 1  # "505" is in no gold file
    assert "sacreBLEU" in (out / "report.md").read_text()


def test_predictions_convert_round_trips(tmp_path):
    ours = _write_jsonl(tmp_path / "ours.jsonl", [
        {"qid": "1", "lang": "ja", "prediction": "東京"},
        {"qid": "2", "lang": "en", "prediction": "", "binary_answer": "Yes", "no_answer_prob": 0.25},
    ])
    assert main(["predictions", "convert", "--from-format", "ours", "--to-format", "mkqa",
                 "--input", ours, "--out", str(tmp_path / "mkqa")]) == 0
    assert sorted(p.name for p in (tmp_path / "mkqa").iterdir()) == ["en.jsonl", "ja.jsonl"]
    assert read_mkqa_predictions(str(tmp_path / "mkqa")) == {
        ("1", "ja"): Prediction("東京"), ("2", "en"): Prediction("", "yes", 0.25)}
    assert main(["predictions", "convert", "--from-format", "mkqa", "--to-format", "ours",
                 "--input", str(tmp_path / "mkqa"), "--out", str(tmp_path / "back.jsonl")]) == 0
    assert read_predictions(str(tmp_path / "back.jsonl")) == read_predictions(ours)

    assert main(["predictions", "convert", "--from-format", "ours", "--to-format", "xor",
                 "--input", ours, "--out", str(tmp_path / "xor.json")]) == 0
    assert json.loads((tmp_path / "xor.json").read_text()) == {"1": "東京", "2": ""}
    assert read_xor_predictions(str(tmp_path / "xor.json"), lang="ja") == {
        ("1", "ja"): Prediction("東京"), ("2", "ja"): Prediction("")}


def test_xor_conversion_needs_a_language(tmp_path, capsys):
    (tmp_path / "x.json").write_text('{"1": "a"}')
    rc = main(["predictions", "convert", "--from-format", "xor", "--to-format", "ours",
               "--input", str(tmp_path / "x.json"), "--out", str(tmp_path / "o.jsonl")])
    assert rc == 2
    assert "--lang" in capsys.readouterr().err


def test_unknown_language_code_in_predictions_is_a_clear_error(tmp_path, capsys):
    gold = _write_jsonl(tmp_path / "gold.jsonl", [
        {"qid": "1", "lang": "en", "question": "q?", "answers": ["a"]}])
    preds = _write_jsonl(tmp_path / "preds.jsonl", [
        {"qid": "1", "lang": "en", "prediction": "a"},
        {"qid": "1", "lang": "klingon", "prediction": "a"}])
    rc = main(["evaluate", "qa", "--mode", "xor", "--dataset", "jsonl", "--gold", gold,
               "--predictions", preds, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "preds.jsonl:2: field 'lang'" in err and "klingon" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_malformed_and_duplicate_predictions_are_located(tmp_path, capsys):
    gold = _write_jsonl(tmp_path / "gold.jsonl", [
        {"qid": "1", "lang": "en", "question": "q?", "answers": ["a"]}])
    dup = _write_jsonl(tmp_path / "dup.jsonl", [
        {"qid": "1", "lang": "en", "prediction": "a"}, {"qid": 1, "lang": "EN", "prediction": "b"}])
    rc = main(["evaluate", "qa", "--mode", "mkqa", "--dataset", "jsonl", "--gold", gold,
               "--predictions", dup, "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "dup.jsonl:2: question '1' in language 'en' already predicted at line 1" in capsys.readouterr().err
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"qid": "1", "lang": "en"}])
    rc = main(["evaluate", "qa", "--mode", "mkqa", "--dataset", "jsonl", "--gold", gold,
               "--predictions", bad, "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "bad.jsonl:1: missing field 'prediction'" in capsys.readouterr().err


def test_unknown_language_in_langs_option(tmp_path, capsys):
    gold = _write_jsonl(tmp_path / "gold.jsonl", [
        {"qid": "1", "lang": "en", "question": "q?", "answers": ["a"]}])
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"qid": "1", "lang": "en", "prediction": "a"}])
    rc = main(["evaluate", "qa", "--mode", "xor", "--dataset", "jsonl", "--gold", gold,
               "--predictions", preds, "--langs", "en,xx", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "unknown language code 'xx'" in capsys.readouterr().err
