"""mGEN: input formatting, a tiny T5 overfitting 20 QA pairs in 3 languages, the Generator API."""

from __future__ import annotations

import json

import pytest
import torch

from ray_cora.data.training import retrieval_example
from ray_cora.errors import ConfigError
from ray_cora.models.mgen import Generator, MGENTask, format_source, training_passages
from ray_cora.train.loop import LoopSettings, Stepper
from tests.support import qa_pairs


def test_source_has_the_language_tag_once_and_titled_passages():
    src = format_source("日本の首都は？", "ja", [{"title": "日本", "text": "首都は東京"}, {"title": "B", "text": "b\nc"},
                                              {"title": "C", "text": "never"}], top_k=2)
    assert src == "<Q>: 日本の首都は？ [ja] <P>:<0: 日本> 首都は東京 <1: B> b c"
    assert src.count("[ja]") == 1


def test_truncation_keeps_the_question_and_tag(tiny_t5):
    task = MGENTask(init=tiny_t5, top_k=5, max_source_length=20)
    long = {**qa_pairs()[0], "ctxs": [{"title": "x", "text": "Paris " * 200}] * 5}
    batch = task.collate([long])
    assert batch["input_ids"].shape[1] == 20
    text = task.tok().decode(batch["input_ids"][0], skip_special_tokens=True)
    assert text.startswith("<Q>: What is the capital of France? [en]")


def _ranked_example(n: int = 10, answer_at: tuple[int, ...] = (7,)) -> dict:
    ctxs = [{"title": f"p{i}", "text": f"Passage {i} is about Paris." if i in answer_at else f"Passage {i}."}
            for i in range(n)]
    return {"qid": "q1", "lang": "en", "question": "What is the capital of France?", "answers": ["paris"],
            "ctxs": ctxs}


def test_training_passages_bring_in_an_answer_ranked_below_top_k():
    example = _ranked_example(answer_at=(7,))
    chosen = training_passages(example, top_k=3)
    assert sorted(p["title"] for p in chosen) == ["p0", "p1", "p7"]
    assert [p["title"] for p in training_passages(example, top_k=3, choice="ranked")] == ["p0", "p1", "p2"]
    assert training_passages(example, top_k=3) == chosen  # the same input every epoch and after a resume


def test_training_passages_cap_answer_passages_and_shuffle_by_seed():
    example = _ranked_example(n=12, answer_at=(1, 4, 6, 8, 11))
    draws = [training_passages(example, top_k=5, seed=seed) for seed in range(20)]
    for chosen in draws:
        titles = [p["title"] for p in chosen]
        with_answer = [t for t in titles if t in {"p1", "p4", "p6", "p8", "p11"}]
        assert len(titles) == 5 and len(with_answer) == 3
        assert sorted(set(titles) - set(with_answer)) == ["p0", "p2"]  # the best-ranked without an answer
    assert len({tuple(p["title"] for p in d) for d in draws}) > 5
    assert {p["title"] for d in draws for p in d} >= {"p1", "p4", "p6", "p8", "p11"}


def test_training_passages_trust_the_files_has_answer_flag():
    example = _ranked_example(n=6, answer_at=(2,))
    example["ctxs"][2]["has_answer"] = False  # CORA's tokenised match said no
    example["ctxs"][5]["has_answer"] = True
    titles = sorted(p["title"] for p in training_passages(example, top_k=2))
    assert titles == ["p0", "p5"]


def test_retrieval_records_get_has_answer_and_training_inputs_show_the_answer(tiny_t5):
    raw = _ranked_example(n=4, answer_at=(3,))
    raw["ctxs"][0]["has_answer"] = True
    example = retrieval_example(raw)
    assert [c["has_answer"] for c in example["ctxs"]] == [True, False, False, True]
    example["ctxs"][0]["has_answer"] = False

    def input_ids(task: MGENTask, passage: dict) -> list[int]:
        source = format_source(example["question"], "en", [passage], top_k=1)
        return task.tok()(source, max_length=128, truncation=True)["input_ids"]

    task = MGENTask(init=tiny_t5, top_k=1, max_source_length=128)
    assert task.collate([example])["input_ids"][0].tolist() == input_ids(task, example["ctxs"][3])
    ranked = MGENTask(init=tiny_t5, top_k=1, max_source_length=128, passage_choice="ranked")
    assert ranked.collate([example])["input_ids"][0].tolist() == input_ids(ranked, example["ctxs"][0])
    assert input_ids(task, example["ctxs"][3]) != input_ids(task, example["ctxs"][0])


def test_tiny_mgen_overfits_20_pairs_in_3_languages_and_generates_them(tiny_t5, tmp_path):
    torch.manual_seed(0)
    items = qa_pairs()
    assert len(items) == 20 and {x["lang"] for x in items} == {"en", "fr", "ja"}
    task = MGENTask(init=tiny_t5, top_k=1, max_source_length=128, max_target_length=16, dropout=0.0)
    model = task.build()
    settings = LoopSettings(epochs=1, batch_size=20, steps_per_epoch=80, lr=3e-3, warmup_steps=10,
                            max_grad_norm=1.0, grad_accumulation=2)
    stepper = Stepper(task, model, settings, torch.device("cpu"))
    halves = [task.collate(items[0::2]), task.collate(items[1::2])]
    losses = [stepper.step(halves) for _ in range(80)]
    assert losses[-1] < 0.25 * losses[0]
    task.export(model, str(tmp_path / "model"))
    generator = Generator.load(str(tmp_path / "model"), top_k=1, max_target_length=16, device="cpu")
    predictions = generator.answer([x["question"] for x in items], [x["lang"] for x in items],
                                   [x["ctxs"] for x in items])
    assert predictions == [x["answers"][0] for x in items]


def test_generator_needs_a_tokenizer_when_the_folder_has_none(tiny_t5, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    AutoModelForSeq2SeqLM.from_pretrained(tiny_t5).save_pretrained(tmp_path / "mGEN_model")  # weights alone
    with pytest.raises(ConfigError, match="no tokenizer files.*pass the tokenizer"):
        Generator.load(str(tmp_path / "mGEN_model"))
    generator = Generator.load(str(tmp_path / "mGEN_model"), tokenizer=tiny_t5, max_target_length=3, device="cpu")
    assert len(generator.answer(["q"], ["en"], [[]])) == 1


@pytest.mark.slow
def test_ray_train_mgen_then_generate_job(ray_local, tiny_t5, tmp_path):
    from ray_cora.configs.generate import GenerateConfig
    from ray_cora.configs.train import TrainMGENConfig
    from ray_cora.pipelines.generate import run_generate
    from ray_cora.train.jobs import train_mgen

    retrieval = tmp_path / "retrieval.jsonl"
    retrieval.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in qa_pairs()))
    config = TrainMGENConfig(train=[str(retrieval)], out=str(tmp_path / "out"), init=tiny_t5, top_k=1,
                             max_source_length=128, max_target_length=16, batch_size=4, grad_accumulation=1,
                             lr=3e-3, warmup_steps=2, epochs=1, num_workers=2)
    manifest = train_mgen(config)
    assert manifest["steps"] == 5 and manifest["examples"] == 20
    out = tmp_path / "pred.jsonl"
    gen = GenerateConfig(model=str(tmp_path / "out" / "model"), retrieval=[str(retrieval)], out=str(out),
                         top_k=1, max_source_length=128, max_target_length=4, batch_size=8, actor_cpus=0.5)
    done = run_generate(gen)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert done["predictions"] == 20 and sorted(r["qid"] for r in rows) == sorted(x["qid"] for x in qa_pairs())
    assert all(set(r) == {"qid", "lang", "prediction"} for r in rows)
    assert run_generate(gen)["sha256"] == done["sha256"]  # rerun: marker verified, nothing redone
    with pytest.raises(ConfigError, match=r"other settings \(max_target_length differ\)"):
        run_generate(gen.model_copy(update={"max_target_length": 5}))  # not the stale answers
