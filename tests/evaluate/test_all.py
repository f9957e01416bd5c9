"""`ray-cora evaluate all --generator`: retrieval → mGEN answers → scored like `evaluate qa`, on the
demo assets with a tiny BERT index and a tiny (untrained) T5 as mGEN; the merge of answer and
retrieval metrics pinned on hand-made predictions."""

from __future__ import annotations

import json

import pytest

from ray_cora.demo import DEMO_PASSAGES, DEMO_QUESTIONS
from ray_cora.errors import ConfigError

LANGS = ("en", "ja", "zh_cn")


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_bert, tiny_t5):
    """A tiny-BERT index over the demo corpus (manifest names the corpus) and a tiny T5 'mGEN' (the
    session's tiny_bert and tiny_t5, whose tokenizers know the demo corpus, questions and answers)."""
    from ray_cora.encoders import load_encoder
    from ray_cora.index.sharded import commit_index, plan_shards, write_shard

    root = tmp_path_factory.mktemp("evaluate-all")
    passages = _jsonl(DEMO_PASSAGES)
    questions = _jsonl(DEMO_QUESTIONS)
    bert = tiny_bert
    encoder = load_encoder(f"hf:{bert}")
    vectors = encoder.encode_passages([p["title"] for p in passages], [p["text"] for p in passages])
    pids = [p["pid"] for p in passages]
    index = root / "index"
    shards = [write_shard(str(index), n, pids[s:e], vectors[s:e], langs=[p["lang"] for p in passages[s:e]])
              for n, s, e in plan_shards(len(pids), 60)]
    commit_index(str(index), shards, encoder={"spec": f"hf:{bert}", "dim": encoder.dim, "normalized": False},
                 extra={"passages": str(DEMO_PASSAGES)})
    return {"index": str(index), "mgen": tiny_t5, "questions": questions}


def _config(assets, out, **overrides):
    from ray_cora.configs.evaluate import EvaluateAllConfig

    values = {"index": assets["index"], "questions": str(DEMO_QUESTIONS), "dataset": "jsonl", "out": str(out),
              "langs": ",".join(LANGS), "k": 3, "ks": [1, 3], "block_size": 40, "generator": assets["mgen"],
              "top_k": 2, "max_source_length": 96, "max_target_length": 3, "generate_batch_size": 32,
              "generate_actor_cpus": 0.5, "sacrebleu": False}
    return EvaluateAllConfig.load(overrides={**values, **overrides})


def _evaluate_qa(predictions, out) -> dict:
    from ray_cora.configs.evaluate_qa import EvaluateQAConfig
    from ray_cora.evaluate.qa import run_evaluate_qa

    return run_evaluate_qa(EvaluateQAConfig(mode="xor", dataset="jsonl", gold=[str(DEMO_QUESTIONS)],
                                            predictions=str(predictions), langs=list(LANGS), sacrebleu=False,
                                            out=str(out)))


@pytest.mark.slow
def test_evaluate_all_generates_every_answer_and_scores_it_like_evaluate_qa(ray_local, assets, tmp_path):
    from ray_cora.evaluate.all import run_evaluate_all, score_answers

    out = tmp_path / "eval"
    metrics = run_evaluate_all(_config(assets, out))
    wanted = sorted((q["qid"], q["lang"]) for q in assets["questions"] if q["lang"] in LANGS)

    # every question got exactly one prediction
    predictions = _jsonl(out / "predictions.jsonl")
    assert sorted((p["qid"], p["lang"]) for p in predictions) == wanted
    assert all(isinstance(p["prediction"], str) for p in predictions)

    # metrics.json: the scorer's mode, answer and retrieval metrics side by side per language, macro
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["mode"] == "xor" and saved["generation"]["mode"] == "xor"
    assert saved["generation"]["missing"]["count"] == 0 and saved["generation"]["unknown"]["count"] == 0
    assert sorted(saved["per_language"]) == sorted(LANGS)
    for lang, row in saved["per_language"].items():
        assert row["count"] == row["qa_count"] == sum(1 for key in wanted if key[1] == lang)
        assert {"f1", "em", "bleu", "R^L@1", "R^L@3", "R^multi@3", "R^gold@3"} <= set(row)
    assert {"f1", "em", "bleu", "R^L@3"} <= set(saved["macro"])

    # the same numbers as `evaluate qa` on the same predictions file
    reference = _evaluate_qa(out / "predictions.jsonl", tmp_path / "qa")
    for lang in LANGS:
        for name in ("f1", "em", "bleu"):
            assert saved["per_language"][lang][name] == pytest.approx(reference["per_language"][lang][name])
    assert saved["macro"]["f1"] == pytest.approx(reference["macro"]["f1"])

    # An untrained model scores ~0, so check the scoring path on answers that are partly right:
    # gold taken from the retrieval records == gold read by `evaluate qa` from the questions file.
    gold = {(q["qid"], q["lang"]): q["answers"] for q in assets["questions"]}
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps({**p, "prediction": gold[(p["qid"], p["lang"])][0] if i % 3 else
                                          "x " + gold[(p["qid"], p["lang"])][0]}, ensure_ascii=False) + "\n"
                              for i, p in enumerate(predictions)), encoding="utf-8")
    ours = score_answers(str(out / "retrieval"), str(edited), mode="xor", sacrebleu=False)
    reference = _evaluate_qa(edited, tmp_path / "qa-edited")
    assert 50 < ours["macro"]["f1"] < 100
    for lang in LANGS:
        for name in ("f1", "em", "bleu"):
            assert ours["per_language"][lang][name] == pytest.approx(reference["per_language"][lang][name])

    # report and plots
    report = (out / "report.md").read_text()
    assert "## Answers (mGEN" in report and "### Answer quality (%)" in report
    assert "| metric | en | ja | zh_cn | macro |" in report and "| f1 |" in report and "| R^L@3 |" in report
    for name in ("qa_per_language.png", "per_language.png", "retrieved_languages.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    # rerun: retrieval and generation resume (nothing redone); other generation settings are an error
    marker = (out / "predictions.jsonl.done.json").read_text()
    before = (out / "predictions.jsonl").read_bytes()
    assert run_evaluate_all(_config(assets, out))["per_language"] == metrics["per_language"]
    assert (out / "predictions.jsonl").read_bytes() == before
    assert (out / "predictions.jsonl.done.json").read_text() == marker
    with pytest.raises(ConfigError, match=r"answers generated with other settings \(max_target_length differ\)"):
        run_evaluate_all(_config(assets, out, max_target_length=5))


def test_merge_puts_answer_scores_beside_retrieval_scores():
    from ray_cora.evaluate.all import merge_answer_metrics
    from ray_cora.metrics.qa import score_predictions

    retrieval = {"mode": "retrieval", "ks": [1], "per_language": {"en": {"count": 2, "R^L@1": 50.0},
                                                                   "ja": {"count": 1, "R^L@1": 0.0}},
                 "macro": {"R^L@1": 25.0}}
    gold = [{"qid": "1", "lang": "en", "answers": ["Paris"]}, {"qid": "2", "lang": "en", "answers": ["the Rhine"]},
            {"qid": "1", "lang": "ja", "answers": []}]  # no gold answer: skipped by the xor scorer
    qa = score_predictions(gold, {("1", "en"): "Paris", ("2", "en"): "Rhine river", ("9", "en"): "?"},
                           mode="xor", sacrebleu=False)
    merged = merge_answer_metrics(retrieval, qa, model="m", predictions="p.jsonl")
    en, ja = merged["per_language"]["en"], merged["per_language"]["ja"]
    # en: 1.0 and F1("rhine river", "the rhine") = 2·(1/2·1/2)/(1/2+1/2) = 0.5 → 75 %
    assert (en["count"], en["qa_count"], en["R^L@1"]) == (2, 2, 50.0)
    assert en["f1"] == pytest.approx(75.0) and en["em"] == pytest.approx(50.0)
    assert (ja["count"], ja["qa_count"], ja["f1"]) == (1, 0, None)
    assert merged["macro"]["f1"] == pytest.approx(75.0) and merged["macro"]["R^L@1"] == 25.0
    assert merged["mode"] == "xor" and merged["generation"]["unknown"]["count"] == 1
    assert merged["generation"]["skipped_no_answer"] == 1 and merged["generation"]["scored"] == 2


@pytest.mark.parametrize("dataset, mode, expected", [("mkqa", None, "mkqa"), ("xor", None, "xor"),
                                                     ("jsonl", None, "xor"), ("mkqa", "xor", "xor")])
def test_scorer_mode_defaults_from_the_dataset(dataset, mode, expected):
    from ray_cora.configs.evaluate import EvaluateAllConfig

    config = EvaluateAllConfig.load(overrides={"index": "i", "questions": "q", "dataset": dataset, "out": "o",
                                               "mode": mode})
    assert config.qa_mode == expected
