"""CORA's iterative training: the mining and labelling rules, the stage bookkeeping, the config,
and a full T = 3 run on the demo corpus with tiny models that is killed in round 2 and resumed."""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

from ray_cora import faults
from ray_cora.demo import DEMO_PASSAGES, DEMO_QUESTIONS, DEMO_WIKIDATA_LABELS
from ray_cora.errors import ConfigError
from ray_cora.faults import FaultPlan, SimulatedCrash
from ray_cora.iterate import mining
from ray_cora.iterate.stages import MARKER, StageRunner
from tests.support import REPO_ROOT


def _demo(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


# --- the labelling rule --------------------------------------------------------------------------


@pytest.mark.parametrize("prediction, answers, lang, positive", [
    ("Miguel de Cervantes", ["Miguel de Cervantes"], "en", True),
    ("eiffel tower.", ["Eiffel Tower"], "en", True),  # case and punctuation normalised away
    ("the Eiffel Tower", ["Eiffel Tower"], "en", False),  # the XOR scorer keeps articles
    ("Cervantes", ["Miguel de Cervantes"], "en", False),  # partial overlap is F1 > 0, not a match
    ("1889年", ["1889"], "ja", True),  # the XOR scorer drops the counter 年
    ("東京都", ["東京"], "ja", False),  # MeCab splits 東京/都: not the same answer
    ("3776メートル", ["3,776メートル", "3776メートル"], "ja", True),  # any gold answer
    ("", ["1889"], "en", False),  # an empty generation labels nothing positive
    ("1889", [], "en", False),  # no gold answer: never positive
    ("Paris", ["Berlin", "Bonn"], "de", False),
])
def test_labelling_rule_on_hand_made_mgen_outputs(prediction, answers, lang, positive):
    assert mining.label_is_positive(prediction, answers, lang) is positive


# --- mining (pure) ---------------------------------------------------------------------------


def test_b1_keeps_gold_passages_in_the_question_language_only():
    passages = {p["pid"]: p for p in _demo(DEMO_PASSAGES)}
    questions = [q for q in _demo(DEMO_QUESTIONS) if q["qid"] == "q-eiffel-year"]
    same = list(mining.initial_examples(questions, passages))
    anyl = list(mining.initial_examples(questions, passages, same_language_only=False))
    assert {(r["lang"], r["positive_ctxs"][0]["lang"]) for r in same} == {("en", "en"), ("fr", "fr")}
    # the cross-lingual ar/ja questions have no in-language gold: they only enter B_1 with any-language
    assert {r["lang"] for r in anyl} == {"en", "fr", "ar", "ja"}
    assert all(r["positive_ctxs"][0]["passage_id"] and r["source"] == "initial" for r in same)


def test_language_links_find_the_same_entity_in_other_wikipedias():
    entities = _demo(DEMO_WIKIDATA_LABELS)
    links = mining.LanguageLinks.from_sitelinks(
        (e["qid"], site, title) for e in entities for site, title in e["sitelinks"].items())
    assert links.entity("en", "Mount Fuji") == "Q39231"
    assert links.linked_titles("en", "Mount Fuji", ["ja", "zh_cn", "ko", "de"]) == \
        {"ja": "富士山", "zh_cn": "富士山", "ko": "후지산"}
    record = {"qid": "q-fuji-height", "lang": "en", "question": "How tall is Mount Fuji?", "answers": ["3,776 m"],
              "positive_ctxs": [{"title": "Mount Fuji", "text": "x", "passage_id": "en-mount_fuji-1", "lang": "en"}]}
    non_english = dict(record, lang="ja")
    requests = list(mining.language_link_requests([record, non_english, record], links, ["en", "ja", "ko"]))
    assert requests == [(record, {"ja": "富士山", "ko": "후지산"})]  # English only, once per question
    by_title = {("ja", "富士山"): [{"pid": "ja-fuji-1", "lang": "ja", "title": "富士山", "text": "富士山は…"}],
                ("ko", "후지산"): [{"pid": "ko-fuji-1", "lang": "ko", "title": "후지산", "text": "후지산은…"}]}
    known = {("q-fuji-height", "en", "ko-fuji-1")}
    found = list(mining.language_link_candidates(requests, by_title, known=known))
    assert [(c["passage"]["pid"], c["lang"], c["source"]) for c in found] == [("ja-fuji-1", "en", "language_link")]
    # CORA §2.2.2: the answer is translated first (a^En → a^L through the answer entity's labels), mGEN
    # is asked in L and labelled against a^L; an article whose language has no translation is dropped.
    labels = {("3,776 m", "ja"): "3776メートル"}
    dropped: Counter = Counter()
    found = list(mining.language_link_candidates(requests, by_title, known=set(),
                                                 translate=lambda a, lang: labels.get((a, lang)), dropped=dropped))
    assert [(c["passage"]["pid"], c["lang"], c["target_lang"], c["answers"], c["record_answers"]) for c in found] == \
        [("ja-fuji-1", "en", "ja", ["3776メートル"], ["3,776 m"])]
    assert dropped == {"ko": 1}
    request = mining.candidate_request("c1", found[0])
    assert (request["lang"], request["question"], request["answers"]) == ("ja", "How tall is Mount Fuji?", ["3776メートル"])
    # a positive becomes an English question's DPR record with its English answers
    assert mining.dpr_records([(found[0], True)])[0]["answers"] == ["3,776 m"]


def test_dpr_records_without_lang_or_qid_are_english_by_their_dataset():
    """DPR's NQ records (CORA's initial mDPR data) carry no lang and no qid: iterate's --train-lang
    (default en) makes them English, keyed by a stable qid, so language-link mining starts from them."""
    record = {"question": "how tall is mount fuji", "answers": ["3,776 m"],
              "positive_ctxs": [{"title": "Mount Fuji", "text": "x", "passage_id": "1"}]}
    filled = mining.with_record_defaults(record, lang="en")
    assert filled["lang"] == "en" and filled["qid"] == mining.with_record_defaults(dict(record), lang="en")["qid"]
    assert filled["qid"].startswith("dpr-") and "lang" not in record
    assert mining.english_positive_titles([filled]) == {"Mount Fuji"}
    assert mining.english_positive_titles([record]) == set()  # without the default: not recognised
    assert mining.with_record_defaults({**record, "id": 42}, lang="en")["qid"] == "42"


def test_retrieval_candidates_skip_known_pairs_and_unanswerable_questions():
    rows = [{"qid": "1", "lang": "th", "question": "q?", "answers": ["a"],
             "ctxs": [{"pid": p, "lang": "en", "title": "", "text": "t"} for p in ("p1", "p2", "p3")]},
            {"qid": "2", "lang": "th", "question": "q2?", "answers": [], "ctxs": [{"pid": "p1", "text": "t"}]}]
    found = list(mining.retrieval_candidates(rows, mine_k=2, known={("1", "th", "p1")}))
    assert [c["passage"]["pid"] for c in found] == ["p2"]


def test_new_pairs_become_dpr_records_and_stats_name_new_language_pairs():
    def cand(qid, lang, pid, plang, source="retrieval"):
        return {"qid": qid, "lang": lang, "question": f"{qid}?", "answers": ["a"], "source": source,
                "passage": {"pid": pid, "lang": plang, "title": "T", "text": "text"}}

    labelled = [(cand("1", "th", "p1", "en"), True), (cand("1", "th", "p2", "ja"), False),
                (cand("1", "th", "p3", "th"), True), (cand("2", "en", "p4", "ja", "language_link"), True),
                (cand("3", "ko", "p5", "ko"), False)]
    records = mining.dpr_records(labelled)
    assert [(r["qid"], r["positive_ctxs"][0]["passage_id"], [c["passage_id"] for c in r["hard_negative_ctxs"]])
            for r in records] == [("1", "p1", ["p2"]), ("1", "p3", ["p2"]), ("2", "p4", [])]
    assert records[2]["source"] == "mined:language_link"
    stats = mining.MiningStats()
    for c, positive in labelled:
        stats.add(c, positive)
    summary = stats.to_dict(initial_pairs={("th", "th"), ("ko", "ko")})
    assert (summary["positives"], summary["negatives"], summary["candidates"]) == (3, 2, 5)
    assert summary["new_positive_pairs"] == ["en->ja", "th->en"]
    assert summary["by_source"]["language_link"] == {"positives": 1, "negatives": 0}
    assert mining.known_pairs(records) >= {("1", "th", "p1"), ("1", "th", "p2"), ("2", "en", "p4")}


def test_translated_answers_make_english_questions_answerable_in_other_languages():
    rows = [{"qid": "1", "lang": "en", "question": "Who wrote Don Quixote?", "answers": ["Miguel de Cervantes"],
             "ctxs": [{"pid": "p"}]},
            {"qid": "1", "lang": "es", "question": "¿Quién?", "answers": ["Cervantes"], "ctxs": []}]
    labels = {("Miguel de Cervantes", "ja"): "ミゲル・デ・セルバンテス"}
    made = list(mining.translated_answer_examples(rows, lambda a, lang: labels.get((a, lang)), ["en", "ja", "ko"]))
    assert made == [{"qid": "1@ja", "lang": "ja", "question": "Who wrote Don Quixote?",
                     "answers": ["ミゲル・デ・セルバンテス"], "ctxs": [{"pid": "p"}], "synthetic": True}]


def test_dev_split_is_stable_and_keeps_translations_together():
    qids = [f"q{i}" for i in range(400)]
    dev = [q for q in qids if mining.in_dev_split(q, 0.25)]
    assert 60 < len(dev) < 140 and dev == [q for q in qids if mining.in_dev_split(q, 0.25)]


# --- stage bookkeeping ----------------------------------------------------------------------


def _writer(text: str, calls: list):
    def work(folder):
        calls.append(folder.uri)
        os.makedirs(folder.path, exist_ok=True)
        with open(os.path.join(folder.path, "out.txt"), "w") as f:
            f.write(text)
        return {"text": text}, ["out.txt"]
    return work


def test_stages_skip_when_verified_and_redo_when_damaged_or_upstream_changed(tmp_path):
    calls: list = []
    runner = StageRunner(str(tmp_path), log=lambda *_: None)
    a = runner.run("round-1/a", _writer("A", calls))
    b = runner.run("round-1/b", _writer("B", calls), upstream=a)
    again = StageRunner(str(tmp_path), log=lambda *_: None)
    assert again.run("round-1/a", _writer("A2", calls)).result == {"text": "A"}
    assert again.run("round-1/b", _writer("B2", calls), upstream=a).skipped
    assert len(calls) == 2 and again.skipped == ["round-1/a", "round-1/b"]

    (tmp_path / "round-1" / "a" / "out.txt").write_text("tampered")  # checksum no longer matches
    (tmp_path / "round-1" / "a" / "stale.txt").write_text("left by the old run")
    third = StageRunner(str(tmp_path), log=lambda *_: None)
    a3 = third.run("round-1/a", _writer("A3", calls))
    assert a3.result == {"text": "A3"} and not (tmp_path / "round-1" / "a" / "stale.txt").exists()
    b3 = third.run("round-1/b", _writer("B3", calls), upstream=a3)  # its upstream changed: redone
    assert b3.result == {"text": "B3"} and b3.digest != b.digest and third.ran == ["round-1/a", "round-1/b"]


def test_an_interrupted_stage_resumes_in_place_and_a_crash_hook_stops_after_a_marker(tmp_path):
    with faults.inject(FaultPlan({faults.ITERATE_AFTER_STAGE: "round-1/a"})):
        runner = StageRunner(str(tmp_path), log=lambda *_: None)
    with pytest.raises(SimulatedCrash):
        runner.run("round-1/a", _writer("A", []))
    assert (tmp_path / "round-1" / "a" / MARKER).is_file()

    def crashing(folder):
        (tmp_path / "round-1" / "b").mkdir(parents=True, exist_ok=True)
        (tmp_path / "round-1" / "b" / "partial.txt").write_text("half done")
        raise KeyboardInterrupt

    resumed = StageRunner(str(tmp_path), log=lambda *_: None)
    a = resumed.run("round-1/a", _writer("A-again", []))
    with pytest.raises(KeyboardInterrupt):
        resumed.run("round-1/b", crashing, upstream=a)
    seen = []

    def finish(folder):
        seen.append((tmp_path / "round-1" / "b" / "partial.txt").read_text())  # not cleared: resumed
        return {}, []
    resumed.run("round-1/b", finish, upstream=a)
    assert seen == ["half done"] and a.skipped


# --- config ----------------------------------------------------------------------------------


def test_stage_options_are_checked_against_the_stage_jobs():
    from ray_cora.configs.iterate import IterateConfig

    base = {"out": "o", "mdpr_init": "tiny", "mgen_init": "tiny"}
    config = IterateConfig.load(overrides={**base, "mdpr": '{"epochs": 2, "batch_size": 8}'})
    assert config.stage_config("mdpr", train=["t"], out="o", init="hf:x").epochs == 2
    with pytest.raises(ConfigError, match="mdpr.epoch is not an option of TrainMDPRConfig"):
        IterateConfig.load(overrides={**base, "mdpr": {"epoch": 2}})
    with pytest.raises(ConfigError, match="retrieve.index is set by the iterative loop"):
        IterateConfig.load(overrides={**base, "retrieve": {"index": "x"}})
    with pytest.raises(ConfigError, match="expected a JSON object"):
        IterateConfig.load(overrides={**base, "embed": "{epochs: 2"})
    with pytest.raises(ConfigError, match="iterate option 'mdpr'"):
        config.stage_config("mdpr", train=["t"], out="o", init="hf:x", batch_size=0)


# --- a full run --------------------------------------------------------------------------------

SUBSET = ("q-fuji-height", "q-eiffel-year", "q-quixote-author")
DEV = ("q-nile-sea",)


def _memorised_mgen(folder: str, questions: list[dict], passages: list[dict]) -> str:
    """A tiny mGEN that answers the subset's questions whatever the passage: a stand-in for a trained
    mT5, so that mining labels positives in a run short enough for CI. Trained from the tiny T5 in
    ``folder`` (a copy of the session's tiny_t5) and saved back there."""
    import torch

    from ray_cora.models.mgen import MGENTask
    from ray_cora.train.loop import LoopSettings, Stepper

    # One thread, whatever earlier tests set: the float sums (and so what is memorised) depend on it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = MGENTask(init=folder, top_k=1, max_source_length=128, max_target_length=16, dropout=0.0)
    model = task.build()
    settings = LoopSettings(epochs=1, batch_size=len(questions), steps_per_epoch=400, lr=5e-3, warmup_steps=10,
                            max_grad_norm=1.0, grad_accumulation=1)
    stepper = Stepper(task, model, settings, torch.device("cpu"))
    rng = random.Random(0)
    for _ in range(400):
        batch = [{"question": q["question"], "lang": q["lang"], "answers": q["answers"][:1],
                  "ctxs": [rng.choice(passages)]} for q in questions]
        stepper.step([task.collate(batch)])
    torch.set_num_threads(threads)
    task.export(model, folder)
    return folder


@pytest.mark.slow
def test_three_rounds_on_the_demo_killed_in_round_2_resume_from_round_2(ray_local, tiny_t5_copy, tmp_path):
    from ray_cora.configs.iterate import IterateConfig
    from ray_cora.iterate.loop import iterate
    from ray_cora.models.mgen import Generator

    questions = [q for q in _demo(DEMO_QUESTIONS) if q["qid"] in SUBSET]
    passages = _demo(DEMO_PASSAGES)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n"
                                                for q in _demo(DEMO_QUESTIONS) if q["qid"] in DEV))
    mgen = _memorised_mgen(tiny_t5_copy, questions, passages)
    answers = Generator.load(mgen, top_k=1, max_target_length=16, device="cpu").answer(
        [q["question"] for q in questions], [q["lang"] for q in questions], [[passages[0]]] * len(questions))
    assert sum(a == q["answers"][0] for a, q in zip(answers, questions)) >= len(questions) - 2

    out = tmp_path / "out"
    config = IterateConfig.load(overrides={
        "out": str(out), "rounds": 3, "questions": str(tmp_path / "train.jsonl"),
        "dev_questions": str(tmp_path / "dev.jsonl"), "mdpr_init": "tiny", "mgen_init": mgen,
        "k": 10, "top_k": 1, "mine_k": 3, "answer_translation_after_epoch": 0, "keep_first_question_encoder": True,
        "mdpr": {"epochs": 1, "batch_size": 4, "warmup_steps": 1, "lr": 1e-3, "max_length": 48, "num_workers": 1},
        "embed": {"batch_size": 64, "actor_cpus": 0.5, "shard_size": 100},
        "retrieve": {"block_size": 64, "actor_cpus": 0.5},
        "mgen": {"epochs": 1, "batch_size": 4, "grad_accumulation": 1, "lr": 1e-5, "warmup_steps": 1,
                 "max_source_length": 128, "max_target_length": 16, "num_workers": 1},
        "generate": {"batch_size": 32, "actor_cpus": 0.5, "max_source_length": 128, "max_target_length": 16},
    })
    with pytest.raises(SimulatedCrash), faults.inject(FaultPlan({faults.ITERATE_AFTER_STAGE: "round-2/index"})):
        iterate(config)
    round1 = {p: p.stat().st_mtime_ns for p in (out / "round-1").glob(f"*/{MARKER}")}
    assert {p.parent.name for p in round1} == {"data", "mdpr", "index", "retrieve", "mgen", "dev", "mine"}
    assert not (out / "round-2" / "retrieve").exists()

    result = iterate(config)
    assert result["skipped"] == ["round-1/data", *[f"round-1/{s}" for s in ("mdpr", "index", "retrieve", "mgen",
                                                                             "dev", "mine")],
                                 "round-2/mdpr", "round-2/index"]
    assert result["ran"][0] == "round-2/retrieve" and result["ran"][-1] == "round-3/dev"
    assert {p: p.stat().st_mtime_ns for p in round1} == round1  # round 1 was not redone
    assert not (out / "round-3" / "mine").exists()  # no mining after the last round

    rounds = result["rounds"]
    first_spec = rounds[0]["mdpr"]["encoder_spec"]
    for later in rounds[1:]:  # each round trains its own encoder and re-embeds with it, but keeps
        assert later["mdpr"]["encoder_spec"] != first_spec  # round 1's question encoder (CORA appendix)
        assert later["mdpr"]["init"] == rounds[later["round"] - 2]["mdpr"]["encoder_spec"]
        assert later["retrieve"]["encoder"] == first_spec
    assert rounds[2]["mgen"]["init"] == rounds[1]["mgen"]["model"]  # mGEN continues from the last round
    assert rounds[0]["mgen"]["synthetic_examples"] > 0  # English questions with Wikidata-translated answers
    mined = rounds[0]["mining"]
    assert mined["positives"] > 0 and mined["new_records"] > 0
    b1_pairs = {(q, p) for q, p, _ in rounds[0]["initial_positive_pairs"]}
    assert all(q == p for q, p in b1_pairs)  # B_1: same-language gold only
    new_pairs = [tuple(pair.split("->")) for pair in mined["new_positive_pairs"]]
    assert new_pairs and not set(new_pairs) & b1_pairs and any(q != p for q, p in new_pairs)
    assert mined["by_source"]["language_link"]["positives"] + mined["by_source"]["language_link"]["negatives"] > 0
    assert rounds[1]["train_records"] == rounds[0]["train_records"] + mined["new_records"]
    assert rounds[1]["mdpr"]["examples"] == rounds[1]["train_records"]  # round 2 trained on B_2
    for stats in rounds:
        assert set(stats["dev"]["per_language"]) == {"en", "ar", "ko", "fr"}
        assert {"R^L@10", "R^multi@10", "f1"} <= set(stats["dev"]["macro"])
        assert (out / f"round-{stats['round']}" / "summary.md").is_file()
    summary = (out / "summary.md").read_text()
    assert "| 1 | " in summary and "| 3 | " in summary
    assert "Language pairs with positives that B_1 did not have" in (out / "round-1" / "summary.md").read_text()


@pytest.mark.parametrize("name", ["iterate_tiny_demo.yaml", "iterate_cora.yaml"])
def test_shipped_iterate_configs_load(name):

    from ray_cora.configs.iterate import IterateConfig

    path = REPO_ROOT / "jobs" / "configs" / name
    config = IterateConfig.load(str(path), overrides={"out": "o"})
    assert config.rounds == 3
    loop_values = {"mdpr": {"train": ["t"], "out": "o", "init": "hf:x"}, "embed": {"passages": "p", "out": "o"},
                   "retrieve": {"index": "i", "questions": "q", "dataset": "jsonl", "out": "o"},
                   "mgen": {"train": ["t"], "out": "o", "init": "m"},
                   "generate": {"model": "m", "retrieval": ["r"], "out": "o"}}
    for stage, values in loop_values.items():  # every stage option has a valid value for its job
        assert config.stage_config(stage, **values).out == "o"


def test_round_cost_arithmetic_and_the_calculator_script(tmp_path):
    from ray_cora.iterate.cost import Rates, RoundWork, round_cost
    from tests.support import load_benchmark

    work = RoundWork(passages=43_600_000, train_examples=80_000, questions=80_000, mine_k=10)
    rates = Rates(embed_passages=2000, mdpr_train_samples=400, mgen_train_samples=100, generate_questions=200,
                  query_encode=4000, fixed_seconds_per_stage=0)
    one, eight = round_cost(work, rates, 1), round_cost(work, rates, 8)
    assert one["embed"] == pytest.approx(21_800) and eight["embed"] == pytest.approx(21_800 / 8)
    assert one["total"] == pytest.approx(sum(v for k, v in one.items() if k != "total"))
    assert round_cost(work, Rates(None, 1, 1, 1), 1)["total"] is None  # unmeasured: not guessed
    script = load_benchmark("iterate_cost")
    out = tmp_path / "cost.md"
    result = script.main(["--devices", "4", "--embed-rate", "1000", "--mdpr-rate", "100", "--mgen-rate", "50",
                          "--generate-rate", "100", "--query-rate", "1000", "--out", str(out)])
    assert result["cost_seconds"]["embed"] == pytest.approx(43_600_000 / 4000 + 60)
    assert "| embed | 1000.0 |" in out.read_text()
