"""What the Serve deployments host, without Serve: the retriever core, the generator and pivot
adapters, the request batcher, and the browser page's files, configuration and language detection.
Everything here is plain Python (asyncio at most), so it is
tested (and benchmarked) without Ray."""

from __future__ import annotations

import asyncio
import collections
import functools
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Protocol, Sequence

import numpy as np

from ray_cora import storage
from ray_cora.data.passage_store import PassageStore, build_passage_store
from ray_cora.data.passages import iter_passages, passage_files
from ray_cora.demo import DEMO_PASSAGES, DEMO_PIVOT_DB, DEMO_WIKIDATA_LABELS
from ray_cora.encoders import PLAIN, check_same_encoder, encoder_record, format_query, load_encoder, query_format_for
from ray_cora.errors import ConfigError
from ray_cora.index.fusion import RETRIEVERS, FusionSetting, FusionWeights, find_weights, fuse_question, lexical_lists
from ray_cora.index.lexical import LexicalIndex
from ray_cora.index.sharded import (INDEX_KIND, ShardedIndex, commit_index, iter_index_langs, merge_pid_arrays,
                                    plan_shards, write_shard)
from ray_cora.languages import LANGUAGES, UNKNOWN_LANG, detect_language
from ray_cora.models.mgen import Generator
from ray_cora.pivot import PivotPipeline, build_database, iter_db_records


class PassageLookup(Protocol):
    """pid → ``{lang, title, text, ...}`` for the pids found (a missing pid is absent)."""

    def lookup(self, pids: Iterable[str]) -> dict[str, dict[str, str]]:
        ...


# Buckets of a passage store built at replica start (no passage_store given): small corpora only,
# so every bucket stays cached.
LOCAL_STORE_BUCKETS = 8


def open_passages(*, passage_store: str | None, passages: str | None, index_manifest: dict | None,
                  cache_buckets: int = 64, index: str | None = None) -> PassageStore:
    """The :class:`~ray_cora.data.passage_store.PassageStore` texts are looked up in: the committed
    ``passage_store``, or else one built now (in a temporary folder) from ``passages``, the corpus
    the index manifest names, or — without an index — the demo corpus. Passages the corpus gives no
    language (CORA's ``all_w100.tsv``) take the one the ``index`` recorded for their pid."""
    if passage_store:
        return PassageStore(passage_store, cache_buckets=cache_buckets)
    source = passages or (index_manifest or {}).get("passages")
    if source is None:
        if index_manifest is not None:
            raise ConfigError("passages: the index manifest does not name the corpus it was built from; "
                              "pass passages=<the corpus> or passage_store=<a committed store>")
        source = str(DEMO_PASSAGES)
    out = tempfile.mkdtemp(prefix="ray_cora_serve_passages_")
    build_passage_store(source, out, num_buckets=LOCAL_STORE_BUCKETS,
                        known_langs=(lambda: iter_index_langs(index)) if index else None)
    return PassageStore(out, cache_buckets=max(cache_buckets, LOCAL_STORE_BUCKETS))


def build_index(encoder, passages: str, out: str, *, shard_size: int = 100_000,
                batch_size: int = 64) -> str:
    """Embed every passage of the corpus ``passages`` (file or folder) into a committed sharded
    index under ``out`` (shards of ``shard_size`` vectors, in corpus order)."""
    rows = [p for loc in passage_files(passages) for p in iter_passages(loc)]
    if not rows:
        raise ConfigError(f"passages: no passages found under {passages}")
    shards = []
    for number, start, end in plan_shards(len(rows), shard_size):
        chunk = rows[start:end]
        vectors = np.concatenate([
            encoder.encode_passages([p["title"] for p in chunk[i:i + batch_size]],
                                    [p["text"] for p in chunk[i:i + batch_size]])
            for i in range(0, len(chunk), batch_size)])
        shards.append(write_shard(out, number, [p["pid"] for p in chunk], vectors,
                                  langs=[p["lang"] for p in chunk]))
    commit_index(out, shards, encoder=encoder_record(encoder),
                 extra={"passages": passages})
    return out


def index_query_format(index: str | None, encoder: str | None) -> str:
    """How questions to ``index`` are written for query encoder ``encoder`` (default: the one the
    index records; mUSE without an index), e.g. CORA's mDPR ``"{question} [{lang}]"``. Reads the
    manifest only, loads no model."""
    recorded = storage.Artifact(index, kind=INDEX_KIND).manifest["encoder"] if index else None
    return query_format_for(encoder or (None if recorded else "muse"), recorded)


def shard_group(num_shards: int, groups: int, group: int) -> list[int]:
    """Shard positions held by ``group`` of ``groups`` (round-robin, as
    :class:`~ray_cora.pipelines.search.DistributedIndex` spreads shards over actors).

    >>> [shard_group(5, 2, g) for g in range(2)]
    [[0, 2, 4], [1, 3]]
    """
    if not 0 <= group < groups:
        raise ValueError(f"group {group} is not in 0..{groups - 1}")
    if groups > num_shards:
        raise ConfigError(f"shard_groups={groups} but the index has only {num_shards} shard(s): every "
                          f"group needs at least one; set shard_groups to at most {num_shards}")
    return list(range(group, num_shards, groups))


def shard_group_copy_names(prefix: str, groups: int, copies: int) -> list[list[str]]:
    """Actor names of every copy of every shard group, ``names[group][copy]``: ``<prefix><g>`` with
    one copy (an app without copies keeps its names), ``<prefix><g>-<c>`` with several.

    >>> shard_group_copy_names("G", 2, 1), shard_group_copy_names("G", 2, 2)
    ([['G0'], ['G1']], [['G0-0', 'G0-1'], ['G1-0', 'G1-1']])
    """
    if copies == 1:
        return [[f"{prefix}{g}"] for g in range(groups)]
    return [[f"{prefix}{g}-{c}" for c in range(copies)] for g in range(groups)]


class CopyRotation:
    """Which copy of one shard group each search goes to: round-robin over its copies, a copy whose
    call failed skipped until ``recheck_s`` has passed (then it takes its turn again, so a copy that
    Serve recreated gets work back), and the other copies tried when the chosen one fails.

    Round-robin rather than "fewest calls in flight": a Retriever replica runs one batch at a time
    (its Batcher), so at every batch's start its own in-flight count is 0 on every copy and the
    choice would never move; the load of the other replicas is not visible without asking the
    actors. Rotating per search spreads each replica's batches evenly, hence all replicas' too.
    Thread-safe (searches and readiness pings run in worker threads).

    >>> rotation = CopyRotation(3)
    >>> [rotation.order()[0] for _ in range(4)]
    [0, 1, 2, 0]
    >>> rotation.failed(2); [rotation.order() for _ in range(2)]
    [[1, 0, 2], [0, 1, 2]]
    """

    def __init__(self, copies: int, *, start: int = 0, recheck_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if copies < 1:
            raise ValueError(f"copies must be at least 1, got {copies}")
        self.copies, self.recheck_s, self.clock = copies, recheck_s, clock
        self._next = start % copies
        self._down: dict[int, float] = {}  # copy -> when to try it in its turn again
        self._lock = threading.Lock()

    def order(self) -> list[int]:
        """Copies to try for the next search, first choice first: the rotation's next copy and
        the ones after it, with copies that failed less than ``recheck_s`` ago moved to the end
        (still tried when every other copy fails). Advances the rotation past the first choice."""
        with self._lock:
            now = self.clock()
            turn = [(self._next + i) % self.copies for i in range(self.copies)]
            resting = [c for c in turn if self._down.get(c, now) > now]
            ready = [c for c in turn if c not in resting]
            # The next turn starts after this one's first choice: the ready copies alternate evenly.
            self._next = ((ready[0] if ready else self._next) + 1) % self.copies
            return ready + resting

    def failed(self, copy: int) -> None:
        """``copy`` did not answer (its actor died): skip it for ``recheck_s``."""
        with self._lock:
            self._down[copy] = self.clock() + self.recheck_s

    def answered(self, copy: int) -> None:
        """``copy`` answered (or was found recreated): back in the rotation."""
        with self._lock:
            self._down.pop(copy, None)

    def is_down(self, copy: int) -> bool:
        """Whether ``copy``'s last call failed (and it has not answered since)."""
        with self._lock:
            return copy in self._down


def check_encoder_dim(encoder: Any, manifest: dict[str, Any], uri: str) -> None:
    """Refuse an index whose manifest records vectors of another size than ``encoder`` makes (as
    ``ray-cora retrieve`` does before it searches): every search would fail."""
    recorded = int(manifest["encoder"]["dim"])
    if int(encoder.dim) != recorded:
        raise ConfigError(f"index {uri}: its manifest.json records {recorded}-d vectors (encoder.dim) but the "
                          f"query encoder makes {encoder.dim}-d vectors: serve the index with the encoder it "
                          "was built with, or rebuild it (ray-cora embed --out)")


def check_index_dims(index: ShardedIndex, uri: str) -> None:
    """Refuse an opened index whose FAISS shards hold vectors of another size than its manifest
    records (a manifest edited or copied from another index): every search would fail.

    >>> import faiss
    >>> from types import SimpleNamespace
    >>> check_index_dims(SimpleNamespace(dim=8, merged=faiss.IndexFlatIP(4), shards=[]), "/x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ray_cora.errors.ConfigError: index /x: its manifest.json records 8-d vectors (encoder.dim) but its FAISS ...
    """
    held = [index.merged] if index.merged is not None else [s.index for s in index.shards if s.index is not None]
    for faiss_index in held:
        if int(faiss_index.d) != index.dim:
            raise ConfigError(f"index {uri}: its manifest.json records {index.dim}-d vectors (encoder.dim) but "
                              f"its FAISS shards hold {faiss_index.d}-d vectors: the manifest does not describe "
                              "these shards; restore the index's manifest.json or rebuild the index "
                              "(ray-cora embed --out)")


SearchParams = tuple[int | None, int | None]  # (nprobe, ef_search); None: the searcher's default


def group_by_search_params(params: Sequence[SearchParams]) -> dict[SearchParams, list[int]]:
    """Positions of a batch's requests per distinct (nprobe, ef_search), in first-seen order: one
    FAISS search per group, so requests asking for different settings can share a batch.

    >>> group_by_search_params([(None, None), (8, None), (None, None)])
    {(None, None): [0, 2], (8, None): [1]}
    """
    groups: dict[SearchParams, list[int]] = {}
    for position, key in enumerate(params):
        groups.setdefault(key, []).append(position)
    return groups


def rows_in_request_order(found: Iterable[tuple[Sequence[int], Any, Any]], n: int) -> tuple[list, list]:
    """Per-group search results ``(positions, scores rows, pids rows)`` put back in request order:
    (scores, pids), one row per request.

    >>> rows_in_request_order([([0, 2], ["s0", "s2"], ["p0", "p2"]), ([1], ["s1"], ["p1"])], 3)
    (['s0', 's1', 's2'], ['p0', 'p1', 'p2'])
    """
    scores: list[Any] = [None] * n
    pids: list[Any] = [None] * n
    for positions, group_scores, group_pids in found:
        for row, position in enumerate(positions):
            scores[position], pids[position] = group_scores[row], group_pids[row]
    return scores, pids


def fan_out(vectors: np.ndarray, ks: Sequence[int], params: Sequence[SearchParams],
            submit: Callable[[np.ndarray, int, int | None, int | None], Any],
            wait: Callable[[Any], Sequence[tuple[np.ndarray, np.ndarray]]]) -> tuple[list, list]:
    """Search question ``vectors`` on every shard group and merge the groups' top-k exactly:
    (scores, pids) rows in request order, row ``i`` holding at least ``ks[i]`` hits.

    One search per distinct (nprobe, ef_search) in ``params`` (see :func:`group_by_search_params`):
    ``submit(vectors, k, nprobe, ef_search)`` starts it on every group and returns a token, and
    ``wait(token)`` returns the groups' partial (scores, pids object array) results. Every search
    is submitted before any is waited for, so the groups work on all of them at once.

    >>> def submit(v, k, nprobe, ef):  # two groups: the first holds pid "a", the second "b"
    ...     return [(np.full((len(v), 1), 0.5, np.float32), np.array([["a"]] * len(v), dtype=object)),
    ...             (np.full((len(v), 1), 0.9, np.float32), np.array([["b"]] * len(v), dtype=object))]
    >>> fan_out(np.zeros((2, 4), np.float32), [2, 1], [(None, None)] * 2, submit, lambda t: t)[1]
    [['b', 'a'], ['b', 'a']]
    """
    pending = []
    for (nprobe, ef_search), positions in group_by_search_params(params).items():
        k = max(ks[i] for i in positions)
        pending.append((positions, k, submit(vectors[positions], k, nprobe, ef_search)))
    found = [(positions, *merge_pid_arrays(wait(token), k)) for positions, k, token in pending]
    return rows_in_request_order(found, len(vectors))


# One ranked passage before its text is attached: (pid, score, its rank in each list).
Ranked = list[tuple[str, float, dict[str, int | None]]]
# search(vectors, ks, params) -> (scores rows, pids rows), row i holding at least ks[i] hits.
DenseSearch = Callable[[np.ndarray, Sequence[int], Sequence[SearchParams]], tuple[Sequence, Sequence]]


@dataclass
class RetrieverCore:
    """Question encoder + sharded index (+ a lexical index) + passage store: questions in, ranked
    passages out.

    With ``hold_index=False`` the index stays elsewhere (the Serve app's IndexShardGroup actors):
    :meth:`retrieve` takes the search of those as ``search`` (or :meth:`encode` the questions, search
    them there with :func:`fan_out`, then :meth:`attach` the texts).

    Three retrievers (:meth:`retrieve`'s ``retrievers``, one per question; default
    ``default_retriever``): ``dense``; with a ``lexical`` index also ``bm25`` (the question's own
    language's parts of the BM25 index) and ``hybrid`` (the dense and BM25 lists fused by
    ``weights``, the setting of the question's language: :func:`~ray_cora.index.fusion.fuse_question`,
    as ``ray-cora retrieve --retriever hybrid`` fuses them). A question without a language is
    answered by the dense list alone in hybrid mode (its language picks the lexical parts and the
    fusion setting; it is not guessed); bm25 needs one. Every passage carries ``retrievers``: its
    1-based rank in the dense and in the BM25 list (None: not in that list).

    Without an index it embeds the demo corpus first:

    >>> core = RetrieverCore.load(index=None)  # doctest: +SKIP
    >>> core.retrieve(["How tall is Mount Fuji?"], [3])[0][0]["title"]  # doctest: +SKIP
    'Mount Fuji'
    """

    encoder: Any
    index: ShardedIndex | None
    passages: PassageLookup
    index_uri: str
    # How questions are written for the encoder: what the index records with it (CORA's mDPR:
    # "{question} [{lang}]"), unless the encoder spec sets its own.
    query_format: str = PLAIN
    # (nprobe, ef_search) of a search that asks for nothing (None: the index's search_params).
    default_params: SearchParams = (None, None)
    lexical: LexicalIndex | None = None
    lexical_uri: str | None = None
    weights: FusionWeights | None = None
    # Where the weights came from (None: FusionWeights' untuned default).
    fusion_source: str | None = None
    default_retriever: str = "dense"

    def __post_init__(self) -> None:
        if self.lexical is not None and self.weights is None:
            self.weights = FusionWeights()
        self.retriever_for(None)  # a default retriever the core can run

    @property
    def needs_lang(self) -> bool:
        """Whether a question must come with its language (the query format writes it)."""
        return "{lang}" in self.query_format

    @property
    def retrievers(self) -> tuple[str, ...]:
        """The retrievers this core runs: dense, and bm25 and hybrid with a lexical index."""
        return RETRIEVERS if self.lexical is not None else ("dense",)

    @classmethod
    def load(cls, *, index: str | None, passages: str | None = None, passage_store: str | None = None,
             encoder: str | None = None, threads: int = 1, device: Any = None, hold_index: bool = True,
             cache_buckets: int = 64, default_params: SearchParams = (None, None), use_gpu: bool = False,
             gpu_fp16: bool = True, lexical_index: str | None = None, fusion: str | None = None,
             retriever: str | None = None) -> "RetrieverCore":
        """Open ``index`` (its encoder must be ``encoder``: the same model, see
        :func:`~ray_cora.encoders.check_same_encoder`) with texts from ``passage_store`` (a
        committed store) or else a store built now from ``passages`` (see :func:`open_passages`).
        Without an index, embed ``passages`` (default: the demo corpus) into a temporary index first.
        ``lexical_index`` (memory-mapped) adds the bm25 and hybrid retrievers, fused by ``fusion``
        (default: the ``fusion.json`` in the lexical index, else in the index, else equal-weight
        RRF); ``retriever`` is the default one (None: hybrid with a lexical index, else dense)."""
        if encoder is None:  # the model that built the index, as its manifest records it
            encoder = storage.Artifact(index, kind=INDEX_KIND).manifest["encoder"]["spec"] if index else "muse"
        model = load_encoder(encoder, threads=threads, device=device)
        if index is None:
            source = passages or str(DEMO_PASSAGES)
            index = build_index(model, source, tempfile.mkdtemp(prefix="ray_cora_serve_index_"))
        manifest = storage.Artifact(index, kind=INDEX_KIND).manifest
        check_same_encoder(manifest["encoder"], encoder_record(model), what=f"index {index}")
        check_encoder_dim(model, manifest, index)
        opened = ShardedIndex.open(index, use_gpu=use_gpu, gpu_fp16=gpu_fp16) if hold_index else None
        if opened is not None:
            check_index_dims(opened, index)
        lexical, weights, source = None, None, None
        if lexical_index:
            lexical = LexicalIndex.open(lexical_index)
            weights, source = find_weights(fusion, lexical_index, index)
        elif fusion:
            raise ConfigError("fusion needs lexical_index: pass lexical_index=<URI> (ray-cora index-bm25 --out)")
        store = open_passages(passage_store=passage_store, passages=passages, index_manifest=manifest,
                              cache_buckets=cache_buckets, index=index)
        return cls(model, opened, store, index, query_format_for(encoder, manifest["encoder"]), default_params,
                   lexical=lexical, lexical_uri=lexical_index, weights=weights, fusion_source=source,
                   default_retriever=retriever or ("hybrid" if lexical is not None else "dense"))

    def retriever_for(self, name: str | None) -> str:
        """``name`` (None: the default retriever), refused when this core cannot run it."""
        name = name or self.default_retriever
        if name not in self.retrievers:
            raise ConfigError(f"retriever {name!r} needs a lexical index: pass lexical_index=<URI> (ray-cora "
                              f"index-bm25 --out), or use {' or '.join(self.retrievers)}")
        return name

    def setting_for(self, lang: str | None) -> FusionSetting | None:
        """The fusion setting of a hybrid question in ``lang``; None: the dense list alone (no
        language given, or a language without lexical parts whose rule says so)."""
        if lang is None or self.lexical is None or self.weights is None:
            return None
        return self.weights.setting_for(lang, has_lexical=lang in self.lexical.languages)

    def dense_depth(self, k: int, lang: str | None, retriever: str) -> int | None:
        """How many dense hits a question's ranking reads: ``k``, or for hybrid the fusion
        setting's depth when deeper; None for bm25 (no dense search)."""
        if retriever == "bm25":
            return None
        setting = self.setting_for(lang) if retriever == "hybrid" else None
        return k if setting is None else max(k, setting.depth)

    def rank(self, question: str, k: int, lang: str | None, retriever: str,
             dense: Sequence[tuple[str, float]] | None) -> Ranked:
        """One question's top ``k`` (pid, score, ranks) from its ``dense`` list (best first; at
        least :meth:`dense_depth` hits) and, for bm25 and hybrid, its BM25 search."""
        if retriever == "dense" or (retriever == "hybrid" and lang is None):
            return [(pid, float(s), {"dense": r, "bm25": None}) for r, (pid, s) in enumerate(list(dense)[:k], 1)]
        if lang is None:
            raise ConfigError("retriever bm25 needs the question's language (lang): it picks the lexical index's parts")
        setting = self.setting_for(lang) if retriever == "hybrid" else None
        row = lexical_lists(self.lexical, question, lang, k if setting is None else max(k, setting.depth),
                            neutral=setting is not None and self.weights.no_lexical is not None)
        fused = fuse_question(lang, dense, row, retriever=retriever, weights=self.weights, k=k)
        return [(pid, s, {"dense": src.get("dense"), "bm25": src.get("bm25")}) for pid, s, src in fused]

    def encode(self, questions: Sequence[str], langs: Sequence[str] | None = None) -> np.ndarray:
        """Query vectors. With ``langs`` each question is first written in the encoder's
        ``query_format`` (``"{question} [{lang}]"`` for CORA's mDPR); without, it is encoded as given."""
        texts = list(questions)
        if langs is not None:
            if len(langs) != len(texts):
                raise ValueError(f"{len(texts)} questions but {len(langs)} languages")
            texts = [format_query(self.query_format, q, lang) for q, lang in zip(texts, langs)]
        return np.ascontiguousarray(self.encoder.encode_queries(texts), dtype=np.float32)

    def query_langs(self, langs: Sequence[str | None] | None) -> list[str] | None:
        """The languages :meth:`encode` writes questions with: none for a plain format (the
        question as given), else each question's (``und`` where it has none)."""
        if langs is None or not self.needs_lang:
            return None
        return [lang or UNKNOWN_LANG for lang in langs]

    def attach(self, scores: np.ndarray, pids: Sequence[Sequence[str]], ks: Sequence[int],
               sources: Sequence[Sequence[dict[str, int | None]]] | None = None) -> list[list[dict[str, Any]]]:
        """Ranked pids and scores (one row per question) → the top ``ks[i]`` passages with texts;
        ``sources``: each passage's ``retrievers`` (default: its rank in the row, a dense list)."""
        found = self.passages.lookup(p for row in pids for p in row)
        missing = [p for row in pids for p in row if p not in found]
        if missing:
            what = self.index_uri + (f" or {self.lexical_uri}" if self.lexical_uri else "")
            raise ConfigError(f"pid {missing[0]!r} from {what} is not in the passages: serve the "
                              "corpus (or passage store) the index was built from")
        if sources is None:
            sources = [[{"dense": r, "bm25": None} for r in range(1, len(row) + 1)] for row in pids]
        return [[{"pid": pid, "lang": found[pid]["lang"], "title": found[pid]["title"],
                  "text": found[pid]["text"], "score": float(score), "retrievers": dict(src)}
                 for pid, score, src in zip(row_pids[:k], row_scores[:k], row_sources)]
                for row_pids, row_scores, row_sources, k in zip(pids, scores, sources, ks)]

    def search_index(self, vectors: np.ndarray, ks: Sequence[int], params: Sequence[SearchParams]
                     ) -> tuple[list, list]:
        """Search the index this core holds: (scores rows, pids rows), one search per distinct
        (nprobe, ef_search), unset values taken from ``default_params``."""
        if self.index is None:
            raise ConfigError("this retriever holds no index (hold_index=False): search its encode() "
                              "vectors on the shard groups, then attach()")
        found = []
        for (nprobe, ef_search), positions in group_by_search_params(self.with_defaults(params)).items():
            found.append((positions, *self.index.search(vectors[positions], max(ks[i] for i in positions),
                                                        nprobe=nprobe, ef_search=ef_search)))
        return rows_in_request_order(found, len(vectors))

    def retrieve(self, questions: Sequence[str], ks: Sequence[int], langs: Sequence[str | None] | None = None,
                 params: Sequence[SearchParams] | None = None, retrievers: Sequence[str | None] | None = None,
                 *, search: DenseSearch | None = None) -> list[list[dict[str, Any]]]:
        """Top ``ks[i]`` passages for ``questions[i]`` in ``langs[i]`` (written in the encoder's
        query format, see :meth:`encode`; it picks the lexical parts) by ``retrievers[i]`` (None:
        the default), the dense side searched with ``params[i]`` = (nprobe, ef_search) (None: the
        defaults) by ``search`` (default: :meth:`search_index`); one batched encode of the questions
        that need the dense side, one search per distinct setting."""
        n = len(questions)
        if not n:
            return []
        langs = list(langs) if langs is not None else [None] * n
        modes = [self.retriever_for(name) for name in (retrievers or [None] * n)]
        params = list(params or [(None, None)] * n)
        depths = [self.dense_depth(k, lang, mode) for k, lang, mode in zip(ks, langs, modes)]
        dense: list[list[tuple[str, float]] | None] = [None] * n
        at = [i for i, depth in enumerate(depths) if depth is not None]
        if at:
            vectors = self.encode([questions[i] for i in at], self.query_langs([langs[i] for i in at]))
            scores, pids = (search or self.search_index)(vectors, [depths[i] for i in at], [params[i] for i in at])
            for row, i in enumerate(at):
                dense[i] = list(zip(pids[row], (float(s) for s in scores[row])))
        ranked = [self.rank(questions[i], ks[i], langs[i], modes[i], dense[i]) for i in range(n)]
        return self.attach([[s for _, s, _ in row] for row in ranked], [[p for p, _, _ in row] for row in ranked],
                           ks, [[src for _, _, src in row] for row in ranked])

    def with_defaults(self, params: Sequence[SearchParams]) -> list[SearchParams]:
        """Each request's (nprobe, ef_search), its unset values taken from ``default_params``."""
        default_nprobe, default_ef = self.default_params
        return [(default_nprobe if nprobe is None else nprobe, default_ef if ef is None else ef)
                for nprobe, ef in params]

    def describe_retrievers(self) -> dict[str, Any]:
        """What /v1/info says of the retrievers: the default, those offered, the lexical index
        (languages, passages, BM25 settings) and the fusion (its source and per-language settings)."""
        out: dict[str, Any] = {"retriever": {"default": self.default_retriever, "available": list(self.retrievers)},
                               "lexical_index": None, "fusion": None}
        if self.lexical is None or self.weights is None:
            return out
        out["lexical_index"] = {"uri": self.lexical_uri, "passages": len(self.lexical),
                                "languages": self.lexical.languages, "tokenizer": self.lexical.tokenizer,
                                "k1": self.lexical.k1, "b": self.lexical.b}
        weights = self.weights
        out["fusion"] = {"source": self.fusion_source or "default (equal-weight RRF, k=60)",
                         "languages": {lang: setting.describe() for lang, setting in sorted(weights.languages.items())},
                         "fallback": weights.fallback.describe(),
                         "no_lexical": weights.no_lexical.describe() if weights.no_lexical else "dense alone"}
        return out


class AnswerGenerator(Protocol):
    """mGEN: an answer in ``langs[i]`` to ``questions[i]`` from the passages retrieved for it."""

    def answer(self, questions: Sequence[str], langs: Sequence[str],
               passages: Sequence[Sequence[dict[str, Any]]]) -> list[str]:
        ...


def load_generator(path: str, *, tokenizer: str | None = None, top_k: int | None = None,
                   decoding: str | None = None, num_beams: int | None = None, max_source_length: int | None = None,
                   max_target_length: int | None = None) -> AnswerGenerator:
    """The mGEN generator (any HF seq2seq folder) at ``path``; ``tokenizer`` for checkpoints whose
    folder has no tokenizer files (mT5's); ``decoding`` None: the preset the folder records, else
    ``cora`` (see :mod:`ray_cora.models.mgen`); the other settings override the preset's."""
    return Generator.load(path, tokenizer=tokenizer, decoding=decoding, num_beams=num_beams,
                          max_source_length=max_source_length, max_target_length=max_target_length,
                          **({"top_k": top_k} if top_k else {}))


class PivotAnswerer(Protocol):
    """RM-MIPS: ``answer_batch`` returns, per question, ``prediction``, ``abstained``, ``score``,
    ``matched_qid``, ``matched_question``, ``english_answer``, ``translation_source``."""

    def answer_batch(self, questions: Sequence[str], langs: Sequence[str]) -> list[dict[str, Any]]:
        ...


def load_pivot(db: str, *, labels: str | None = None, reranker: str | None = None,
               threshold: float | None = None) -> PivotAnswerer:
    """The RM-MIPS pipeline over the pivot database ``db``; ``db="demo"`` builds the demo database
    (and translates with the demo Wikidata labels unless ``labels`` is given)."""
    if db == "demo":
        db, labels = build_demo_pivot_db(), labels or str(DEMO_WIKIDATA_LABELS)
    return PivotPipeline.load(db, labels=labels, reranker=reranker, threshold=threshold)


def pivot_response(question: str, lang: str, result: dict[str, Any]) -> dict[str, Any]:
    """A pivot pipeline result → the ``/v1/pivot`` body (answer null when it abstains)."""
    return {"question": question, "lang": lang,
            "answer": None if result["abstained"] else result["prediction"],
            "abstained": bool(result["abstained"]), "matched_question": result["matched_question"],
            "matched_qid": result["matched_qid"], "score": float(result["score"]),
            "english_answer": result["english_answer"], "translation_source": result["translation_source"],
            "threshold": result.get("threshold")}


def build_demo_pivot_db(encoder: str = "muse") -> str:
    """Build the demo pivot database (``ray_cora/demo/assets/pivot_db.jsonl``) in a temporary folder."""
    out = tempfile.mkdtemp(prefix="ray_cora_serve_pivot_")
    build_database(list(iter_db_records(str(DEMO_PIVOT_DB), dataset="jsonl")), load_encoder(encoder), out)
    return out


# --- batching: concurrent requests share one model call, a lone request never waits -------------

class Batcher:
    """Calls ``func(items) -> results`` (async, one result per item, in order) on batches of the
    items awaited concurrently through ``await batcher(item)``, without waiting for a batch to fill.

    A call that finds no batch running starts one at once (at the next turn of the event loop, so
    calls made in the same turn share it); calls arriving while ``max_concurrent_batches`` batches
    run wait in a queue, and each batch that ends takes up to ``max_batch_size`` of them at once.
    The batch size follows the load: 1 for a lone client, up to ``max_batch_size`` under load.

    Why not ``ray.serve.batch`` (Ray 2.60, ``ray/serve/batching.py``): its ``wait_for_batch``
    always waits ``batch_wait_timeout_s`` for a batch to fill, even for a lone request; and with
    ``batch_wait_timeout_s=0`` it cuts a batch of whatever is queued *before* waiting for the
    ``max_concurrent_batches`` semaphore, so under load requests arriving one by one become batches
    of about one (a probe with 32 callers arriving at random times: mean batch 1.2).
    Here a batch is cut only when a slot is free, so requests gather while the previous batch runs.

    Each request gets its own answer, and one request's failure is its own: when ``func`` raises on
    a batch of several, each of its requests is run again alone, so only the one(s) that fail alone
    get an exception (a poisoned batch of n costs n more calls of one, and never fails the others).
    A result that is an exception instance is raised for its request only. A caller that is
    cancelled (client gone) is dropped from the batch not yet cut. One event loop (a Serve
    replica's) drives a batcher; ``batch_sizes`` counts the batch calls made.

    >>> async def double(xs): return [2 * x for x in xs]
    >>> async def main():
    ...     batcher = Batcher(double, max_batch_size=4)
    ...     return await asyncio.gather(*(batcher(x) for x in range(6))), dict(batcher.batch_sizes)
    >>> asyncio.run(main())
    ([0, 2, 4, 6, 8, 10], {4: 1, 2: 1})
    """

    def __init__(self, func: Callable[[list], Awaitable[Sequence]], *, max_batch_size: int = 16,
                 max_concurrent_batches: int = 1, name: str | None = None) -> None:
        self.func = func
        self.name = name or getattr(func, "__name__", repr(func))
        self.set_max_batch_size(max_batch_size)
        if max_concurrent_batches < 1:
            raise ValueError(f"max_concurrent_batches must be at least 1, got {max_concurrent_batches}")
        self.max_concurrent_batches = max_concurrent_batches
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._queue: collections.deque[tuple[Any, asyncio.Future]] = collections.deque()
        self._running = 0
        self._tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    def set_max_batch_size(self, max_batch_size: int) -> None:
        """Takes effect from the next batch cut (Serve's ``reconfigure`` calls this)."""
        if int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.max_batch_size = int(max_batch_size)

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((item, future))
        if self._running < self.max_concurrent_batches:
            # No await between a runner's last look at the queue and its exit, so a call either
            # starts a runner here or is seen by a running one: none is left in the queue.
            self._running += 1
            task = loop.create_task(self._run_batches())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future  # cancelling the caller cancels the future: the runner skips it

    async def _run_batches(self) -> None:
        batch: list[tuple[Any, asyncio.Future]] = []
        try:
            while self._queue:
                batch = []
                while self._queue and len(batch) < self.max_batch_size:
                    item, future = self._queue.popleft()
                    if not future.done():
                        batch.append((item, future))
                if batch:
                    await self._run(batch)
                batch = []
        except asyncio.CancelledError:  # the loop is closing: nobody would answer these
            for _, future in batch + list(self._queue):
                future.cancel()
            self._queue.clear()
            raise
        finally:
            self._running -= 1

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        self.batch_sizes[len(batch)] += 1
        try:
            results = list(await self.func([item for item, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batch function {self.name!r} returned "
                                   f"{len(results)} results for {len(batch)} requests: it must return "
                                   "one per request, in order")
        except Exception as exc:
            if len(batch) > 1:  # find the request(s) at fault: each alone, so the others succeed
                for one in batch:
                    if not one[1].done():
                        await self._run([one])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


class batched:
    """Method decorator: ``@batched(max_batch_size=16)`` over ``async def m(self, items) -> results``
    makes ``await obj.m(item)`` go through one :class:`Batcher` per instance (made on first use, so
    the class pickles and each Serve replica gets its own). ``obj.m.set_max_batch_size(n)``
    changes it at run time; ``Class.m.__wrapped__`` is the undecorated batch function."""

    def __init__(self, *, max_batch_size: int = 16, max_concurrent_batches: int = 1) -> None:
        self.max_batch_size, self.max_concurrent_batches = max_batch_size, max_concurrent_batches
        self.__wrapped__: Callable | None = None
        self.name = ""

    def __call__(self, func: Callable) -> "batched":
        self.__wrapped__ = func
        functools.update_wrapper(self, func)
        return self

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        # Stored under the method's own name: later look-ups find the instance's batcher directly.
        batcher = obj.__dict__[self.name] = Batcher(functools.partial(self.__wrapped__, obj),
                                                    max_batch_size=self.max_batch_size,
                                                    max_concurrent_batches=self.max_concurrent_batches,
                                                    name=f"{type(obj).__name__}.{self.name}")
        return batcher


# --- the browser page (GET /): its files, its configuration, language detection --------------

PAGE_DIR = Path(__file__).resolve().parent / "page"
# The page's files other than index.html, served at /page/<name>; nothing else is.
PAGE_ASSETS = {"page.css": "text/css; charset=utf-8", "page.js": "text/javascript; charset=utf-8"}
# The page runs only its own script and style, talks only to this origin, and cannot be framed: API
# data is written into the page as text (page.js never uses innerHTML), and this policy stops any
# inline script that still got in.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.lru_cache(maxsize=None)
def page_file(name: str) -> bytes:
    """The bytes of the page's file ``name`` (``index.html`` or one of :data:`PAGE_ASSETS`), read once
    per process; a KeyError for any other name (the route answers 404: no path reaches the disk)."""
    if name != "index.html" and name not in PAGE_ASSETS:
        raise KeyError(name)
    return (PAGE_DIR / name).read_bytes()


def language_entry(code: str) -> dict[str, Any]:
    """``{code, name, script, direction}`` of one language of the table, as the page shows it.

    >>> language_entry("ar")
    {'code': 'ar', 'name': 'Arabic', 'script': 'Arabic', 'direction': 'rtl'}
    """
    lang = LANGUAGES[code]
    return {"code": lang.code, "name": lang.name, "script": lang.script, "direction": lang.direction}


def page_config(*, needs_lang: bool, retrievers: Sequence[str], default_retriever: str, generator: bool,
                pivot: bool, max_question_chars: int, default_k: int, max_k: int) -> dict[str, Any]:
    """What the page needs to know of the app (``GET /page/config.json``, unauthenticated: nothing
    here is secret, /healthz already says what is configured): whether retrieval needs the
    question's language (the encoder's query format writes it), the retrievers, which models
    answer, the languages it can pick from, and the question limits."""
    return {"needs_lang": needs_lang, "retrievers": list(retrievers), "default_retriever": default_retriever,
            "generator": generator, "pivot": pivot, "languages": [language_entry(c) for c in sorted(LANGUAGES)],
            "max_question_chars": max_question_chars, "default_k": default_k, "max_k": max_k}


def detected_language(text: str) -> dict[str, Any]:
    """The ``/v1/detect-language`` body for ``text``: the language among the table's (see
    :func:`~ray_cora.languages.detect_language`) with its name, script and direction, or nulls.

    >>> detected_language("في أي عام اكتمل بناء برج إيفل؟")["direction"]
    'rtl'
    """
    code, how = detect_language(text)
    if code is None:
        return {"lang": None, "name": None, "script": None, "direction": None, "how": how}
    return {"lang": code, **{k: v for k, v in language_entry(code).items() if k != "code"}, "how": how}
