from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_cora import storage
from ray_cora.data.passages import (
    MAX_PASSAGE_CHARS,
    PASSAGE_SCHEMA,
    bounded_lines,
    decoded_lines,
    detect_format,
    iter_passage_batches,
    iter_passages,
    WHOLE_FILE,
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
    assert stats == {"read": 5, "yielded": 2, "bad": 3, "truncated": 0, "lang_column": 2, "lang_given": 0,
                     "lang_unknown": 0}
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


def test_a_runaway_passage_is_cut_to_the_cap_and_counted(tmp_path):
    """One 20 MB passage line (it once grew an mUSE actor to 20 GB) comes out at the cap."""
    path = tmp_path / "p.jsonl"
    huge = "word " * 4_000_000
    path.write_text(json.dumps({"id": 1, "text": huge}) + "\n" + json.dumps({"id": 2, "text": "short"}) + "\n")
    stats: dict = {}
    rows = list(iter_passages(str(path), lang="en", stats=stats))
    assert [len(r["text"]) for r in rows] == [MAX_PASSAGE_CHARS, 5] and stats["truncated"] == 1
    assert rows[0]["text"] == huge.strip()[:MAX_PASSAGE_CHARS]
    assert len(next(iter_passages(str(path), lang="en", max_chars=100))["text"]) == 100
    with pytest.raises(ConfigError, match="must be >= 1"):
        list(iter_passages(str(path), max_chars=0))


def test_a_line_over_the_byte_limit_is_never_held_whole(tmp_path):
    """The line splitter keeps only a head of an overlong line; the reader reports it as a
    malformed record at its line (skip: quarantined with that head)."""
    import io

    stream = io.BytesIO(b"a\n" + b"x" * (30 << 20) + b"\nb\n")
    lines = list(bounded_lines(stream, max_line_bytes=1 << 20))
    assert [(len(line), length) for line, length in lines] == [(1, 1), (10_000, 30 << 20), (1, 1)]
    path = tmp_path / "p.jsonl"
    long_line = json.dumps({"id": 2, "text": "y" * 5000})
    path.write_text("\n".join([json.dumps({"id": 1, "text": "ok"}), long_line, json.dumps({"id": 3, "text": "ok"})]) + "\n")
    problems = [(n, text.reason) for n, text, _ in decoded_lines(storage.resolve(str(path)), WHOLE_FILE,
                                                                  max_line_bytes=1000) if not isinstance(text, str)]
    assert problems == [(2, f"line is {len(long_line):,} bytes, longer than the 1,000-byte limit (is it a "
                            "passage file, with one record per line?)")]
    bad = BadRecords("skip")
    assert [r["pid"] for r in iter_passages(str(path), bad_records=bad)] == ["1", "2", "3"]  # default limit: fine


def test_duplicate_passage_ids_are_refused_naming_both_lines(tmp_path):
    """``1`` and ``"1"`` are the same pid once read: validate names both occurrences."""
    from ray_cora.configs.validate import ValidateConfig
    from ray_cora.tools.validate import validate

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n".join(json.dumps({"id": i, "text": f"t{i}"}) for i in (1, 2, 3)) + "\n")
    (folder / "b.tsv").write_text("id\ttext\ttitle\n4\tt4\tT\n 1 \tt1 again\tT\n")
    with pytest.raises(ConfigError, match=r"duplicate passage id '1' at \S*a.jsonl:1 and \S*b.tsv:3 "):
        validate(ValidateConfig(input=str(folder)))
    (folder / "b.tsv").write_text("id\ttext\ttitle\n4\tt4\tT\n")
    assert validate(ValidateConfig(input=str(folder)))["records"] == 4


@pytest.mark.parametrize("line, reason", [
    ('{"id": "2", "text": "a\\ud800b"}', "p.jsonl:2: field 'text' holds a lone surrogate"),
    ('{"id": "2", "text": "ok", "title": "\\udfff"}', "p.jsonl:2: field 'title' holds a lone surrogate"),
    ('{"id": "2", "text": ' + "[" * 10_000 + "]" * 10_000 + "}", "p.jsonl:2: JSON nested too deeply"),
])
def test_hostile_jsonl_records_are_bad_records_naming_the_line(tmp_path, line, reason):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "1", "text": "good"}\n' + line + "\n")
    with pytest.raises(BadRecordError, match=reason):
        list(iter_passages(str(path), lang="en"))
    # Under skip the record is quarantined and the good one kept, as for any malformed record.
    bad = BadRecords("skip")
    assert [p["pid"] for p in iter_passages(str(path), lang="en", bad_records=bad)] == ["1"]


def test_a_damaged_gzip_is_one_storage_error_naming_the_file(tmp_path):
    from ray_cora.errors import StorageError
    from ray_cora.index.plan import plan_corpus

    good = gzip.compress(b"".join(b'{"id": "%d", "text": "passage %d"}\n' % (i, i) for i in range(2000)))
    path = tmp_path / "p.jsonl.gz"
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF  # flip a byte inside the deflate stream
    path.write_bytes(bytes(damaged))
    with pytest.raises(StorageError, match=r"p\.jsonl\.gz: cannot be read after line \d+: .*damaged or truncated gzip"):
        list(iter_passages(str(path), lang="en"))
    # Planning reads the file first: the same damage is named there, before any actor starts.
    with pytest.raises(StorageError, match=r"p\.jsonl\.gz: cannot be read as gzip jsonl"):
        plan_corpus(str(path), shard_size=100)


def test_a_file_that_is_not_parquet_is_one_error_at_planning(tmp_path):
    from ray_cora.errors import StorageError
    from ray_cora.index.plan import plan_corpus

    path = tmp_path / "p.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(StorageError, match=r"p\.parquet: cannot be read as parquet"):
        plan_corpus(str(path), shard_size=100)
