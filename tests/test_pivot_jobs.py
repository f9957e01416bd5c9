"""The pivot jobs on Ray: build → run → calibrate on the demo assets, and the cross-encoder trained
with Ray Train improving the ranking it was given."""

from __future__ import annotations

import json

import pytest

from ray_cora.cli import main
from ray_cora.demo import DEMO_PIVOT_DB, DEMO_QUESTIONS, DEMO_WIKIDATA_LABELS

pytestmark = pytest.mark.slow

# A toy paraphrase set: each question, its paraphrase, and other questions as non-paraphrases.
PARAPHRASES = [
    ("how tall is mount fuji", "what is the height of mount fuji"),
    ("who wrote don quixote", "who is the author of don quixote"),
    ("when was the eiffel tower built", "in what year was the eiffel tower completed"),
    ("what is the capital of japan", "which city is the capital of japan"),
    ("how long is the nile river", "what is the length of the nile river"),
    ("who painted the mona lisa", "which artist painted the mona lisa"),
    ("where is the great wall", "in which country is the great wall"),
    ("what language is spoken in brazil", "which language do people in brazil speak"),
    ("how many people live in tokyo", "what is the population of tokyo"),
    ("who discovered penicillin", "which scientist discovered penicillin"),
]


def toy_pairs() -> list[dict]:
    n = len(PARAPHRASES)
    pairs = []
    for i, (a, b) in enumerate(PARAPHRASES):
        pairs.append({"sentence1": a, "sentence2": b, "label": 1})
        pairs.extend({"sentence1": a, "sentence2": PARAPHRASES[(i + j) % n][1], "label": 0} for j in (1, 3))
    return pairs


def mean_reciprocal_rank(cross_encoder) -> float:
    """Each question ranks all ten paraphrases; the right one should come first."""
    n = len(PARAPHRASES)
    candidates = [b for _, b in PARAPHRASES]
    total = 0.0
    for i, (a, _) in enumerate(PARAPHRASES):
        scores = cross_encoder.score([a] * n, candidates)
        total += 1 / (1 + sum(scores[k] > scores[i] for k in range(n) if k != i))
    return total / n


def test_train_reranker_improves_the_ranking(tmp_path, ray_local):
    from ray_cora.pivot.rerank import CrossEncoder, build_tiny_cross_encoder

    start = build_tiny_cross_encoder(tmp_path / "init", [t for p in PARAPHRASES for t in p], vocab_size=300,
                                     layers=1)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in toy_pairs()))
    before = mean_reciprocal_rank(CrossEncoder(f"hf:{start}"))
    out = tmp_path / "reranker"
    # 1280 pairs drawn from the 30 (--mix with one source samples with replacement), 2 DDP workers.
    assert main(["pivot", "train-reranker", "--model", f"hf:{start}", "--pairs", str(pairs), "--mix", "1",
                 "--max-pairs", "1280", "--epochs", "1", "--lr", "3e-3", "--batch-size", "16",
                 "--num-workers", "2", "--cpus-per-worker", "0.5", "--out", str(out)]) == 0
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["kind"] == "cross-encoder" and manifest["metrics"]["epoch"] == 1
    assert list((out / "ray-train").glob("**/checkpoint_*")), "Ray Train wrote no checkpoints"
    after = mean_reciprocal_rank(CrossEncoder(f"hf:{out}/model"))
    assert after > before + 0.1, (before, after)


def test_build_run_calibrate_on_the_demo(tmp_path, ray_local, capsys):
    db, pred, cal = tmp_path / "db", tmp_path / "pred", tmp_path / "cal"
    assert main(["pivot", "build", "--questions", str(DEMO_PIVOT_DB), "--out", str(db), "--shard-size", "40"]) == 0
    index = json.loads((db / "index" / "manifest.json").read_text())
    assert index["num_vectors"] == 91 and len(index["shards"]) == 3 and index["encoder"]["dim"] == 512

    common = ["--db", str(db), "--questions", str(DEMO_QUESTIONS), "--labels", str(DEMO_WIKIDATA_LABELS)]
    assert main(["pivot", "calibrate", *common, "--out", str(cal), "--correct-by", "qid"]) == 0
    calibration = json.loads((cal / "calibration.json").read_text())
    assert calibration["threshold"] is not None and calibration["precision"] >= 0.8
    assert calibration["precision"] > calibration["precision_without_threshold"]

    assert main(["pivot", "run", *common, "--out", str(pred), "--calibration", str(cal / "calibration.json")]) == 0
    rows = [json.loads(line) for line in (pred / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 237
    for row in rows:
        assert {"qid", "lang", "prediction", "matched_qid", "score", "abstained", "translation_source"} <= set(row)
        assert row["abstained"] == (row["score"] < calibration["threshold"])
        assert (row["prediction"] == "") == row["abstained"]
    ja = next(r for r in rows if r["qid"] == "q-quixote-author" and r["lang"] == "ja")
    assert ja["prediction"] == "ミゲル・デ・セルバンテス" and ja["translation_source"] == "wikidata_qid"

    capsys.readouterr()
    assert main(["pivot", "run", *common, "--out", str(pred), "--calibration", str(cal / "calibration.json")]) == 0
    assert "already holds these predictions" in capsys.readouterr().out  # the rerun does nothing

    assert main(["pivot", "run", *common, "--out", str(tmp_path / "x"), "--lang", "tlh"]) == 2
    assert "unknown language code 'tlh'" in capsys.readouterr().err
