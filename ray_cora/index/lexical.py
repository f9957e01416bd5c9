"""The sharded lexical (BM25) index: shard files, their commit, and exact search (pure, no Ray).

A corpus is cut into the shards of :mod:`ray_cora.index.plan` (line ranges of the input files),
and each shard into one *part* per passage language, so a question of language L searches only
L's parts. A part is a term → postings matrix in compressed-sparse-column form, each array its own
``.npy`` file so that a searcher memory-maps it (nothing is loaded at open but the manifest):

==================  ===========================================  =========================
file                what                                         bytes
==================  ===========================================  =========================
``terms.bin/.npy``  the part's terms, sorted, UTF-8 concatenated  per distinct term
                    + int64 offsets (binary-searched in place)
``indptr.npy``      int64, where each term's postings start       8 per distinct term
``docs.npy``        int32 row of each posting                     4 per posting
``tfs.npy``         uint16 term frequency of each posting         2 per posting
                    (uint32 when a count does not fit)
``doc_len.npy``     int32 number of terms of each passage         4 per passage
``pids.bin/.npy``   passage ids, UTF-8 concatenated + offsets      len(pid) + 8 per passage
==================  ===========================================  =========================

A passage has one posting per distinct term (82 for XQuAD's ~130-word English paragraphs, fewer
for CORA's 100-word passages), so a part costs about ``6 × distinct terms + 12 + len(pid)`` ≈
450–500 bytes per passage plus its vocabulary (~24 bytes a term, sublinear in the passages): CORA's
~21M English passages make ~10 GB of English parts, held memory-mapped (the page cache is shared
by every searcher process on a machine). Measured on synthetic 100-word passages with 82 distinct
terms each: 517 bytes a passage in 1M-passage parts, 557 in 100,000-passage parts
(``docs/results/bm25_scale.md``).

The files hold raw counts, not scores: the BM25 statistics are corpus-wide, per language. The
number of passages and their total length per language are summed over the parts at commit and
written to the manifest; a term's document frequency is the sum of its posting counts over the
language's parts, looked up when a question is searched (one binary search per part and term).
So a passage's score does not depend on how the corpus was cut, and the per-part top-k lists
merge exactly (a stable sort of their scores, as :func:`~ray_cora.index.sharded.merge_pid_arrays`
merges dense shards; only the k kept passages' ids are decoded) into the top-k of one BM25 over
all passages of the language. Scoring is that of :class:`~ray_cora.index.bm25.BM25Index` (``bm25s``,
``method="lucene"``): ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``, ``tf / (tf + k1 (1 - b + b
dl / avgdl))`` per occurrence of a question term; a passage sharing no term scores 0 and is not
returned. ``k1`` and ``b`` are search settings (recorded with the index as its defaults): the files
do not depend on them.

Own arrays rather than ``bm25s`` per shard: ``bm25s`` bakes each index's own idf and average length
into its stored scores, which makes the scores of two shards incomparable; and ``scipy`` is not a
dependency here: a CSC matrix of three numpy arrays is all the search needs.

A question in a language with no parts (the corpus has no passages in it) gets an empty list.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_cora import storage
from ray_cora.errors import ConfigError, StorageError
from ray_cora.index.bm25 import Tokenizer, bm25_tokens, term_rule
from ray_cora.languages import normalize_lang

__all__ = ["LEXICAL_KIND", "PartArrays", "PartBuilder", "build_part", "write_part", "part_prefix",
           "commit_lexical_index", "LexicalIndex", "StringTable", "passage_terms", "read_manifest"]

LEXICAL_KIND = "lexical-index"
# Postings read / passages of a part from which the dense accumulator is the faster (measured on
# a 100,000-passage part: equal at ~0.02, sparse 1.2× faster at 0.001, dense 10× at 2.6; see
# LexicalIndex._search_part and docs/results/bm25_scale.md).
DENSE_ABOVE = 0.02
PART_FILES = ("terms.bin", "terms.npy", "indptr.npy", "docs.npy", "tfs.npy", "doc_len.npy", "pids.bin", "pids.npy")


def passage_terms(passage: dict, lang: str, tokenizer: Tokenizer = "language") -> list[str]:
    """A passage's index terms: its title and text together, as :class:`~ray_cora.index.bm25.BM25Index`
    indexes them."""
    return bm25_tokens(f"{passage.get('title') or ''}\n{passage['text']}", lang, tokenizer)


@dataclass
class StringTable:
    """Strings as one UTF-8 blob and int64 offsets (``offsets[i]:offsets[i+1]`` is string i);
    both may be memory-mapped. :meth:`find` binary-searches a sorted table without decoding it."""

    blob: np.ndarray  # uint8
    offsets: np.ndarray  # int64, len(strings) + 1

    @classmethod
    def from_strings(cls, strings: Sequence[str]) -> "StringTable":
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self, i: int) -> bytes:
        start, end = self.offsets[i:i + 2].tolist()
        return memoryview(self.blob)[start:end].tobytes()

    def __getitem__(self, i: int) -> str:
        return self.raw(i).decode("utf-8")

    def find(self, term: str) -> int:
        """Row of ``term`` in a table sorted by UTF-8 bytes, else -1."""
        # Through memoryviews, not numpy slices (~1 µs each, more on a np.memmap): a question looks
        # up each of its terms in every part; 6 µs a term here, 50 µs on the memmap before.
        key = term.encode("utf-8")
        blob = memoryview(self.blob)
        offsets = memoryview(np.ascontiguousarray(self.offsets, np.int64)).cast("B").cast("q")
        lo, hi = 0, len(offsets) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if blob[offsets[mid]:offsets[mid + 1]].tobytes() < key:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(offsets) - 1 and blob[offsets[lo]:offsets[lo + 1]] == key else -1


@dataclass
class PartArrays:
    """One language part of one shard: terms (sorted by UTF-8 bytes), CSC postings, lengths, pids."""

    terms: StringTable
    indptr: np.ndarray
    docs: np.ndarray
    tfs: np.ndarray
    doc_len: np.ndarray
    pids: StringTable

    @property
    def count(self) -> int:
        return len(self.doc_len)

    @property
    def total_len(self) -> int:
        return int(self.doc_len.sum(dtype=np.int64))

    def df(self, row: int) -> int:
        return int(self.indptr[row + 1] - self.indptr[row])


class PartBuilder:
    """A part built passage by passage, as an ``index-bm25`` task streams its shard.

    Every ``chunk`` passages, their terms go into one Arrow array (one C++ pass over the Python
    strings) and are dictionary-encoded (a hash per term, no Python ``dict`` lookup per term);
    the Python strings are then dropped. A term occurrence costs 4 bytes (its id in its chunk's
    dictionary) instead of a Python ``str`` and a list slot (~60 bytes): a million 100-word
    passages hold ~0.6 GB (measured 582 bytes a passage, chunk dictionaries included), not ~6 GB. :meth:`build` ranks all chunks' terms by UTF-8 bytes and
    puts the postings in column order with one sort of ``term × passages + row`` (equal
    neighbours are a passage's repeated term: its tf). About 4× the rate of the per-posting
    Python loop it replaced, with identical arrays (``jobs/benchmarks/bm25_scale.py``).

    >>> builder = PartBuilder()
    >>> builder.add("a", ["x", "y", "x"])
    >>> builder.add("b", ["y"])
    >>> part = builder.build()
    >>> [part.terms[i] for i in range(len(part.terms))], part.indptr.tolist(), part.tfs.tolist()
    (['x', 'y'], [0, 1, 3], [2, 1, 1])
    """

    def __init__(self, chunk: int = 10_000) -> None:
        self.chunk = chunk
        self._pids: list[str] = []
        self._pending: list[Sequence[str]] = []
        self._lengths: list[np.ndarray] = []  # int64 per passage
        self._ids: list[np.ndarray] = []  # per term occurrence: its row in the chunk's dictionary
        self._dictionaries: list[pa.Array] = []

    def __len__(self) -> int:
        return len(self._pids)

    def add(self, pid: str, terms: Sequence[str]) -> None:
        self._pids.append(pid)
        self._pending.append(terms)
        if len(self._pending) >= self.chunk:
            self._encode_pending()

    def _encode_pending(self) -> None:
        lists = pa.array(self._pending, pa.large_list(pa.large_string()))
        self._pending = []
        self._lengths.append(lists.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64))
        encoded = pc.dictionary_encode(lists.flatten())
        self._ids.append(encoded.indices.to_numpy(zero_copy_only=False))
        self._dictionaries.append(encoded.dictionary)

    def build(self) -> PartArrays:
        """The part of the passages added so far."""
        if self._pending or not self._lengths:
            self._encode_pending()
        n, spread = len(self._pids), max(len(self._pids), 1)
        # One id per distinct term over all chunks, ranked by UTF-8 bytes (Arrow compares strings
        # as bytes); each chunk's dictionary row → that rank.
        every = pa.concat_arrays(self._dictionaries)
        merged = pc.dictionary_encode(every)
        order = pc.sort_indices(merged.dictionary).to_numpy()
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        global_ids = rank[merged.indices.to_numpy(zero_copy_only=False)]
        lengths = np.concatenate(self._lengths)
        keys = np.empty(int(lengths.sum()), np.int64)  # (term, row) of each occurrence as one number
        at = first = 0
        for ids, dictionary in zip(self._ids, self._dictionaries):
            keys[at:at + len(ids)] = global_ids[first:first + len(dictionary)][ids]
            at, first = at + len(ids), first + len(dictionary)
        keys *= spread
        keys += np.repeat(np.arange(n, dtype=np.int64), lengths)
        keys.sort()  # term-major, row-minor: column order
        first_of_run = np.ones(len(keys), bool)
        np.not_equal(keys[1:], keys[:-1], out=first_of_run[1:])
        starts = np.flatnonzero(first_of_run)
        tfs = np.diff(starts, append=len(keys))
        term_of, docs = np.divmod(keys[starts], spread)
        indptr = np.zeros(len(order) + 1, np.int64)
        np.cumsum(np.bincount(term_of, minlength=len(order)), out=indptr[1:])
        tf_type = np.uint16 if (tfs.max(initial=0) <= np.iinfo(np.uint16).max) else np.uint32
        vocab = merged.dictionary.take(pa.array(order, pa.int64())).to_pylist()
        return PartArrays(StringTable.from_strings(vocab), indptr, docs.astype(np.int32), tfs.astype(tf_type),
                          lengths.astype(np.int32), StringTable.from_strings(self._pids))


def build_part(pids: Sequence[str], docs_terms: Sequence[Sequence[str]]) -> PartArrays:
    """The part of the passages ``pids`` whose terms are ``docs_terms`` (one list per passage); see
    :class:`PartBuilder`, which a caller streaming many passages should use instead (it drops
    the Python strings as it goes).

    >>> part = build_part(["a", "b"], [["x", "y", "x"], ["y"]])
    >>> [part.terms[i] for i in range(len(part.terms))], part.indptr.tolist(), part.tfs.tolist()
    (['x', 'y'], [0, 1, 3], [2, 1, 1])
    """
    if len(pids) != len(docs_terms):
        raise ValueError(f"need one list of terms per passage: {len(pids)} pids, {len(docs_terms)} lists")
    builder = PartBuilder()
    for pid, terms in zip(pids, docs_terms):
        builder.add(pid, terms)
    return builder.build()


def part_prefix(number: int, lang: str) -> str:
    """Folder of shard ``number``'s part in ``lang``, inside the index."""
    return f"shards/shard-{number:05d}/{lang}"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_part(root: str | storage.Location, prefix: str, part: PartArrays) -> dict[str, dict[str, Any]]:
    """Write a part's files under ``prefix``; returns ``{relpath: {size, sha256}}`` for the manifest."""
    loc = root if isinstance(root, storage.Location) else storage.resolve(root)
    payloads = {"terms.bin": part.terms.blob.tobytes(), "terms.npy": _npy(part.terms.offsets),
                "indptr.npy": _npy(part.indptr), "docs.npy": _npy(part.docs), "tfs.npy": _npy(part.tfs),
                "doc_len.npy": _npy(part.doc_len), "pids.bin": part.pids.blob.tobytes(),
                "pids.npy": _npy(part.pids.offsets)}
    files = {}
    for name, data in payloads.items():
        storage.write_bytes(loc.join(f"{prefix}/{name}"), data)
        files[f"{prefix}/{name}"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return files


def commit_lexical_index(root: str | storage.Location, parts: Sequence[dict[str, Any]], *, tokenizer: str,
                         k1: float, b: float, config: dict | None = None, extra: dict | None = None) -> dict:
    """Write ``manifest.json`` over the written ``parts`` (dicts with ``number``, ``lang``,
    ``prefix``, ``count``, ``total_len`` and ``files``): the per-language statistics summed here
    are what makes the parts' scores comparable."""
    writer = storage.ArtifactWriter(root, kind=LEXICAL_KIND, config=config)
    languages: dict[str, dict[str, Any]] = {}
    for part in sorted(parts, key=lambda p: (p["lang"], p["number"])):
        for relpath, entry in part["files"].items():
            writer.add_existing(relpath, size=entry["size"], sha256=entry["sha256"])
        stats = languages.setdefault(part["lang"], {"passages": 0, "total_len": 0, "parts": []})
        stats["passages"] += part["count"]
        stats["total_len"] += part["total_len"]
        stats["parts"].append(part["prefix"])
    if not languages:
        raise ConfigError("no passages to index: the lexical index would be empty")
    for lang, stats in languages.items():
        stats["avgdl"] = stats["total_len"] / stats["passages"]
        stats["rule"] = term_rule(lang, tokenizer)  # type: ignore[arg-type]
    return writer.commit({"tokenizer": tokenizer, "k1": k1, "b": b, "num_passages":
                          sum(s["passages"] for s in languages.values()),
                          "languages": dict(sorted(languages.items())), **(extra or {})})


@dataclass
class _Language:
    passages: int
    avgdl: float
    parts: list[PartArrays] = field(default_factory=list)


class LexicalIndex:
    """A committed sharded BM25 index, its parts memory-mapped; searches a question in its own
    language's parts and merges their top-k exactly.

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> ps = [{"pid": "a", "title": "", "text": "Der Rhein fließt nach Norden."},
    ...       {"pid": "b", "title": "", "text": "Die Donau fließt nach Osten."}]
    >>> parts = []
    >>> for number, p in enumerate(ps):  # one passage per shard
    ...     part = build_part([p["pid"]], [passage_terms(p, "de")])
    ...     parts.append({"number": number, "lang": "de", "prefix": part_prefix(number, "de"), "count": 1,
    ...                   "total_len": part.total_len, "files": write_part(root, part_prefix(number, "de"), part)})
    >>> _ = commit_lexical_index(root, parts, tokenizer="language", k1=0.9, b=0.4)
    >>> LexicalIndex.open(root).search(["Wohin fließt die Donau?", "Where?"], ["de", "en"], k=2)[1]
    [['b', 'a'], []]
    """

    def __init__(self, manifest: dict, languages: dict[str, _Language], *, k1: float, b: float) -> None:
        self.manifest = manifest
        self.tokenizer: Tokenizer = manifest["tokenizer"]
        self.k1, self.b = k1, b
        self._languages = languages
        # Postings read, as a fraction of a part's passages, from which a part is scored with a
        # dense accumulator (see _search_part); 0 always dense, inf never (the tests check both).
        self.dense_above = DENSE_ABOVE

    @classmethod
    def open(cls, uri: str, *, cache_dir: str | None = None, k1: float | None = None,
             b: float | None = None) -> "LexicalIndex":
        """Open the index at ``uri`` (checksums verified, files memory-mapped; an ``s3://`` index is
        copied once into ``cache_dir``). ``k1``/``b`` default to those the index recorded."""
        artifact = storage.Artifact(uri, kind=LEXICAL_KIND)
        cache = cache_dir or storage.default_cache_dir("lexical")
        languages = {}
        for lang, stats in artifact.manifest["languages"].items():
            entry = _Language(int(stats["passages"]), float(stats["avgdl"]))
            for prefix in stats["parts"]:
                entry.parts.append(_open_part(artifact, prefix, cache))
            languages[lang] = entry
        manifest = artifact.manifest
        return cls(manifest, languages, k1=manifest["k1"] if k1 is None else k1,
                   b=manifest["b"] if b is None else b)

    @property
    def languages(self) -> list[str]:
        return list(self._languages)

    def __len__(self) -> int:
        return sum(lang.passages for lang in self._languages.values())

    def search(self, questions: Sequence[str], langs: Sequence[str] | str,
               k: int) -> tuple[list[list[float]], list[list[str]]]:
        """(scores, pids) per question, best first, at most ``k``, from the parts of the question's
        language (``langs``: one per question, or one for all); a language without parts gives
        empty lists."""
        if isinstance(langs, str):
            langs = [langs] * len(questions)
        if len(questions) != len(langs):
            raise ValueError(f"need one language per question: {len(questions)} questions, {len(langs)} langs")
        scores: list[list[float]] = [[] for _ in questions]
        pids: list[list[str]] = [[] for _ in questions]
        for i, (question, lang) in enumerate(zip(questions, langs)):
            scores[i], pids[i] = self.search_one(question, normalize_lang(lang), k)
        return scores, pids

    def search_one(self, question: str, lang: str, k: int) -> tuple[list[float], list[str]]:
        """One question's top-k in language ``lang`` (see :meth:`search`)."""
        language = self._languages.get(lang)
        if language is None:
            return [], []
        weights = Counter(bm25_tokens(question, lang, self.tokenizer))  # a repeated term counts again
        if not weights:
            return [], []
        rows = [[part.terms.find(term) for term in weights] for part in language.parts]
        df = [sum(part.df(r[j]) for part, r in zip(language.parts, rows) if r[j] >= 0)
              for j in range(len(weights))]
        n = language.passages
        idf = [math.log(1 + (n - d + 0.5) / (d + 0.5)) for d in df]
        partials = [self._search_part(part, r, idf, list(weights.values()), language.avgdl, k)
                    for part, r in zip(language.parts, rows)]
        # The merge of merge_pid_arrays (stable: ties keep the parts' order, then their rows';
        # float32 scores), on row numbers: only the k passages kept have their pids decoded.
        scores = np.concatenate([s for s, _ in partials] or [np.zeros(0)])
        which = np.concatenate([np.full(len(s), i, np.int64) for i, (s, _) in enumerate(partials)]
                               or [np.zeros(0, np.int64)])
        found = np.concatenate([r for _, r in partials] or [np.zeros(0, np.int64)])
        top = np.argsort(-scores, kind="stable")[:k]
        return ([float(s) for s in scores[top].astype(np.float32)],
                [language.parts[int(i)].pids[int(r)] for i, r in zip(which[top], found[top])])

    def _search_part(self, part: PartArrays, rows: list[int], idf: list[float], weights: list[int],
                     avgdl: float, k: int) -> tuple[np.ndarray, np.ndarray]:
        """One part's top-k (float64 scores, best first, and their rows; at most k) for the
        question terms at ``rows``."""
        spans = [(int(part.indptr[row]), int(part.indptr[row + 1]), term_idf, weight)
                 for row, term_idf, weight in zip(rows, idf, weights) if row >= 0]
        postings = sum(end - start for start, end, _, _ in spans)
        # Dense accumulator (one float per passage of the part) once the postings read are a
        # fair share of the part: O(postings + part size), no sort; else sum over the touched
        # passages only (a sort of the postings, cheap when they are few). Both add a passage's
        # term scores in the same order, so they give the same floats.
        dense = postings >= self.dense_above * part.count
        scores = np.zeros(part.count if dense else 0, np.float64)
        doc_chunks, score_chunks = [], []
        for start, end, term_idf, weight in spans:
            docs = part.docs[start:end]
            tf = part.tfs[start:end].astype(np.float64)
            norm = self.k1 * (1 - self.b + self.b * part.doc_len[docs].astype(np.float64) / avgdl)
            contribution = weight * term_idf * tf / (tf + norm)
            if dense:
                np.add.at(scores, docs, contribution)  # 2× `scores[docs] += …` (numpy ≥ 1.25)
            else:
                doc_chunks.append(docs)
                score_chunks.append(contribution)
        if dense:
            touched = None
        else:
            touched, where = np.unique(np.concatenate(doc_chunks or [np.zeros(0, np.int32)]), return_inverse=True)
            scores = np.bincount(where, weights=np.concatenate(score_chunks or [np.zeros(0)]),
                                 minlength=len(touched))
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        hits = hits[np.argsort(-scores[hits], kind="stable")]
        return scores[hits], (hits if touched is None else touched[hits]).astype(np.int64)


def _open_part(artifact: storage.Artifact, prefix: str, cache: str) -> PartArrays:
    # Plain ndarray views of the maps (np.asarray; the map stays open as their base): indexing a
    # np.memmap costs a Python-level __getitem__ and __array_finalize__ per access.
    def load(name: str) -> np.ndarray:
        path = artifact.local_path(f"{prefix}/{name}", cache_dir=cache)
        if name.endswith(".bin"):
            # np.memmap refuses an empty file (a part whose passages have no terms)
            return np.asarray(np.memmap(path, np.uint8, mode="r")) if os.path.getsize(path) else np.zeros(0, np.uint8)
        try:
            return np.asarray(np.load(path, mmap_mode="r", allow_pickle=False))
        except ValueError as exc:
            raise StorageError(f"{artifact.location(prefix + '/' + name).uri}: not a numpy array file ({exc}): "
                               "rebuild the lexical index") from exc

    return PartArrays(StringTable(load("terms.bin"), load("terms.npy")), load("indptr.npy"), load("docs.npy"),
                      load("tfs.npy"), load("doc_len.npy"), StringTable(load("pids.bin"), load("pids.npy")))


def read_manifest(uri: str) -> dict:
    """The committed lexical index's manifest (its languages, statistics, corpus)."""
    return storage.Artifact(uri, kind=LEXICAL_KIND).manifest

