"""The pivot jobs on Ray: build (equal to the single-process build, resumed per shard after damage
and after driver crashes), calibrate, run (parts streamed and resumed per block) on the demo
assets, and the cross-encoder trained with Ray Train improving the ranking it was given."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from ray_cora import faults
from ray_cora.cli import main
from ray_cora.demo import DEMO_PIVOT_DB, DEMO_QUESTIONS, DEMO_WIKIDATA_LABELS
from ray_cora.faults import FaultPlan, SimulatedCrash
from tests.support import PARAPHRASES

pytestmark = pytest.mark.slow


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


def _file_digests(root) -> dict[str, str]:
    """sha256 of every file a committed database lists: its answer parts and index shards."""
    db = json.loads((root / "manifest.json").read_text())
    index = json.loads((root / "index" / "manifest.json").read_text())
    return {**{k: v["sha256"] for k, v in db["files"].items()},
            **{f"index/{k}": v["sha256"] for k, v in index["files"].items()}}


def _build_args(out, *extra) -> list[str]:
    return ["pivot", "build", "--questions", str(DEMO_PIVOT_DB), "--out", str(out), "--shard-size", "40",
            "--num-cpus", "2", *extra]


@pytest.fixture(scope="module")
def built_db(tmp_path_factory, ray_local):
    """The demo database built by the job: 91 questions in shards of 40, 40, 11."""
    out = tmp_path_factory.mktemp("pivot") / "db"
    assert main(_build_args(out)) == 0
    return out


def test_build_job_equals_the_single_process_build(built_db, demo_pivot_db):
    from ray_cora.pivot import PivotDatabase, iter_db_records

    index = json.loads((built_db / "index" / "manifest.json").read_text())
    assert index["num_vectors"] == 91 and len(index["shards"]) == 3 and index["encoder"]["dim"] == 512
    assert sorted(p.name for p in (built_db / "answers").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    records = list(iter_db_records(str(DEMO_PIVOT_DB), dataset="jsonl"))
    # Same bytes: the actors' shards, answer parts and markers are the single-process reference's
    # (demo_pivot_db: build_database with mUSE, shards of 40).
    assert _file_digests(built_db) == _file_digests(Path(demo_pivot_db))
    db = PivotDatabase.open(str(built_db))
    assert [db.rows[r["qid"]]["answer"] for r in records] == [r["answer"] for r in records]


def test_build_rerun_redoes_only_the_damaged_shard(built_db, tmp_path, capsys):
    import shutil

    out = tmp_path / "db"
    shutil.copytree(built_db, out)
    (out / "manifest.json").unlink()  # as if the build had died before its commit
    markers = {n: out / "index" / "shards" / f"shard-0000{n}.json" for n in range(3)}
    mtimes = {n: os.path.getmtime(m) for n, m in markers.items()}
    time.sleep(0.05)
    with open(out / "index" / "shards" / "shard-00001.faiss", "r+b") as handle:
        handle.write(b"damage")  # the marker stays: its checksum no longer matches
    capsys.readouterr()
    assert main(_build_args(out)) == 0
    assert "2 already written, 1 to embed" in capsys.readouterr().out
    assert os.path.getmtime(markers[0]) == mtimes[0] and os.path.getmtime(markers[2]) == mtimes[2]
    assert os.path.getmtime(markers[1]) > mtimes[1]
    assert _file_digests(out) == _file_digests(built_db)


def test_build_driver_crash_then_rerun_equals_uninterrupted(built_db, tmp_path, capsys):
    from ray_cora.configs.pivot import PivotBuildConfig
    from ray_cora.pipelines.pivot import build_pivot_database

    out = tmp_path / "db"
    config = PivotBuildConfig(questions=str(DEMO_PIVOT_DB), out=str(out), shard_size=40, num_cpus=2)
    # The driver dies while cutting the input (2 of 3 answer parts written, nothing embedded) ...
    with pytest.raises(SimulatedCrash), faults.inject(FaultPlan({faults.PIVOT_ANSWER_PARTS: 2})):
        build_pivot_database(config)
    assert sorted(p.name for p in (out / "answers").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    # ... then again after the actors returned their first shard.
    with pytest.raises(SimulatedCrash), faults.inject(FaultPlan({faults.DRIVER_ENTRIES: 1})):
        build_pivot_database(config)
    assert not (out / "manifest.json").exists()
    written = sorted(p.name for p in (out / "index" / "shards").glob("*.json"))
    assert written, "no shard was finished before the simulated crash"
    capsys.readouterr()
    build_pivot_database(config)
    printed = capsys.readouterr().out
    assert f"{len(written)} already written, {3 - len(written)} to embed" in printed
    lines = [line for line in printed.splitlines() if line.startswith("pivot build: ")]
    assert f"pivot build: resuming: {len(written)} of 3 shards already done, skipping them" in lines
    assert [line.split(" (")[0] for line in lines if line.startswith("pivot build: shard ")] == \
        [f"pivot build: shard {k}/3 done" for k in range(len(written) + 1, 4)]
    assert lines[-1].startswith("pivot build: 3 shards (") and \
        lines[-1].endswith(f"; {len(written)} skipped as already done (resumed)")
    assert _file_digests(out) == _file_digests(built_db)


def test_calibrate_then_run_streams_parts_and_resumes(built_db, tmp_path, capsys):
    from ray_cora.configs.pivot import PivotRunConfig
    from ray_cora.data.predictions import read_predictions
    from ray_cora.pipelines.pivot import run_predictions

    pred, cal = tmp_path / "pred", tmp_path / "cal"
    common = ["--db", str(built_db), "--questions", str(DEMO_QUESTIONS), "--labels", str(DEMO_WIKIDATA_LABELS)]
    assert main(["pivot", "calibrate", *common, "--out", str(cal), "--correct-by", "qid", "--num-cpus", "2"]) == 0
    calibration = json.loads((cal / "calibration.json").read_text())
    assert calibration["threshold"] is not None and calibration["precision"] >= 0.8
    assert calibration["precision"] > calibration["precision_without_threshold"]

    config = PivotRunConfig(db=str(built_db), questions=str(DEMO_QUESTIONS), labels=str(DEMO_WIKIDATA_LABELS),
                            out=str(pred), calibration=str(cal / "calibration.json"), block_size=20, num_cpus=2,
                            mmap=True)
    with pytest.raises(SimulatedCrash), faults.inject(FaultPlan({faults.DRIVER_ENTRIES: 1})):
        run_predictions(config)
    finished = {m.name: os.path.getmtime(m) for m in (pred / "parts").glob("*.json")}
    assert finished and not (pred / "manifest.json").exists()
    capsys.readouterr()
    manifest = run_predictions(config)
    printed = capsys.readouterr().out
    assert f"{len(finished)} already written" in printed
    blocks = int(re.search(r"pivot run: 237 questions in (\d+) blocks", printed).group(1))
    assert f"pivot run: resuming: {len(finished)} of {blocks} blocks already done, skipping them" in printed
    assert re.findall(r"^pivot run: block (\d+)/\d+ done", printed, re.M) == \
        [str(k) for k in range(len(finished) + 1, blocks + 1)]
    assert re.search(rf"^pivot run: {blocks} blocks \(237 questions\) in .*; {len(finished)} skipped as already "
                     r"done \(resumed\)$", printed, re.M)
    assert all(os.path.getmtime(pred / "parts" / name) == mtime for name, mtime in finished.items())
    assert len(manifest["parts"]) > len(finished) and manifest["num_questions"] == 237

    rows = [json.loads(line) for part in manifest["parts"] for line in (pred / part).read_text().splitlines()]
    assert len(rows) == 237 and manifest["summary"]["questions"] == 237
    assert manifest["summary"]["abstained"] == sum(r["abstained"] for r in rows)
    for row in rows:
        assert {"qid", "lang", "prediction", "matched_qid", "score", "abstained", "translation_source"} <= set(row)
        assert row["abstained"] == (row["score"] < calibration["threshold"])
        assert (row["prediction"] == "") == row["abstained"]
    ja = next(r for r in rows if r["qid"] == "q-quixote-author" and r["lang"] == "ja")
    assert ja["prediction"] == "ミゲル・デ・セルバンテス" and ja["translation_source"] == "wikidata_qid"
    # The scorer's reader takes the output folder (parts in manifest order).
    read = read_predictions(str(pred))
    assert len(read) == 237 and read[("q-quixote-author", "ja")].prediction == "ミゲル・デ・セルバンテス"
    assert main(["evaluate", "qa", "--mode", "mkqa", "--dataset", "jsonl", "--gold", str(DEMO_QUESTIONS),
                 "--predictions", str(pred), "--sacrebleu", "false", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["missing"]["count"] == 0 and metrics["unknown"]["count"] == 0  # one prediction per gold question

    run = ["pivot", "run", *common, "--out", str(pred), "--calibration", str(cal / "calibration.json"),
           "--block-size", "20", "--num-cpus", "2", "--mmap", "true"]
    capsys.readouterr()
    assert main(run) == 0  # the same job from the CLI: a rerun does nothing
    assert "already holds these predictions" in capsys.readouterr().out

    assert main(["pivot", "run", *common, "--out", str(tmp_path / "x"), "--lang", "tlh"]) == 2
    assert "unknown language code 'tlh'" in capsys.readouterr().err
