"""Hybrid retrieval, pure: fuse a dense and a lexical (BM25) ranked list per question language,
learn the fusion per language on a labelled dev set, save it as ``fusion.json`` beside an index.

Two fusion methods, both with a weight ``w`` on the dense side and ``1 - w`` on BM25:

- ``rrf`` — weighted reciprocal rank fusion: ``w / (k + rank_dense) + (1 - w) / (k + rank_bm25)``
  (a list that misses the passage adds 0). Scores are ignored, only ranks count.
- ``convex`` — a convex combination of scores normalised per list (over its top ``depth``):
  ``minmax`` (``(s - min) / (max - min)``, a missing passage gets 0), ``zscore`` (``(s - mean) /
  std``, a missing passage gets the list's lowest z) or ``rank`` (``1 - (rank - 1) / depth``, missing
  0). Raw BM25 and inner-product scores live on unrelated scales, so some normalisation is needed;
  which one works best is measured (``jobs/benchmarks/xquad_retrieval.py``), not assumed.

Ties are broken by the best rank the passage has in either list, then its dense rank, then its pid,
so a fusion is deterministic. ``w = 1`` is the dense list alone and ``w = 0`` BM25 alone (the other
side only orders what the first did not find): the tuning grid holds both ends, so a side that does
not help in a language is switched off there.

Fallback rule (:meth:`FusionWeights.setting_for`), in order:

1. a language **with no lexical index** gets ``no_lexical`` — the dense list plus BM25 hits for
   the question's language-neutral terms in the other languages' indexes (:func:`neutral_terms`)
   — when that setting is present, else the **dense list alone**. ``ray-cora tune fusion`` sets
   it (to :data:`CROSS_LINGUAL_DEFAULT`, measured on XQuAD, or tuned with ``--neutral``) unless
   told ``--cross-lingual false``;
2. a language tuned on at least ``min_dev_questions`` dev questions gets **its own setting**;
3. any other language (no or too few dev questions) gets ``fallback``: one setting tuned on the
   dev questions of all languages pooled, or equal-weight RRF (k=60) when there was no dev data.

>>> hits = fuse([("a", 0.9), ("b", 0.8)], [("b", 12.0), ("c", 7.0)], FusionSetting("rrf", 0.5, rrf_k=60))
>>> [(h.pid, h.sources) for h in hits]
[('b', {'dense': 2, 'bm25': 1}), ('a', {'dense': 1, 'bm25': None}), ('c', {'dense': None, 'bm25': 2})]
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ray_cora import storage
from ray_cora.errors import ConfigError
from ray_cora.index.lexical import LexicalIndex

__all__ = ["CROSS_LINGUAL_DEFAULT", "FUSION_FILE", "FUSION_VERSION", "METHODS", "NORMALIZATIONS", "FusedHit", "FusionSetting",
           "FusionWeights", "FusionGrid", "FusionQuestion", "fuse", "fused_scores", "tune_setting",
           "tune_weights", "evaluate_setting", "neutral_terms", "merge_by_rank", "equal_rrf", "fallback_languages",
           "load_weights", "save_weights", "find_weights", "sweep", "RETRIEVERS", "lexical_lists",
           "fuse_question", "fuse_block",
           "best_setting", "pool_rows", "weights_from_sweeps"]

FUSION_FILE = "fusion.json"
FUSION_VERSION = 1
METHODS = ("rrf", "convex")
NORMALIZATIONS = ("minmax", "zscore", "rank")
OBJECTIVE = "gold@1+gold@10"
RETRIEVERS = ("dense", "bm25", "hybrid")
Ranked = Sequence[tuple[str, float]]  # (pid, score), best first


@dataclass(frozen=True)
class FusionSetting:
    """How one language's two lists are fused. ``dense_weight`` is ``w`` (BM25 gets ``1 - w``);
    ``rrf_k`` is used by ``rrf``, ``normalization`` by ``convex``; ``depth`` passages of each list
    take part. ``rule``, ``dev_questions`` and ``dev_objective`` say where it came from."""

    method: str = "rrf"
    dense_weight: float = 0.5
    rrf_k: int = 60
    normalization: str = "minmax"
    depth: int = 100
    rule: str = "default"
    dev_questions: int = 0
    dev_objective: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"fusion method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"fusion normalization {self.normalization!r}: use one of {', '.join(NORMALIZATIONS)}")
        if not 0.0 <= self.dense_weight <= 1.0:
            raise ConfigError(f"fusion dense_weight {self.dense_weight}: must be within [0, 1]")
        if self.rrf_k < 0 or self.depth < 1:
            raise ConfigError(f"fusion rrf_k {self.rrf_k} / depth {self.depth}: need rrf_k >= 0 and depth >= 1")

    def describe(self) -> str:
        """Short label: ``rrf k=60 w=0.50`` or ``convex minmax w=0.30``."""
        how = f"k={self.rrf_k}" if self.method == "rrf" else self.normalization
        return f"{self.method} {how} w={self.dense_weight:.2f}"


# The no-lexical-index setting measured on XQuAD (jobs/benchmarks/xquad_retrieval.py: each language's
# BM25 held out, tuned on the dev half of all languages pooled): dense + neutral-term hits raised
# macro gold@1 68.0 -> 69.7 and gold@10 88.1 -> 88.8 on the test half, and no language lost.
CROSS_LINGUAL_DEFAULT = FusionSetting("rrf", 0.85, rrf_k=200, rule="cross-lingual-default")


def equal_rrf(depth: int = 100) -> FusionSetting:
    """Equal-weight RRF with the usual k=60 (Cormack et al. 2009): the untuned baseline."""
    return FusionSetting("rrf", 0.5, rrf_k=60, depth=depth, rule="equal-rrf")


@dataclass(frozen=True)
class FusedHit:
    """One fused passage: its fused score and its 1-based rank in each list (None: not in it)."""

    pid: str
    score: float
    sources: dict[str, int | None]


# --- fusing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidates:
    pids: list[str]
    dense_rank: np.ndarray   # (C,) 1-based, 0 where absent
    bm25_rank: np.ndarray    # (C,)
    dense_score: np.ndarray  # (C,) nan where absent
    bm25_score: np.ndarray
    tiebreak: np.ndarray     # (C,) position in the tie order
    depth: int


def _candidates(dense: Ranked, bm25: Ranked, depth: int) -> _Candidates:
    dense, bm25 = list(dense)[:depth], list(bm25)[:depth]
    index: dict[str, int] = {}
    for pid, _ in [*dense, *bm25]:
        index.setdefault(pid, len(index))
    n = len(index)
    d_rank, b_rank = np.zeros(n, np.int64), np.zeros(n, np.int64)
    d_score, b_score = np.full(n, np.nan), np.full(n, np.nan)
    for ranks, scores, hits in ((d_rank, d_score, dense), (b_rank, b_score, bm25)):
        for r, (pid, s) in enumerate(hits, start=1):
            i = index[pid]
            if ranks[i] == 0:  # a pid listed twice keeps its best rank
                ranks[i], scores[i] = r, float(s)
    pids = list(index)
    big = depth + 1
    best = np.minimum(np.where(d_rank > 0, d_rank, big), np.where(b_rank > 0, b_rank, big))
    order = sorted(range(n), key=lambda i: (best[i], d_rank[i] or big, b_rank[i] or big, pids[i]))
    tiebreak = np.empty(n, np.int64)
    tiebreak[order] = np.arange(n)
    return _Candidates(pids, d_rank, b_rank, d_score, b_score, tiebreak, depth)


def _normalised(scores: np.ndarray, ranks: np.ndarray, how: str, depth: int) -> np.ndarray:
    present = ranks > 0
    out = np.zeros(len(scores))
    if not present.any():
        return out
    s = scores[present]
    if how == "minmax":
        span = s.max() - s.min()
        out[present] = (s - s.min()) / span if span > 0 else 1.0
    elif how == "zscore":
        std = s.std()
        z = (s - s.mean()) / std if std > 0 else np.zeros(len(s))
        out[:] = z.min()
        out[present] = z
    else:  # rank
        out[present] = 1.0 - (ranks[present] - 1) / depth
    return out


def _components(c: _Candidates, method: str, rrf_k: int, normalization: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-candidate dense and BM25 parts, (C,) each, before weighting."""
    if method == "rrf":
        return (np.where(c.dense_rank > 0, 1.0 / (rrf_k + np.maximum(c.dense_rank, 1)), 0.0),
                np.where(c.bm25_rank > 0, 1.0 / (rrf_k + np.maximum(c.bm25_rank, 1)), 0.0))
    return (_normalised(c.dense_score, c.dense_rank, normalization, c.depth),
            _normalised(c.bm25_score, c.bm25_rank, normalization, c.depth))


def _weighted(d: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    # (W, C); the one formula both fuse() and the tuning sweep use, so they rank identically.
    w = np.asarray(weights, dtype=np.float64)[:, None]
    return w * d[None, :] + (1.0 - w) * b[None, :]


def fused_scores(dense: Ranked, bm25: Ranked, setting: FusionSetting) -> tuple[list[str], np.ndarray]:
    """(pids, fused scores) of every passage in either list's top ``depth``, unsorted.

    >>> fused_scores([("a", 2.0), ("b", 1.0)], [], FusionSetting("convex", 1.0, normalization="minmax"))[1]
    array([1., 0.])
    """
    c = _candidates(dense, bm25, setting.depth)
    d, b = _components(c, setting.method, setting.rrf_k, setting.normalization)
    return c.pids, _weighted(d, b, np.array([setting.dense_weight]))[0]


def fuse(dense: Ranked, bm25: Ranked, setting: FusionSetting, k: int | None = None) -> list[FusedHit]:
    """The fused top ``k`` (all when None) of a dense and a BM25 list, each ``[(pid, score), …]``
    best first; each hit records its rank in both lists."""
    c = _candidates(dense, bm25, setting.depth)
    d, b = _components(c, setting.method, setting.rrf_k, setting.normalization)
    scores = _weighted(d, b, np.array([setting.dense_weight]))[0]
    order = np.lexsort((c.tiebreak, -scores))[:k]
    return [FusedHit(c.pids[i], round(float(scores[i]), 8),
                     {"dense": int(c.dense_rank[i]) or None, "bm25": int(c.bm25_rank[i]) or None})
            for i in order]


# --- weights record ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FusionWeights:
    """Fusion settings per question language, with the fallbacks of the module's rule."""

    languages: Mapping[str, FusionSetting] = field(default_factory=dict)
    fallback: FusionSetting = field(default_factory=equal_rrf)
    no_lexical: FusionSetting | None = None
    min_dev_questions: int = 50
    objective: str = OBJECTIVE
    version: int = FUSION_VERSION

    def setting_for(self, lang: str, *, has_lexical: bool = True) -> FusionSetting | None:
        """The setting a question in ``lang`` uses; None means the dense list alone.

        >>> w = FusionWeights({"en": FusionSetting("convex", 0.2, rule="tuned", dev_questions=80)})
        >>> w.setting_for("en").describe(), w.setting_for("sw").rule, w.setting_for("en", has_lexical=False)
        ('convex minmax w=0.20', 'equal-rrf', None)
        """
        if not has_lexical:
            return self.no_lexical
        return self.languages.get(lang, self.fallback)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "objective": self.objective,
                "min_dev_questions": self.min_dev_questions,
                "rule": ("no lexical index: no_lexical (dense + language-neutral terms in the other "
                         "languages' BM25) if set, else dense only; a language in 'languages': its "
                         "setting; else: fallback"),
                "languages": {l: asdict(s) for l, s in sorted(self.languages.items())},
                "fallback": asdict(self.fallback),
                "no_lexical": asdict(self.no_lexical) if self.no_lexical else None}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "fusion.json") -> "FusionWeights":
        """Read :meth:`to_dict`'s output back, checking version and fields."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: must be a JSON object: rerun `ray-cora tune fusion`")
        if data.get("version") != FUSION_VERSION:
            raise ConfigError(f"{source}: field 'version' is {data.get('version')!r}, this ray_cora reads "
                              f"{FUSION_VERSION}: rerun `ray-cora tune fusion` to write it again")

        def setting(value: Any, where: str) -> FusionSetting:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: field '{where}' must be an object: rerun `ray-cora tune fusion`")
            known = set(FusionSetting.__dataclass_fields__)
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError(f"{source}: field '{where}' has unknown keys {unknown}: rerun "
                                  "`ray-cora tune fusion`")
            try:
                return FusionSetting(**value)
            except (ConfigError, TypeError) as exc:
                raise ConfigError(f"{source}: field '{where}': {exc}") from None

        langs = data.get("languages") or {}
        if not isinstance(langs, dict):
            raise ConfigError(f"{source}: field 'languages' must be an object of language -> setting")
        no_lex = data.get("no_lexical")
        return cls(languages={l: setting(v, f"languages.{l}") for l, v in langs.items()},
                   fallback=setting(data.get("fallback"), "fallback"),
                   no_lexical=None if no_lex is None else setting(no_lex, "no_lexical"),
                   min_dev_questions=int(data.get("min_dev_questions", 50)),
                   objective=str(data.get("objective", OBJECTIVE)))

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def fallback_languages(weights: FusionWeights, langs: Iterable[str], *,
                       lexical_langs: Iterable[str] | None = None) -> list[str]:
    """The question languages ``langs`` that the hybrid fuses with ``weights.fallback`` (rule 3 of
    the module's rule: no setting of their own), sorted. A language with no lexical parts
    (``lexical_langs`` given and without it) is not one of them: it gets ``no_lexical`` or the dense
    list alone (rule 1).

    >>> w = FusionWeights({"en": FusionSetting("convex", 0.2, rule="tuned", dev_questions=80)})
    >>> fallback_languages(w, ["sw", "en", "ja", "ja"], lexical_langs=["en", "ja"])
    ['ja']
    """
    lexical = None if lexical_langs is None else set(lexical_langs)
    return sorted({lang for lang in langs
                   if lang not in weights.languages and (lexical is None or lang in lexical)})


def save_weights(weights: FusionWeights, uri: str) -> None:
    """Write ``weights`` as JSON to ``uri`` (a file; any storage URI)."""
    storage.write_bytes(uri, weights.to_json())


def load_weights(uri: str) -> FusionWeights:
    """Read a ``fusion.json`` (a file URI, or a folder holding one)."""
    loc = storage.resolve(uri)
    if not loc.is_file() and loc.join(FUSION_FILE).is_file():
        loc = loc.join(FUSION_FILE)
    try:
        data = json.loads(storage.read_bytes(loc))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{loc.uri}: not valid JSON ({exc}): rerun `ray-cora tune fusion`") from None
    return FusionWeights.from_dict(data, source=loc.uri)


def find_weights(fusion: str | None, *beside: str | None) -> tuple[FusionWeights, str | None]:
    """The hybrid's fusion weights and where they came from: ``fusion`` (a file or a folder holding
    ``fusion.json``), else the ``fusion.json`` in the first of the folders ``beside`` that has one (the
    lexical index, then the dense index), else the untuned default (source None): equal-weight RRF for
    every language, and the dense list alone for a language without lexical parts."""
    if fusion:
        return load_weights(fusion), fusion
    for uri in beside:
        if uri and storage.resolve(uri).join(FUSION_FILE).is_file():
            return load_weights(uri), uri
    return FusionWeights(), None


# --- one question's hybrid: the lexical side and the fusion, as every layer runs them ----------


def lexical_lists(index: LexicalIndex, question: str, lang: str, depth: int, *, neutral: bool = False) -> dict:
    """One question's lexical side: ``hits``, its BM25 top ``depth`` in its own language's parts
    (``[[pid, score], …]``); ``has_lexical``, whether the index has parts in ``lang``; and, with
    ``neutral`` and no parts in ``lang``, ``neutral``: the hits of its language-neutral terms
    (:func:`neutral_terms`) in every language's parts, merged by rank (:func:`merge_by_rank`)."""
    scores, pids = index.search_one(question, lang, depth)
    row: dict[str, Any] = {"hits": [[p, s] for p, s in zip(pids, scores)], "has_lexical": lang in index.languages}
    if neutral and not row["has_lexical"]:
        terms = " ".join(neutral_terms(question))
        lists = []
        for other in index.languages if terms else []:
            found_scores, found_pids = index.search_one(terms, other, depth)
            lists.append(list(zip(found_pids, found_scores)))
        row["neutral"] = merge_by_rank(lists, depth)
    return row


def fuse_question(lang: str, dense: Ranked | None, lexical: Mapping[str, Any], *, retriever: str,
                  weights: FusionWeights | None, k: int) -> list[tuple[str, float, dict[str, int | None]]]:
    """One question's ranked ``(pid, score, ranks)``, ``ranks`` being its 1-based rank in each list:
    with ``retriever="bm25"`` the BM25 hits alone (``{"bm25": r}``); with ``"hybrid"`` the ``dense``
    list and the BM25 hits of :func:`lexical_lists` fused by the setting of the question's language
    (:meth:`FusionWeights.setting_for`; the dense list alone where it says None).

    >>> fuse_question("sw", [("d1", 0.9)], {"hits": [], "has_lexical": False}, retriever="hybrid",
    ...               weights=FusionWeights(), k=3)
    [('d1', 0.9, {'dense': 1, 'bm25': None})]
    """
    if retriever not in ("bm25", "hybrid"):
        raise ValueError(f"retriever {retriever!r}: fuse_question fuses bm25 or hybrid only")
    bm25 = [(pid, float(score)) for pid, score in lexical["hits"]]
    if retriever == "bm25":
        return [(pid, score, {"bm25": r}) for r, (pid, score) in enumerate(bm25[:k], start=1)]
    dense_list = [(pid, float(s)) for pid, s in (dense or [])]
    setting = (weights or FusionWeights()).setting_for(lang, has_lexical=lexical["has_lexical"])
    if setting is None:  # the documented fallback: no lexical index for this language, no rule for it
        return [(pid, s, {"dense": r, "bm25": None}) for r, (pid, s) in enumerate(dense_list[:k], start=1)]
    other = bm25 if lexical["has_lexical"] else [(p, float(s)) for p, s in lexical.get("neutral", [])]
    return [(h.pid, h.score, h.sources) for h in fuse(dense_list, other, setting, k)]


def fuse_block(questions: Sequence[Mapping[str, Any]], dense: tuple[Any, Sequence[Sequence[str]]] | None,
               lexical: Sequence[Mapping[str, Any]], *, retriever: str, weights: FusionWeights | None,
               k: int) -> tuple[list[list[str]], list[list[float]], list[list[dict]]]:
    """Each question's ranked pids, scores and, per passage, its 1-based rank in each list
    (``{"dense": r or None, "bm25": r or None}``; BM25 alone: ``{"bm25": r}``): :func:`fuse_question`
    for every question of a block, ``dense`` being (scores rows, pids rows), one row per question."""
    ranked, scores, sources = [], [], []
    for i, question in enumerate(questions):
        dense_list = None if dense is None else list(zip(dense[1][i], dense[0][i]))
        fused = fuse_question(question["lang"], dense_list, lexical[i], retriever=retriever, weights=weights, k=k)
        ranked.append([pid for pid, _, _ in fused])
        scores.append([s for _, s, _ in fused])
        sources.append([src for _, _, src in fused])
    return ranked, scores, sources


# --- tuning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusionQuestion:
    """One labelled dev question: its two ranked lists and its gold pids."""

    dense: Ranked
    bm25: Ranked
    gold: frozenset[str]


@dataclass(frozen=True)
class FusionGrid:
    """What the tuning tries: every method × (RRF k | normalisation) × dense weight. The weights
    include 0 and 1, so "one side alone" is always a candidate."""

    weights: tuple[float, ...] = tuple(round(i / 20, 2) for i in range(21))
    methods: tuple[str, ...] = METHODS
    rrf_ks: tuple[int, ...] = (5, 20, 60, 200)
    normalizations: tuple[str, ...] = NORMALIZATIONS
    depth: int = 100

    def families(self) -> list[tuple[str, int, str]]:
        out = []
        if "rrf" in self.methods:
            out += [("rrf", k, "minmax") for k in self.rrf_ks]
        if "convex" in self.methods:
            out += [("convex", 60, n) for n in self.normalizations]
        return out


def _gold_positions(c: _Candidates, d: np.ndarray, b: np.ndarray, weights: np.ndarray,
                    gold: frozenset[str]) -> np.ndarray:
    """0-based fused position of the best-placed gold passage per weight, (W,); inf if none."""
    gold_idx = [i for i, p in enumerate(c.pids) if p in gold]
    if not gold_idx:
        return np.full(len(weights), np.inf)
    s = _weighted(d, b, weights)                       # (W, C)
    g = s[:, gold_idx]                                 # (W, G)
    above = (s[:, None, :] > g[:, :, None]).sum(-1)    # (W, G)
    earlier = c.tiebreak[None, None, :] < c.tiebreak[gold_idx][None, :, None]
    tied = ((s[:, None, :] == g[:, :, None]) & earlier).sum(-1)
    return (above + tied).min(axis=1).astype(float)


def sweep(questions: Sequence[FusionQuestion], grid: FusionGrid = FusionGrid()) -> list[dict]:
    """Every grid point's gold@1 and gold@10 (% of ``questions``) and objective (their sum)."""
    weights = np.array(grid.weights, dtype=np.float64)
    families = grid.families()
    at1 = np.zeros((len(families), len(weights)))
    at10 = np.zeros_like(at1)
    for q in questions:
        c = _candidates(q.dense, q.bm25, grid.depth)
        for f, (method, k, norm) in enumerate(families):
            pos = _gold_positions(c, *_components(c, method, k, norm), weights, q.gold)
            at1[f] += pos < 1
            at10[f] += pos < 10
    n = max(len(questions), 1)
    rows = []
    for f, (method, k, norm) in enumerate(families):
        for j, w in enumerate(grid.weights):
            g1, g10 = 100.0 * at1[f, j] / n, 100.0 * at10[f, j] / n
            rows.append({"method": method, "rrf_k": k, "normalization": norm, "dense_weight": float(w),
                         "gold@1": g1, "gold@10": g10, "objective": g1 + g10})
    return rows


def evaluate_setting(questions: Sequence[FusionQuestion], setting: FusionSetting) -> dict[str, float]:
    """gold@1 and gold@10 (%) of one setting, through :func:`fuse` itself."""
    hits1 = hits10 = 0
    for q in questions:
        pids = [h.pid for h in fuse(q.dense, q.bm25, setting, k=10)]
        hits1 += bool(pids[:1]) and pids[0] in q.gold
        hits10 += any(p in q.gold for p in pids)
    n = max(len(questions), 1)
    return {"gold@1": 100.0 * hits1 / n, "gold@10": 100.0 * hits10 / n}


def best_setting(rows: Sequence[dict], *, questions: int, depth: int, rule: str = "tuned",
                 keep=lambda row: True) -> FusionSetting:
    """The row of a :func:`sweep` with the best objective among those ``keep`` accepts (ties: the
    first in grid order — RRF before convex, weights ascending), as a setting."""
    candidates = [i for i, r in enumerate(rows) if keep(r)]
    if not candidates:
        raise ConfigError("the fusion grid is empty: give at least one method, weight and RRF k / normalisation")
    r = rows[max(candidates, key=lambda i: (rows[i]["objective"], -i))]
    return FusionSetting(r["method"], r["dense_weight"], rrf_k=r["rrf_k"], normalization=r["normalization"],
                         depth=depth, rule=rule, dev_questions=questions, dev_objective=round(r["objective"], 4))


def pool_rows(rows_by_lang: Mapping[str, Sequence[dict]], counts: Mapping[str, int]) -> list[dict]:
    """The sweep of all languages' questions together, from the per-language sweeps (each language
    weighs by its question count), without fusing again."""
    langs = [l for l in sorted(rows_by_lang) if counts[l]]
    total = sum(counts[l] for l in langs)
    pooled = []
    for j, row in enumerate(rows_by_lang[langs[0]]):
        g1 = sum(counts[l] * rows_by_lang[l][j]["gold@1"] for l in langs) / total
        g10 = sum(counts[l] * rows_by_lang[l][j]["gold@10"] for l in langs) / total
        pooled.append({**row, "gold@1": g1, "gold@10": g10, "objective": g1 + g10})
    return pooled


def tune_setting(questions: Sequence[FusionQuestion], grid: FusionGrid = FusionGrid(), *,
                 rule: str = "tuned") -> tuple[FusionSetting, list[dict]]:
    """The grid point with the best objective on ``questions``, and the whole sweep."""
    rows = sweep(questions, grid)
    return best_setting(rows, questions=len(questions), depth=grid.depth, rule=rule), rows


def weights_from_sweeps(rows_by_lang: Mapping[str, Sequence[dict]], counts: Mapping[str, int], *,
                        depth: int, min_dev_questions: int = 50, no_lexical: FusionSetting | None = None,
                        keep=lambda row: True) -> FusionWeights:
    """:func:`tune_weights` from per-language sweeps already made (``keep`` restricts the grid)."""
    languages = {l: best_setting(rows, questions=counts[l], depth=depth, keep=keep)
                 for l, rows in sorted(rows_by_lang.items()) if counts[l] >= min_dev_questions}
    total = sum(counts.values())
    fallback = (best_setting(pool_rows(rows_by_lang, counts), questions=total, depth=depth, rule="pooled",
                             keep=keep) if total else equal_rrf(depth))
    return FusionWeights(languages, fallback, no_lexical, min_dev_questions=min_dev_questions)


def tune_weights(by_lang: Mapping[str, Sequence[FusionQuestion]], grid: FusionGrid = FusionGrid(), *,
                 min_dev_questions: int = 50, no_lexical: FusionSetting | None = None) -> FusionWeights:
    """Tune every language with at least ``min_dev_questions`` questions on its own; the fallback
    on all questions pooled (equal-weight RRF when there are none)."""
    rows = {lang: sweep(qs, grid) for lang, qs in sorted(by_lang.items()) if qs}
    return weights_from_sweeps(rows, {l: len(by_lang[l]) for l in rows}, depth=grid.depth,
                               min_dev_questions=min_dev_questions, no_lexical=no_lexical)


# --- the cross-lingual case --------------------------------------------------------------------

_DIGITS = re.compile(r"\d+")
_LETTERS = "A-Za-z\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F\u1E00-\u1EFF"  # Latin script, with accents
_LATIN_WORD = re.compile(rf"(?<![^\W\d_])[{_LETTERS}]+(?:['’-][{_LETTERS}]+)*(?![^\W\d_])")
_LATIN_RUN = re.compile(rf"[{_LETTERS}]+(?:['’-][{_LETTERS}]+)*")


def neutral_terms(question: str) -> list[str]:
    """Terms of ``question`` likely to be written the same in other languages: digit runs (years,
    quantities; after NFKC, so full-width digits count) and Latin-script names — in a question
    written mostly in Latin script the capitalised words other than the first (which is capitalised
    by grammar), in any other script every Latin-script run (a name, title or code left
    untransliterated). Order kept, duplicates dropped.

    >>> neutral_terms("Wann wurde Super Bowl 50 in Santa Clara gespielt?")
    ['50', 'Super', 'Bowl', 'Santa', 'Clara']
    >>> neutral_terms("Сколько очков набрали Denver Broncos в 2015 году?")
    ['2015', 'Denver', 'Broncos']
    """
    text = unicodedata.normalize("NFKC", question)
    letters = sum(ch.isalpha() for ch in text)
    runs = _LATIN_RUN.findall(text)
    if letters and sum(map(len, runs)) * 2 >= letters:
        words = [m for m in _LATIN_WORD.finditer(text)]
        first = next((m.start() for m in re.finditer(r"[^\W\d_]", text)), -1)
        names = [m.group() for m in words if m.start() != first and m.group()[0].isupper()]
    else:
        names = runs
    out: dict[str, None] = {}
    for term in [*_DIGITS.findall(text), *names]:
        out.setdefault(term, None)
    return list(out)


def merge_by_rank(lists: Iterable[Ranked], depth: int = 100) -> list[tuple[str, float]]:
    """One ranked list from the hit lists of several indexes whose scores are not comparable (BM25
    of different languages): every list's first hit, then every second hit, …; within a rank, by
    score. The score kept is ``1 / rank`` so normalising it is meaningful.

    >>> merge_by_rank([[("a", 9.0), ("b", 3.0)], [("x", 12.0)]])
    [('x', 1.0), ('a', 1.0), ('b', 0.5)]
    """
    tagged = [(r, -float(s), pid) for hits in lists for r, (pid, s) in enumerate(hits, start=1)]
    out: dict[str, float] = {}
    for r, _, pid in sorted(tagged):
        if pid not in out:
            out[pid] = 1.0 / r
        if len(out) >= depth:
            break
    return list(out.items())

