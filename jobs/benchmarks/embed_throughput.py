"""Benchmark of the corpus embedding job (run on demand; not a test).

Measured in one run on the same synthetic corpus, encoder, batch size and thread count:
  1. a plain single-process loop: read passages → encode in batches → write FAISS shards;
  2. the Ray pipeline (`ray-cora embed`) with one encoder actor, and with --actors actors;
  3. the driver's peak RSS for `ray-cora embed` at two corpus sizes (it must stay flat).
Prints a table and writes JSON (default docs/results/embed_throughput.json).

    python jobs/benchmarks/embed_throughput.py [--passages 20000] [--rss-sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RSS_PROBE = """
import resource, sys
from ray_cora.configs.embed import EmbedConfig
from ray_cora.pipelines.embed_corpus import embed_corpus
config = EmbedConfig.load(overrides=dict(passages=sys.argv[1], out=sys.argv[2], shard_size=int(sys.argv[3]),
                                         batch_size=int(sys.argv[4]), actor_cpus=1, num_cpus=2))
summary = embed_corpus(config)
print("RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, summary["passages"])
"""


def synthetic_corpus(path: Path, n: int, seed: int = 0) -> None:
    """n passages of ~60 words in 4 languages, deterministic."""
    from ray_cora.demo import DEMO_PASSAGES

    words = {}
    for line in DEMO_PASSAGES.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        tokens = record["text"].split() if record["lang"] in ("en", "es", "de", "ru") else list(record["text"])
        words.setdefault(record["lang"], []).extend(tokens)
    rng = random.Random(seed)
    langs = ["en", "es", "de", "ru"]
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            lang = langs[i % 4]
            text = " ".join(rng.choice(words[lang]) for _ in range(60))
            out.write(json.dumps({"pid": f"s{i}", "lang": lang, "title": f"T{i % 997}", "text": text},
                                 ensure_ascii=False) + "\n")


def plain_loop(passages: str, out: str, *, batch_size: int, shard_size: int, threads: int) -> float:
    from ray_cora.data.passages import iter_passages
    from ray_cora.encoders import load_encoder
    from ray_cora.index.sharded import write_shard

    import numpy as np

    encoder = load_encoder("muse", threads=threads)
    started = time.perf_counter()
    pids, titles, texts, vectors, shard = [], [], [], [], 0
    for passage in iter_passages(passages):
        pids.append(passage["pid"])
        titles.append(passage["title"])
        texts.append(passage["text"])
        if len(texts) == batch_size:
            vectors.append(encoder.encode_passages(titles, texts))
            titles, texts = [], []
        if len(pids) == shard_size:
            if texts:
                vectors.append(encoder.encode_passages(titles, texts))
                titles, texts = [], []
            write_shard(out, shard, pids, np.concatenate(vectors))
            pids, vectors, shard = [], [], shard + 1
    if texts:
        vectors.append(encoder.encode_passages(titles, texts))
    if pids:
        write_shard(out, shard, pids, np.concatenate(vectors))
    return time.perf_counter() - started


def ray_pipeline(passages: str, out: str, *, batch_size: int, shard_size: int, threads: int,
                 actors: int) -> float:
    from ray_cora.configs.embed import EmbedConfig
    from ray_cora.pipelines.embed_corpus import embed_corpus

    config = EmbedConfig.load(overrides=dict(
        passages=passages, out=out, shard_size=shard_size, batch_size=batch_size, threads=threads,
        actors=actors, actor_cpus=max(0.5, 1.0 / actors)))
    started = time.perf_counter()
    embed_corpus(config)
    return time.perf_counter() - started


def driver_rss_kb(passages: str, out: str, *, shard_size: int, batch_size: int) -> int:
    result = subprocess.run([sys.executable, "-c", RSS_PROBE, passages, out, str(shard_size), str(batch_size)],
                            capture_output=True, text=True, timeout=3600)
    line = next((l for l in result.stdout.splitlines() if l.startswith("RSS_KB")), None)
    if line is None:
        raise RuntimeError(result.stderr[-2000:])
    return int(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=20000, help="corpus size for the throughput runs")
    parser.add_argument("--rss-sizes", default="10000,100000",
                        help="corpus sizes for the driver-RSS runs; empty: skip them and keep the "
                             "figures already in --json")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--actors", "--concurrency", dest="actors", type=int, default=2,
                        help="encoder actors of the second Ray run (--concurrency: its old name)")
    parser.add_argument("--json", default="docs/results/embed_throughput.json")
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="ray_cora_bench_"))
    corpus = work / "corpus.jsonl"
    synthetic_corpus(corpus, args.passages)
    common = dict(batch_size=args.batch_size, shard_size=args.shard_size, threads=args.threads)
    plain_s = plain_loop(str(corpus), str(work / "plain"), **common)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING")
    try:
        ray_warmup = ray_pipeline(str(corpus), str(work / "warmup"), actors=1, **common)
        ray1_s = ray_pipeline(str(corpus), str(work / "ray1"), actors=1, **common)
        rayn_s = ray_pipeline(str(corpus), str(work / "rayn"), actors=args.actors, **common)
    finally:
        ray.shutdown()
    rss = {}
    for size in [int(s) for s in args.rss_sizes.split(",") if s.strip()]:
        sized = work / f"corpus-{size}.jsonl"
        synthetic_corpus(sized, size, seed=1)
        rss[size] = driver_rss_kb(str(sized), str(work / f"rss-{size}"), shard_size=args.shard_size,
                                  batch_size=args.batch_size)

    n = args.passages
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "encoder": "muse", "passages": n, **common,
        "plain_loop_passages_per_s": round(n / plain_s, 1),
        "ray_1_actor_passages_per_s": round(n / ray1_s, 1),
        f"ray_{args.actors}_actors_passages_per_s": round(n / rayn_s, 1),
        "ray_1_actor_vs_plain": round(plain_s / ray1_s, 3),
        "first_ray_run_seconds_incl_actor_start": round(ray_warmup, 1),
        "driver_peak_rss_mb": {str(k): round(v / 1024, 1) for k, v in rss.items()},
    }
    if not rss and Path(args.json).exists():
        results["driver_peak_rss_mb"] = json.loads(Path(args.json).read_text()).get("driver_peak_rss_mb", {})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n| run | passages/s |\n|---|---:|\n| plain loop (1 process) | {results['plain_loop_passages_per_s']} |")
    print(f"| Ray pipeline, 1 actor | {results['ray_1_actor_passages_per_s']} "
          f"({results['ray_1_actor_vs_plain']}x plain) |")
    print(f"| Ray pipeline, {args.actors} actors | {results[f'ray_{args.actors}_actors_passages_per_s']} |")
    for size, mb in results["driver_peak_rss_mb"].items():
        print(f"driver peak RSS at {size} passages: {mb} MB")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
