"""The sharded BM25 index job and BM25 / hybrid retrieval on Ray Data, on the demo corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_cora import faults
from ray_cora.demo import DEMO_PASSAGES, DEMO_QUESTIONS
from ray_cora.faults import FaultPlan, SimulatedCrash
from ray_cora.index.fusion import FusionSetting, FusionWeights, fuse
from ray_cora.index.lexical import LexicalIndex


def _build(out: Path, **overrides) -> dict:
    from ray_cora.configs.lexical import LexicalIndexConfig
    from ray_cora.pipelines.lexical import build_lexical_index

    return build_lexical_index(LexicalIndexConfig.load(overrides={
        "passages": str(DEMO_PASSAGES), "out": str(out), "shard_size": 37, "task_cpus": 0.5, **overrides}))


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "shards").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lexical(ray_local, tmp_path_factory) -> Path:
    """The demo corpus (176 passages, 10 languages) in 5 shards of 37 (the last of 28), uninterrupted."""
    out = tmp_path_factory.mktemp("lexical") / "bm25"
    _build(out)
    return out


@pytest.mark.slow
def test_killed_driver_resumes_to_the_same_index(ray_local, lexical, tmp_path, capsys):
    out = tmp_path / "bm25"
    with faults.inject(FaultPlan({faults.DRIVER_ENTRIES: 2})), pytest.raises(SimulatedCrash):
        _build(out, tasks=1)  # one shard at a time, so the crash leaves shards to do
    assert not (out / "manifest.json").exists()
    written = len(list((out / "shards").glob("shard-*.json")))
    assert 2 <= written < 5
    capsys.readouterr()
    summary = _build(out)
    assert f"plan: 5 shards in 5 tasks; {written} already written, {5 - written} to index" in capsys.readouterr().out
    assert _files(out) == _files(lexical)  # every shard's part, byte for byte
    resumed = json.loads((out / "manifest.json").read_text())
    reference = json.loads((lexical / "manifest.json").read_text())
    assert resumed["languages"] == reference["languages"] and resumed["files"] == reference["files"]
    assert summary["passages"] == 176 and resumed["languages"]["en"]["passages"] == \
        sum(1 for line in DEMO_PASSAGES.read_text().splitlines() if json.loads(line)["lang"] == "en")


def _retrieve(out: Path, **overrides) -> dict[tuple[str, str], dict]:
    from ray_cora.configs.retrieve import RetrieveConfig
    from ray_cora.data.retrieval import iter_retrieval
    from ray_cora.pipelines.retrieve import run_retrieval

    run_retrieval(RetrieveConfig.load(overrides={
        "questions": str(DEMO_QUESTIONS), "dataset": "jsonl", "out": str(out), "k": 5, "block_size": 16,
        "langs": "en,es,fr,ja", "answers_all": False, **overrides}))
    return {(r["qid"], r["lang"]): r for _, _, r in iter_retrieval(str(out))}


@pytest.mark.slow
def test_retrieve_bm25_finds_the_passage_on_the_subject(ray_local, lexical, tmp_path):
    records = _retrieve(tmp_path / "out", retriever="bm25", lexical_index=str(lexical))
    top = {key: [c["pid"] for c in r["ctxs"]] for key, r in records.items()}
    assert top[("q-fuji-height", "en")][0] == "en-mount_fuji-1"
    assert top[("q-fuji-height", "ja")][0] == "ja-mount_fuji-1"
    by_question = {r["question"]: pids for r, pids in ((records[k], top[k]) for k in records)}
    assert by_question["Who wrote Don Quixote?"][0] == "en-don_quixote-1"
    # The job's lists are the lexical index's own top-5 in the question's language, ranks recorded.
    index = LexicalIndex.open(str(lexical))
    for record in records.values():
        scores, pids = index.search_one(record["question"], record["lang"], 5)
        assert [c["pid"] for c in record["ctxs"]] == pids
        assert [c["score"] for c in record["ctxs"]] == pytest.approx(scores, abs=1e-5)
        assert [c["retrievers"] for c in record["ctxs"]] == [{"bm25": r} for r in range(1, len(pids) + 1)]
        assert all(c["lang"] == record["lang"] for c in record["ctxs"])


@pytest.mark.slow
def test_retrieve_hybrid_is_the_fusion_of_the_dense_and_bm25_lists(ray_local, lexical, demo_index, tmp_path,
                                                                    capsys):
    """Hybrid top-5 == fuse(dense top-100, BM25 top-100) with the default weights (equal-weight RRF),
    each passage with its rank in both lists; the run warns once that its languages fall back."""
    store = str(tmp_path / "store")
    dense = _retrieve(tmp_path / "dense", index=demo_index, k=100, passage_store=store)
    bm25 = _retrieve(tmp_path / "bm25", retriever="bm25", lexical_index=str(lexical), k=100, passage_store=store)
    assert "warning: hybrid fusion" not in capsys.readouterr().out
    hybrid = _retrieve(tmp_path / "hybrid", retriever="hybrid", index=demo_index, lexical_index=str(lexical),
                       passage_store=store)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning: hybrid fusion" in line]
    assert len(warnings) == 1, warnings
    assert "has no setting for en, es, fr, ja (no --fusion, and no fusion.json" in warnings[0]
    assert "they use the fallback, equal-rrf (rrf k=60 w=0.50)" in warnings[0] and "ray-cora tune fusion" in warnings[0]
    setting = FusionWeights().setting_for("en")
    both = 0
    for key, record in hybrid.items():
        expected = fuse([(c["pid"], c["score"]) for c in dense[key]["ctxs"]],
                        [(c["pid"], c["score"]) for c in bm25[key]["ctxs"]], setting, 5)
        assert [c["pid"] for c in record["ctxs"]] == [h.pid for h in expected]
        assert [c["retrievers"] for c in record["ctxs"]] == [h.sources for h in expected]
        both += sum(1 for c in record["ctxs"] if None not in c["retrievers"].values())
    assert both  # some passages were found by both retrievers


def test_fuse_block_falls_back_per_language_as_documented():
    """No lexical parts for the question's language: the dense list alone by default; with a
    ``no_lexical`` setting, fused with the hits of its language-neutral terms."""
    from ray_cora.pipelines.retrieve import fuse_block

    questions = [{"lang": "sw", "question": "Mount Fuji 3776?"}, {"lang": "en", "question": "Mount Fuji?"}]
    dense = ([[0.9, 0.8], [0.7, 0.6]], [["d1", "d2"], ["d3", "e1"]])
    lexical = [{"hits": [], "has_lexical": False, "neutral": [["n1", 1.0]]},
               {"hits": [["e1", 5.0], ["e2", 4.0]], "has_lexical": True}]
    ranked, _, sources = fuse_block(questions, dense, lexical, retriever="hybrid", weights=FusionWeights(), k=3)
    assert ranked[0] == ["d1", "d2"] and sources[0] == [{"dense": 1, "bm25": None}, {"dense": 2, "bm25": None}]
    assert ranked[1][0] == "e1" and sources[1][0] == {"dense": 2, "bm25": 1}  # in both lists: first
    neutral = FusionWeights(no_lexical=FusionSetting("rrf", 0.5, rule="no-lexical"))
    ranked, _, sources = fuse_block(questions, dense, lexical, retriever="hybrid", weights=neutral, k=3)
    assert set(ranked[0]) == {"d1", "d2", "n1"} and {"dense": None, "bm25": 1} in sources[0]
    ranked, scores, sources = fuse_block(questions, None, lexical, retriever="bm25", weights=None, k=1)
    assert ranked == [[], ["e1"]] and scores == [[], [5.0]] and sources == [[], [{"bm25": 1}]]
