"""ray_cora's sharded index against one raw FAISS index over the same vectors, at CORA-like scale.

    python jobs/benchmarks/search_scale.py --sizes 250000,500000,1000000

Synthetic clustered unit vectors (``--dim`` 512, ``--clusters`` Gaussian clusters, seeded), cut into
shards of ``--shard-size``. For each size and index (``Flat``; ``IVF<nlist>,PQ<pq>`` with
``--nlist`` lists, fixed 1024 by default, or ``auto``: 4·sqrt(N) rounded to a power of two), it
measures build time (training included; both sides train on the same seeded sample), bytes on
disk, the process's peak RSS, and q/s and recall@10/@100 against exact search, for

- **raw**: one FAISS index (``faiss.index_factory``) over all vectors, in this process;
- **sharded**: ``ShardedIndex.open`` of the committed index (shards of one trained index, merged
  into one FAISS index at open time; flat shards likewise);
- **apart** / **apart-threads**: the same shards searched one by one, serially with FAISS's OpenMP
  threads, or in a pool of Python threads (the old default), with ``faiss.merge_knn_results``.

Searches are interleaved (raw, sharded, apart, … per repeat) and repeated ``--repeats`` times
with the same FAISS threads; ratios are sharded ÷ raw q/s per repeat, reported as median (min–max).
Writes docs/results/search_scale.{json,md} (or ``--results PATH.json``) and, with matplotlib, a
PNG of build time and flat search time against N.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ray_cora.index.sharded import IndexSpec, ShardedIndex, write_index
from ray_cora.index.spec import make_empty_index, search_parameters, use_blas_for_query_batches
from ray_cora.index.trained import sample_rows, training_sample_size

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "search_scale.json"


def clustered_vectors(n: int, dim: int, clusters: int, seed: int, *, spread: float = 0.6) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres, made in chunks (float32 throughout)."""
    centres = np.random.default_rng(seed).standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed + 1)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        end = min(n, start + 100_000)
        chunk = centres[rng.integers(0, clusters, end - start)]
        chunk += rng.standard_normal((end - start, dim), dtype=np.float32) * (spread / math.sqrt(dim))
        out[start:end] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def recall(rows: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(r[:k].tolist()) & set(t[:k].tolist())) / k for r, t in zip(rows, truth)]))


def build_raw(vectors: np.ndarray, factory: str, spec: IndexSpec, path: Path) -> tuple[Any, float]:
    """One FAISS index: train on the same seeded sample as ray_cora's, add all, write one file."""
    started = time.perf_counter()
    index = make_empty_index(factory, vectors.shape[1], spec)
    if not index.is_trained:
        n = len(vectors)
        size = training_sample_size(factory, vectors.shape[1], n, spec.train_size)
        index.train(vectors[sample_rows(n, size, spec.train_seed)])
    index.add(vectors)
    faiss.write_index(index, str(path))
    return index, time.perf_counter() - started


def time_search(search, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    rows = search(queries, k)
    return len(queries) / (time.perf_counter() - started), rows


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def measure_size(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    vectors = clustered_vectors(n, args.dim, args.clusters, args.seed)
    queries = fresh_queries(args, n)
    pids = [str(i) for i in range(n)]
    nlist = 2 ** round(math.log2(4 * math.sqrt(n))) if args.nlist == "auto" else int(args.nlist)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(vectors)
    truth = exact.search(queries, 100)[1]
    del exact
    result: dict[str, Any] = {"n": n, "indexes": {}}
    for factory in ("Flat", f"IVF{nlist},PQ{args.pq}"):
        spec = IndexSpec(index_factory=factory, ivf_nprobe=args.nprobe, train_size=args.train_size or None)
        folder = work / f"{n}-{factory.replace(',', '_')}"
        started = time.perf_counter()
        write_index(str(folder), vectors, pids, shard_size=args.shard_size,
                    encoder={"spec": "synthetic", "dim": args.dim, "normalized": True}, spec=spec)
        sharded_build = time.perf_counter() - started
        raw, raw_build = build_raw(vectors, factory, spec, work / f"{n}-raw.faiss")
        raw_bytes = (work / f"{n}-raw.faiss").stat().st_size
        os.remove(work / f"{n}-raw.faiss")
        started = time.perf_counter()
        sharded = ShardedIndex.open(str(folder))
        open_seconds = time.perf_counter() - started
        apart = ShardedIndex.open(str(folder), merge=False)
        # The same shard objects, searched from a pool of Python threads (no second copy in memory).
        apart_threads = ShardedIndex(apart.manifest, apart.shards, threads=os.cpu_count() or 1)
        raw_params = search_parameters(raw, nprobe=args.nprobe)
        variants = {
            "raw": lambda q, k, index=raw, params=raw_params: index.search(q, k, params=params)[1],
            "sharded": lambda q, k, index=sharded: index.search_rows(q, k)[1],
            "apart": lambda q, k, index=apart: index.search_rows(q, k)[1],
            "apart-threads": lambda q, k, index=apart_threads: index.search_rows(q, k)[1],
        }
        entry: dict[str, Any] = {
            "factory": factory, "build_s": {"sharded": round(sharded_build, 2), "raw": round(raw_build, 2)},
            "build_ratio": round(sharded_build / raw_build, 3), "open_s": round(open_seconds, 2),
            "bytes": {"sharded": dir_bytes(folder), "raw": raw_bytes}, "k": {}}
        for k in (10, 100):
            qps: dict[str, list[float]] = {name: [] for name in variants}
            recalls: dict[str, float] = {}
            for _ in range(args.repeats):  # interleaved: each repeat runs every variant once
                for name, search in variants.items():
                    speed, rows = time_search(search, queries, k)
                    qps[name].append(speed)
                    recalls[name] = round(recall(rows, truth, k), 4)
            entry["k"][str(k)] = {
                "qps": {name: summary(v) for name, v in qps.items()}, "recall": recalls,
                "ratio_vs_raw": {name: summary([a / b for a, b in zip(qps[name], qps["raw"])])
                                 for name in variants if name != "raw"}}
        result["indexes"][factory] = entry
        variants.clear()  # the indexes go before the next factory's are built
        raw = sharded = apart = apart_threads = None
        print(json.dumps({"n": n, factory: entry}))
    result["peak_rss_gib"] = peak_rss_gib()
    return result


def fresh_queries(args: argparse.Namespace, n: int) -> np.ndarray:
    """Queries from the corpus' clusters (same centres) with their own noise: not corpus vectors."""
    centres = np.random.default_rng(args.seed).standard_normal((args.clusters, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(args.seed + 1000 + n)
    q = centres[rng.integers(0, args.clusters, args.queries)]
    q += rng.standard_normal(q.shape, dtype=np.float32) * (0.6 / math.sqrt(args.dim))
    return np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)


def to_markdown(results: dict[str, Any]) -> str:
    lines = ["# Search at scale: ray_cora ShardedIndex vs one raw FAISS index", "",
             f"{results['machine']}; load before the run: {results['load_before']}, after: {results['load_after']}. "
             f"{results['dim']}-d clustered unit vectors ({results['clusters']} clusters), shards of "
             f"{results['shard_size']}, {results['queries']} queries per batch, nprobe {results['nprobe']}, training "
             f"sample {results['train_size'] or 'by the default rule'}, "
             f"{results['faiss_threads']} FAISS threads, {results['repeats']} interleaved repeats; ratio = "
             "q/s ÷ raw q/s, median (min–max).", "",
             "| N | index | k | raw q/s | sharded q/s | ratio | apart (serial) ratio | apart (threads) ratio | "
             "recall raw | recall sharded | build raw s | build sharded s | MB raw | MB sharded |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ratio(r: dict[str, float]) -> str:
        return f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"

    for size in results["sizes"]:
        for factory, e in size["indexes"].items():
            for k, m in e["k"].items():
                lines.append(
                    f"| {size['n']:,} | {factory} | {k} | {m['qps']['raw']['median']:.0f} | "
                    f"{m['qps']['sharded']['median']:.0f} | {ratio(m['ratio_vs_raw']['sharded'])} | "
                    f"{ratio(m['ratio_vs_raw']['apart'])} | {ratio(m['ratio_vs_raw']['apart-threads'])} | "
                    f"{m['recall']['raw']:.3f} | {m['recall']['sharded']:.3f} | {e['build_s']['raw']:.1f} | "
                    f"{e['build_s']['sharded']:.1f} | {e['bytes']['raw'] / 1e6:.0f} | "
                    f"{e['bytes']['sharded'] / 1e6:.0f} |")
    lines += ["", "Peak RSS of the benchmark process after each size (GiB): "
              + ", ".join(f"{s['n']:,}: {s['peak_rss_gib']}" for s in results["sizes"]) + "."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = [s["n"] for s in results["sizes"]]
    fig, (build, search) = plt.subplots(1, 2, figsize=(10, 4))
    for factory in results["sizes"][0]["indexes"]:
        for side in ("raw", "sharded"):
            build.plot(sizes, [s["indexes"][factory]["build_s"][side] for s in results["sizes"]], marker="o",
                       label=f"{factory} {side}")
    flat = next(iter(results["sizes"][0]["indexes"]))
    for side in ("raw", "sharded", "apart", "apart-threads"):
        search.plot(sizes, [1000 / s["indexes"][flat]["k"]["10"]["qps"][side]["median"] for s in results["sizes"]],
                    marker="o", label=side)
    build.set(xlabel="vectors", ylabel="build seconds", title="build (training included)")
    search.set(xlabel="vectors", ylabel="ms per query", title=f"{flat} search, k=10")
    build.legend(fontsize=7)
    search.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250000,500000,1000000", help="corpus sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=300)
    parser.add_argument("--shard-size", type=int, default=100_000)
    parser.add_argument("--nlist", default="1024", help="IVF lists, or auto: 4*sqrt(N) rounded to a power of two")
    parser.add_argument("--pq", default="64x8", help="PQ sub-quantizers x bits")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--train-size", type=int, default=65_536, help="training sample cap (64 x 1024 lists: "
                        "inside FAISS's 30-256 points per centroid; 0: ray_cora's default rule)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the .json (.md and .png beside it)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    # What ShardedIndex.open sets, set before either side runs: both search with BLAS batches.
    use_blas_for_query_batches()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        measured = [measure_size(n, args, Path(tmp)) for n in sizes]
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, faiss {faiss.__version__}",
               "load_before": load_before, "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
               "dim": args.dim, "clusters": args.clusters, "shard_size": args.shard_size, "nprobe": args.nprobe,
               "queries": args.queries, "train_size": args.train_size or None, "repeats": args.repeats,
               "faiss_threads": faiss.omp_get_max_threads(),
               "blas_threshold": faiss.cvar.distance_compute_blas_threshold,
               "sizes": measured}
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(results))
    results["plot"] = plot(results, out.with_suffix(".png"))
    print(to_markdown(results))
    return results


if __name__ == "__main__":
    main()
