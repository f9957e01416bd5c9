"""The sharded lexical index: scores and top-k equal one BM25 over all passages of a language."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ray_cora.index.bm25 import BM25Index
from ray_cora.index.lexical import (
    LexicalIndex,
    StringTable,
    build_part,
    commit_lexical_index,
    part_prefix,
    passage_terms,
    write_part,
)

WORDS = [f"w{i}" for i in range(40)] + ["rhein", "straße", "köln", "東京", "3776"]


def _corpus(seed: int, n: int, lang: str) -> list[dict]:
    rng = random.Random(seed)
    return [{"pid": f"{lang}-{i}", "lang": lang, "title": rng.choice(WORDS) if i % 3 else "",
             # Zipf-ish: a few frequent words, many rare ones; lengths from 1 to 30 terms
             "text": " ".join(rng.choice(WORDS[:8] if rng.random() < 0.5 else WORDS)
                              for _ in range(rng.randint(1, 30)))} for i in range(n)]


def _build(root, passages: list[dict], cuts: list[int]) -> LexicalIndex:
    """Cut ``passages`` into shards of the sizes in ``cuts`` (repeating), each split per language."""
    parts, at, number = [], 0, 0
    while at < len(passages):
        shard = passages[at:at + cuts[number % len(cuts)]]
        at += len(shard)
        for lang in sorted({p["lang"] for p in shard}):
            group = [p for p in shard if p["lang"] == lang]
            part = build_part([p["pid"] for p in group], [passage_terms(p, lang) for p in group])
            prefix = part_prefix(number, lang)
            parts.append({"number": number, "lang": lang, "prefix": prefix, "count": part.count,
                          "total_len": part.total_len, "files": write_part(str(root), prefix, part)})
        number += 1
    commit_lexical_index(str(root), parts, tokenizer="language", k1=0.9, b=0.4)
    return LexicalIndex.open(str(root))


def _assert_same_topk(got_scores, got_pids, ref_scores, ref_pids, reference_all):
    """Same scores (1e-5) at every rank; same pids wherever the score is not tied at the cut."""
    assert len(got_pids) == len(ref_pids)
    np.testing.assert_allclose(got_scores, ref_scores, atol=1e-5, rtol=0)
    for pid, score in zip(got_pids, got_scores):
        assert reference_all[pid] == pytest.approx(score, abs=1e-5)  # the passage's own global score
    if ref_scores:
        cut = ref_scores[-1]
        assert {p for p, s in zip(got_pids, got_scores) if s > cut + 1e-5} == \
            {p for p, s in zip(ref_pids, ref_scores) if s > cut + 1e-5}


@pytest.mark.parametrize("cuts", [[1], [7], [13, 1, 5], [1000]])
def test_sharded_bm25_equals_one_bm25_per_language(tmp_path, cuts):
    en, de = _corpus(1, 53, "en"), _corpus(2, 29, "de")
    mixed = [p for pair in zip(en, de) for p in pair] + en[len(de):]  # languages interleaved in shards
    index = _build(tmp_path, mixed, cuts)
    assert sorted(index.languages) == ["de", "en"] and len(index) == 82
    rng = random.Random(3)
    questions = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(25)]
    questions += ["w0 w0 w1", "Rhein Straße", "nothing-here-at-all"]
    for lang, passages in (("en", en), ("de", de)):
        reference = BM25Index(passages, lang)
        all_scores, all_pids = reference.search(questions, k=len(passages))
        for k in (1, 5, 17):
            ref_scores, ref_pids = reference.search(questions, k=k)
            got_scores, got_pids = index.search(questions, [lang] * len(questions), k=k)
            for i in range(len(questions)):
                _assert_same_topk(got_scores[i], got_pids[i], ref_scores[i], ref_pids[i],
                                  dict(zip(all_pids[i], all_scores[i])))


def test_a_language_without_parts_gets_empty_lists(tmp_path):
    index = _build(tmp_path, _corpus(1, 10, "en"), [4])
    assert index.search(["w1 w2", "w1"], ["fr", "en"], k=3) == ([[], index.search(["w1"], "en", 3)[0][0]],
                                                                [[], index.search(["w1"], "en", 3)[1][0]])
    assert index.search(["w1"], "en", 3)[1][0]  # the English question does find passages


def test_string_table_finds_by_utf8_order():
    words = sorted(["b", "a", "é", "z", "東京", "ab"], key=lambda w: w.encode("utf-8"))
    table = StringTable.from_strings(words)
    assert [table.find(w) for w in words] == list(range(len(words)))
    assert table.find("aa") == -1 and table.find("") == -1 and table.find("ｚ") == -1
