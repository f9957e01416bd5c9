"""`ray-cora retrieve` / `evaluate all` on Ray: mUSE over the demo corpus, checked against brute-force
top-k; a killed writer actor and a killed driver resume to the same output; `ray job submit` of
jobs/evaluate.py against a real head node."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ray_cora import faults
from ray_cora.demo import DEMO_PASSAGES, DEMO_QUESTIONS
from ray_cora.errors import ConfigError
from ray_cora.faults import FaultPlan
from ray_cora.index.sharded import commit_index, write_shard
from tests.support import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(demo_index, muse):
    """The session's demo index (the demo corpus embedded with mUSE into 5 shards of 40; its manifest
    names the corpus), with the vectors it holds read back for the brute-force reference."""
    from ray_cora.index.sharded import ShardedIndex

    passages = [json.loads(line) for line in DEMO_PASSAGES.read_text(encoding="utf-8").splitlines()]
    index = ShardedIndex.open(demo_index, merge=False)  # each shard's own FAISS index, to read vectors back
    vectors = np.concatenate([shard.index.reconstruct_n(0, shard.index.ntotal) for shard in index.shards])
    pids = [str(pid) for shard in index.shards for pid in shard.pids]
    assert pids == [p["pid"] for p in passages]  # in corpus order
    questions = [json.loads(line) for line in DEMO_QUESTIONS.read_text(encoding="utf-8").splitlines()]
    return {"index": demo_index, "passages": {p["pid"]: p for p in passages}, "vectors": vectors,
            "pids": pids, "questions": questions, "encoder": muse}


def _config(demo, out, **overrides):
    from ray_cora.configs.retrieve import RetrieveConfig

    values = {"index": demo["index"], "questions": str(DEMO_QUESTIONS), "dataset": "jsonl", "out": str(out),
              "k": 5, "block_size": 16, "search_actors": 2, "langs": "en,ja,zh_cn,th"}
    return RetrieveConfig.load(overrides={**values, **overrides})


def _read(out) -> list[dict]:
    from ray_cora.data.retrieval import iter_retrieval

    return [record for _, _, record in iter_retrieval(str(out))]


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "parts").glob("*.jsonl"))}


@pytest.fixture(scope="module")
def reference(ray_local, demo, tmp_path_factory):
    from ray_cora.pipelines.retrieve import run_retrieval

    out = tmp_path_factory.mktemp("reference") / "retrieval"
    summary = run_retrieval(_config(demo, out))
    return out, summary


def test_retrieval_equals_brute_force_top_k_with_corpus_texts(demo, reference):
    out, summary = reference
    records = _read(out)
    wanted = [q for q in demo["questions"] if q["lang"] in ("en", "ja", "zh_cn", "th")]
    assert summary["questions"] == len(records) == len(wanted)
    assert sorted((r["qid"], r["lang"]) for r in records) == sorted((q["qid"], q["lang"]) for q in wanted)
    by_key = {(q["qid"], q["lang"]): q for q in wanted}
    queries = demo["encoder"].encode_queries([r["question"] for r in records])
    scores = queries @ demo["vectors"].T
    for record, row in zip(records, scores):
        top = np.argsort(-row, kind="stable")[:5]
        assert [c["pid"] for c in record["ctxs"]] == [demo["pids"][i] for i in top]
        np.testing.assert_allclose([c["score"] for c in record["ctxs"]], row[top], atol=1e-4)
        for ctx in record["ctxs"]:
            passage = demo["passages"][ctx["pid"]]
            assert (ctx["lang"], ctx["title"], ctx["text"]) == (passage["lang"], passage["title"], passage["text"])
        question = by_key[(record["qid"], record["lang"])]
        assert record["answers"] == question["answers"] and record["gold_pids"] == question["gold_pids"]
        # answers_all unites the answers of every language version of the question
        others = [q for q in demo["questions"] if q["qid"] == record["qid"]]
        assert set(record["answers_all"]) == {a for q in others for a in q["answers"]}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "retrieval" and manifest["encoder"] == "muse"  # defaulted from the index
    assert sum(manifest["per_language"].values()) == len(records)


def test_nprobe_reaches_the_shard_searchers_and_is_recorded(ray_local, demo, demo_ivf_index, tmp_path):
    """On an IVF index (default nprobe 1), --nprobe 4 gives what ShardedIndex.search with nprobe 4
    gives, and the retrieval manifest records the parameters the searches ran with."""
    from ray_cora.index.sharded import ShardedIndex
    from ray_cora.pipelines.retrieve import run_retrieval

    out = tmp_path / "retrieval"
    run_retrieval(_config(demo, out, index=demo_ivf_index, nprobe=4, langs="en,ja", search_actors=1))
    records = _read(out)
    index = ShardedIndex.open(demo_ivf_index)
    queries = demo["encoder"].encode_queries([r["question"] for r in records])
    assert [[c["pid"] for c in r["ctxs"]] for r in records] == index.search(queries, 5, nprobe=4)[1]
    assert index.search(queries, 5, nprobe=4)[1] != index.search(queries, 5)[1]  # the default (1) differs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["search_params"]["nprobe"] == 4


def _progress_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("retrieve: ")]


def test_killed_writer_actor_and_killed_driver_resume_to_the_same_output(ray_local, demo, reference, tmp_path,
                                                                           capsys):
    """Also what the driver says: a line per block as it commits, a final summary, and on the
    rerun what it resumes from and skipped."""
    from ray_cora.pipelines.retrieve import run_retrieval

    ref_out, _ = reference
    out = tmp_path / "retrieval"
    crashed = tmp_path / "crashed"
    capsys.readouterr()
    with faults.inject(FaultPlan({faults.RETRIEVE_WRITER_BLOCK: "ja-00000"}, once_marker=str(crashed))):
        first = run_retrieval(_config(demo, out, passage_store=str(ref_out / "passage-store")))
    assert crashed.exists()  # the writer really died after its part, before its marker
    assert _parts(out) == _parts(ref_out)
    blocks, questions = len(_parts(ref_out)), first["questions"]
    lines = _progress_lines(capsys.readouterr().out)
    assert lines[0].startswith(f"retrieve: {questions} questions in {blocks} blocks; 0 already written")
    assert [line.split(" (")[0] for line in lines[1:-1]] == \
        [f"retrieve: block {k}/{blocks} done" for k in range(1, blocks + 1)]
    assert f"({questions} questions, " in lines[-2] and " written)" in lines[-2]
    assert all(", ETA " in line for line in lines[1:-2])
    assert re.fullmatch(rf"retrieve: {blocks} blocks \({questions} questions\) in [\w ]+ \(.*questions/s, .*\)",
                        lines[-1])
    # A driver killed mid-run leaves some blocks without markers and no manifest: the rerun redoes
    # exactly those blocks.
    (out / "manifest.json").unlink()
    for block in ("en-00001", "th-00000"):
        (out / "parts" / f"{block}.json").unlink()
    (out / "parts" / "th-00000.jsonl").write_text("half a li")
    summary = run_retrieval(_config(demo, out, passage_store=str(ref_out / "passage-store")))
    assert summary["blocks"] == len(_parts(ref_out))
    lines = _progress_lines(capsys.readouterr().out)
    assert f"retrieve: resuming: {blocks - 2} of {blocks} blocks already done, skipping them" in lines
    assert [line.split(" (")[0] for line in lines if line.startswith("retrieve: block ")] == \
        [f"retrieve: block {blocks - 1}/{blocks} done", f"retrieve: block {blocks}/{blocks} done"]
    assert re.fullmatch(rf"retrieve: {blocks} blocks \({questions} questions\) in .*; {blocks - 2} skipped as "
                        r"already done \(resumed\)", lines[-1])
    assert _parts(out) == _parts(ref_out)
    assert (out / "manifest.json").exists()


def test_rerun_with_other_settings_and_dimension_mismatch_are_clear_errors(ray_local, demo, reference, tmp_path):
    from ray_cora.pipelines.retrieve import run_retrieval

    ref_out, _ = reference
    with pytest.raises(ConfigError, match=r"other settings \(k differ\)"):
        run_retrieval(_config(demo, ref_out, k=7))
    small = tmp_path / "index16"
    rng = np.random.default_rng(0)
    entry = write_shard(str(small), 0, demo["pids"], rng.standard_normal((len(demo["pids"]), 16)).astype(np.float32))
    commit_index(str(small), [entry], encoder={"spec": "hf:/somewhere", "dim": 16, "normalized": False})
    with pytest.raises(ConfigError, match="makes 512-d vectors but the index .* holds 16-d vectors"):
        run_retrieval(_config(demo, tmp_path / "out", index=str(small), encoder="muse",
                              passages=str(DEMO_PASSAGES), langs="en"))


def test_ray_job_submit_of_evaluate_all(ray_head, demo, tmp_path):
    ray_bin = str(Path(sys.executable).with_name("ray"))
    out = tmp_path / "eval"
    result = subprocess.run(
        [ray_bin, "job", "submit", "--address", ray_head["address"], "--",
         sys.executable, str(REPO_ROOT / "jobs" / "evaluate.py"), "--index", demo["index"],
         "--questions", str(DEMO_QUESTIONS), "--dataset", "jsonl", "--langs", "en,ja,ko", "--k", "10",
         "--ks", "1,5,10", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=ray_head["env"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "succeeded" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["per_language"]) == ["en", "ja", "ko"] and metrics["ks"] == [1, 5, 10]
    assert metrics["generation"] is None
    expected = sum(1 for q in demo["questions"] if q["lang"] in ("en", "ja", "ko"))
    assert sum(row["count"] for row in metrics["per_language"].values()) == expected
    report = (out / "report.md").read_text()
    assert "Generation: skipped" in report and "| metric | en | ja | ko | macro |" in report
    assert (out / "retrieved_languages.png").read_bytes()[:4] == b"\x89PNG"
