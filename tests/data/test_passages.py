from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_cora import storage
from ray_cora.data.passages import (
    PASSAGE_SCHEMA,
    detect_format,
    iter_passage_batches,
    iter_passages,
    passage_files,
)
from ray_cora.data.records import BadRecords
from ray_cora.errors import BadRecordError, ConfigError

DPR_TSV = (
    "id\ttext\ttitle\n"
    "1\t\"Aaron Aaron ( or ; \"\"Ahärôn\"\") is a prophet\"\tAaron\n"
    "2\tGod at Sinai granted Aaron the priesthood\tAaron\n"
)


def test_dpr_tsv_with_header_and_quotes(tmp_path):
    path = tmp_path / "psgs_w100.tsv"
    path.write_text(DPR_TSV, encoding="utf-8")
    rows = list(iter_passages(str(path), lang="en"))
    assert rows[0] == {"pid": "1", "lang": "en", "title": "Aaron",
                       "text": 'Aaron Aaron ( or ; "Ahärôn") is a prophet'}
    assert [r["pid"] for r in rows] == ["1", "2"]


def test_tsv_without_header_with_lang_column_and_gzip(tmp_path):
    path = tmp_path / "all_w100.tsv.gz"
    path.write_bytes(gzip.compress("ja-1\t富士山は日本一高い山。\t富士山\tja\nzh-9\t长城很长。\t长城\tzh-CN\n".encode()))
    rows = list(iter_passages(str(path)))
    assert [(r["pid"], r["lang"]) for r in rows] == [("ja-1", "ja"), ("zh-9", "zh_cn")]


def test_cora_three_column_tsv_reads_as_it_is_with_unknown_language(tmp_path):
    # CORA's write_para_data_to_tsv: id, text, title; integer ids; no header, no language column.
    path = tmp_path / "all_w100.tsv"
    path.write_text("0\tMount Fuji is 3,776 m high.\tMount Fuji\n1\t富士山は日本一高い山。\t富士山\n",
                    encoding="utf-8")
    stats: dict[str, int] = {}
    rows = list(iter_passages(str(path), stats=stats))
    assert [(r["pid"], r["lang"], r["title"]) for r in rows] == [("0", "und", "Mount Fuji"), ("1", "und", "富士山")]
    assert stats["lang_unknown"] == 2 and stats["lang_given"] == stats["lang_column"] == 0
    given: dict[str, int] = {}
    assert {r["lang"] for r in iter_passages(str(path), lang="ja", stats=given)} == {"ja"}
    assert given["lang_given"] == 2


@pytest.mark.parametrize("content, reason", [
    (b"1\tonly two\n", "p.tsv:2: expected 3 tab-separated columns"),
    (b"1\t\xff\xfe broken\ttitle\n", "p.tsv:2: invalid UTF-8"),
    (b"\ttext\ttitle\n", "p.tsv:2: missing field 'id'"),
    (b"7\t  \ttitle\n", "p.tsv:2: missing or empty field 'text'"),
])
def test_bad_tsv_records_name_file_and_line(tmp_path, content, reason):
    path = tmp_path / "p.tsv"
    path.write_bytes(b"0\tgood passage\tT\n" + content)
    with pytest.raises(BadRecordError, match=reason):
        list(iter_passages(str(path), lang="en"))


def test_skip_policy_keeps_good_records_and_quarantines_bad(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [
        json.dumps({"id": 1, "lang": "de", "title": "Berlin", "text": "Berlin ist die Hauptstadt."}),
        "{not json",
        json.dumps({"pid": "x2", "lang": "xx-nope", "text": "t"}),
        json.dumps({"pid": "x3", "lang": "ru", "title": None, "text": "Москва — столица России."}),
        json.dumps(["a", "list"]),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bad = BadRecords("skip")
    stats: dict[str, int] = {}
    rows = list(iter_passages(str(path), bad_records=bad, stats=stats))
    assert [r["pid"] for r in rows] == ["1", "x3"]
    assert rows[1]["title"] == ""
    assert [(r["line"], r["reason"].split(":")[0]) for r in bad.records] == [
        (2, "invalid JSON"), (3, "unknown language code 'xx-nope' in field 'lang'"),
        (5, "expected a JSON object, got list")]
    assert stats == {"read": 5, "yielded": 2, "bad": 3, "lang_column": 2, "lang_given": 0, "lang_unknown": 0}
    quarantine = [json.loads(l) for l in bad.to_jsonl().decode().splitlines()]
    assert quarantine[0]["raw"] == "{not json" and quarantine[0]["source"].endswith("p.jsonl")


def test_parquet_and_batches(tmp_path):
    path = tmp_path / "p.parquet"
    table = pa.table({"id": [str(i) for i in range(10)], "lang": ["en"] * 10,
                      "title": ["T"] * 10, "text": [f"passage {i}" for i in range(10)]})
    pq.write_table(table, path)
    batches = list(iter_passage_batches(str(path), batch_size=4))
    assert [b.num_rows for b in batches] == [4, 4, 2]
    assert batches[0].schema == PASSAGE_SCHEMA
    assert batches[2].column("pid").to_pylist() == ["8", "9"]


def test_parquet_without_text_column_is_reported(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": ["1"], "body": ["x"]}), path)
    with pytest.raises(ConfigError, match="need columns 'pid' \\(or 'id'\\) and 'text'"):
        list(iter_passages(str(path)))


def test_format_detection_and_folder_listing(tmp_path):
    assert detect_format("s3://b/x/all_w100.tsv.gz") == "tsv"
    assert detect_format("part-0001.parquet") == "parquet"
    with pytest.raises(ConfigError, match="--format"):
        detect_format("corpus.txt")
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "b.tsv").write_text("")
    (tmp_path / "notes.md").write_text("")
    assert [f.path.rsplit("/", 1)[1] for f in passage_files(str(tmp_path))] == ["a.jsonl", "b.tsv"]


def test_reads_from_s3(s3_env):
    uri = f"s3://{s3_env['bucket']}/passages/p.tsv.gz"
    storage.write_bytes(uri, gzip.compress(DPR_TSV.encode()))
    assert [r["pid"] for r in iter_passages(uri, lang="en")] == ["1", "2"]


def test_real_xquad_paragraphs_as_passages():
    from ray_cora.data.qa import iter_squad_paragraphs
    from tests.support import shared_data

    path = shared_data("xquad", "xquad.th.json")
    paragraphs = list(iter_squad_paragraphs(str(path)))
    assert len(paragraphs) == 240 and all(p["lang"] == "th" for p in paragraphs)
    assert set(paragraphs[0]) == {"pid", "lang", "title", "text"}


def test_bad_record_error_survives_pickling():
    """Ray ships task errors by pickle; the located message must arrive intact."""
    import pickle

    err = BadRecordError("s3://b/p.tsv", 12, "invalid UTF-8")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and (again.source, again.line) == ("s3://b/p.tsv", 12)
