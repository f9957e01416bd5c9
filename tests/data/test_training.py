"""Training data readers: DPR JSON arrays streamed in chunks, JSONL, Parquet, bad records."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_cora.cli import main
from ray_cora.data import training as data
from ray_cora.data.records import BadRecords
from ray_cora.errors import BadRecordError


def dpr_record(i: int, **overrides):
    rec = {"question": f"question {i}?", "answers": [f"a{i}"],
           "positive_ctxs": [{"title": f"T{i}", "text": f"positive {i}", "passage_id": str(i)}],
           "negative_ctxs": [], "hard_negative_ctxs": [{"title": "H", "text": f"hard {i}"}]}
    rec.update(overrides)
    return rec


def test_json_array_is_parsed_incrementally_across_chunk_boundaries(monkeypatch):
    records = [dpr_record(i, question=f"q{i} " + "ü" * (i % 7)) for i in range(50)]
    text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"
    monkeypatch.setattr(data, "_CHUNK", 7)  # objects and UTF-8 characters straddle chunks
    parsed = list(data.iter_json_array(io.BytesIO(text.encode("utf-8")), "x.json"))
    assert [obj for _, obj in parsed] == records
    assert [line for line, _ in parsed] == list(range(2, 52))


def test_malformed_json_array_names_the_line():
    with pytest.raises(BadRecordError, match=r"x\.json:3: malformed JSON"):
        list(data.iter_json_array(io.BytesIO(b'[\n{"question": "a"},\n{"question": }\n]'), "x.json"))
    with pytest.raises(BadRecordError, match="expected a JSON array"):
        list(data.iter_json_array(io.BytesIO(b'{"question": "a"}'), "x.json"))


def test_dpr_json_jsonl_and_parquet_give_the_same_examples(tmp_path):
    records = [dpr_record(i) for i in range(5)]
    (tmp_path / "t.json").write_text(json.dumps(records, indent=2))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "t.parquet")
    results = [list(data.iter_examples([str(tmp_path / f"t.{ext}")], "dpr", BadRecords()))
               for ext in ("json", "jsonl", "parquet")]
    assert results[0] == results[1] == results[2]
    assert results[0][3] == {"question": "question 3?", "answers": ["a3"],
                             "positive": {"title": "T3", "text": "positive 3"},
                             "positives": [{"title": "T3", "text": "positive 3"}],
                             "hard_negatives": [{"title": "H", "text": "hard 3"}], "negatives": []}


@pytest.mark.parametrize("bad, reason", [
    (dpr_record(9, positive_ctxs=[]), "no positive passage"),
    (dpr_record(9, question="  "), "empty or missing 'question'"),
    (dpr_record(9, hard_negative_ctxs=[{"title": "x"}]), r"hard_negative_ctxs\[0\] has no text"),
])
def test_bad_dpr_record_is_located_or_skipped_and_counted(tmp_path, bad, reason):
    records = [dpr_record(0), dpr_record(1), bad, dpr_record(3)]
    path = tmp_path / "train.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]")
    with pytest.raises(BadRecordError, match=rf"train\.json:4: {reason}"):
        data.scan([str(path)], "dpr", "error")
    count, skipped = data.scan([str(path)], "dpr", "skip")
    assert (count, skipped.count) == (3, 1)
    assert skipped.records[0]["line"] == 4


def test_retrieval_records_need_lang_ctxs_and_an_answer_for_training(tmp_path):
    good = {"qid": "1", "lang": "ja", "question": "日本の首都は？", "answers": ["東京"],
            "ctxs": [{"pid": "p", "lang": "ja", "title": "日本", "text": "首都は東京", "score": 1.0}]}
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in
                              [good, {**good, "answers": []}, {**good, "lang": None}]) + "\n")
    bad = BadRecords("skip")
    examples = list(data.iter_examples([str(path)], "retrieval", bad))
    assert [e["question"] for e in examples] == ["日本の首都は？"]
    assert [r["line"] for r in bad.records] == [2, 3]
    assert "no non-empty answer" in bad.records[0]["reason"]
    # generation does not need answers
    assert len(list(data.iter_examples([str(path)], "retrieval", BadRecords("skip"), require_answer=False))) == 2


def test_cli_reports_a_bad_record_in_one_line_before_starting_ray(tmp_path, capsys):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([dpr_record(0), dpr_record(1, positive_ctxs=[])]))
    code = main(["train-mdpr", "--train", str(path), "--out", str(tmp_path / "out"), "--init", "hf:/nowhere"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ray-cora train-mdpr: error: ") and "train.json:1: no positive passage" in err
    assert "--on-bad-record skip" in err and err.count("\n") == 1


def test_a_retrieval_output_folder_trains_on_its_parts_only(tmp_path):
    from ray_cora import storage
    from ray_cora.data.training import data_files

    out = tmp_path / "retrieval"
    writer = storage.ArtifactWriter(str(out), kind="retrieval")
    row = {"qid": "1", "lang": "en", "question": "q?", "answers": ["a"], "ctxs": [{"title": "T", "text": "a"}]}
    writer.write_bytes("parts/en-00000.jsonl", (json.dumps(row) + "\n").encode())
    writer.write_bytes("parts/en-00000.json", b'{"block": "en-00000"}')  # the block's marker
    writer.write_bytes("passage-store/bucket-00000.parquet", b"PAR1")
    writer.commit({"parts": ["parts/en-00000.jsonl"]})
    assert data_files(str(out)) == [str(out / "parts" / "en-00000.jsonl")]
    assert [e["question"] for e in data.iter_examples([str(out)], "retrieval", BadRecords("error"))] == ["q?"]
