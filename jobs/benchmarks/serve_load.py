"""Load benchmark of the Serve application over loopback HTTP (run on demand; not a test).

Starts a local Ray and the app (demo corpus with mUSE, demo pivot database, one replica per
deployment so runs are comparable), then for /v1/retrieve and /v1/pivot, with @serve.batch on
(max_batch_size 16, wait 10 ms) and off (max_batch_size 1), drives 1, 8 and 32 concurrent clients
(aiohttp, one process) and records p50/p95/p99 latency and requests/s. Each level is bounded by
--requests and --seconds. The same questions through the Python API in this process (no Ray, no
HTTP) give the latency Serve adds. Writes docs/results/serve_load.{json,md,png}.

    python jobs/benchmarks/serve_load.py [--clients 1,8,32] [--requests 256] [--seconds 15]

``--shard-groups N`` measures instead what splitting the index over N IndexShardGroup
deployments costs: /v1/retrieve (batched) over the demo corpus in a 5-shard index, held whole by
the Retriever vs split into N groups, at each client level; writes docs/results/serve_shard_groups.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import time
from pathlib import Path

import numpy as np

ENDPOINTS = ("/v1/retrieve", "/v1/pivot")
BATCHING = {"batched": {"max_batch_size": 16, "batch_wait_timeout_s": 0.01},
            "unbatched": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}


def demo_questions() -> list[dict]:
    from ray_cora.data.qa import iter_qa
    from ray_cora.demo import DEMO_QUESTIONS

    return [{"question": q["question"], "lang": q["lang"]} for q in iter_qa(str(DEMO_QUESTIONS), dataset="jsonl")]


def bodies_for(path: str, questions: list[dict]) -> list[dict]:
    if path == "/v1/retrieve":
        return [{"question": q["question"], "lang": q["lang"], "k": 10} for q in questions]
    return questions


def summarize(latencies_s: list[float], elapsed_s: float, errors: int) -> dict:
    ms = np.asarray(latencies_s) * 1000
    return {"requests": len(latencies_s), "errors": errors, "seconds": round(elapsed_s, 2),
            "requests_per_s": round(len(latencies_s) / elapsed_s, 1) if elapsed_s else 0.0,
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) if len(ms) else None for q in (50, 95, 99)}}


async def load_level(url: str, bodies: list[dict], *, clients: int, max_requests: int,
                     max_seconds: float) -> dict:
    """``clients`` concurrent clients send requests until ``max_requests`` were sent or
    ``max_seconds`` passed; every non-200 response counts as an error."""
    import aiohttp

    latencies: list[float] = []
    errors, sent = 0, 0
    deadline = time.perf_counter() + max_seconds

    async def client(session) -> None:
        nonlocal errors, sent
        while sent < max_requests and time.perf_counter() < deadline:
            body = bodies[sent % len(bodies)]
            sent += 1
            start = time.perf_counter()
            async with session.post(url, json=body) as response:
                await response.read()
                if response.status == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        for body in bodies[:8]:  # warm the connection pool and the replicas
            async with session.post(url, json=body) as response:
                await response.read()
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return summarize(latencies, elapsed, errors)


def direct_latency(questions: list[dict], n: int) -> dict[str, dict]:
    """The same work through the Python API in this process: one question per call."""
    from ray_cora.serve.core import RetrieverCore, load_pivot

    core, pivot = RetrieverCore.load(index=None), load_pivot("demo")
    sample = questions[:n]
    results = {}
    for name, call in (("/v1/retrieve", lambda q: core.retrieve([q["question"]], [10])),
                       ("/v1/pivot", lambda q: pivot.answer_batch([q["question"]], [q["lang"]]))):
        call(sample[0])
        times = []
        for q in sample:
            start = time.perf_counter()
            call(q)
            times.append(time.perf_counter() - start)
        results[name] = summarize(times, sum(times), 0)
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_levels(questions: list[dict], *, clients: list[int], max_requests: int, max_seconds: float) -> dict:
    import ray
    from ray import serve

    from ray_cora.serve.app import APP_NAME, build_app
    from ray_cora.configs.serve import ServeConfig
    from ray_cora.serve.run import start_app

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", log_to_driver=False)
    results: dict = {}
    try:
        config = ServeConfig(port=_free_port(), pivot_db="demo", max_replicas=1, max_k=100)
        url = start_app(config)
        for mode, batching in BATCHING.items():
            # Only user_config changes: Serve reconfigures the running replicas in place.
            serve.run(build_app(config.app_options().model_copy(update=batching)), name=APP_NAME,
                      route_prefix="/", blocking=False)
            for path in ENDPOINTS:
                for n in clients:
                    level = asyncio.run(load_level(url + path, bodies_for(path, questions), clients=n,
                                                   max_requests=max_requests, max_seconds=max_seconds))
                    results.setdefault(path, {}).setdefault(mode, {})[str(n)] = level
                    print(f"{path:13s} {mode:9s} clients={n:3d} {level}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def shard_group_levels(questions: list[dict], *, groups: int, clients: list[int], max_requests: int,
                       max_seconds: float, folder: str) -> dict:
    """/v1/retrieve with the index whole in the Retriever, then split over ``groups`` shard groups."""
    import ray
    from ray import serve

    from ray_cora.demo import DEMO_PASSAGES
    from ray_cora.encoders import load_encoder
    from ray_cora.data.passage_store import build_passage_store
    from ray_cora.serve.app import APP_NAME, build_app
    from ray_cora.serve.core import build_index
    from ray_cora.configs.serve import ServeConfig
    from ray_cora.serve.run import start_app

    index = build_index(load_encoder("muse"), str(DEMO_PASSAGES), os.path.join(folder, "index"), shard_size=40)
    store = os.path.join(folder, "store")
    build_passage_store(str(DEMO_PASSAGES), store, num_buckets=4)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", log_to_driver=False)
    results: dict = {}
    try:
        config = ServeConfig(port=_free_port(), index=index, passage_store=store, max_replicas=1, max_k=100)
        url = start_app(config)
        for n_groups in (1, groups):
            serve.run(build_app(config.app_options().model_copy(update={"shard_groups": n_groups})),
                      name=APP_NAME, route_prefix="/", blocking=False)
            for n in clients:
                level = asyncio.run(load_level(url + "/v1/retrieve", bodies_for("/v1/retrieve", questions),
                                               clients=n, max_requests=max_requests, max_seconds=max_seconds))
                results.setdefault(str(n_groups), {})[str(n)] = level
                print(f"/v1/retrieve shard_groups={n_groups} clients={n:3d} {level}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def shard_group_markdown(results: dict) -> str:
    lines = ["| shard groups | clients | requests/s | p50 ms | p95 ms | p99 ms | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for groups, levels in results.items():
        for n, r in levels.items():
            lines.append(f"| {groups} | {n} | {r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} | "
                         f"{r['p99_ms']} | {r['errors']} |")
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    lines = ["| endpoint | batching | clients | requests/s | p50 ms | p95 ms | p99 ms | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for path, modes in results["serve"].items():
        for mode, levels in modes.items():
            for n, r in levels.items():
                lines.append(f"| `{path}` | {mode} | {n} | {r['requests_per_s']} | {r['p50_ms']} | "
                             f"{r['p95_ms']} | {r['p99_ms']} | {r['errors']} |")
    lines += ["", "| endpoint | direct Python call p50 ms | Serve, 1 client, unbatched p50 ms | added by Serve (ms) |",
              "|---|---:|---:|---:|"]
    for path, added in results["serve_overhead_ms"].items():
        lines.append(f"| `{path}` | {results['direct'][path]['p50_ms']} | "
                     f"{results['serve'][path]['unbatched']['1']['p50_ms']} | {added} |")
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4))
    for endpoint, modes in results["serve"].items():
        for mode, levels in modes.items():
            xs = [int(n) for n in levels]
            style = "-" if mode == "batched" else "--"
            lat.plot(xs, [levels[str(x)]["p95_ms"] for x in xs], style, marker="o", label=f"{endpoint} {mode}")
            thr.plot(xs, [levels[str(x)]["requests_per_s"] for x in xs], style, marker="o",
                     label=f"{endpoint} {mode}")
    for ax, title in ((lat, "p95 latency (ms)"), (thr, "requests/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    thr.legend(fontsize=8)
    fig.suptitle(results["machine"]["note"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=256, help="most requests per level")
    parser.add_argument("--seconds", type=float, default=15, help="most seconds per level")
    parser.add_argument("--direct", type=int, default=100, help="questions timed through the Python API")
    parser.add_argument("--out", default="docs/results", help="folder for serve_load.{json,md,png}")
    parser.add_argument("--shard-groups", type=int, default=0,
                        help="measure the index split over this many shard groups instead (> 1)")
    args = parser.parse_args()

    questions = demo_questions()
    started = time.perf_counter()
    if args.shard_groups:
        shard_groups_main(args, questions, started)
        return
    direct = direct_latency(questions, args.direct)
    serve_results = serve_levels(questions, clients=[int(c) for c in args.clients.split(",")],
                                 max_requests=args.requests, max_seconds=args.seconds)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": f"{os.cpu_count()}-core CPU machine shared with other jobs (load average "
                            f"{os.getloadavg()[0]:.1f} at the end); loopback HTTP; one replica per "
                            "deployment; mUSE on CPU; demo corpus (176 passages) and pivot DB (91)"},
        "levels": {"max_requests": args.requests, "max_seconds": args.seconds},
        "batching": BATCHING,
        "direct": direct,
        "serve": serve_results,
        "serve_overhead_ms": {p: round(serve_results[p]["unbatched"]["1"]["p50_ms"] - direct[p]["p50_ms"], 1)
                              for p in ENDPOINTS},
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "serve_load.md").write_text("# Serve load benchmark\n\n" + results["machine"]["note"] + ".\n\n" + table)
    figure(results, out / "serve_load.png")
    print(table)
    print(f"wrote {out}/serve_load.json, serve_load.md, serve_load.png in {results['seconds']} s")


def shard_groups_main(args, questions: list[dict], started: float) -> None:
    import tempfile

    if args.shard_groups < 2:
        raise SystemExit(f"--shard-groups must be at least 2 (got {args.shard_groups}): 1 is the whole index")
    with tempfile.TemporaryDirectory(prefix="serve_shard_groups_") as folder:
        levels = shard_group_levels(questions, groups=args.shard_groups,
                                    clients=[int(c) for c in args.clients.split(",")],
                                    max_requests=args.requests, max_seconds=args.seconds, folder=folder)
    note = (f"{os.cpu_count()}-core CPU machine shared with other jobs (load average {os.getloadavg()[0]:.1f} "
            "at the end); loopback HTTP; one replica per deployment; mUSE on CPU; /v1/retrieve k=10, "
            "batched; demo corpus (176 passages) in a 5-shard flat index, texts from a passage store")
    results = {"machine": {"cpus": os.cpu_count(), "note": note},
               "levels": {"max_requests": args.requests, "max_seconds": args.seconds},
               "shard_groups": levels, "seconds": round(time.perf_counter() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_shard_groups.json").write_text(json.dumps(results, indent=2) + "\n")
    table = shard_group_markdown(levels)
    (out / "serve_shard_groups.md").write_text("# Serve: index split over shard groups\n\n" + note + ".\n\n"
                                               + table)
    print(table)
    print(f"wrote {out}/serve_shard_groups.json, serve_shard_groups.md in {results['seconds']} s")


if __name__ == "__main__":
    main()
