"""The bundled demo set meets its promises, and `ray-cora demo` runs end to end offline."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from ray_cora.data.passages import iter_passages
from ray_cora.data.qa import iter_qa
from ray_cora.demo import DEMO_PASSAGES, DEMO_PIVOT_DB, DEMO_QUESTIONS, DEMO_WIKIDATA_LABELS
from ray_cora.languages import LANGUAGES, MUSE_LANGS


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_demo_corpus_shape():
    passages = list(iter_passages(str(DEMO_PASSAGES)))
    raw = _jsonl(DEMO_PASSAGES)
    langs = Counter(p["lang"] for p in passages)
    assert len(passages) >= 120 and len({p["pid"] for p in passages}) == len(passages)
    assert len({r["entity"] for r in raw}) >= 30
    assert len(langs) >= 8 and set(langs) <= set(MUSE_LANGS)
    assert {"ja", "zh_cn", "ar", "ru", "ko", "th"} <= set(langs)  # non-Latin scripts
    assert sum(LANGUAGES[l].script != "Latin" for l in langs) >= 4


def test_demo_questions_have_real_gold_passages():
    passages = {p["pid"]: p for p in iter_passages(str(DEMO_PASSAGES))}
    questions = list(iter_qa(str(DEMO_QUESTIONS), dataset="jsonl"))
    assert len(questions) >= 60 and len({q["lang"] for q in questions}) >= 8
    cross = 0
    for q in questions:
        assert q["gold_pids"], q["qid"]
        assert all(p in passages for p in q["gold_pids"]), q
        if all(passages[p]["lang"] != q["lang"] for p in q["gold_pids"]):
            cross += 1
    assert cross >= 10  # answerable only from a passage in another language


def test_pivot_db_and_labels_are_consistent():
    db = _jsonl(DEMO_PIVOT_DB)
    labels = {r["qid"]: r for r in _jsonl(DEMO_WIKIDATA_LABELS)}
    assert len(db) >= 40 and all(r["question"].strip() and r["answer"].strip() for r in db)
    assert len({r["qid"] for r in db}) == len(db)
    for record in db:
        if record.get("answer_qid"):
            assert record["answer_qid"] in labels, record
    entities = {r["entity"] for r in _jsonl(DEMO_PASSAGES)}
    assert entities <= set(labels)
    assert all(labels[e]["labels"].get("en") for e in entities)


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path):
    out = tmp_path / "demo-out"
    result = subprocess.run(
        [sys.executable, "-m", "ray_cora", "demo", "--out", str(out), "--num-cpus", "2"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    questions = list(iter_qa(str(DEMO_QUESTIONS), dataset="jsonl"))
    table = metrics["per_language"]
    assert metrics["num_questions"] == len(questions)
    assert set(table) == {q["lang"] for q in questions} | {"all"}
    # mUSE is a real multilingual encoder: on this corpus most questions find a gold passage.
    assert table["all"]["R@10"] >= 70.0
    assert table["all"]["R@1"] <= table["all"]["R@5"] <= table["all"]["R@10"]
    report = (out / "report.md").read_text()
    assert "| **all** |" in report and report in result.stdout
    lines = [json.loads(l) for l in (out / "retrieval.jsonl").read_text().splitlines()]
    assert len(lines) == len(questions) and all(len(l["ctxs"]) == 10 for l in lines)
    from ray_cora.storage import Artifact

    index = Artifact(str(out / "index"), kind="flat-index")
    index.verify_all()
    assert index.manifest["num_vectors"] == metrics["num_passages"]
