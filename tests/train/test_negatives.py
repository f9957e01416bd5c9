"""mDPR's passages per question as DPR samples them, and questions in the retriever's query format."""

from __future__ import annotations

import pytest

from ray_cora.data.training import dpr_example
from ray_cora.models.mdpr import MDPRTask, ctx_slots


def _example(hard: int = 8, other: int = 3, positives: int = 1) -> dict:
    ctx = lambda kind, i: {"title": f"{kind}{i}", "text": f"{kind} passage {i}"}
    return dpr_example({"question": "what is the capital of Peru?", "answers": ["Lima"],
                        "positive_ctxs": [ctx("pos", i) for i in range(positives)],
                        "hard_negative_ctxs": [ctx("hard", i) for i in range(hard)],
                        "negative_ctxs": [ctx("other", i) for i in range(other)]})


def _titles(slots: tuple[list[dict], list[bool]]) -> list[str]:
    return [c["title"] for c, m in zip(*slots) if m]


def test_same_seed_and_epoch_give_the_same_draw_and_epochs_reshuffle_the_pool():
    ex = _example()
    draw = lambda epoch, seed=0: _titles(ctx_slots(ex, 2, shuffle=True, seed=seed, epoch=epoch))
    assert draw(3) == draw(3) == _titles(ctx_slots(dict(ex), 2, shuffle=True, epoch=3))  # no global state
    firsts = {tuple(draw(epoch)) for epoch in range(12)}
    assert len(firsts) > 3  # the draw changes with the epoch
    hard_seen = {t for d in firsts for t in d if t.startswith("hard")}
    assert len(hard_seen) > 2  # more than the first hard negatives come into play
    assert draw(0, seed=1) != draw(0, seed=0) or draw(1, seed=1) != draw(1, seed=0)


def test_negative_ctxs_only_when_asked_and_dpr_order():
    ex = _example()
    titles = _titles(ctx_slots(ex, 2, shuffle=True, epoch=1))
    assert titles[0] == "pos0" and not any(t.startswith("other") for t in titles)
    slots, mask = ctx_slots(ex, 2, 2, shuffle=True, epoch=1)
    kinds = [c["title"].rstrip("0123456789") for c in slots]
    assert kinds == ["pos", "other", "other", "hard", "hard"] and all(mask)  # [pos] + other + hard


def test_shuffle_off_takes_the_first_ones_and_pads_short_pools():
    ex = _example(hard=1, other=0)
    slots, mask = ctx_slots(ex, 3, 1)
    assert [c["title"] for c in slots[:2]] == ["pos0", "hard0"] and mask == [True, True, False, False, False]
    assert _titles(ctx_slots(_example(), 2)) == ["pos0", "hard0", "hard1"]


def test_shuffle_positives_draws_among_all_positives():
    ex = _example(positives=4)
    assert [p["title"] for p in ex["positives"]] == ["pos0", "pos1", "pos2", "pos3"] and ex["positive"]["title"] == "pos0"
    drawn = {ctx_slots(ex, 1, shuffle=True, shuffle_positives=True, epoch=e)[0][0]["title"] for e in range(20)}
    assert len(drawn) > 1
    assert {ctx_slots(ex, 1, shuffle=True, epoch=e)[0][0]["title"] for e in range(20)} == {"pos0"}


def test_dpr_records_keep_their_lang_and_reject_unknown_codes():
    assert "lang" not in _example()
    assert dpr_example({"question": "q", "lang": "ja", "positive_ctxs": [{"text": "x"}]})["lang"] == "ja"
    with pytest.raises(ValueError, match="unknown language code 'xx_yy'"):
        dpr_example({"question": "q", "lang": "xx_yy", "positive_ctxs": [{"text": "x"}]})


@pytest.mark.parametrize("query_format", ["tagged", "plain"])
def test_collated_questions_are_written_in_the_query_format(tiny_bert, query_format):
    task = MDPRTask(init=f"hf:{tiny_bert}", max_length=32, query_format=query_format)
    ja = dpr_example({"question": "日本の首都は？", "lang": "ja", "positive_ctxs": [{"title": "日本", "text": "東京"}]})
    en = dpr_example({"question": "who wrote faust?", "positive_ctxs": [{"title": "Faust", "text": "Goethe"}]})
    assert task.query_texts([ja, en]) == (["日本の首都は？ [ja]", "who wrote faust? [en]"] if query_format == "tagged"
                                          else ["日本の首都は？", "who wrote faust?"])
    batch = task.collate([ja, en], epoch=2)
    q_tower, _ = task.towers()
    decoded = q_tower.tokenizer.decode(batch["questions"]["input_ids"][1], skip_special_tokens=True)
    assert ("[ en ]" in decoded or "[en]" in decoded) == (query_format == "tagged")


def test_query_format_defaults_to_the_init_encoders(tiny_bert, tiny_cpt):
    assert MDPRTask(init=f"hf:{tiny_bert}").query_template == "{question}"
    assert MDPRTask(init=f"dpr:{tiny_cpt}").query_template == "{question} [{lang}]"  # CORA's --add_lang
    assert MDPRTask(init=f"hf:{tiny_bert}", lang="de", query_format="tagged").query_texts(
        [{"question": "wer?"}]) == ["wer? [de]"]
