"""Shard plans over real files: every record in exactly one shard, whatever the sizes."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hashlib

from ray_cora.data.passages import iter_passages
from ray_cora.index.plan import plan_corpus


def _read_plan(tasks):
    return [(spec.number, p["pid"]) for task in tasks for spec in task
            for p in iter_passages(spec.uri, format=spec.format, lang="en", segment=spec.segment)]


def _check(tasks, expected_pids, shard_size):
    got = _read_plan(tasks)
    assert [pid for _, pid in got] == expected_pids
    numbers = [spec.number for task in tasks for spec in task]
    assert numbers == list(range(len(numbers)))
    sizes = {}
    for number, _ in got:
        sizes[number] = sizes.get(number, 0) + 1
    assert all(size <= shard_size for size in sizes.values())


@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 33])
@pytest.mark.parametrize("shard_size", [1, 4, 16, 50])
@pytest.mark.parametrize("kind", ["tsv-header", "tsv", "jsonl", "tsv.gz", "parquet", "no-final-newline"])
def test_plan_partitions_every_file_kind(tmp_path, n, shard_size, kind):
    pids = [f"p{i}" for i in range(n)]
    if kind == "parquet":
        path = tmp_path / "c.parquet"
        pq.write_table(pa.table({"pid": pids, "text": [f"text {p}" for p in pids]}), path, row_group_size=7)
    elif kind == "jsonl":
        path = tmp_path / "c.jsonl"
        path.write_text("".join(json.dumps({"pid": p, "text": f"tëxt {p}"}) + "\n" for p in pids))
    else:
        body = "".join(f"{p}\ttext {p}\ttitle\n" for p in pids)
        if kind == "tsv-header":
            body = "id\ttext\ttitle\n" + body
        if kind == "no-final-newline":
            body = body.rstrip("\n")
        path = tmp_path / ("c.tsv.gz" if kind == "tsv.gz" else "c.tsv")
        path.write_bytes(gzip.compress(body.encode()) if kind == "tsv.gz" else body.encode())
    tasks = plan_corpus(str(path), shard_size=shard_size)
    _check(tasks, pids, shard_size)
    _check_digests(tasks)
    if kind == "tsv.gz":
        assert len(tasks) == 1  # not seekable: one task reads the shards in order
    else:
        assert all(len(task) == 1 for task in tasks)


def _check_digests(tasks):
    """Every text shard's planned content hash is what its reader hashes (Parquet: the file's)."""
    for spec in (spec for task in tasks for spec in task):
        assert spec.source_sha256 is not None
        if spec.format == "parquet":
            continue
        digest = hashlib.sha256()
        list(iter_passages(spec.uri, format=spec.format, lang="en", segment=spec.segment, digest=digest))
        assert digest.hexdigest() == spec.source_sha256, spec


def test_shard_digests_cover_blank_lines_crlf_and_only_their_own_lines(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_bytes(b"id\ttext\ttitle\r\n1\ta\tA\r\n\n2\tb\tB\r\n3\tc\tC\n\n\n4\td\tD")
    tasks = plan_corpus(str(path), shard_size=2)
    _check_digests(tasks)
    specs = [spec for task in tasks for spec in task]
    assert len({spec.source_sha256 for spec in specs}) == len(specs)
    # A change inside shard 1 leaves shard 0's hash as it was.
    path.write_bytes(path.read_bytes().replace(b"3\tc", b"3\tx"))
    after = [spec for task in plan_corpus(str(path), shard_size=2) for spec in task]
    assert after[0].source_sha256 == specs[0].source_sha256 and after[1].source_sha256 != specs[1].source_sha256


def test_plan_numbers_shards_across_files(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    expected = []
    for f in range(3):
        pids = [f"f{f}-{i}" for i in range(5 + f)]
        expected += pids
        (folder / f"part-{f}.tsv").write_text("".join(f"{p}\tt\tT\n" for p in pids))
    tasks = plan_corpus(str(folder), shard_size=3)
    _check(tasks, expected, 3)
    assert len(tasks) == 2 + 2 + 3
