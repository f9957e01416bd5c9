"""The passage store: random-access pid → passage lookups, on a local folder and on real S3."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow as pa
import pytest

from ray_cora import storage
from ray_cora.data import passage_store
from ray_cora.data.passage_store import PassageStore, build_passage_store, open_or_build_store
from ray_cora.errors import ChecksumError, ConfigError, StorageError


def _corpus(path, n: int = 60, extra: list[dict] | None = None) -> list[dict]:
    passages = [{"pid": f"p{i}", "lang": ["en", "ja", "sw"][i % 3], "title": f"t{i}", "text": " ".join([f"text {i}"] * (i % 7 + 1))}
                for i in range(n)] + (extra or [])
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages))
    return passages


def test_every_passage_is_found_and_buckets_are_sorted_by_key(storage_root, tmp_path):
    passages = _corpus(tmp_path / "c.jsonl")
    manifest = build_passage_store(str(tmp_path / "c.jsonl"), storage_root, num_buckets=5, flush_rows=4)
    assert manifest["num_passages"] == 60 and manifest["store_format"] == 2
    store = PassageStore(storage_root, cache_buckets=2, cache_dir=str(tmp_path / "cache"))
    assert store.lookup(p["pid"] for p in reversed(passages)) == {p["pid"]: p for p in passages}
    assert len(store._open) == 2
    sizes = []
    for number in range(5):
        keys, table = store._bucket(number)
        sizes.append(table.num_rows)
        assert np.all(np.diff(keys.astype(np.float64)) >= 0)
        assert all(passage_store.bucket_of(pid, 5) == number for pid in table.column("pid").to_pylist())
    assert sum(sizes) == 60 and min(sizes) > 0
    assert store.lookup(["nope", "p3", "p3"]) == {"p3": passages[3]}


def test_remote_buckets_are_copied_once_by_checksum(s3_env, tmp_path):
    _corpus(tmp_path / "c.jsonl")
    uri = f"s3://{s3_env['bucket']}/passage-store-{os.getpid()}-{tmp_path.name}"
    manifest = build_passage_store(str(tmp_path / "c.jsonl"), uri, num_buckets=3)
    cache = tmp_path / "cache"
    assert PassageStore(uri, cache_dir=str(cache)).lookup(["p1"])["p1"]["title"] == "t1"
    one = manifest["files"][f"buckets/bucket-{passage_store.bucket_of('p1', 3):05d}.arrow"]["sha256"]
    assert os.listdir(cache) == [f"{one}.arrow"]  # only the bucket a lookup needed
    found = PassageStore(uri, cache_dir=str(cache)).lookup([f"p{i}" for i in range(60)])
    assert len(found) == 60
    copied = {name: os.stat(cache / name).st_mtime_ns for name in os.listdir(cache)}
    assert {name.removesuffix(".arrow") for name in copied} == {e["sha256"] for e in manifest["files"].values()}
    PassageStore(uri, cache_dir=str(cache)).lookup([f"p{i}" for i in range(60)])
    assert {name: os.stat(cache / name).st_mtime_ns for name in os.listdir(cache)} == copied  # not copied again
    # a bucket changed behind the manifest's back is refused, not read
    storage.write_bytes(f"{uri}/buckets/bucket-00000.arrow", b"not the bucket")
    fresh = tmp_path / "fresh-cache"
    with pytest.raises(ChecksumError):
        PassageStore(uri, cache_dir=str(fresh)).lookup([f"p{i}" for i in range(60)])


def test_equal_keys_are_told_apart_by_pid(tmp_path, monkeypatch):
    # every pid gets the same key: lookups must still return the right passage
    monkeypatch.setattr(passage_store, "pid_keys", lambda pids: np.zeros(len(pids), dtype=np.uint64))
    passages = _corpus(tmp_path / "c.jsonl", n=20)
    build_passage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "store"), num_buckets=2)
    store = PassageStore(str(tmp_path / "store"))
    assert store.lookup(["p13", "p0", "p19", "absent"]) == {p["pid"]: p for p in passages
                                                            if p["pid"] in ("p13", "p0", "p19")}


def test_a_pid_given_twice_keeps_its_first_passage(tmp_path):
    _corpus(tmp_path / "c.jsonl", n=5, extra=[{"pid": "p2", "lang": "en", "title": "later", "text": "later"}])
    build_passage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "store"), num_buckets=1)
    assert PassageStore(str(tmp_path / "store")).lookup(["p2"])["p2"]["title"] == "t2"


def test_a_bucket_changed_after_building_is_refused(tmp_path):
    _corpus(tmp_path / "c.jsonl", n=10)
    build_passage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "store"), num_buckets=1)
    bucket = tmp_path / "store" / "buckets" / "bucket-00000.arrow"
    bucket.write_bytes(bucket.read_bytes()[:-10])
    with pytest.raises(StorageError, match="bucket-00000.arrow.*rebuild"):
        PassageStore(str(tmp_path / "store")).lookup(["p1"])


def test_a_store_in_the_old_layout_asks_to_be_rebuilt(tmp_path):
    old = storage.ArtifactWriter(str(tmp_path / "store"), kind=passage_store.STORE_KIND)
    old.write_bytes("buckets/bucket-00000.parquet", b"PAR1")
    old.commit({"num_buckets": 1, "num_passages": 1, "passages": "c.jsonl"})
    with pytest.raises(ConfigError, match="older layout.*delete that folder"):
        open_or_build_store("c.jsonl", str(tmp_path / "store"), num_buckets=1)
    with pytest.raises(ConfigError, match="older layout"):
        PassageStore(str(tmp_path / "store"))


def test_an_empty_bucket_is_fine(tmp_path):
    _corpus(tmp_path / "c.jsonl", n=2)
    build_passage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "store"), num_buckets=16)
    store = PassageStore(str(tmp_path / "store"))
    empty = next(b for b in range(16) if b not in {passage_store.bucket_of(p, 16) for p in ("p0", "p1")})
    keys, table = store._bucket(empty)
    assert len(keys) == 0 and table.schema == passage_store.STORE_SCHEMA
    assert store.lookup(["p0", "p1"]).keys() == {"p0", "p1"}


def test_bucket_files_are_uncompressed_arrow_a_lookup_can_map(tmp_path):
    _corpus(tmp_path / "c.jsonl", n=300)
    build_passage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "store"), num_buckets=1)
    with pa.memory_map(str(tmp_path / "store" / "buckets" / "bucket-00000.arrow")) as source:
        reader = pa.ipc.open_file(source)
        assert reader.num_record_batches == 1
        allocated = pa.total_allocated_bytes()
        table = reader.read_all()
        assert pa.total_allocated_bytes() - allocated < 1024  # zero-copy: the rows stay in the map
        assert table.num_rows == 300 and table.column("text").nbytes > 1024


def test_a_store_pickles_without_its_maps(tmp_path):
    import pickle

    passages = _corpus(tmp_path / "c.jsonl", n=300)
    build_passage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "store"), num_buckets=2)
    store = PassageStore(str(tmp_path / "store"))
    store.lookup(p["pid"] for p in passages)
    data = pickle.dumps(store)
    assert len(data) < 20_000  # the buckets' rows are not in it
    copy = pickle.loads(data)
    assert copy.lookup(["p7"]) == {"p7": passages[7]}


def test_building_many_buckets_raises_a_low_open_file_limit(tmp_path):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 700:
        pytest.skip(f"the hard open-file limit here is {hard}; the test needs room above 600 files")
    passages = _corpus(tmp_path / "c.jsonl", n=50)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        build_passage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "store"), num_buckets=600)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 600
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert PassageStore(str(tmp_path / "store")).lookup(["p42"]) == {"p42": passages[42]}


def test_default_bucket_count_follows_corpus_size(tmp_path):
    from ray_cora.data.passage_store import default_num_buckets

    _corpus(tmp_path / "small.jsonl", n=5)
    assert default_num_buckets(str(tmp_path / "small.jsonl")) == 16
    folder = tmp_path / "big"
    folder.mkdir()
    for name, size in (("a.tsv", 2 << 30), ("b.jsonl.gz", 1 << 30)):  # sparse: no disk used
        with open(folder / name, "wb") as f:
            f.truncate(size)
    assert default_num_buckets(str(folder)) == (2 + 3) * 16  # 5 GiB counted / 64 MiB


def test_passages_without_language_take_the_one_known_for_their_pid(tmp_path):
    """CORA's all_w100.tsv (id, text, title; integer ids; no language): a store built with the
    per-pid languages an index recorded gives every passage its language; pids the map lacks stay
    'und', and the manifest says how many came from where."""
    corpus = tmp_path / "all_w100.tsv"
    corpus.write_text("".join(f"{i}\ttext number {i}\tTitle {i}\n" for i in range(40)), encoding="utf-8")
    known = {str(i): ("en" if i < 15 else "ja") for i in range(37)}  # pids 37..39 are in no embedding file
    tables = [pa.table({"pid": list(known)[:20], "lang": list(known.values())[:20]}),
              pa.table({"pid": list(known)[20:] + ["999"], "lang": list(known.values())[20:] + ["ja"]}),
              pa.table({"pid": ["38"], "lang": ["und"]})]  # an index's own 'und' entries fill nothing
    calls = []

    def known_langs():
        calls.append(1)
        return iter(tables)

    manifest = build_passage_store(str(corpus), str(tmp_path / "store"), num_buckets=4, flush_rows=3,
                                   known_langs=known_langs)
    store = PassageStore(str(tmp_path / "store"))
    found = store.lookup(str(i) for i in range(40))
    assert {pid: row["lang"] for pid, row in found.items()} == {**known, "37": "und", "38": "und", "39": "und"}
    assert found["3"]["text"] == "text number 3" and found["3"]["title"] == "Title 3"
    assert manifest["languages"] == {"lang_column": 0, "lang_given": 0, "known_langs": 37, "unknown": 3}
    assert manifest["per_language"] == {"en": 15, "ja": 22, "und": 3}
    assert sorted(p["pid"] for p in store.iter_passages()) == sorted(str(i) for i in range(40))
    assert passage_store.describe_languages(manifest) == \
        "37 from the index's per-pid languages, 3 unknown ('und')"
    # A corpus that gives every language never reads the map.
    _corpus(tmp_path / "c.jsonl", n=9)
    built = build_passage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "store2"), num_buckets=2,
                                known_langs=known_langs)
    assert len(calls) == 1 and built["languages"]["lang_column"] == 9 and built["languages"]["unknown"] == 0


def _edit_text_in_place(store_root, old: bytes, new: bytes) -> None:
    """Replace a passage's text inside its bucket file, keeping the file's length."""
    assert len(old) == len(new)
    for name in os.listdir(store_root / "buckets"):
        path = store_root / "buckets" / name
        data = path.read_bytes()
        if old in data:
            with open(path, "r+b") as f:
                f.seek(data.index(old))
                f.write(new)
            return
    raise AssertionError(f"{old!r} is in no bucket")


@pytest.mark.parametrize("when", ["before-open", "while-mapped"])
def test_same_length_edit_of_a_local_bucket_is_detected(tmp_path, monkeypatch, when):
    _corpus(tmp_path / "c.jsonl")
    root = tmp_path / "store"
    build_passage_store(str(tmp_path / "c.jsonl"), str(root), num_buckets=3)
    monkeypatch.setattr(storage, "SETTLE_NS", 0)  # as for a store built long ago: remembered once verified
    store = PassageStore(str(root), cache_dir=str(tmp_path / "cache"))
    if when == "while-mapped":
        assert store.lookup(["p12"])["p12"]["text"].startswith("text 12")
        time.sleep(0.05)
    _edit_text_in_place(root, b"text 12", b"evil 12")
    with pytest.raises(ChecksumError, match=r"bucket-0000\d.arrow: checksum mismatch"):
        store.lookup(["p12"])
