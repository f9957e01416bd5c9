"""An input edited between two runs of a resumable job (issue 19, item 1): the rerun replans, keeps
only the work done on unchanged content, and every record of the final input ends up in the output
exactly once — or the job refuses. Never stale offsets, never silent loss or duplication."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from ray_cora.errors import BadRecordError

N_PASSAGES = 120
SHARD = 20
BROKEN_LINE = 5


def _passage_line(i: int) -> str:
    return json.dumps({"id": i, "title": f"Title {i}", "text": f"Passage number {i} about topic {i % 7}.",
                       "lang": "en"})


def _write_corpus(path: Path, *, broken: bool, extra: int = 0) -> None:
    lines = [_passage_line(i) for i in range(1, N_PASSAGES + 1 + extra)]
    if broken:
        lines[BROKEN_LINE - 1] = lines[BROKEN_LINE - 1][:20]  # a truncated record, as in the issue
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _embed_config(passages: str, out: str, **overrides):
    from ray_cora.configs.embed import EmbedConfig

    return EmbedConfig.load(overrides={"passages": passages, "out": out, "shard_size": SHARD, "batch_size": 16,
                                       "actor_cpus": 0.5, "actors": 2, **overrides})


def _index_pids(out: str) -> Counter:
    from ray_cora.index.sharded import iter_shard_ids

    return Counter(pid for _, pids in iter_shard_ids(out) for pid in pids)


def _run_embed(config):
    from ray_cora.pipelines.embed_corpus import embed_corpus
    from ray_cora.runtime import user_errors_from_ray

    with user_errors_from_ray():
        return embed_corpus(config)


# --- embed: the reproduction ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_fixed_record_then_rerun_embeds_every_passage_once(ray_local, tmp_path, monkeypatch, capsys, policy):
    """Truncated line → the job stops there; the line is fixed (which moves every later byte) and
    the job rerun (with --on-bad-record error, or skip as in the issue) → every passage exactly once,
    no quarantine, the shards before the edit kept; the manifest names the corpus by absolute path."""
    monkeypatch.chdir(tmp_path)
    corpus = Path("corpus.jsonl")
    _write_corpus(corpus, broken=True)
    with pytest.raises(BadRecordError, match=rf"corpus.jsonl:{BROKEN_LINE}: invalid JSON"):
        _run_embed(_embed_config(str(corpus), "index"))
    _write_corpus(corpus, broken=False)
    capsys.readouterr()
    summary = _run_embed(_embed_config(str(corpus), "index", on_bad_record=policy))
    out = capsys.readouterr().out
    assert "corpus.jsonl changed (size" in out and "replanned" in out
    assert summary["skipped_bad_records"] == 0
    assert _index_pids("index") == Counter(str(i) for i in range(1, N_PASSAGES + 1))
    assert not any(p.stat().st_size for p in Path("index").glob("_quarantine/*"))
    manifest = json.loads(Path("index/manifest.json").read_text())
    assert manifest["passages"] == str(tmp_path / "corpus.jsonl")  # usable from any directory


@pytest.mark.slow
def test_edit_after_a_committed_index_replans_and_keeps_unchanged_shards(ray_local, tmp_path, capsys):
    """Skip-run over a broken line (committed, one passage quarantined); then the line is fixed and
    passages appended → the rerun re-embeds the changed and new shards only, the quarantine of the
    fixed shard goes away, and the index holds every passage of the new file once."""
    corpus = tmp_path / "corpus.jsonl"
    out = str(tmp_path / "index")
    _write_corpus(corpus, broken=True)
    first = _run_embed(_embed_config(str(corpus), out, on_bad_record="skip"))
    assert first["passages"] == N_PASSAGES - 1 and first["skipped_bad_records"] == 1
    _write_corpus(corpus, broken=False, extra=7)
    capsys.readouterr()
    second = _run_embed(_embed_config(str(corpus), out, on_bad_record="skip"))
    printed = capsys.readouterr().out
    # Shards 1..5 hold the same lines (only their offsets moved): kept; shard 0 (fixed) and the
    # new shard 6 are embedded.
    assert "5 of 7 shards have the same lines (kept where already embedded), 2 changed or new" in printed
    assert second["embedded_now"] == SHARD + 7 and second["skipped_bad_records"] == 0
    assert _index_pids(out) == Counter(str(i) for i in range(1, N_PASSAGES + 8))
    assert not list((tmp_path / "index" / "_quarantine").glob("*.jsonl"))


def test_plan_is_replanned_when_the_input_changes_and_kept_when_not(tmp_path, capsys):
    """Pure (no Ray): a saved plan is reused while the file's size and mtime hold; a changed file
    gives a new plan whose unchanged shards compare equal to the old ones."""
    from ray_cora import storage
    from ray_cora.pipelines.embed_corpus import built_from, load_or_make_plan

    corpus = tmp_path / "corpus.jsonl"
    _write_corpus(corpus, broken=True)
    out = storage.resolve(str(tmp_path / "index"))
    first = load_or_make_plan(out, passages=str(corpus), shard_size=SHARD, format=None)
    again = load_or_make_plan(out, passages=str(corpus), shard_size=SHARD, format=None)
    assert again == first and "replanned" not in capsys.readouterr().out
    _write_corpus(corpus, broken=False)
    second = load_or_make_plan(out, passages=str(corpus), shard_size=SHARD, format=None)
    assert "replanned; 5 of 6 shards have the same lines (kept where already embedded), 1 changed or new" \
        in capsys.readouterr().out
    old, new = [s for t in first for s in t], [s for t in second for s in t]
    assert not new[0].same_records(old[0]) and all(n.same_records(o) for n, o in zip(new[1:], old[1:]))
    assert [n.start_byte for n in new[1:]] != [o.start_byte for o in old[1:]]  # the bytes moved
    # A marker written for the old shard 0 is not taken for the new one.
    marker = {"source": old[0].uri, "first_line": 1, "num_lines": SHARD, "source_sha256": old[0].source_sha256}
    assert built_from(marker, old[0]) and not built_from(marker, new[0])


# --- retrieve -------------------------------------------------------------------------------


@pytest.mark.slow
def test_retrieve_redoes_the_blocks_whose_questions_changed(ray_local, demo_index, tmp_path, capsys):
    from ray_cora.configs.retrieve import RetrieveConfig
    from ray_cora.data.retrieval import iter_retrieval
    from ray_cora.demo import DEMO_QUESTIONS
    from ray_cora.pipelines.retrieve import run_retrieval

    questions = [json.loads(line) for line in DEMO_QUESTIONS.read_text(encoding="utf-8").splitlines()]
    english = [q for q in questions if q["lang"] == "en"][:12]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in english), encoding="utf-8")
    config = RetrieveConfig.load(overrides={
        "index": demo_index, "questions": str(path), "dataset": "jsonl", "out": str(tmp_path / "run"),
        "k": 3, "block_size": 5, "search_actors": 1, "langs": "en"})
    run_retrieval(config)
    edited = [dict(q) for q in english]
    edited[6]["question"] = "Which river flows through Paris?"  # block en-00001
    path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in edited), encoding="utf-8")
    capsys.readouterr()
    run_retrieval(config)
    assert "2 already written, 1 to retrieve (1 of them written before for questions that have changed" \
        in capsys.readouterr().out
    records = [record for _, _, record in iter_retrieval(str(tmp_path / "run"))]
    assert Counter(r["qid"] for r in records) == Counter(q["qid"] for q in edited)
    assert {r["qid"]: r["question"] for r in records} == {q["qid"]: q["question"] for q in edited}


# --- pivot build ----------------------------------------------------------------------------


@pytest.mark.slow
def test_pivot_build_rebuilds_the_shard_whose_questions_changed(ray_local, tmp_path, capsys):
    from ray_cora.configs.pivot import PivotBuildConfig
    from ray_cora.demo import DEMO_PIVOT_DB
    from ray_cora.pipelines.pivot import build_pivot_database
    from ray_cora.pivot import PivotDatabase

    records = [json.loads(line) for line in DEMO_PIVOT_DB.read_text(encoding="utf-8").splitlines()]
    path = tmp_path / "db.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    config = PivotBuildConfig(questions=str(path), out=str(tmp_path / "db"), shard_size=40, num_cpus=2)
    build_pivot_database(config)
    records[85]["answer"] = "an edited answer"  # shard 2 (questions 80..90)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    capsys.readouterr()
    build_pivot_database(config)
    printed = capsys.readouterr().out
    assert "nothing to do" not in printed and "2 already written, 1 to embed" in printed
    db = PivotDatabase.open(str(tmp_path / "db"))
    assert db.rows[records[85]["qid"]]["answer"] == "an edited answer"
    capsys.readouterr()
    build_pivot_database(config)  # now unchanged: the finished build is recognised
    assert "nothing to do" in capsys.readouterr().out


# --- wikidata labels ------------------------------------------------------------------------


def _dump_lines(label: str) -> list[str]:
    entities = [{"type": "item", "id": f"Q{i}", "labels": {"en": {"language": "en", "value": f"Label {i}"}},
                 "aliases": {}, "sitelinks": {}, "claims": {}} for i in range(1, 7)]
    entities[3]["labels"]["en"]["value"] = label
    return ["["] + [json.dumps(e) + "," for e in entities[:-1]] + [json.dumps(entities[-1]), "]"]


@pytest.mark.slow
@pytest.mark.parametrize("compressed", [False, True])
def test_wikidata_labels_reparse_an_edited_part(ray_local, tmp_path, compressed):
    """A same-size edit inside one part (same offsets everywhere) of a plain dump, or any rewrite
    of a compressed one: the rerun's tables hold the new label."""
    from ray_cora.configs.wikidata import WikidataLabelsConfig
    from ray_cora.data.wikidata import read_label_tables
    from ray_cora.pipelines.wikidata_labels import build_label_tables

    dump = tmp_path / ("dump.json.gz" if compressed else "dump.json")
    opener = gzip.open if compressed else open

    def write(label: str) -> None:
        with opener(dump, "wt", encoding="utf-8") as handle:
            handle.write("\n".join(_dump_lines(label)) + "\n")

    write("Label 4")
    config = WikidataLabelsConfig.load(overrides={"dump": str(dump), "langs": ["en"], "out": str(tmp_path / "labels"),
                                                  "part_lines": 3})
    build_label_tables(config)
    before = dump.stat()
    write("Lxbel 4")
    if not compressed:
        assert dump.stat().st_size == before.st_size
    build_label_tables(config)
    labels, _ = read_label_tables(str(tmp_path / "labels"))
    assert {r["qid"]: r["label"] for r in labels.to_pylist()}["Q4"] == "Lxbel 4"


def test_same_size_edit_with_the_old_mtime_is_refused_by_the_shard_reader(tmp_path):
    """Size and mtime are what a resume compares; an edit that keeps both is caught where the
    shard's bytes are read: the reader's content hash differs from the plan's."""
    import hashlib

    from ray_cora.data.passages import numbered_passages
    from ray_cora.errors import StorageError
    from ray_cora.index.plan import check_shard_digest, input_state, plan_corpus

    corpus = tmp_path / "corpus.jsonl"
    _write_corpus(corpus, broken=False)
    state = input_state(str(corpus))
    [spec] = plan_corpus(str(corpus), shard_size=SHARD)[2]
    stat = corpus.stat()
    data = corpus.read_bytes().replace(b"Passage number 45 ", b"Passage number 54 ")
    corpus.write_bytes(data)
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert input_state(str(corpus)) == state  # invisible to the cheap check…
    digest = hashlib.sha256()
    list(numbered_passages(spec.uri, format=spec.format, segment=spec.segment, digest=digest))
    with pytest.raises(StorageError, match=r"corpus.jsonl: lines 41-60 changed since the plan was made"):
        check_shard_digest(spec, digest.hexdigest())  # …but not to the reader
