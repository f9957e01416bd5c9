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
from ray_cora.languages import CORA_MINING_LANGS
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
    assert mining.dpr_records([(found[0], True)])[0][0]["answers"] == ["3,776 m"]


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
                (cand("3", "ko", "p5", "ko"), False), (cand("4", "ja", "p6", "en"), False),
                (cand("4", "ja", "p7", "ko", "language_link"), False)]
    # B_t already has a positive for question 4 (under another qid: found by its text), none for 3
    b_t = [{"qid": "dpr-x", "lang": "ja", "question": "4?", "positive_ctxs": [{"passage_id": "g4", "text": "g"}]}]
    records, counts = mining.dpr_records(labelled, mining.positives_by_question(b_t))
    assert [(r["qid"], r["positive_ctxs"][0]["passage_id"], [c["passage_id"] for c in r["hard_negative_ctxs"]])
            for r in records] == [("1", "p1", ["p2"]), ("1", "p3", ["p2"]), ("2", "p4", []), ("4", "g4", ["p6", "p7"])]
    assert [r["source"] for r in records][2:] == ["mined:language_link", "mined:negatives"]
    # CORA adds mined negatives too: question 4 gets them beside its known positive; question 3 has none
    assert counts == {"records_with_mined_positive": 3, "records_with_mined_negatives_only": 1,
                      "negatives_without_positive": 1}
    stats = mining.MiningStats()
    for c, positive in labelled:
        stats.add(c, positive)
    stats.dropped_no_translation["fi"] += 2
    summary = stats.to_dict(initial_pairs={("th", "th"), ("ko", "ko")})
    assert (summary["positives"], summary["negatives"], summary["candidates"]) == (3, 4, 7)
    assert summary["new_positive_pairs"] == ["en->ja", "th->en"]
    assert summary["by_source"]["language_link"] == {"positives": 1, "negatives": 1}
    assert summary["language_link_dropped_no_translation"] == {"fi": 2}
    by_pair = {(r["question_lang"], r["passage_lang"]): r for r in summary["by_language_pair"]}
    assert by_pair[("ja", "ko")]["by_source"] == {"retrieval": {"positives": 0, "negatives": 0},
                                                  "language_link": {"positives": 0, "negatives": 1}}
    assert by_pair[("th", "en")]["by_source"]["retrieval"] == {"positives": 1, "negatives": 0}
    assert mining.known_pairs(records) >= {("1", "th", "p1"), ("1", "th", "p2"), ("2", "en", "p4")}


def test_synthetic_mgen_data_samples_at_most_10_of_15_languages_then_keeps_half():
    """CORA A.2: per English question at most 10 of the 15 languages, then 50% of those pairs with a
    translated answer, seeded; the counts are those of the seeded draw."""
    langs = list(CORA_MINING_LANGS)
    rows = [{"qid": f"q{i}", "lang": "en", "question": f"question {i}?", "answers": [f"answer {i}"],
             "ctxs": [{"pid": f"p{i}"}]} for i in range(40)]
    rows.append({"qid": "q0", "lang": "es", "question": "¿?", "answers": ["x"], "ctxs": []})  # not English

    def translate(answer, lang):  # every answer has a label, except in Finnish and for question 7
        return None if lang == "fi" or answer == "answer 7" else f"{answer} ({lang})"

    plan = mining.SyntheticPlan.from_rows(rows, translate, ["en", *langs], max_langs=10, keep_fraction=0.5, seed=3)
    made = list(plan.examples(rows))
    stats = plan.stats
    assert stats["english_questions"] == 40 and stats["sampled"] == 40 * 10  # en itself is never a target
    assert stats["candidates"] == stats["sampled"] - sum(r["no_translation"] for r in stats["per_language"].values())
    assert stats["kept"] == len(made) == round(0.5 * stats["candidates"])
    assert sum(r["kept"] for r in stats["per_language"].values()) == len(made)
    per_question = Counter(e["qid"].split("@")[0] for e in made)
    assert max(per_question.values()) <= 10 and "q7" not in per_question
    assert all(e["lang"] != "fi" and e["answers"] == [f"answer {e['qid'][1:].split('@')[0]} ({e['lang']})"]
               and e["question"].startswith("question") for e in made)
    assert len(stats["per_language"]) == 15 and stats["per_language"]["fi"]["kept"] == 0
    again = mining.SyntheticPlan.from_rows(rows, translate, langs, max_langs=10, keep_fraction=0.5, seed=3)
    assert again.kept == plan.kept  # seeded: the same draw
    other = mining.SyntheticPlan.from_rows(rows, translate, langs, max_langs=10, keep_fraction=0.5, seed=4)
    assert other.kept != plan.kept  # another seed, another draw


def test_round_summary_shows_sources_per_pair_dropped_links_synthetic_languages_and_kept_epochs():
    from ray_cora.iterate.report import overall_summary, round_summary

    stats = mining.MiningStats()
    stats.add({"qid": "1", "lang": "en", "source": "language_link", "passage": {"lang": "ja"}}, True)
    stats.add({"qid": "1", "lang": "en", "source": "retrieval", "passage": {"lang": "ja"}}, False)
    stats.dropped_no_translation["fi"] += 3
    mined = {**stats.to_dict(initial_pairs={("en", "en")}), "new_records": 1,
             "records_with_mined_negatives_only": 0, "negatives_without_positive": 0}
    synthetic = {"english_questions": 2, "max_langs": 10, "sampled": 20, "candidates": 12, "kept": 6,
                 "keep_fraction": 0.5, "seed": 0,
                 "per_language": {"ja": {"sampled": 2, "no_translation": 0, "kept": 1}}}
    round_stats = {"round": 1, "train_records": 4, "train_files": ["b1"],
                   "mdpr": {"steps": 3, "loss": 0.5, "encoder_spec": "hf:m",
                            "kept": {"epoch": 2, "metric": "nll", "value": 1.25}},
                   "mgen": {"steps": 2, "phases": 1, "synthetic_examples": 6, "model": "g", "synthetic": synthetic,
                            "kept": {"epoch": 1, "metric": "em", "value": 50.0}},
                   "dev": None, "mining": mined}
    text = round_summary(round_stats)
    assert "kept epoch 2 (nll 1.2 on dev)" in text and "kept epoch 1 (em 50.0 on dev)" in text
    assert "| en → ja | 0 | 1 | 1 | 0 | yes |" in text  # retrieval +/−, language links +/−
    assert "dropped for lack of a translated answer: fi 3." in text
    assert "| ja | 2 | 0 | 1 |" in text and "6 kept (50%, seed 0)" in text
    overall = overall_summary([round_stats])
    assert "| 1 | 4 | 2 (nll 1.2) | 1 (em 50.0) | 1 | 1 | en->ja |" in overall


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


# Stage options of the tiny end-to-end runs: one epoch each, one Ray Train worker, small actors.
TINY_STAGES = {
    "mdpr": {"epochs": 1, "batch_size": 4, "warmup_steps": 1, "lr": 1e-3, "max_length": 48, "num_workers": 1},
    "embed": {"batch_size": 64, "actor_cpus": 0.5, "shard_size": 100},
    "retrieve": {"block_size": 64, "actor_cpus": 0.5},
    "mgen": {"epochs": 1, "batch_size": 4, "grad_accumulation": 1, "lr": 1e-5, "warmup_steps": 1,
             "max_source_length": 128, "max_target_length": 16, "num_workers": 1},
    "generate": {"batch_size": 32, "actor_cpus": 0.5, "max_source_length": 128, "max_target_length": 16},
}


def _memorised_mgen(folder: str, questions: list[dict], passages: list[dict], *, steps: int = 400) -> str:
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
    settings = LoopSettings(epochs=1, batch_size=len(questions), steps_per_epoch=steps, lr=5e-3, warmup_steps=10,
                            max_grad_norm=1.0, grad_accumulation=1)
    stepper = Stepper(task, model, settings, torch.device("cpu"))
    rng = random.Random(0)
    for _ in range(steps):
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
        **TINY_STAGES})
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
    # mGEN continues from the best dev-EM model so far (the newer one on a tie), and mining labels with it
    best = rounds[0] if rounds[0]["mgen"]["kept"]["value"] > rounds[1]["mgen"]["kept"]["value"] else rounds[1]
    assert rounds[2]["mgen"]["init"] == best["mgen"]["model"] == rounds[1]["mining"]["labelled_with"]
    for stats in rounds:  # each round's training kept its best dev epoch (one epoch here: that one)
        assert stats["mgen"]["kept"]["metric"] == "em" and len(stats["mgen"]["dev_history"]) == 1
        assert stats["mdpr"]["kept"]["epoch"] == 1 and stats["mdpr"]["kept"]["metric"] == "nll"
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


# English questions as DPR's NQ data has them (no lang, no qid), each with its English gold passage,
# and the English answer whose Wikidata entity the language links translate (1889 has none).
DPR_ENGLISH = (("Who wrote Don Quixote?", "Miguel de Cervantes", "en-don_quixote-1"),
               ("In which city was Marie Curie born?", "Warsaw", "en-marie_curie-1"),
               ("In which city was Albert Einstein born?", "Ulm", "en-albert_einstein-1"),
               ("In what year was the Eiffel Tower completed?", "1889", "en-eiffel_tower-1"))


@pytest.mark.slow
def test_two_rounds_mine_language_link_positives_for_dpr_format_english_questions(ray_local, tmp_path):
    """Issue 15's done-when on the tiny offline config: English DPR records without lang reach the other
    Wikipedias through language links, mGEN is asked in the article's language and labelled against
    the translated answer, and round 2 trains on positives in languages B_1 did not have; the
    synthetic mGEN data is the seeded 10-of-15 then 50% draw."""
    from ray_cora.configs.iterate import IterateConfig
    from ray_cora.data.retrieval import iter_retrieval
    from ray_cora.encoders.tiny import build_tiny_t5
    from ray_cora.iterate.loop import iterate, read_jsonl
    from ray_cora.languages import parse_langs
    from ray_cora.models.mgen import format_source
    from ray_cora.pivot.translate import LabelTable

    passages = {p["pid"]: p for p in _demo(DEMO_PASSAGES)}
    dpr = [{"question": q, "answers": [a], "positive_ctxs": [{"title": passages[pid]["title"],
                                                              "text": passages[pid]["text"], "passage_id": pid}],
            "negative_ctxs": [], "hard_negative_ctxs": []} for q, a, pid in DPR_ENGLISH]
    (tmp_path / "nq_train.json").write_text(json.dumps(dpr, ensure_ascii=False))
    questions = [{"qid": f"q{n}", "lang": "en", "question": q, "answers": [a]}
                 for n, (q, a, _) in enumerate(DPR_ENGLISH)]
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))

    # What the loop's translation gives (Wikidata labels): mGEN is memorised to answer each question in
    # each CORA mining language its answer has a label in, whatever the passage.
    labels = LabelTable.load(str(DEMO_WIKIDATA_LABELS), answers=[a for _, a, _ in DPR_ENGLISH], qids=())
    def translate(answer, lang):
        qid = labels.match_english(answer)
        return labels.label(qid, lang) if qid else None

    langs = parse_langs("cora_mining")
    targets = [{"question": q, "lang": "en", "answers": [a]} for q, a, _ in DPR_ENGLISH]
    targets += [{"question": q, "lang": lang, "answers": [translate(a, lang)]}
                for q, a, _ in DPR_ENGLISH for lang in langs if translate(a, lang)]
    eiffel = DPR_ENGLISH[3][0]  # its answer, 1889, is no entity: no translated target
    assert not any(t["lang"] != "en" and t["question"] == eiffel for t in targets)
    texts = [f"{format_source(t['question'], t['lang'], [p], top_k=1)} {t['answers'][0]}"
             for t in targets for p in list(passages.values())[:3]]
    mgen = build_tiny_t5(str(tmp_path / "mgen"), texts + [f"{p['title']} {p['text']}" for p in passages.values()])
    mgen = _memorised_mgen(mgen, targets, list(passages.values()), steps=500)

    out = tmp_path / "out"
    config = IterateConfig.load(overrides={
        "out": str(out), "rounds": 2, "questions": str(tmp_path / "questions.jsonl"), "dev_fraction": 0,
        "train": [str(tmp_path / "nq_train.json")], "mdpr_init": "tiny", "mgen_init": mgen, "seed": 5,
        "k": 10, "top_k": 1, "mine_k": 2, "answer_translation_after_epoch": 0,
        **TINY_STAGES})
    result = iterate(config)
    first, second = result["rounds"]
    assert {tuple(p) for p in first["initial_positive_pairs"]} == {("en", "en", 4)}  # B_1: English only
    mined = first["mining"]
    link = [row for row in read_jsonl(str(out / "round-1" / "mine" / "labelled.jsonl"))
            if row["source"] == "language_link"]
    # every language-link candidate is asked in its article's language, against the translated answer
    assert link and all(row["target_lang"] == row["passage_lang"] != "en" for row in link)
    by_question = {q: a for q, a, _ in DPR_ENGLISH}
    for row in link:
        translations = {translate(a, row["target_lang"]) for a in by_question.values()} - {None}
        assert len(row["answers"]) == 1 and row["answers"][0] in translations
    requests = list(read_jsonl(str(out / "round-1" / "mine" / "requests.jsonl")))
    assert {r["lang"] for r in requests} <= {"en", *langs}
    positives = [row for row in link if row["positive"]]
    assert positives and mined["by_source"]["language_link"]["positives"] == len(positives)
    new_pairs = {tuple(pair.split("->")) for pair in mined["new_positive_pairs"]}
    assert {("en", row["passage_lang"]) for row in positives} <= new_pairs
    # the Eiffel Tower's articles (es, fr, ru) are dropped: 1889 is no entity, so it has no translation
    assert {lang for lang in ("es", "fr", "ru") if mined["language_link_dropped_no_translation"].get(lang)} == \
        {"es", "fr", "ru"}
    mined_records = list(read_jsonl(str(out / "round-1" / "mine" / "mined.jsonl")))
    link_records = [r for r in mined_records if r["source"] == "mined:language_link"]
    assert link_records and all(r["lang"] == "en" and r["answers"][0] in by_question.values() for r in link_records)
    assert second["train_records"] == first["train_records"] + mined["new_records"]
    assert second["mdpr"]["examples"] == second["train_records"]  # round 2 trained on B_2
    summary = (out / "round-1" / "summary.md").read_text()
    assert "language links +" in summary and "dropped for lack of a translated answer: " in summary

    # synthetic mGEN data: round 1 only, the seeded draw's counts
    synthetic = first["mgen"]["synthetic"]
    rows = [row for _, _, row in iter_retrieval(str(out / "round-1" / "retrieve" / "retrieval"))]
    expected = mining.SyntheticPlan.from_rows(rows, translate, langs, max_langs=10, keep_fraction=0.5, seed=5)
    assert synthetic["kept"] == expected.stats["kept"] == round(0.5 * expected.stats["candidates"]) > 0
    assert synthetic["per_language"] == expected.stats["per_language"]
    made = list(read_jsonl(str(out / "round-1" / "mgen" / "synthetic.jsonl")))
    assert len(made) == synthetic["kept"] and max(Counter(m["qid"].split("@")[0] for m in made).values()) <= 10
    assert second["mgen"]["synthetic_examples"] == 0 and not (out / "round-2" / "mgen" / "synthetic.jsonl").exists()


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
