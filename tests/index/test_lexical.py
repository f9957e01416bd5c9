"""The sharded lexical index: scores and top-k equal one BM25 over all passages of a language."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from ray_cora.index.bm25 import BM25Index
from ray_cora.index.lexical import (
    LexicalIndex,
    PartBuilder,
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


# Each part is scored with a dense accumulator (0: always), over the touched passages only (inf:
# never), or by the default rule (postings read vs part size): all three must equal bm25s.
@pytest.mark.parametrize("dense_above", [0.0, math.inf, None], ids=["dense", "sparse", "default"])
@pytest.mark.parametrize("cuts", [[1], [7], [13, 1, 5], [1000]])
def test_sharded_bm25_equals_one_bm25_per_language(tmp_path, cuts, dense_above):
    en, de = _corpus(1, 53, "en"), _corpus(2, 29, "de")
    mixed = [p for pair in zip(en, de) for p in pair] + en[len(de):]  # languages interleaved in shards
    index = _build(tmp_path, mixed, cuts)
    if dense_above is not None:
        index.dense_above = dense_above
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
    assert StringTable.from_strings([]).find("a") == -1 and StringTable.from_strings([""]).find("") == 0


def test_dense_and_sparse_part_search_give_the_same_floats(tmp_path):
    index = _build(tmp_path, _corpus(4, 300, "en"), [120])
    questions = ["w0 w1 w2", "w0 w0 rhein", "w39 köln 3776", "w5"]
    index.dense_above = 0.0
    dense = index.search(questions, "en", k=50)
    index.dense_above = math.inf
    assert index.search(questions, "en", k=50) == dense
    assert all(len(pids) == 50 for pids in dense[1][:2])  # deep enough lists to compare


def _build_part_by_loop(pids, docs_terms):
    """The per-posting loop build_part replaced: the same arrays, written the obvious way."""
    counts = [Counter(terms) for terms in docs_terms]
    vocab = sorted({t for c in counts for t in c}, key=lambda t: t.encode("utf-8"))
    ids = {t: i for i, t in enumerate(vocab)}
    postings = sorted((ids[t], row, tf) for row, c in enumerate(counts) for t, tf in c.items())
    indptr = np.searchsorted([p[0] for p in postings], np.arange(len(vocab) + 1))
    return vocab, indptr, [p[1] for p in postings], [p[2] for p in postings], [len(t) for t in docs_terms]


@pytest.mark.parametrize("docs_terms", [
    [],
    [[]],
    [[], ["x"], []],
    [["é", "z", "東京", "ab", "a", "ｚ", "\U0001F600", "é"], ["a"] * 70_000, ["z", "a", "z"]],  # uint32 tf
    [("t", "u", "t")],
    [[random.Random(i).choice(WORDS) for _ in range(random.Random(-i).randint(0, 40))] for i in range(200)],
])
@pytest.mark.parametrize("chunk", [None, 1, 3])  # None: build_part; else a PartBuilder encoding every `chunk` passages
def test_build_part_equals_the_per_posting_loop(docs_terms, chunk):
    pids = [f"p{i}" for i in range(len(docs_terms))]
    if chunk is None:
        part = build_part(pids, docs_terms)
    else:
        builder = PartBuilder(chunk=chunk)
        for pid, terms in zip(pids, docs_terms):
            builder.add(pid, terms)
        part = builder.build()
    vocab, indptr, docs, tfs, lengths = _build_part_by_loop(pids, docs_terms)
    assert [part.terms[i] for i in range(len(part.terms))] == vocab
    assert part.indptr.dtype == np.int64 and part.indptr.tolist() == list(indptr)
    assert part.docs.dtype == np.int32 and part.docs.tolist() == docs
    assert part.tfs.tolist() == tfs
    assert part.tfs.dtype == (np.uint32 if max(tfs, default=0) > 65535 else np.uint16)
    assert part.doc_len.dtype == np.int32 and part.doc_len.tolist() == lengths
    assert [part.pids[i] for i in range(len(part.pids))] == pids
