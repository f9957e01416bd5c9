"""FAISS flat search with and without BLAS query batches (``distance_compute_blas_threshold``).

faiss-cpu >= 1.10 scans a batch of fewer than 128,000 queries one query at a time; ray_cora sets
the threshold to 20 wherever it opens an index (``ray_cora.index.spec.use_blas_for_query_batches``).
This measures both settings on one flat index, interleaved and repeated, and prints the ratio:

    python jobs/benchmarks/blas_threshold.py --vectors 250000 --dim 512 --queries 200 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import faiss
import numpy as np

from ray_cora.index.spec import BLAS_QUERY_BATCH

FAISS_DEFAULT = 128_000  # faiss-cpu >= 1.10


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(*, vectors: int, dim: int, queries: int, k: int, repeats: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    index = faiss.IndexFlatIP(dim)
    index.add(unit_rows(rng, vectors, dim))
    batch = unit_rows(rng, queries, dim)
    rates: dict[int, list[float]] = {FAISS_DEFAULT: [], BLAS_QUERY_BATCH: []}
    for _ in range(repeats):
        for threshold in rates:  # interleaved, so load changes hit both sides
            faiss.cvar.distance_compute_blas_threshold = threshold
            started = time.perf_counter()
            index.search(batch, k)
            rates[threshold].append(queries / (time.perf_counter() - started))
    medians = {t: statistics.median(r) for t, r in rates.items()}
    return {"vectors": vectors, "dim": dim, "queries": queries, "k": k, "repeats": repeats,
            "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
            "load_after": os.getloadavg(), "qps": {str(t): r for t, r in rates.items()},
            "median_qps": {str(t): m for t, m in medians.items()},
            "ratio": medians[BLAS_QUERY_BATCH] / medians[FAISS_DEFAULT]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=250_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    result = measure(vectors=args.vectors, dim=args.dim, queries=args.queries, k=args.k, repeats=args.repeats)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
