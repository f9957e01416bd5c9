"""Hybrid fusion (ray_cora.index.fusion) and `ray-cora tune fusion` on tiny data."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from ray_cora import storage
from ray_cora.cli import main
from ray_cora.errors import ConfigError
from ray_cora.index.fusion import (CROSS_LINGUAL_DEFAULT, FUSION_FILE, FusionGrid, FusionQuestion, FusionSetting,
                                   FusionWeights, equal_rrf, evaluate_setting, find_weights, fuse, fuse_question,
                                   fused_scores, lexical_lists, load_weights, merge_by_rank, neutral_terms, pool_rows,
                                   save_weights, sweep, tune_setting, tune_weights)

DENSE = [("a", 0.9), ("b", 0.7), ("c", 0.4)]
BM25 = [("c", 20.0), ("d", 11.0), ("a", 2.0)]


def test_fuse_records_each_passage_rank_in_both_lists():
    hits = fuse(DENSE, BM25, FusionSetting("rrf", 0.5, rrf_k=0))
    sources = {h.pid: h.sources for h in hits}
    assert sources == {"a": {"dense": 1, "bm25": 3}, "b": {"dense": 2, "bm25": None},
                       "c": {"dense": 3, "bm25": 1}, "d": {"dense": None, "bm25": 2}}
    # k=0, equal weights: a = 1/1 + 1/3 ties c = 1/3 + 1/1 (both best ranked 1st: a's dense rank
    # wins); b = 1/2 ties d = 1/2 (both best ranked 2nd: b is in the dense list)
    assert [h.pid for h in hits] == ["a", "c", "b", "d"]
    assert hits[0].score == pytest.approx(0.5 * (1 + 1 / 3))


@pytest.mark.parametrize("method,norm", [("rrf", "minmax"), ("convex", "minmax"), ("convex", "zscore"),
                                         ("convex", "rank")])
def test_weight_one_or_zero_switches_a_side_off(method, norm):
    dense_only = fuse(DENSE, BM25, FusionSetting(method, 1.0, normalization=norm))
    assert [h.pid for h in dense_only][:3] == ["a", "b", "c"]
    bm25_only = fuse(DENSE, BM25, FusionSetting(method, 0.0, normalization=norm))
    assert [h.pid for h in bm25_only][:3] == ["c", "d", "a"]


def test_normalisations_follow_their_formulas():
    def scores(norm, w):
        pids, s = fused_scores(DENSE, BM25, FusionSetting("convex", w, normalization=norm, depth=3))
        return dict(zip(pids, s))

    # min-max: dense (0.9, 0.7, 0.4) → (1, 0.6, 0); missing → 0
    assert scores("minmax", 1.0) == pytest.approx({"a": 1.0, "b": 0.6, "c": 0.0, "d": 0.0})
    # rank: 1 - (rank - 1) / depth, missing → 0
    assert scores("rank", 0.0) == pytest.approx({"c": 1.0, "d": 2 / 3, "a": 1 / 3, "b": 0.0})
    # z-score: missing gets the list's lowest z
    z = (np.array([20.0, 11.0, 2.0]) - 11.0) / np.array([20.0, 11.0, 2.0]).std()
    assert scores("zscore", 0.0) == pytest.approx({"c": z[0], "d": z[1], "a": z[2], "b": z[2]})


def _random_questions(n: int, seed: int) -> list[FusionQuestion]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pool = [f"p{i}" for i in range(30)]
        dense = [(p, float(rng.randint(0, 5))) for p in rng.sample(pool, rng.randint(0, 12))]
        bm25 = [(p, float(rng.randint(0, 3))) for p in rng.sample(pool, rng.randint(0, 12))]
        dense.sort(key=lambda h: -h[1])
        bm25.sort(key=lambda h: -h[1])
        out.append(FusionQuestion(dense, bm25, frozenset(rng.sample(pool, rng.randint(1, 3)))))
    return out


def test_the_vectorised_sweep_ranks_exactly_as_fuse_does():
    # Integer scores and short lists make many ties: the sweep must break them as fuse() does.
    questions = _random_questions(60, seed=3)
    grid = FusionGrid(weights=(0.0, 0.25, 0.5, 0.75, 1.0), rrf_ks=(0, 5, 60), depth=8)
    for row in sweep(questions, grid):
        setting = FusionSetting(row["method"], row["dense_weight"], rrf_k=row["rrf_k"],
                                normalization=row["normalization"], depth=8)
        direct = evaluate_setting(questions, setting)
        assert (row["gold@1"], row["gold@10"]) == pytest.approx((direct["gold@1"], direct["gold@10"])), row


def test_pooled_sweep_equals_a_sweep_of_all_questions_together():
    a, b = _random_questions(13, seed=4), _random_questions(7, seed=5)
    grid = FusionGrid(weights=(0.0, 0.5, 1.0), rrf_ks=(5,), depth=8)
    pooled = pool_rows({"en": sweep(a, grid), "de": sweep(b, grid)}, {"en": 13, "de": 7})
    for got, want in zip(pooled, sweep(a + b, grid)):
        assert got == pytest.approx(want)


def test_tuning_switches_off_a_useless_side():
    rng = random.Random(0)
    questions = []
    for i in range(40):
        pool = [f"p{j}" for j in range(50)]
        gold = f"p{i}"
        perfect = [(gold, 10.0)] + [(p, 5.0 - 0.01 * j) for j, p in enumerate(q for q in pool if q != gold)][:19]
        noise = [(p, 1.0 - 0.01 * j) for j, p in enumerate(rng.sample(pool, 20))]
        questions.append(FusionQuestion(dense=noise, bm25=perfect, gold=frozenset([gold])))
    setting, _ = tune_setting(questions)
    assert evaluate_setting(questions, setting) == {"gold@1": 100.0, "gold@10": 100.0}
    assert evaluate_setting(questions, equal_rrf())["gold@1"] < 100.0  # untuned fusion is hurt by the noise
    flipped = [FusionQuestion(q.bm25, q.dense, q.gold) for q in questions]
    assert evaluate_setting(flipped, tune_setting(flipped)[0])["gold@1"] == 100.0


def test_tune_weights_falls_back_to_the_pooled_setting_for_small_languages():
    questions = _random_questions(30, seed=1)
    weights = tune_weights({"en": questions[:25], "sw": questions[25:]}, FusionGrid(depth=8),
                           min_dev_questions=10)
    assert set(weights.languages) == {"en"} and weights.languages["en"].rule == "tuned"
    assert weights.languages["en"].dev_questions == 25
    assert weights.setting_for("sw") is weights.fallback and weights.fallback.rule == "pooled"
    assert weights.fallback.dev_questions == 30
    assert weights.setting_for("en", has_lexical=False) is None  # dense alone
    assert tune_weights({}, FusionGrid()).fallback == equal_rrf()  # no dev data at all
    cross = FusionSetting("convex", 0.8, rule="cross-lingual")
    assert FusionWeights(no_lexical=cross).setting_for("ja", has_lexical=False) is cross


def test_weights_round_trip_through_fusion_json(tmp_path):
    weights = tune_weights({"en": _random_questions(12, seed=2)}, FusionGrid(depth=8), min_dev_questions=5,
                           no_lexical=FusionSetting("rrf", 0.9, rrf_k=5, rule="cross-lingual"))
    save_weights(weights, str(tmp_path / FUSION_FILE))
    assert load_weights(str(tmp_path)) == weights
    data = json.loads((tmp_path / FUSION_FILE).read_text())
    assert data["version"] == 1 and "no lexical index" in data["rule"]

    data["version"] = 99
    (tmp_path / FUSION_FILE).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="'version' is 99.*tune fusion"):
        load_weights(str(tmp_path / FUSION_FILE))
    data["version"] = 1
    data["languages"]["en"]["weight"] = 0.3
    (tmp_path / FUSION_FILE).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"languages\.en.*unknown keys \['weight'\]"):
        load_weights(str(tmp_path / FUSION_FILE))
    with pytest.raises(ConfigError, match="dense_weight 1.5"):
        FusionSetting("rrf", 1.5)


def test_neutral_terms_keep_numbers_and_names_only():
    assert neutral_terms("Who won Super Bowl 50 in 2016?") == ["50", "2016", "Super", "Bowl"]
    assert neutral_terms("Denver won?") == []  # the first word of a Latin-script question is not a name
    assert neutral_terms("第５０回スーパーボウルはNFLのどのチーム？") == ["50", "NFL"]  # NFKC digits
    assert neutral_terms("Кто такой Tesla?") == ["Tesla"]  # mostly Cyrillic: Latin words are names


def test_merge_by_rank_interleaves_lists_and_keeps_each_pid_once():
    merged = merge_by_rank([[("a", 3.0), ("b", 2.0), ("c", 1.0)], [("b", 9.0), ("d", 4.0)]], depth=3)
    assert merged == [("b", 1.0), ("a", 1.0), ("d", 0.5)]


def _tiny_lexical(root):
    from ray_cora.index.lexical import (LexicalIndex, build_part, commit_lexical_index, part_prefix, passage_terms,
                                        write_part)

    corpus = {"en": [("en-1", "Super Bowl 50 was played in Santa Clara in 2016"), ("en-2", "The Rhine flows north"),
                     ("en-3", "Denver won Super Bowl 50")],
              "de": [("de-1", "Der Super Bowl 50 fand 2016 statt"), ("de-2", "Der Rhein fließt nach Norden")]}
    parts = []
    for number, (lang, rows) in enumerate(sorted(corpus.items())):
        part = build_part([pid for pid, _ in rows], [passage_terms({"text": text}, lang) for _, text in rows])
        prefix = part_prefix(number, lang)
        parts.append({"number": number, "lang": lang, "prefix": prefix, "count": part.count,
                      "total_len": part.total_len, "files": write_part(str(root), prefix, part)})
    commit_lexical_index(str(root), parts, tokenizer="language", k1=0.9, b=0.4)
    return LexicalIndex.open(str(root))


def test_lexical_lists_search_the_question_language_and_neutral_terms_only_without_its_parts(tmp_path):
    """What the pipeline's BM25 actors and the Serve retriever both compute per question."""
    index = _tiny_lexical(tmp_path)
    own = lexical_lists(index, "Where was Super Bowl 50 played?", "en", 2, neutral=True)
    scores, pids = index.search_one("Where was Super Bowl 50 played?", "en", 2)
    assert own == {"hits": [[p, s] for p, s in zip(pids, scores)], "has_lexical": True} and pids[0] == "en-1"
    question = "Super Bowl 50 ilichezwa wapi mwaka 2016?"  # sw: no parts; its neutral terms: 50, 2016, Bowl
    assert lexical_lists(index, question, "sw", 3) == {"hits": [], "has_lexical": False}
    crossed = lexical_lists(index, question, "sw", 3, neutral=True)
    terms = " ".join(neutral_terms(question))
    expected = merge_by_rank([list(zip(*reversed(index.search_one(terms, lang, 3)))) for lang in ("de", "en")], 3)
    assert crossed["neutral"] == expected and {"en-1", "de-1"} <= {pid for pid, _ in expected}
    # fuse_question reads these: bm25 alone ranks the hits; hybrid fuses the neutral hits for sw.
    assert fuse_question("en", None, own, retriever="bm25", weights=None, k=5) == \
        [(p, s, {"bm25": r}) for r, (p, s) in enumerate(zip(pids, scores), 1)]
    setting = FusionSetting("rrf", 0.5, rule="no-lexical")
    fused = fuse_question("sw", [("x", 0.9)], crossed, retriever="hybrid", weights=FusionWeights(no_lexical=setting),
                          k=3)
    assert fused == [(h.pid, h.score, h.sources) for h in fuse([("x", 0.9)], expected, setting, 3)]


def test_find_weights_takes_fusion_then_the_lexical_index_then_the_dense_index(tmp_path):
    lexical, dense, given = (tmp_path / name for name in ("bm25", "dense", "given.json"))
    lexical.mkdir()
    dense.mkdir()
    assert find_weights(None, str(lexical), str(dense)) == (FusionWeights(), None)
    in_dense = FusionWeights(fallback=FusionSetting("rrf", 0.2, rule="pooled"))
    save_weights(in_dense, str(dense / FUSION_FILE))
    assert find_weights(None, str(lexical), str(dense)) == (in_dense, str(dense))
    in_lexical = FusionWeights(fallback=FusionSetting("rrf", 0.7, rule="pooled"))
    save_weights(in_lexical, str(lexical / FUSION_FILE))
    assert find_weights(None, str(lexical), str(dense)) == (in_lexical, str(lexical))
    save_weights(FusionWeights(), str(given))
    assert find_weights(str(given), str(lexical), str(dense)) == (FusionWeights(), str(given))
    assert find_weights(None, None, None) == (FusionWeights(), None)


def _write_retrieval(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_tune_fusion_writes_fusion_json_into_a_committed_index(tmp_path, capsys):
    # en: BM25 ranks the gold first, dense ranks it last; de: the other way round. Tuning must pick
    # a BM25-heavy setting for en and a dense-heavy one for de.
    dense_rows, bm25_rows = [], []
    for i in range(12):
        for lang, good in (("en", "bm25"), ("de", "dense")):
            gold = f"{lang}-{i}"
            others = [f"{lang}-x{j}" for j in range(5)]
            strong = [gold, *others]
            weak = [*others, gold]
            ctx = lambda pids: [{"pid": p, "score": 10.0 - r} for r, p in enumerate(pids)]  # noqa: E731
            base = {"qid": str(i), "lang": lang, "question": "q", "answers": ["x"], "gold_pids": [gold]}
            dense_rows.append({**base, "ctxs": ctx(strong if good == "dense" else weak)})
            bm25_rows.append({**base, "ctxs": ctx(strong if good == "bm25" else weak)})
    _write_retrieval(tmp_path / "dense.jsonl", dense_rows)
    _write_retrieval(tmp_path / "bm25.jsonl", bm25_rows)
    index = tmp_path / "index"
    writer = storage.ArtifactWriter(str(index), kind="index")
    writer.write_bytes("shard.bin", b"x")
    writer.commit({"search_params": {"nprobe": 4}})

    rc = main(["tune", "fusion", "--dense", str(tmp_path / "dense.jsonl"), "--bm25", str(tmp_path / "bm25.jsonl"),
               "--index", str(index), "--min-dev-questions", "10"])
    assert rc == 0
    artifact = storage.Artifact(str(index))
    artifact.verify(FUSION_FILE)  # listed in the manifest with its checksum
    assert artifact.manifest["search_params"] == {"nprobe": 4}  # the rest of the manifest is kept
    assert artifact.manifest["fusion"]["languages"] == ["de", "en"]
    weights = load_weights(str(index))
    assert weights.setting_for("en").dense_weight < 0.5 < weights.setting_for("de").dense_weight
    assert weights.setting_for("fr").rule == "pooled"
    assert "| en | 12 | tuned:" in capsys.readouterr().out

    # Languages without a lexical index: the measured neutral-term setting by default, a tuned one
    # with --neutral, the dense list alone with --cross-lingual false.
    assert weights.setting_for("ja", has_lexical=False) == CROSS_LINGUAL_DEFAULT
    args = ["tune", "fusion", "--dense", str(tmp_path / "dense.jsonl"), "--bm25", str(tmp_path / "bm25.jsonl"),
            "--neutral", str(tmp_path / "bm25.jsonl"), "--out", str(tmp_path / "f.json"), "--methods", "rrf"]
    assert main(args) == 0
    neutral = load_weights(str(tmp_path / "f.json")).setting_for("ja", has_lexical=False)
    assert neutral.rule == "cross-lingual" and neutral.method == "rrf" and neutral.dev_questions == 24
    assert main([*args, "--cross-lingual", "false"]) == 0
    assert load_weights(str(tmp_path / "f.json")).setting_for("ja", has_lexical=False) is None
    (tmp_path / "f.json").unlink()

    _write_retrieval(tmp_path / "bm25_short.jsonl", bm25_rows[:-1])
    rc = main(["tune", "fusion", "--dense", str(tmp_path / "dense.jsonl"), "--bm25",
               str(tmp_path / "bm25_short.jsonl"), "--out", str(tmp_path / "f.json")])
    assert rc == 2 and "has no record for question '11' (de)" in capsys.readouterr().err
    assert not (tmp_path / "f.json").exists()
