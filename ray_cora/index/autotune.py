"""Pick the search-time parameter of an index (IVF ``nprobe``, HNSW ``efSearch``) that reaches a
recall target on held-out queries within a latency budget, and record it in the index (pure).

The sweep is autofaiss's idea (``get_optimal_hyperparameters``: grow the parameter until the
budget is spent) with recall measured as well. FAISS's own ``ParameterSpace.explore`` is not used:
it sets the parameters on the index object itself (a shared ``nprobe`` two searchers would race
on) and explores every combination of every knob; a sharded index has one knob and per-call
``SearchParameters`` (:func:`ray_cora.index.spec.search_parameters`), so a one-dimensional sweep
that stops early is enough and costs a fraction.

Recall@k of a parameter value is measured against :meth:`ShardedIndex.exhaustive_rows` (every IVF
list probed, HNSW's stored vectors scanned): the best any value of the parameter can reach with the
index's codes. When exact ground truth is at hand (raw vectors, e.g. in a benchmark), pass it as
``truth`` instead.

The chosen value becomes the index's default (``search_params`` in ``manifest.json``), and the
whole sweep is kept in ``tuning.json`` beside it; a search call may still pass its own value.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from ray_cora import storage
from ray_cora.errors import ConfigError
from ray_cora.index.sharded import INDEX_KIND, ShardedIndex

TUNING_PATH = "tuning.json"
# efSearch values tried for HNSW (FAISS clamps efSearch below k up to k itself).
EF_SEARCH_VALUES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)


@dataclass(frozen=True)
class TuneTarget:
    """What the tuned search must reach: recall@``k`` ≥ ``recall`` at ≤ ``max_ms_per_query``
    (None: no latency budget), timed in batches of ``batch_size`` queries, best of ``repeats``."""

    k: int = 100
    recall: float = 0.95
    max_ms_per_query: float | None = None
    batch_size: int = 64
    repeats: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.recall <= 1:
            raise ConfigError(f"recall target must be in (0, 1], got {self.recall}")
        if self.k < 1 or self.batch_size < 1 or self.repeats < 1:
            raise ConfigError("k, batch_size and repeats must be >= 1")


@dataclass(frozen=True)
class OperatingPoint:
    """One value of the parameter, measured: recall@k and milliseconds per query."""

    params: dict[str, int]
    recall: float
    ms_per_query: float


@dataclass
class Tuning:
    """The sweep and its outcome: ``chosen`` is what search calls get by default; ``met`` says
    whether it reaches the target within the budget, ``reason`` says why it was chosen."""

    knob: str | None
    target: TuneTarget
    points: list[OperatingPoint]
    chosen: OperatingPoint
    met: bool
    reason: str
    num_queries: int
    truth: str = "exhaustive"  # "exhaustive" (same codes, nothing left out) or "exact" (given)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"knob": self.knob, "target": asdict(self.target), "chosen": asdict(self.chosen),
                "met": self.met, "reason": self.reason, "num_queries": self.num_queries, "truth": self.truth,
                "points": [asdict(p) for p in self.points], **self.extra}

    def table(self) -> str:
        """The sweep as Markdown, the chosen row marked."""
        name = self.knob or "(none)"
        lines = [f"| {name} | recall@{self.target.k} | ms/query |", "|---:|---:|---:|"]
        for point in self.points:
            mark = " ← chosen" if point == self.chosen else ""
            lines.append(f"| {point.params.get(self.knob, '-') if self.knob else '-'} | {point.recall:.4f} | "
                         f"{point.ms_per_query:.3f}{mark} |")
        return "\n".join(lines)


def recall_at_k(rows: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |top-k ∩ true top-k| / |true top-k| (empty slots, -1, never count).

    >>> recall_at_k(np.array([[1, 2, -1]]), np.array([[2, 1, 3]]), 3)
    0.6666666666666666
    """
    total = 0.0
    for got, want in zip(rows[:, :k], truth[:, :k]):
        want = set(want[want >= 0].tolist())
        if want:
            total += len(set(got[got >= 0].tolist()) & want) / len(want)
    return total / max(1, len(rows))


def candidate_values(knob: str | None, limit: int, k: int) -> list[int]:
    """The values swept, cheapest first: powers of two up to nlist for nprobe, a fixed ladder
    from k upwards for efSearch.

    >>> candidate_values("nprobe", 20, 10)
    [1, 2, 4, 8, 16, 20]
    >>> candidate_values("efSearch", 0, 100)[:3]
    [100, 128, 192]
    """
    if knob == "nprobe":
        values = [1 << i for i in range(max(1, limit).bit_length()) if 1 << i < limit]
        return values + [limit]
    if knob == "efSearch":
        return [k] + [v for v in EF_SEARCH_VALUES if v > k]
    return []


def tune(index: ShardedIndex, queries: np.ndarray, target: TuneTarget = TuneTarget(), *,
         truth: np.ndarray | None = None, clock: Callable[[], float] = time.perf_counter) -> Tuning:
    """Sweep the index's search-time parameter over ``queries`` (n, dim) and choose a value.

    Values are tried cheapest first and the sweep stops at the first that reaches the target, or
    once one is over the latency budget. Chosen: the fastest value reaching the target within the
    budget; else the best recall within the budget (``met`` false); else, nothing being within
    the budget, the fastest value measured (``met`` false)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.dim or not len(queries):
        raise ConfigError(f"tuning needs held-out queries of shape (n, {index.dim}), got {queries.shape}")
    k = min(target.k, len(index))
    truth_kind = "exact" if truth is not None else "exhaustive"
    if truth is None:
        truth = index.exhaustive_rows(queries, k)[1]
    knob, limit = index.search_knob

    def measure(params: dict[str, int]) -> OperatingPoint:
        arguments = {"nprobe": params.get("nprobe"), "ef_search": params.get("efSearch")}
        best, rows = float("inf"), None
        for _ in range(target.repeats):
            started = clock()
            rows = np.concatenate([index.search_rows(queries[i:i + target.batch_size], k, **arguments)[1]
                                   for i in range(0, len(queries), target.batch_size)])
            best = min(best, clock() - started)  # the least disturbed run (timing here is noisy)
        return OperatingPoint(params, round(recall_at_k(rows, truth, k), 4), round(1000 * best / len(queries), 4))

    budget = target.max_ms_per_query
    if knob is None:
        point = measure({})
        within = budget is None or point.ms_per_query <= budget
        return Tuning(None, target, [point], point, point.recall >= target.recall and within,
                      "the index is exhaustive (Flat, PQ or SQ codes): no search-time parameter to tune",
                      len(queries), truth_kind)
    points: list[OperatingPoint] = []
    for value in candidate_values(knob, limit, k):
        point = measure({knob: value})
        points.append(point)
        if point.recall >= target.recall or (budget is not None and point.ms_per_query > budget):
            break
    affordable = [p for p in points if budget is None or p.ms_per_query <= budget]
    reaching = [p for p in affordable if p.recall >= target.recall]
    if reaching:
        chosen = min(reaching, key=lambda p: p.ms_per_query)
        return Tuning(knob, target, points, chosen, True,
                      f"{knob}={chosen.params[knob]}: the cheapest value with recall@{k} >= {target.recall}"
                      + (f" within {budget} ms/query" if budget is not None else ""), len(queries), truth_kind)
    if affordable:
        chosen = max(affordable, key=lambda p: (p.recall, -p.ms_per_query))
        why = (f"no value reaches recall@{k} {target.recall}"
               + (f" within {budget} ms/query" if budget is not None else f" (up to {knob}={points[-1].params[knob]})")
               + f"; {knob}={chosen.params[knob]} is the best recall"
               + (" within the budget" if budget is not None else ""))
        return Tuning(knob, target, points, chosen, False, why, len(queries), truth_kind)
    chosen = min(points, key=lambda p: p.ms_per_query)
    return Tuning(knob, target, points, chosen, False,
                  f"even {knob}={chosen.params[knob]} takes {chosen.ms_per_query} ms/query, over the budget "
                  f"of {budget}: a smaller index (fewer lists, shorter codes) or a GPU is needed",
                  len(queries), truth_kind)


def record_tuning(uri: str, tuning: Tuning) -> dict[str, Any]:
    """Make the chosen value the committed index's default search parameter: ``tuning.json`` (the
    whole sweep) is added and ``manifest.json`` rewritten last with ``search_params`` updated and a
    ``tuning`` summary. Returns the new manifest."""
    artifact = storage.Artifact(uri, kind=INDEX_KIND)
    search_params = dict(artifact.manifest.get("search_params") or {})
    search_params.update(tuning.chosen.params)
    summary = {"path": TUNING_PATH, "knob": tuning.knob, "chosen": tuning.chosen.params, "met": tuning.met,
               "recall": tuning.chosen.recall, "ms_per_query": tuning.chosen.ms_per_query,
               "target": asdict(tuning.target), "truth": tuning.truth}
    data = json.dumps(tuning.to_dict(), indent=2).encode("utf-8")
    return artifact.amend({TUNING_PATH: data}, {"search_params": search_params, "tuning": summary})
