"""The embedding job: index equals brute force, resumes, survives a killed actor and a killed driver."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ray_cora import faults
from ray_cora.configs.embed import EmbedConfig
from ray_cora.data.passages import iter_passages
from ray_cora.encoders import load_encoder
from ray_cora.faults import FaultPlan
from ray_cora.index.sharded import ShardedIndex, iter_shard_ids
from ray_cora.pipelines.embed_corpus import embed_corpus, shard_marker

pytestmark = pytest.mark.slow

QUESTIONS = ["How tall is Mount Fuji?", "富士山の高さは？", "¿Quién escribió Don Quijote?",
             "Когда построили Эйфелеву башню?"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A 3-file corpus (TSV with header, JSONL, Parquet) of 61 passages cut from the demo set."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_cora.demo import DEMO_PASSAGES

    passages = list(iter_passages(str(DEMO_PASSAGES)))[:61]
    folder = tmp_path_factory.mktemp("corpus")
    with open(folder / "a.tsv", "w", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\tlang\n")
        for p in passages[:23]:
            f.write(f"{p['pid']}\t{p['text']}\t{p['title']}\t{p['lang']}\n")
    with open(folder / "b.jsonl", "w", encoding="utf-8") as f:
        for p in passages[23:40]:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    pq.write_table(pa.Table.from_pylist(passages[40:]), folder / "c.parquet", row_group_size=8)
    return str(folder), passages


def _config(passages, out, **overrides):
    return EmbedConfig.load(overrides={"passages": passages, "out": out, "shard_size": 10,
                                       "batch_size": 8, "actor_cpus": 0.5, **overrides})


def _all_pids(out):
    return [pid for _, pids in iter_shard_ids(out) for pid in pids]


def test_embedded_index_equals_brute_force(ray_local, corpus, storage_root, muse):
    folder, passages = corpus
    summary = embed_corpus(_config(folder, storage_root))
    assert summary["passages"] == 61 and summary["shards"] == 3 + 2 + 3
    index = ShardedIndex.open(storage_root)
    assert sorted(_all_pids(storage_root)) == sorted(p["pid"] for p in passages)
    encoder = muse
    vectors = encoder.encode_passages([p["title"] for p in passages], [p["text"] for p in passages])
    queries = encoder.encode_queries(QUESTIONS)
    scores, got = index.search(queries, 10)
    brute = queries @ vectors.T
    order = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(scores, np.take_along_axis(brute, order, axis=1), atol=1e-4)
    # Ties aside, the same passages in the same order.
    assert [row[:5] for row in got] == [[passages[j]["pid"] for j in row[:5]] for row in order]


def _progress_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("embed: ")]


def test_rerun_skips_finished_shards_and_redoes_a_deleted_one(ray_local, corpus, tmp_path, capsys):
    """Also what the driver says: a line per shard as it commits (done/total, passages, rate,
    bytes, ETA), a final summary, and on the rerun what it resumes from and skipped."""
    folder, _ = corpus
    out = str(tmp_path / "index")
    capsys.readouterr()
    embed_corpus(_config(folder, out))
    first = _progress_lines(capsys.readouterr().out)
    assert [line.split(" (")[0] for line in first[:-1]] == [f"embed: shard {k}/8 done" for k in range(1, 9)]
    assert all(re.search(r"\d+ passages, [\d.k]+ passages/s, [\d.]+ kB written\)", line) for line in first[:-1])
    assert all(", ETA " in line for line in first[:-2]) and ", ETA " not in first[-2]
    assert re.fullmatch(r"embed: 8 shards \(61 passages\) in [\w ]+ \(.*passages/s, .* written\)", first[-1])
    before = json.loads((tmp_path / "index" / "manifest.json").read_text())
    marker_mtimes = {n: os.path.getmtime(tmp_path / "index" / shard_marker(n)) for n in range(8)}
    os.remove(tmp_path / "index" / shard_marker(4))
    (tmp_path / "index" / before["shards"][5]["index"]).write_bytes(b"damaged")
    summary = embed_corpus(_config(folder, out))
    assert summary["embedded_now"] == before["shards"][4]["count"] + before["shards"][5]["count"]
    again = _progress_lines(capsys.readouterr().out)
    assert again[0] == "embed: resuming: 6 of 8 shards already done, skipping them"
    assert [line.split(" (")[0] for line in again[1:-1]] == ["embed: shard 7/8 done", "embed: shard 8/8 done"]
    assert f"({summary['embedded_now']} passages, " in again[-2]
    assert re.fullmatch(r"embed: 8 shards \(61 passages\) in [\w ]+ .*; 6 skipped as already done \(resumed\)",
                        again[-1])
    after = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert [s["sha256"] for s in after["shards"]] == [s["sha256"] for s in before["shards"]]
    for n in (0, 1, 2, 3, 6, 7):
        assert os.path.getmtime(tmp_path / "index" / shard_marker(n)) == marker_mtimes[n]
    ShardedIndex.open(out)  # verifies every checksum


def test_killed_actor_is_replaced_and_the_index_is_complete(ray_local, corpus, tmp_path):
    folder, passages = corpus
    marker = tmp_path / "crashed"
    out = str(tmp_path / "index")
    with faults.inject(FaultPlan({faults.EMBED_ACTOR_SHARD: 2}, once_marker=str(marker))):
        embed_corpus(_config(folder, out))
    assert marker.exists()  # the actor really died mid-shard
    pids = _all_pids(out)
    assert sorted(pids) == sorted(p["pid"] for p in passages) and len(pids) == len(set(pids))


def test_killed_driver_resumes_to_the_same_index(corpus, tmp_path):
    """Killed once its first shard line is out (read from a pipe, as ``ray job logs`` reads the
    driver: the line must be flushed as the shard commits), the job resumes, saying what it skips."""
    folder, passages = corpus
    out = tmp_path / "index"
    cmd = [sys.executable, "-m", "ray_cora", "embed", "--passages", folder, "--out", str(out),
           "--shard-size", "3", "--batch-size", "4", "--actor-cpus", "0.5", "--num-cpus", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "job ended before the kill"
            try:
                if lines.get(timeout=0.2).startswith("embed: shard 1/21 done ("):
                    break
            except queue.Empty:
                pass
        assert (out / "shards").is_dir()  # the line came after a shard's marker, while the job ran
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (out / "manifest.json").exists()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "already written" in result.stdout and " 0 already written" not in result.stdout
    resumed = re.search(r"^embed: resuming: (\d+) of 21 shards already done, skipping them$", result.stdout, re.M)
    assert resumed, result.stdout
    skipped = int(resumed.group(1))
    assert [int(n) for n in re.findall(r"^embed: shard (\d+)/21 done", result.stdout, re.M)] == \
        list(range(skipped + 1, 22))
    assert re.search(rf"^embed: 21 shards \(61 passages\) in .*; {skipped} skipped as already done \(resumed\)$",
                     result.stdout, re.M), result.stdout
    pids = _all_pids(str(out))
    assert sorted(pids) == sorted(p["pid"] for p in passages) and len(pids) == len(set(pids))


def test_hf_encoder_through_the_pipeline(ray_local, corpus, tiny_bert, tmp_path):
    folder, passages = corpus
    bert = tiny_bert
    out = str(tmp_path / "index")
    embed_corpus(_config(folder, out, encoder=f"hf:{bert}?max_length=64"))
    index = ShardedIndex.open(out)
    from ray_cora.encoders import encoder_record

    # What the model is, as the actors loaded it: the same record the spec gives on the driver.
    assert index.manifest["encoder"] == encoder_record(f"hf:{bert}?max_length=64", dim=32)
    assert index.manifest["encoder"]["identity"]["max_length"] == 64
    assert index.manifest["encoder"]["query_format"] == "{question}"
    encoder = load_encoder(f"hf:{bert}?max_length=64")
    vectors = encoder.encode_passages([p["title"] for p in passages], [p["text"] for p in passages])
    queries = encoder.encode_queries(QUESTIONS)
    scores, _ = index.search(queries, 5)
    expected = np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)


def test_bad_passage_is_located_or_quarantined(ray_local, tmp_path):
    from ray_cora.errors import BadRecordError
    from ray_cora.runtime import user_errors_from_ray

    corpus = tmp_path / "p.tsv"
    corpus.write_text("1\tMount Fuji is high.\tFuji\n2\tbroken\n3\tThe Volga is long.\tVolga\n", encoding="utf-8")
    with pytest.raises(BadRecordError, match=r"p.tsv:2: expected 3 tab-separated columns"):
        with user_errors_from_ray():
            embed_corpus(_config(str(corpus), str(tmp_path / "strict"), lang="en"))
    assert not (tmp_path / "strict" / "manifest.json").exists()
    summary = embed_corpus(_config(str(corpus), str(tmp_path / "lenient"), lang="en", on_bad_record="skip"))
    assert summary["passages"] == 2 and summary["skipped_bad_records"] == 1
    [quarantined] = [json.loads(line) for line in (tmp_path / "lenient" / "_quarantine" / "shard-00000.jsonl")
                     .read_text().splitlines()]
    assert quarantined["line"] == 2 and quarantined["raw"] == "2\tbroken"


def test_ivf_index_is_trained_once_and_a_resumed_job_reuses_it(ray_local, corpus, tmp_path, muse):
    """An IVF index: one trained.faiss (from a sample of encoded passages) before any shard; a job
    stopped after 3 shards resumes with the very same trained index (same bytes, file untouched),
    every shard is built from it, and a search probing every list equals brute force."""
    import hashlib

    folder, passages = corpus
    out = tmp_path / "index"
    overrides = {"index_factory": "IVF2,Flat", "ivf_nprobe": 1}
    with faults.inject(FaultPlan({faults.DRIVER_ENTRIES: 3})):
        with pytest.raises(faults.SimulatedCrash):
            embed_corpus(_config(folder, str(out), **overrides))
    trained_file = out / "trained.faiss"
    first_mtime = trained_file.stat().st_mtime_ns
    first_sha = hashlib.sha256(trained_file.read_bytes()).hexdigest()
    assert json.loads((out / "trained.json").read_text())["trained"]["sha256"] == first_sha
    assert not (out / "manifest.json").exists()

    summary = embed_corpus(_config(folder, str(out), **overrides))
    assert 0 < summary["embedded_now"] < len(passages)  # the finished shards were kept
    assert trained_file.stat().st_mtime_ns == first_mtime  # not retrained, not rewritten
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trained"]["sha256"] == first_sha and manifest["index_factory"] == "IVF2,Flat"
    assert manifest["trained"]["train"]["sample_size"] >= 60 and manifest["search_params"]["nprobe"] == 1
    assert {s["trained_sha256"] for s in manifest["shards"]} == {first_sha}

    index = ShardedIndex.open(str(out))
    vectors = muse.encode_passages([p["title"] for p in passages], [p["text"] for p in passages])
    queries = muse.encode_queries(QUESTIONS)
    scores, _ = index.search(queries, 10, nprobe=2)
    np.testing.assert_allclose(scores, np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :10], atol=1e-4)
    # Another index spec over the same folder is refused, not mixed in.
    with pytest.raises(Exception, match="holds an index trained for"):
        embed_corpus(_config(folder, str(out), index_factory="IVF2,SQ8"))


def test_duplicate_passage_ids_are_refused_with_both_lines(ray_local, tmp_path):
    """``1`` in one file and ``"1"`` in another, in different shards: the same pid once read.
    The job refuses before its commit, naming both occurrences."""
    from ray_cora.errors import ConfigError
    from ray_cora.runtime import user_errors_from_ray

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps({"id": i, "text": f"Passage {i}.", "lang": "en"}) + "\n"
                                            for i in range(1, 15)), encoding="utf-8")
    (folder / "b.jsonl").write_text(json.dumps({"id": "20", "text": "Other.", "lang": "en"}) + "\n"
                                    + json.dumps({"id": "12", "text": "Again.", "lang": "en"}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"duplicate passage id '12' at \S*a.jsonl:12 and \S*b.jsonl:2"):
        with user_errors_from_ray():
            embed_corpus(_config(str(folder), str(tmp_path / "index")))
    assert not (tmp_path / "index" / "manifest.json").exists()
