"""The pivot's training jobs as Montero et al. set them up: PAWS-X / QQP readers (bad lines located
by file:line), the 75/25 mixture counted on the pairs used, the reranker's two losses and heads,
and the single-encoder baseline (train-encoder) learning to rank paraphrases on a tiny model and
exporting an ``hf:`` encoder."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from ray_cora.cli import main
from ray_cora.data.pairs import PAWSX_HEADER, QQP_HEADER, iter_pawsx, iter_qqp, paper_mixture
from ray_cora.data.records import BadRecords
from ray_cora.errors import BadRecordError, ConfigError
from tests.support import PARAPHRASES


def _tsv(path, header, rows) -> str:
    path.write_text("\n".join(["\t".join(header), *("\t".join(map(str, r)) for r in rows)]) + "\n", encoding="utf-8")
    return str(path)


def _pawsx_rows(n: int, start: int = 0) -> list[tuple]:
    return [(start + i, f"sentence a {start + i}", f"sentence b {start + i}", (start + i) % 2) for i in range(n)]


def _qqp_rows(n: int, start: int = 0) -> list[tuple]:
    return [(start + i, 2 * i, 2 * i + 1, f"question a {start + i}?", f"question b {start + i}?", i % 2)
            for i in range(n)]


# ---------------------------------------------------------------- readers

def test_pawsx_reader_reads_the_shipped_format_and_locates_bad_lines(tmp_path):
    path = _tsv(tmp_path / "translated_train.tsv", PAWSX_HEADER,
                [(1, "Die Katze schläft .", "Die Katze ruht .", 1),
                 (2, "only two fields", "", ""),            # line 3: a missing label (as PAWS-X has)
                 (3, "A", "B", 1, "extra"),                 # line 4: five fields
                 (4, "Une phrase .", "Une autre .", 0)])
    with pytest.raises(BadRecordError, match=r"translated_train\.tsv:3: label is ''"):
        list(iter_pawsx(path))
    bad = BadRecords("skip")
    pairs = list(iter_pawsx(path, bad_records=bad))
    assert [(p["a"], p["b"], p["label"], p["id"]) for p in pairs] == [
        ("Die Katze schläft .", "Die Katze ruht .", 1, "1"), ("Une phrase .", "Une autre .", 0, "4")]
    assert [(r["line"], r["reason"]) for r in bad.records] == [
        (3, "label is '', not 0 or 1"),
        (4, "expected 4 tab-separated fields (id, sentence1, sentence2, label), found 5")]


def test_qqp_reader_reads_the_shipped_format_and_refuses_the_other_one(tmp_path):
    path = _tsv(tmp_path / "train.tsv", QQP_HEADER,
                [(0, 1, 2, "How do I learn Python?", "What is the best way to learn Python?", 1),
                 (1, 3, 4, "", "Why is the sky blue?", 0),   # line 3: empty question1
                 (2, 5, 6, "Is it?", "Is it not?", 0)])
    with pytest.raises(BadRecordError, match=r"train\.tsv:3: empty question1"):
        list(iter_qqp(path))
    pairs = list(iter_qqp(path, bad_records=BadRecords("skip")))
    assert [(p["label"], p["source"]) for p in pairs] == [(1, "qqp"), (0, "qqp")]
    assert pairs[0]["b"] == "What is the best way to learn Python?"
    with pytest.raises(ConfigError, match=r"train\.tsv:1: not a PAWS-X file"):
        list(iter_pawsx(path))
    pawsx = _tsv(tmp_path / "dev_2k.tsv", PAWSX_HEADER, _pawsx_rows(2))
    with pytest.raises(ConfigError, match=r"dev_2k\.tsv:1: not a QQP file"):
        list(iter_qqp(pawsx))


# ---------------------------------------------------------------- the mixture

def test_paper_mixture_uses_all_pawsx_and_a_quarter_of_the_pairs_used_from_qqp():
    pawsx = [{"a": f"p{i}", "source": "pawsx"} for i in range(300)]
    qqp = [{"a": f"q{i}", "source": "qqp"} for i in range(1000)]
    pairs, counts = paper_mixture(pawsx, qqp, seed=3)
    assert counts == {"pawsx_read": 300, "qqp_read": 1000, "pawsx_used": 300, "qqp_used": 100, "total": 400}
    used_qqp = [p["a"] for p in pairs if p["source"] == "qqp"]
    # 75/25 of the mixture (not 25% of QQP's 1000), QQP drawn without replacement, PAWS-X whole.
    assert len(used_qqp) / len(pairs) == 0.25 and len(set(used_qqp)) == 100
    assert sorted(p["a"] for p in pairs if p["source"] == "pawsx") == sorted(p["a"] for p in pawsx)
    assert pairs[:20] != [*pawsx, *qqp][:20]  # shuffled
    again, _ = paper_mixture(pawsx, qqp, seed=3)
    other, _ = paper_mixture(pawsx, qqp, seed=4)
    assert again == pairs
    assert {p["a"] for p in other if p["source"] == "qqp"} != set(used_qqp)
    half, half_counts = paper_mixture(pawsx, qqp, pawsx_share=0.5, seed=0)
    assert half_counts["qqp_used"] == 300 and len(half) == 600
    with pytest.raises(ConfigError, match="needs 100 QQP pairs beside 300 PAWS-X pairs .* hold 99"):
        paper_mixture(pawsx, qqp[:99])
    assert paper_mixture(pawsx, [])[1]["total"] == 300


def test_reranker_pairs_come_from_the_pawsx_and_qqp_files_as_configured(tmp_path):
    from ray_cora.configs.pivot import PivotTrainRerankerConfig
    from ray_cora.train.reranker import mixture_line, read_training_pairs

    pawsx = [_tsv(tmp_path / "en.tsv", PAWSX_HEADER, _pawsx_rows(45)),
             _tsv(tmp_path / "de.tsv", PAWSX_HEADER, _pawsx_rows(45, start=100) + [(999, "x", "y", -1)])]
    qqp = _tsv(tmp_path / "qqp.tsv", QQP_HEADER, _qqp_rows(200))
    config = PivotTrainRerankerConfig(model="hf:/m", out=str(tmp_path / "o"), pawsx=pawsx, qqp=[qqp],
                                      on_bad_record="skip", seed=1)
    pairs, counts, bad = read_training_pairs(config)
    assert counts == {"pawsx_read": 90, "qqp_read": 200, "pawsx_used": 90, "qqp_used": 30, "total": 120}
    assert bad.count == 1 and bad.records[0]["line"] == 47
    assert mixture_line(counts, bad.count) == ("pairs: 120 = 90 PAWS-X (all read, 75.0%) + 30 QQP (of 200 read, "
                                               "25.0%); 1 bad line(s) skipped")
    assert (config.epochs, config.lr, config.lr_schedule, config.loss) == (3, 1e-5, "linear", "softmax2")
    with pytest.raises(ConfigError, match="--pawsx/--qqp .* or --pairs"):
        PivotTrainRerankerConfig.load(overrides={"model": "hf:/m", "out": "o", "pawsx": [pawsx[0]], "pairs": [qqp]})
    with pytest.raises(ConfigError, match="--mix and --max-pairs apply to --pairs only"):
        PivotTrainRerankerConfig.load(overrides={"model": "hf:/m", "out": "o", "pawsx": [pawsx[0]], "mix": [1.0]})


def _xfinal(root, rows_by_lang: dict[str, list[tuple]]) -> str:
    """PAWS-X's layout: x-final/en/train.tsv and x-final/<lang>/translated_train.tsv."""
    for lang, rows in rows_by_lang.items():
        (root / "x-final" / lang).mkdir(parents=True, exist_ok=True)
        _tsv(root / "x-final" / lang / ("train.tsv" if lang == "en" else "translated_train.tsv"), PAWSX_HEADER, rows)
    return str(root / "x-final")


def test_pawsx_dir_gives_cross_lingual_pairs_counted_per_language(tmp_path):
    from ray_cora.configs.pivot import PivotTrainRerankerConfig, PivotTrainEncoderConfig
    from ray_cora.train.reranker import languages_line, read_training_pairs

    xfinal = _xfinal(tmp_path, {"en": _pawsx_rows(40), "de": _pawsx_rows(36), "ja": _pawsx_rows(40)[4:],
                                "fr": _pawsx_rows(40)})
    qqp = _tsv(tmp_path / "qqp.tsv", QQP_HEADER, _qqp_rows(100))
    config = PivotTrainRerankerConfig(model="hf:/m", out=str(tmp_path / "o"), pawsx_dir=xfinal,
                                      pawsx_langs=["de", "ja"], qqp=[qqp], seed=2)
    pairs, counts, bad = read_training_pairs(config)
    # de joins ids 0..35, ja ids 4..39 (fr is not asked for): 2 × 36 pairs each, both directions.
    assert counts["pawsx_languages"] == {
        "de": {"ids": 36, "pairs": 72, "missing": 4, "not_in_english": 0, "label_conflicts": 0},
        "ja": {"ids": 36, "pairs": 72, "missing": 4, "not_in_english": 0, "label_conflicts": 0}}
    assert {k: counts[k] for k in ("pawsx_used", "qqp_used", "total")} == {"pawsx_used": 144, "qqp_used": 48,
                                                                           "total": 192}
    assert {p["langs"] for p in pairs if p["source"] == "pawsx"} == {"en-de", "de-en", "en-ja", "ja-en"}
    assert languages_line(counts["pawsx_languages"]).startswith("PAWS-X en-xx/xx-en: de 72 (36 ids; 4 English ids")
    # Same-language --pawsx files add to the PAWS-X part; all six languages by default.
    both = PivotTrainEncoderConfig(model="hf:/m", out=str(tmp_path / "e"), pawsx_dir=xfinal,
                                   pawsx=[str(tmp_path / "x-final" / "en" / "train.tsv")])
    with pytest.raises(ConfigError, match=r"x-final/es/translated_train\.tsv: no such file \(--pawsx-dir, "
                                          r"--pawsx-split train"):
        read_training_pairs(both)
    both = both.model_copy(update={"pawsx_langs": ["fr"]})
    _, counts, _ = read_training_pairs(both)
    assert counts["pawsx_used"] == 80 + 40 and counts["pawsx_languages"]["fr"]["pairs"] == 80
    with pytest.raises(ConfigError, match="--pawsx-langs and --pawsx-split choose files under --pawsx-dir"):
        PivotTrainRerankerConfig.load(overrides={"model": "hf:/m", "out": "o", "qqp": [qqp], "pawsx_split": "dev"})
    with pytest.raises(ConfigError, match="--pawsx-dir/--pawsx/--qqp .* or --pairs"):
        PivotTrainRerankerConfig.load(overrides={"model": "hf:/m", "out": "o", "pawsx_dir": xfinal, "pairs": [qqp]})


# ---------------------------------------------------------------- losses and heads

def test_the_two_losses_and_the_heads_they_train(tmp_path):
    from ray_cora.pivot.rerank import build_tiny_cross_encoder, pair_probability
    from ray_cora.train.reranker import head_note, load_reranker_for_training, pair_loss, saved_head_size

    labels = torch.tensor([1, 0, 1])
    one = torch.tensor([[2.0], [-1.0], [0.5]])
    two = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.3, 0.8]])
    p1 = torch.sigmoid(one[:, 0])
    assert torch.isclose(pair_loss(one, labels, "bce"), -(labels * p1.log() + (1 - labels) * (1 - p1).log()).mean())
    p2 = two.softmax(-1)[torch.arange(3), labels]
    assert torch.isclose(pair_loss(two, labels, "softmax2"), -p2.log().mean())
    # Both train what the reranker reads as the paraphrase probability.
    assert torch.allclose(pair_probability(two), two.softmax(-1)[:, 1])
    with pytest.raises(ValueError, match="--loss softmax2 needs 2 logits per pair, the model gives 1"):
        pair_loss(one, labels, "softmax2")

    start = build_tiny_cross_encoder(tmp_path / "cross", ["a b c", "d e f"], vocab_size=60)
    assert saved_head_size(f"hf:{start}") == 1
    assert head_note(1, "softmax2").startswith("the start model has a 1-output head; --loss softmax2 trains a new")
    saved = load_reranker_for_training(f"hf:{start}", num_labels=1).model
    fresh = load_reranker_for_training(f"hf:{start}", num_labels=2).model
    assert saved.classifier.out_features == 1 and fresh.classifier.out_features == 2
    assert torch.equal(saved.bert.embeddings.word_embeddings.weight, fresh.bert.embeddings.word_embeddings.weight)


# ---------------------------------------------------------------- the single-encoder baseline

def mean_reciprocal_rank(encoder) -> float:
    """Each question ranks all ten paraphrases by inner product (MIPS); its own should come first."""
    questions = encoder.encode_queries([a for a, _ in PARAPHRASES])
    candidates = encoder.encode_queries([b for _, b in PARAPHRASES])
    scores = questions @ candidates.T
    return float(np.mean([1 / (1 + int((scores[i] > scores[i, i]).sum())) for i in range(len(PARAPHRASES))]))


@pytest.fixture(scope="module")
def tiny_sentence_encoder(tmp_path_factory) -> str:
    from ray_cora.encoders.tiny import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-st"), [t for p in PARAPHRASES for t in p],
                           vocab_size=300, layers=1)


def test_pair_encoder_task_steps_lower_the_in_batch_loss_without_ray(tiny_sentence_encoder):
    from ray_cora.train.loop import LoopSettings, Stepper
    from ray_cora.train.pivot_encoder import PairEncoderTask

    task = PairEncoderTask(init=f"hf:{tiny_sentence_encoder}?pooling=mean", max_length=32)
    model = task.build()
    stepper = Stepper(task, model, LoopSettings(epochs=1, batch_size=10, steps_per_epoch=15, lr=3e-3,
                                                warmup_steps=0, max_grad_norm=1.0), torch.device("cpu"))
    batch = task.collate([{"a": a, "b": b} for a, b in PARAPHRASES])
    losses = [stepper.step([batch]) for _ in range(15)]
    assert losses[-1] < losses[0] / 2, losses
    assert stepper.scheduler.get_last_lr()[0] == 0.0  # linear decay to 0 at the last step


@pytest.mark.slow
def test_train_encoder_job_ranks_paraphrases_better_and_exports_an_hf_encoder(tiny_sentence_encoder, tmp_path,
                                                                              ray_local):
    from ray_cora.encoders import load_encoder

    start = f"hf:{tiny_sentence_encoder}?pooling=mean"
    before = mean_reciprocal_rank(load_encoder(start))
    rng = random.Random(0)
    negatives = [(a, PARAPHRASES[(i + 3) % 10][1]) for i, (a, _) in enumerate(PARAPHRASES)]
    rows = [(i, a, b, 1) for i, (a, b) in enumerate(PARAPHRASES * 16)] + \
           [(1000 + i, a, b, 0) for i, (a, b) in enumerate(negatives)]
    rng.shuffle(rows)
    pawsx = _tsv(tmp_path / "pawsx.tsv", PAWSX_HEADER, rows)
    out = tmp_path / "encoder"
    # 160 positive pairs (the 10 negatives are left out), 10 steps of 16 (the loss gathered over
    # workers is mDPR's, tested with two workers in tests/train/test_mdpr.py).
    assert main(["pivot", "train-encoder", "--model", start, "--pawsx", pawsx, "--epochs", "1", "--lr", "3e-3",
                 "--batch-size", "16", "--max-length", "32", "--num-workers", "1", "--cpus-per-worker", "1",
                 "--out", str(out)]) == 0
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["kind"] == "pivot-sentence-encoder" and manifest["positives"] == 160 and manifest["steps"] == 10
    assert manifest["pairs"]["pawsx_used"] == 170
    spec = manifest["encoder_spec"]
    assert spec == f"hf:{out / 'model'}?pooling=mean&max_length=32"
    after = mean_reciprocal_rank(load_encoder(spec))
    assert after > before + 0.2, (before, after)
    # A rerun finds the published model and does not train again.
    assert main(["pivot", "train-encoder", "--model", start, "--pawsx", pawsx, "--epochs", "1", "--lr", "3e-3",
                 "--batch-size", "16", "--max-length", "32", "--num-workers", "1", "--cpus-per-worker", "1",
                 "--out", str(out)]) == 0


@pytest.mark.slow
def test_train_reranker_job_trains_the_paper_mixture_with_a_two_label_head(tmp_path, ray_local, capsys):
    from ray_cora.pivot.rerank import CrossEncoder, build_tiny_cross_encoder
    from ray_cora.train.reranker import saved_head_size

    start = build_tiny_cross_encoder(tmp_path / "init", [t for p in PARAPHRASES for t in p], vocab_size=300,
                                     layers=1)
    n = len(PARAPHRASES)
    rows = [(i, a, b, 1) for i, (a, b) in enumerate(PARAPHRASES)] + \
           [(100 + i, a, PARAPHRASES[(i + 1) % n][1], 0) for i, (a, _) in enumerate(PARAPHRASES)]
    # The "German" file: the same sentences (the tiny model knows no German), 5 negatives untranslated.
    xfinal = _xfinal(tmp_path, {"en": [*rows, (200, "a line with", "no label", "")], "de": rows[:15]})
    qqp = _tsv(tmp_path / "qqp.tsv", QQP_HEADER,
               [(i, 2 * i, 2 * i + 1, a, PARAPHRASES[(i + 2) % n][1], 0) for i, (a, _) in enumerate(PARAPHRASES)])
    out = tmp_path / "reranker"
    assert main(["pivot", "train-reranker", "--model", f"hf:{start}", "--pawsx-dir", xfinal, "--pawsx-langs", "de",
                 "--qqp", qqp, "--on-bad-record", "skip", "--epochs", "1", "--batch-size", "10", "--num-workers", "1",
                 "--cpus-per-worker", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    # 15 ids joined × 2 directions = 30 cross-lingual PAWS-X pairs (the unlabelled English line
    # skipped) + all 10 QQP pairs = 25% of 40: 4 steps of 10.
    per_language = {"de": {"ids": 15, "pairs": 30, "missing": 5, "not_in_english": 0, "label_conflicts": 0}}
    assert manifest["pairs"] == {"pawsx_read": 30, "qqp_read": 10, "pawsx_used": 30, "qqp_used": 10, "total": 40,
                                 "pawsx_languages": per_language}
    assert "pivot train-reranker: PAWS-X en-xx/xx-en: de 30 (15 ids; 5 English ids not in de, 0 not in English, " \
           "0 label conflicts)" in printed
    assert manifest["skipped_records"] == 1 and manifest["loss"] == "softmax2" and manifest["metrics"]["step"] == 4
    assert json.loads((out / "bad_records.jsonl").read_text().splitlines()[0])["line"] == 22
    assert saved_head_size(f"hf:{out}/model") == 2
    scores = CrossEncoder(f"hf:{out}/model").score(["how tall is mount fuji"], ["what is the height of mount fuji"])
    assert scores.shape == (1,) and 0 < scores[0] < 1
