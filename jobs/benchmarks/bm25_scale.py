"""ray_cora's sharded BM25 (``ray_cora.index.lexical``) against one ``bm25s`` BM25, at CORA-like scale.

    python jobs/benchmarks/bm25_scale.py --sizes 100000,300000,1000000 --shard-size 100000,1000000

Synthetic English-like passages: ``--words`` words each (100, CORA's passage length), drawn from
a Zipfian vocabulary (exponent ``--zipf`` 1.0 over ``--vocab`` 200,000 made-up lowercase words,
the shortest words the most common, seeded): the commonest term is in nearly every passage, as
"the" is in English. Questions are ``--question-words`` 8 words, each drawn from the same Zipfian
distribution or, half the time, uniformly from the vocabulary (a content word: mostly rare), so a
question has both common and rare terms. Words are lowercase letters only, so
``bm25_tokens(text, "en")`` returns them unchanged and both sides index the same tokens.

Each size is cut into parts of every ``--shard-size`` no larger than it (100,000, and 1,000,000:
``index-bm25``'s default; one ``build_part`` per shard, as one task builds it), and measured for

- **build**: ``build_part`` passages/s (one process = one task's rate), before and after the
  vectorised build (the old per-posting loop is kept below as :func:`build_part_before`,
  interleaved on ``--build-sample`` passages), ``write_part`` passages/s, the tokenizer's
  passages/s (what a task also spends, from passage text), bytes per passage on disk, and the
  bytes a passage's terms hold as Python lists and in a ``PartBuilder``;
- **search**: ``LexicalIndex.search_one`` q/s and p50/p95 ms per question, k = ``--k``, *after*
  (the library now: dense or sparse accumulator by postings read, memoryview term look-ups, only
  the kept pids decoded) and *before* (:class:`BeforeIndex`: the code it replaced, copied here),
  beside one ``bm25s`` index (``method="lucene"``, same k1/b, same tokens, one thread,
  pre-tokenised questions) over all passages, interleaved (before, after, bm25s per repeat),
  ``--repeats`` times; ratios per repeat, reported as median (min–max);
- **equality**: the fraction of questions whose top-k (scores to 1e-5 relative, and ids wherever
  the score is not tied at the cut) equals bm25s's, and whose (scores, ids) after are identical
  to before.

Then a projection to ``--project`` passages (21M: CORA's English) from the measured linear rates.
Writes docs/results/bm25_scale.{json,md} (or ``--results PATH.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from ray_cora import storage
from ray_cora.index import lexical
from ray_cora.index.bm25 import DEFAULT_B, DEFAULT_K1, bm25_tokens
from ray_cora.index.lexical import (
    LexicalIndex,
    PartArrays,
    PartBuilder,
    StringTable,
    build_part,
    commit_lexical_index,
    part_prefix,
    write_part,
)
from ray_cora.index.sharded import merge_pid_arrays

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "bm25_scale.json"
GENERATE_BLOCK = 100_000


# -- synthetic corpus ---------------------------------------------------------------------------

def vocabulary(size: int, seed: int) -> list[str]:
    """``size`` distinct made-up lowercase words, shortest first (rank 0 is the commonest term)."""
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < size:
        lengths = np.clip(rng.poisson(6, size), 2, 14)
        letters = rng.integers(ord("a"), ord("z") + 1, (size, 14), dtype=np.uint8)
        for row, length in zip(letters, lengths):
            words.setdefault(row[:length].tobytes().decode("ascii"), None)
            if len(words) == size:
                break
    return sorted(words, key=len)


def zipf_probabilities(size: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** exponent
    return p / p.sum()


def passage_word_ids(number: int, count: int, words: int, probs: np.ndarray, seed: int) -> np.ndarray:
    """(count, words) int32 vocabulary ranks of shard ``number``'s passages (seeded per shard)."""
    rng = np.random.default_rng([seed, 1, number])
    cdf = np.cumsum(probs)
    return np.minimum(np.searchsorted(cdf, rng.random((count, words))), len(probs) - 1).astype(np.int32)


def question_word_ids(count: int, words: int, probs: np.ndarray, seed: int) -> np.ndarray:
    """(count, words): each word Zipfian (a common one, mostly) or, half the time, uniform over the
    vocabulary (a content word, mostly rare)."""
    rng = np.random.default_rng([seed, 2])
    zipf = np.minimum(np.searchsorted(np.cumsum(probs), rng.random((count, words))), len(probs) - 1)
    uniform = rng.integers(0, len(probs), (count, words))
    return np.where(rng.random((count, words)) < 0.5, zipf, uniform).astype(np.int32)


def as_terms(ids: np.ndarray, vocab: np.ndarray) -> list[list[str]]:
    return vocab[ids].tolist()


# -- the code this benchmark's changes replaced (copied from ray_cora.index.lexical before them) -----

def build_part_before(pids: Sequence[str], docs_terms: Sequence[Sequence[str]]) -> PartArrays:
    """``build_part`` before vectorisation: a Python loop over every (term, tf) of every passage."""
    counts = [Counter(terms) for terms in docs_terms]
    vocab = sorted({t for c in counts for t in c}, key=lambda t: t.encode("utf-8"))
    ids = {t: i for i, t in enumerate(vocab)}
    n_post = sum(len(c) for c in counts)
    term_ids = np.empty(n_post, np.int64)
    docs = np.empty(n_post, np.int32)
    tfs = np.empty(n_post, np.int64)
    at = 0
    for row, c in enumerate(counts):
        for term, tf in c.items():
            term_ids[at], docs[at], tfs[at] = ids[term], row, tf
            at += 1
    order = np.lexsort((docs, term_ids))
    indptr = np.zeros(len(vocab) + 1, np.int64)
    np.cumsum(np.bincount(term_ids, minlength=len(vocab)), out=indptr[1:])
    tf_type = np.uint16 if (tfs.max(initial=0) <= np.iinfo(np.uint16).max) else np.uint32
    return PartArrays(StringTable.from_strings(vocab), indptr, docs[order], tfs[order].astype(tf_type),
                      np.array([len(t) for t in docs_terms], np.int32), StringTable.from_strings(list(pids)))


class StringTableBefore(StringTable):
    """``StringTable`` before: ``raw``/``find`` slicing the (memory-mapped) arrays themselves."""

    def raw(self, i: int) -> bytes:
        return self.blob[int(self.offsets[i]):int(self.offsets[i + 1])].tobytes()

    def find(self, term: str) -> int:
        key = term.encode("utf-8")
        lo, hi = 0, len(self)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.raw(mid) < key:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(self) and self.raw(lo) == key else -1


def open_part_before(artifact: storage.Artifact, prefix: str, cache: str) -> PartArrays:
    """``_open_part`` before: the arrays as ``np.memmap`` objects."""
    def load(name: str) -> np.ndarray:
        path = artifact.local_path(f"{prefix}/{name}", cache_dir=cache)
        if name.endswith(".bin"):
            return np.memmap(path, np.uint8, mode="r") if os.path.getsize(path) else np.zeros(0, np.uint8)
        return np.load(path, mmap_mode="r", allow_pickle=False)

    return PartArrays(StringTableBefore(load("terms.bin"), load("terms.npy")), load("indptr.npy"),
                      load("docs.npy"), load("tfs.npy"), load("doc_len.npy"),
                      StringTableBefore(load("pids.bin"), load("pids.npy")))


class BeforeIndex(LexicalIndex):
    """The lexical index as it searched before: memory-mapped arrays indexed directly, a
    ``np.unique`` over all postings of a part, every part's top-k pids decoded and merged."""

    @classmethod
    def open(cls, uri: str, *, cache_dir: str | None = None, k1: float | None = None,
             b: float | None = None) -> "BeforeIndex":
        artifact = storage.Artifact(uri, kind=lexical.LEXICAL_KIND)
        cache = cache_dir or storage.default_cache_dir("lexical")
        languages = {}
        for lang, stats in artifact.manifest["languages"].items():
            entry = lexical._Language(int(stats["passages"]), float(stats["avgdl"]))
            entry.parts = [open_part_before(artifact, prefix, cache) for prefix in stats["parts"]]
            languages[lang] = entry
        manifest = artifact.manifest
        return cls(manifest, languages, k1=manifest["k1"] if k1 is None else k1,
                   b=manifest["b"] if b is None else b)

    def search_one(self, question: str, lang: str, k: int) -> tuple[list[float], list[str]]:
        language = self._languages.get(lang)
        if language is None:
            return [], []
        weights = Counter(bm25_tokens(question, lang, self.tokenizer))
        if not weights:
            return [], []
        rows = [[part.terms.find(term) for term in weights] for part in language.parts]
        df = [sum(part.df(r[j]) for part, r in zip(language.parts, rows) if r[j] >= 0)
              for j in range(len(weights))]
        n = language.passages
        idf = [math.log(1 + (n - d + 0.5) / (d + 0.5)) for d in df]
        partials = [self._search_part(part, r, idf, list(weights.values()), language.avgdl, k)
                    for part, r in zip(language.parts, rows)]
        top_scores, top_pids = merge_pid_arrays(partials, k)
        row = top_pids[0]
        return [float(s) for s in top_scores[0][:len(row)]], row

    def _search_part(self, part: PartArrays, rows: list[int], idf: list[float],  # type: ignore[override]
                     weights: list[int], avgdl: float, k: int) -> tuple[np.ndarray, np.ndarray]:
        doc_chunks, score_chunks = [], []
        for row, term_idf, weight in zip(rows, idf, weights):
            if row < 0:
                continue
            start, end = int(part.indptr[row]), int(part.indptr[row + 1])
            docs = np.asarray(part.docs[start:end])
            tf = np.asarray(part.tfs[start:end], np.float64)
            norm = self.k1 * (1 - self.b + self.b * np.asarray(part.doc_len[docs], np.float64) / avgdl)
            doc_chunks.append(docs)
            score_chunks.append(weight * term_idf * tf / (tf + norm))
        touched, where = np.unique(np.concatenate(doc_chunks or [np.zeros(0, np.int32)]), return_inverse=True)
        scores = np.bincount(where, weights=np.concatenate(score_chunks or [np.zeros(0)]), minlength=len(touched))
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        hits = hits[np.argsort(-scores[hits], kind="stable")]
        out_scores = np.full((1, k), -np.inf, np.float64)
        out_pids = np.full((1, k), None, dtype=object)
        out_scores[0, :len(hits)] = scores[hits]
        out_pids[0, :len(hits)] = [part.pids[int(touched[h])] for h in hits]
        return out_scores, out_pids


# -- measuring ----------------------------------------------------------------------------------

def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def same_topk(got_scores: Sequence[float], got_pids: Sequence[str], ref_scores: Sequence[float],
              ref_pids: Sequence[str], *, rtol: float = 1e-5) -> bool:
    """Equal scores at every rank (``rtol``: bm25s keeps float32) and equal ids above the score tied
    at the cut (which of several passages tied at the k-th score comes first is arbitrary)."""
    if len(got_pids) != len(ref_pids):
        return False
    if not np.allclose(got_scores, ref_scores, rtol=rtol, atol=rtol):
        return False
    if not ref_scores:
        return True
    cut = ref_scores[-1] * (1 + rtol) + rtol
    return {p for p, s in zip(got_pids, got_scores) if s > cut} == {p for p, s in zip(ref_pids, ref_scores) if s > cut}


def percentile_ms(seconds: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(seconds) * 1000, q)), 2)


def time_per_question(search: Callable[[int], Any], count: int) -> tuple[list[float], list[Any]]:
    times, answers = [], []
    for i in range(count):
        started = time.perf_counter()
        answers.append(search(i))
        times.append(time.perf_counter() - started)
    return times, answers


def build_rates(args: argparse.Namespace, vocab: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """build_part before/after (interleaved, on shard 0), the tokenizer's rate on a sample, and the
    memory a shard's terms take as Python lists (the pipeline's buffer before) and in a
    ``PartBuilder`` (Python strings dropped every chunk)."""
    count = min(args.shard_sizes[0], args.build_sample)
    terms = as_terms(passage_word_ids(0, count, args.words, probs, args.seed), vocab)
    pids = [f"p{i}" for i in range(count)]
    for build in (build_part_before, build_part):  # warm-up: imports, first-call set-up
        build(pids[:100], terms[:100])
    rates: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.repeats):
        for name, build in (("before", build_part_before), ("after", build_part)):
            started = time.perf_counter()
            part = build(pids, terms)
            rates[name].append(count / (time.perf_counter() - started))
            del part
    same = _same_arrays(build_part_before(pids, terms), build_part(pids, terms))
    texts = [" ".join(t) for t in terms[:args.tokenize_sample]]
    bm25_tokens(texts[0], "en")  # compiles the Unicode-word pattern once
    started = time.perf_counter()
    tokens = [bm25_tokens(text, "en") for text in texts]
    tokenize = len(texts) / (time.perf_counter() - started)
    assert tokens == terms[:len(texts)], "the synthetic words must be their own tokens"
    del tokens
    return {"passages": count, "build_part_per_s": {n: summary(v) for n, v in rates.items()},
            "speedup": summary([a / b for a, b in zip(rates["after"], rates["before"])]),
            "same_arrays": same, "tokenize_per_s": round(tokenize, 1),
            "terms_bytes_per_passage": terms_memory(texts, pids)}


def terms_memory(texts: list[str], pids: list[str]) -> dict[str, float]:
    """Bytes per passage its tokens hold: as fresh Python lists of ``str`` (what ``bm25_tokens``
    returns), and once added to a ``PartBuilder`` (numpy via tracemalloc, plus Arrow's pool),
    over whole chunks (none left pending as Python strings)."""
    tracemalloc.start()
    held = tracemalloc.get_traced_memory()[0]
    lists = [bm25_tokens(text, "en") for text in texts]
    as_lists = (tracemalloc.get_traced_memory()[0] - held) / len(texts)
    del lists
    chunk = min(PartBuilder().chunk, len(texts))
    texts = texts[:len(texts) // chunk * chunk]
    builder = PartBuilder(chunk)
    arrow = pa.total_allocated_bytes()
    held = tracemalloc.get_traced_memory()[0]
    for pid, text in zip(pids, texts):
        builder.add(pid, bm25_tokens(text, "en"))
    in_builder = (tracemalloc.get_traced_memory()[0] - held + pa.total_allocated_bytes() - arrow) / len(texts)
    tracemalloc.stop()
    return {"python_lists": round(as_lists, 1), "part_builder": round(in_builder, 1)}


def _same_arrays(a: PartArrays, b: PartArrays) -> bool:
    pairs = [(a.terms.blob, b.terms.blob), (a.terms.offsets, b.terms.offsets), (a.indptr, b.indptr),
             (a.docs, b.docs), (a.tfs, b.tfs), (a.doc_len, b.doc_len), (a.pids.blob, b.pids.blob),
             (a.pids.offsets, b.pids.offsets)]
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in pairs)


def corpus_terms(n: int, args: argparse.Namespace, vocab: np.ndarray, probs: np.ndarray) -> list[list[str]]:
    """The first ``n`` synthetic passages' words (blocks of 100,000 seeded by number, so a size's
    passages do not depend on how they are cut)."""
    terms: list[list[str]] = []
    for block, start in enumerate(range(0, n, GENERATE_BLOCK)):
        count = min(GENERATE_BLOCK, n - start)
        terms.extend(as_terms(passage_word_ids(block, count, args.words, probs, args.seed), vocab))
    return terms


def build_index(folder: Path, terms: list[list[str]], shard_size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Cut ``terms`` into parts of ``shard_size``, build and write each, commit; the timings."""
    parts = []
    build_s = write_s = 0.0
    for number, start in enumerate(range(0, len(terms), shard_size)):
        chunk = terms[start:start + shard_size]
        pids = [f"p{start + i}" for i in range(len(chunk))]
        started = time.perf_counter()
        part = build_part(pids, chunk)
        build_s += time.perf_counter() - started
        started = time.perf_counter()
        prefix = part_prefix(number, "en")
        parts.append({"number": number, "lang": "en", "prefix": prefix, "count": part.count,
                      "total_len": part.total_len, "files": write_part(str(folder), prefix, part)})
        write_s += time.perf_counter() - started
        del part
    commit_lexical_index(str(folder), parts, tokenizer="language", k1=args.k1, b=args.b)
    size = sum(f["size"] for p in parts for f in p["files"].values())
    return {"parts": len(parts), "bytes": size, "bytes_per_passage": round(size / len(terms), 1),
            "build_part_per_s": round(len(terms) / build_s, 1), "write_part_per_s": round(len(terms) / write_s, 1)}


def measure_size(n: int, args: argparse.Namespace, vocab: np.ndarray, probs: np.ndarray,
                 work: Path) -> list[dict[str, Any]]:
    """One row per shard size no larger than ``n`` (and ``n`` itself when all are larger): the
    same passages and questions, one bm25s index for all rows."""
    import bm25s

    terms = corpus_terms(n, args, vocab, probs)
    started = time.perf_counter()
    reference = bm25s.BM25(k1=args.k1, b=args.b, method="lucene")
    reference.index(terms, show_progress=False)
    bm25s_build_s = time.perf_counter() - started
    q_terms = as_terms(question_word_ids(args.queries, args.question_words, probs, args.seed + n), vocab)
    questions = [" ".join(t) for t in q_terms]
    k = args.k

    def bm25s_search(i: int) -> tuple[list[float], list[str]]:
        docs, scores = reference.retrieve([q_terms[i]], k=k, show_progress=False, n_threads=0)
        keep = [(float(s), f"p{d}") for d, s in zip(docs[0], scores[0]) if s > 0]
        return [s for s, _ in keep], [p for _, p in keep]

    rows = []
    for shard_size in sorted({s for s in args.shard_sizes if s <= n} or {n}):
        folder = work / f"bm25-{n}-{shard_size}"
        entry: dict[str, Any] = {"n": n, "shard_size": shard_size, **build_index(folder, terms, shard_size, args),
                                 "bm25s_build_s": round(bm25s_build_s, 1)}
        after = LexicalIndex.open(str(folder), cache_dir=str(work / "cache"))
        before = BeforeIndex.open(str(folder), cache_dir=str(work / "cache"))
        variants: dict[str, Callable[[int], Any]] = {
            "before": lambda i: before.search_one(questions[i], "en", k),
            "after": lambda i: after.search_one(questions[i], "en", k),
            "bm25s": bm25s_search,
        }
        times: dict[str, list[list[float]]] = {name: [] for name in variants}
        answers: dict[str, list[Any]] = {}
        for _ in range(args.repeats):  # interleaved: each repeat runs every variant over all questions
            for name, search in variants.items():
                seconds, answers[name] = time_per_question(search, len(questions))
                times[name].append(seconds)
        qps = {name: [len(questions) / sum(t) for t in runs] for name, runs in times.items()}
        postings = [sum(int(p.indptr[r + 1] - p.indptr[r]) for p in after._languages["en"].parts
                        for r in [p.terms.find(t) for t in set(q)] if r >= 0) for q in q_terms]
        entry.update({
            "postings_per_question": {"median": int(np.median(postings)), "max": int(max(postings))},
            "qps": {name: summary(v) for name, v in qps.items()},
            "p50_ms": {name: percentile_ms([s for run in runs for s in run], 50) for name, runs in times.items()},
            "p95_ms": {name: percentile_ms([s for run in runs for s in run], 95) for name, runs in times.items()},
            "ratio_vs_bm25s": {name: summary([a / b for a, b in zip(qps[name], qps["bm25s"])])
                               for name in ("before", "after")},
            "speedup": summary([a / b for a, b in zip(qps["after"], qps["before"])]),
            "equal_to_bm25s": {name: float(np.mean([same_topk(*answers[name][i], *answers["bm25s"][i])
                                                    for i in range(len(questions))])) for name in ("before", "after")},
            "after_identical_to_before": float(np.mean([a == b for a, b in zip(answers["after"], answers["before"])])),
            "peak_rss_gib": peak_rss_gib()})
        print(json.dumps(entry))
        rows.append(entry)
        variants.clear()
        after = before = None  # type: ignore[assignment]
    return rows


def projection(results: dict[str, Any], target: int, parts_per_searcher: int | None) -> list[dict[str, Any]]:
    """Linear extrapolation to ``target`` passages from the largest size, per shard size measured
    there (labelled as a projection in the report)."""
    largest = max(s["n"] for s in results["sizes"])
    out = []
    for row in (s for s in results["sizes"] if s["n"] == largest):
        shard = row["shard_size"]
        per_passage_s = 1 / row["build_part_per_s"] + 1 / row["write_part_per_s"] + \
            1 / results["build"]["tokenize_per_s"]
        parts = math.ceil(target / shard)
        held = parts_per_searcher or parts
        out.append({
            "passages": target, "from_n": largest, "shard_size": shard, "parts": parts,
            "build_cpu_hours": round(target * per_passage_s / 3600, 2),
            "tokenize_share": round(1 / results["build"]["tokenize_per_s"] / per_passage_s, 2),
            "disk_gb": round(target * row["bytes_per_passage"] / 1e9, 1),
            # a searcher maps its parts (shared page cache); its own heap per question is the
            # dense accumulator of one part at a time: 8 bytes per passage of the part
            "parts_per_searcher": held, "searcher_mapped_gb": round(held * shard * row["bytes_per_passage"] / 1e9, 2),
            "searcher_scratch_mb": round(8 * shard / 1e6, 1),
            "task_terms_gb": {name: round(shard * b / 1e9, 2)
                              for name, b in results["build"]["terms_bytes_per_passage"].items()},
            "search_ms_per_question": round(row["p50_ms"]["after"] * target / largest, 1)})
    return out


def to_markdown(results: dict[str, Any]) -> str:
    b = results["build"]
    memory = b["terms_bytes_per_passage"]
    lines = ["# BM25 at scale: ray_cora's sharded lexical index vs one bm25s BM25", "",
             f"{results['machine']}; load before the run: {results['load_before']}, after: {results['load_after']}. "
             f"Synthetic passages of {results['words']} words from a Zipfian vocabulary of {results['vocab']:,} "
             f"terms (exponent {results['zipf']}), {results['queries']} questions of {results['question_words']} "
             f"words (each Zipfian or uniform over the vocabulary, half and half), k={results['k']}, "
             f"k1={results['k1']}, b={results['b']}, {results['repeats']} interleaved repeats (before, after, "
             "bm25s); one process, one thread; q/s and ratios are median (min–max) over the repeats, p50/p95 "
             "over all questions of all repeats. *Before*: the code this change replaced (copied into the "
             "benchmark); *after*: `ray_cora.index.lexical` now.", "",
             f"**Build** (one process = one `index-bm25` task; {b['passages']:,} passages): `build_part` "
             f"before {b['build_part_per_s']['before']['median']:,.0f} passages/s, after "
             f"{b['build_part_per_s']['after']['median']:,.0f} passages/s: **{b['speedup']['median']:.1f}×** "
             f"({b['speedup']['min']:.1f}–{b['speedup']['max']:.1f}), identical arrays: {b['same_arrays']}. "
             f"Tokenising the passage text (`bm25_tokens`, en) runs at {b['tokenize_per_s']:,.0f} passages/s. "
             f"A passage's terms held as Python lists of `str` (fresh from the tokenizer): "
             f"{memory['python_lists']:,.0f} bytes; in a `PartBuilder`: {memory['part_builder']:,.0f} bytes.", "",
             "| N | shard | parts | bytes/passage | build_part /s | write_part /s | postings read per question "
             "(median, max) | q/s before | q/s after | q/s bm25s | p50 / p95 ms before | p50 / p95 ms after | "
             "p50 / p95 ms bm25s | after ÷ before | after ÷ bm25s | top-k = bm25s (before, after) | after = before | "
             "bm25s build s | peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ratio(r: dict[str, float]) -> str:
        return f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"

    for s in results["sizes"]:
        q, p50, p95 = s["qps"], s["p50_ms"], s["p95_ms"]
        lines.append(
            f"| {s['n']:,} | {s['shard_size']:,} | {s['parts']} | {s['bytes_per_passage']:.0f} | "
            f"{s['build_part_per_s']:,.0f} | {s['write_part_per_s']:,.0f} | {s['postings_per_question']['median']:,}, "
            f"{s['postings_per_question']['max']:,} | {q['before']['median']:.1f} | {q['after']['median']:.1f} | "
            f"{q['bm25s']['median']:.1f} | {p50['before']:.1f} / {p95['before']:.1f} | "
            f"{p50['after']:.1f} / {p95['after']:.1f} | {p50['bm25s']:.1f} / {p95['bm25s']:.1f} | "
            f"{ratio(s['speedup'])} | {ratio(s['ratio_vs_bm25s']['after'])} | "
            f"{s['equal_to_bm25s']['before']:.3f}, {s['equal_to_bm25s']['after']:.3f} | "
            f"{s['after_identical_to_before']:.3f} | {s['bm25s_build_s']:.0f} | "
            f"{s['peak_rss_gib']} |")
    for p in results["projection"]:
        lines += ["", f"**Projection, not measured** (linear from the {p['from_n']:,}-passage run, shards of "
                  f"{p['shard_size']:,}) to {p['passages']:,} passages: build ≈ {p['build_cpu_hours']} CPU-hours "
                  f"(tokenise + build_part + write_part, one core; {p['tokenize_share']:.0%} of it tokenising; "
                  f"divide by the tasks running at once); ≈ {p['disk_gb']} GB of parts ({p['parts']} parts); a "
                  f"task's terms take ≈ {p['task_terms_gb']['part_builder']} GB in a `PartBuilder`, "
                  f"≈ {p['task_terms_gb']['python_lists']} GB as Python lists; a searcher holding "
                  f"{p['parts_per_searcher']} parts maps ≈ {p['searcher_mapped_gb']} GB (memory-mapped: the "
                  f"page cache, shared by the searchers of a machine) plus ≈ {p['searcher_scratch_mb']} MB of "
                  f"scratch per question (one part's dense scores at a time); a question over all parts ≈ "
                  f"{p['search_ms_per_question']} ms p50 on one core (it reads postings in proportion to N)."]
    lines += ["", f"Command: `{results['command']}`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,300000,1000000", help="corpus sizes, comma-separated")
    parser.add_argument("--shard-size", default="100000,1000000",
                        help="passages per part, comma-separated: each size is cut by every one no larger than it")
    parser.add_argument("--vocab", type=int, default=200_000)
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the term frequencies")
    parser.add_argument("--words", type=int, default=100, help="words per passage")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--question-words", type=int, default=8)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--k1", type=float, default=DEFAULT_K1)
    parser.add_argument("--b", type=float, default=DEFAULT_B)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--build-sample", type=int, default=100_000, help="passages for the build before/after")
    parser.add_argument("--tokenize-sample", type=int, default=20_000)
    parser.add_argument("--project", type=int, default=21_000_000, help="passages to project to (CORA's English)")
    parser.add_argument("--parts-per-searcher", type=int, default=0,
                        help="parts one searcher actor holds in the projection (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the .json (.md beside it)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    args.shard_sizes = [int(s) for s in args.shard_size.split(",")]
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    vocab = np.array(vocabulary(args.vocab, args.seed), dtype=object)
    probs = zipf_probabilities(args.vocab, args.zipf)
    build = build_rates(args, vocab, probs)
    print(json.dumps({"build": build}))
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        measured = [row for n in sizes for row in measure_size(n, args, vocab, probs, Path(tmp))]
    import bm25s

    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, pyarrow {pa.__version__}, "
                   f"bm25s {bm25s.__version__}",
        "load_before": load_before, "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "shard_sizes": args.shard_sizes, "vocab": args.vocab, "zipf": args.zipf, "words": args.words,
        "queries": args.queries, "question_words": args.question_words, "k": args.k, "k1": args.k1, "b": args.b,
        "repeats": args.repeats, "dense_above": lexical.DENSE_ABOVE,
        "command": "python jobs/benchmarks/bm25_scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "build": build, "sizes": measured}
    results["projection"] = projection(results, args.project, args.parts_per_searcher or None)
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))
    return results


if __name__ == "__main__":
    main()
