"""Reading CORA/DPR's pickled (id, vector) embedding files safely."""

from __future__ import annotations

import gzip
import json
import os
import pickle

import numpy as np
import pytest

from ray_cora.errors import StorageError
from ray_cora.index.cora_import import iter_cora_embeddings


def _items(n: int, dim: int = 4) -> list[tuple[str, np.ndarray]]:
    return [(f"en_{i}", np.arange(dim, dtype=np.float32) + i) for i in range(n)]


def _collect(path, **kwargs):
    batches = list(iter_cora_embeddings(str(path), **kwargs))
    ids = [pid for batch_ids, _ in batches for pid in batch_ids]
    vectors = np.concatenate([v for _, v in batches]) if batches else np.zeros((0, 0), np.float32)
    return batches, ids, vectors


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_round_trip_in_batches(tmp_path, protocol):
    items = _items(25)
    path = tmp_path / "wiki_emb_en_0"
    path.write_bytes(pickle.dumps(items, protocol=protocol))
    batches, ids, vectors = _collect(path, batch_size=10)
    assert [len(b[0]) for b in batches] == [10, 10, 5]
    assert ids == [pid for pid, _ in items]
    assert vectors.dtype == np.float32 and vectors.shape == (25, 4)
    np.testing.assert_array_equal(vectors, np.stack([v for _, v in items]))


def test_numpy1_pickles_int_ids_and_other_float_types(tmp_path):
    items = [(7, np.ones(3, np.float64)), (np.int64(8), np.zeros(3, np.float16)), ("x", np.ones(3, np.float32))]
    data = pickle.dumps(items, protocol=2)
    # Files written under numpy 1.x name numpy.core.multiarray; numpy 2 writes numpy._core.
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != data
    path = tmp_path / "wikipedia_passages_1.gz"
    path.write_bytes(gzip.compress(old))  # .gz is decompressed on the fly
    _, ids, vectors = _collect(path)
    assert ids == ["7", "8", "x"]
    np.testing.assert_array_equal(vectors, [[1, 1, 1], [0, 0, 0], [1, 1, 1]])
    assert vectors.dtype == np.float32


def test_empty_file_yields_nothing(tmp_path):
    path = tmp_path / "wiki_emb_xx_0"
    path.write_bytes(pickle.dumps([]))
    assert list(iter_cora_embeddings(str(path))) == []


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "wiki_emb_en_evil"
    path.write_bytes(pickle.dumps([("en_1", np.ones(4, np.float32)), ("en_2", _Evil(str(marker)))],
                                  protocol=protocol))
    with pytest.raises(StorageError, match=r"wiki_emb_en_evil.*(posix|os|nt)\.system"):
        list(iter_cora_embeddings(str(path)))
    assert not marker.exists()


@pytest.mark.parametrize("items, message", [
    ([("a", np.ones(4, np.float32)), ("b", np.ones((2, 2), np.float32))], r"item 1 \(id 'b'\).*shape \(2, 2\)"),
    ([("a", np.ones(4, np.float32)), ("b", np.ones(5, np.float32))], r"item 1 \(id 'b'\) has a 5-d vector"),
    ([("a", np.ones(4, np.float32)), ("b", np.ones(4, np.float32), 3)], "item 1 is a tuple of length 3"),
    ([("a", np.ones(4, np.float32)), "b"], "item 1 is a str"),
    ([("a", [1.0, 2.0])], r"item 0 \(id 'a'\) has a list"),
    ([("a", np.ones(4, np.int32))], "item 0.*int32"),
    ([(None, np.ones(4, np.float32))], "item 0 has id None"),
    ({"a": np.ones(4, np.float32)}, "holds a dict"),
])
def test_malformed_items_name_their_index(tmp_path, items, message):
    path = tmp_path / "wiki_emb_en_bad"
    path.write_bytes(pickle.dumps(items))
    with pytest.raises(StorageError, match=message):
        list(iter_cora_embeddings(str(path), batch_size=1))


def test_not_a_pickle(tmp_path):
    path = tmp_path / "wiki_emb_en_text"
    path.write_bytes(b"id\tvector\nen_1\t0.1 0.2\n")
    with pytest.raises(StorageError, match="not a readable pickle"):
        list(iter_cora_embeddings(str(path)))
    with pytest.raises(StorageError, match="no such file"):
        list(iter_cora_embeddings(str(tmp_path / "absent")))


def test_import_to_sharded_index_across_file_boundaries(tmp_path):
    """Two CORA-style files become shards of 4 across the file boundary; search finds every vector."""
    import pickle

    from ray_cora.cli import main
    from ray_cora.index.sharded import ShardedIndex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((11, 6)).astype(np.float32)
    ids = [f"ja_{i}" for i in range(11)]
    (tmp_path / "wiki_emb_ja_0").write_bytes(pickle.dumps(list(zip(ids[:7], vectors[:7]))))
    (tmp_path / "wiki_emb_ja_1").write_bytes(pickle.dumps(list(zip(ids[7:], vectors[7:]))))
    out = tmp_path / "index"
    assert main(["import-embeddings", "--inputs", f"{tmp_path}/wiki_emb_ja_0,{tmp_path}/wiki_emb_ja_1",
                 "--out", str(out), "--encoder", "dpr:mDPR_biencoder_best.cpt", "--shard-size", "4"]) == 0
    index = ShardedIndex.open(str(out))
    assert [s["count"] for s in index.manifest["shards"]] == [4, 4, 3]
    assert index.manifest["encoder"] == {"spec": "dpr:mDPR_biencoder_best.cpt", "dim": 6, "normalized": False}
    _, top = index.search(vectors, 11)
    brute = np.argsort(-(vectors @ vectors.T), axis=1, kind="stable")
    assert [row[0] for row in top] == [ids[row[0]] for row in brute]
    assert sorted(top[0]) == sorted(ids)


def test_import_records_each_vectors_language_from_cora_file_names(tmp_path):
    """CORA's wiki_emb_<lang>_<n> names say which ids are which language; the index keeps it per pid
    (what a passage store of all_w100.tsv fills its languages from), names without one give 'und',
    and --lang overrides the names."""
    from ray_cora.cli import main
    from ray_cora.index.sharded import iter_index_langs

    rng = np.random.default_rng(1)
    files = {"wiki_emb_en_0": range(0, 5), "wiki_emb_ja_0": range(5, 9), "wiki_emb_9": range(9, 11)}
    for name, ids in files.items():
        (tmp_path / name).write_bytes(pickle.dumps([(str(i), rng.standard_normal(512).astype(np.float32))
                                                    for i in ids]))
    inputs = ",".join(str(tmp_path / name) for name in files)
    out = tmp_path / "index"
    assert main(["import-embeddings", "--inputs", inputs, "--out", str(out), "--encoder", "muse",
                 "--passages", str(tmp_path / "all_w100.tsv"), "--shard-size", "3"]) == 0
    langs = {pid: lang for table in iter_index_langs(str(out))
             for pid, lang in zip(table.column("pid").to_pylist(), table.column("lang").to_pylist())}
    assert langs == {**{str(i): "en" for i in range(5)}, **{str(i): "ja" for i in range(5, 9)}, "9": "und", "10": "und"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["per_language"] == {"en": 5, "ja": 4, "und": 2}
    assert manifest["passages"] == str(tmp_path / "all_w100.tsv")
    assert manifest["languages"]["per_file"][str(tmp_path / "wiki_emb_ja_0")] == "ja"
    # CORA's glob, "wiki_emb_*", in natural order; --lang overrides the names.
    assert main(["import-embeddings", "--inputs", str(tmp_path / "wiki_emb_*"), "--out", str(tmp_path / "index2"),
                 "--encoder", "muse", "--lang", "de"]) == 0
    manifest2 = json.loads((tmp_path / "index2" / "manifest.json").read_text())
    assert manifest2["per_language"] == {"de": 11}
    assert [os.path.basename(u) for u in manifest2["imported_from"]] == ["wiki_emb_9", "wiki_emb_en_0", "wiki_emb_ja_0"]


def _write(path, items) -> str:
    path.write_bytes(pickle.dumps(items))
    return str(path)


def _import(inputs, out, **kwargs):
    from ray_cora.index.cora_import import import_cora_embeddings

    return import_cora_embeddings([str(i) for i in inputs], str(out), shard_size=kwargs.pop("shard_size", 4),
                                  encoder={"spec": "test", "normalized": False}, **kwargs)


@pytest.mark.parametrize("bad, shown", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf"), (1e300, "inf")])
def test_non_finite_vectors_are_refused_with_file_and_item(tmp_path, bad, shown):
    items = _items(12)
    vector = items[9][1].astype(np.float64)
    vector[2] = bad
    items[9] = ("en_9", vector)
    path = _write(tmp_path / "wiki_emb_en_0", items)
    with pytest.raises(StorageError, match=rf"wiki_emb_en_0: item 9 \(id 'en_9'\) has a non-finite value \({shown}\)"):
        _import([path], tmp_path / "index")
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_zero_dimension_vectors_are_refused(tmp_path):
    path = _write(tmp_path / "wiki_emb_en_0", [("a", np.zeros(0, np.float32)), ("b", np.zeros(0, np.float32))])
    with pytest.raises(StorageError, match=r"wiki_emb_en_0: item 0 \(id 'a'\) has a 0-dimension vector"):
        _import([path], tmp_path / "index")


def test_a_vector_far_outside_the_corpus_norms_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    first = _write(tmp_path / "wiki_emb_en_0", [(f"en_{i}", rng.standard_normal(8).astype(np.float32))
                                               for i in range(20)])
    items = [(f"ja_{i}", rng.standard_normal(8).astype(np.float32)) for i in range(20)]
    items[13] = ("ja_13", items[13][1] * np.float32(1e6))  # CORA-style poison: one huge vector
    second = _write(tmp_path / "wiki_emb_ja_0", items)
    with pytest.raises(StorageError, match=r"wiki_emb_ja_0: item 13 \(id 'ja_13'\) has norm .*more than 100x the "
                                           r"median norm"):
        _import([first, second], tmp_path / "index")
    assert not (tmp_path / "index" / "manifest.json").exists()
    # norms a few times apart (as real embeddings' are) are fine
    items[13] = ("ja_13", items[12][1] * np.float32(30))
    assert _import([first, _write(tmp_path / "wiki_emb_ja_0", items)], tmp_path / "ok")["num_vectors"] == 40


def test_duplicate_ids_across_files_are_refused_naming_both(tmp_path):
    """1 (int) and "1" (str) are one pid once ids are read as text."""
    items = _items(10)
    first = _write(tmp_path / "wikipedia_passages_0", [(i, v) for i, (_, v) in enumerate(items[:6])])
    second = _write(tmp_path / "wikipedia_passages_1", [("7", items[6][1]), ("1", items[7][1]), ("9", items[8][1])])
    with pytest.raises(StorageError, match=r"wikipedia_passages_1: item 1 has id '1', already the id of "
                                           r".*wikipedia_passages_0: item 1 \(ids are compared as text"):
        _import([first, second], tmp_path / "index", shard_size=4)
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_cli_refuses_bad_vectors_in_one_line(tmp_path, capsys):
    from ray_cora.cli import main

    items = _items(3)
    items[1] = ("en_1", np.full(4, np.nan, np.float32))
    path = _write(tmp_path / "wiki_emb_en_0", items)
    assert main(["import-embeddings", "--inputs", path, "--out", str(tmp_path / "index"), "--encoder",
                 "dpr:mDPR_biencoder_best.cpt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wiki_emb_en_0: item 1 (id 'en_1')" in err
