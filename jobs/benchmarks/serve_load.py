"""Load benchmark of the Serve application over loopback HTTP (run on demand; not a test).

One run, one local Ray (127.0.0.1) and one Serve proxy hosting four applications side by side,
so every comparison is made in the same run, interleaved:

- ``noop``: the same hops as ray_cora doing no work: a FastAPI Ingress (same request and response
  models) -> one deployment that returns a constant /v1/retrieve answer (10 demo passages);
- ``ray_cora``: the app over the demo corpus (mUSE) in a 5-shard index, texts from a passage store,
  batched (max_batch_size 16); ``ray_cora_unbatched``: the same with max_batch_size 1;
- ``ray_cora_sg2``: the same index split over 2 shard groups (batched): the Retriever's
  IndexShardGroup actors, called directly (no Serve hop);
- ``direct``: the same question through :class:`~ray_cora.serve.core.RetrieverCore` in this process.

1 client: ``--rounds`` rounds, each one /v1/retrieve request to every target in a shuffled order,
so load drift hits all alike; figures are p50s and the median per-round difference from ``noop``.
8 and 32 clients: windows of ``--seconds`` (at most ``--requests``) per target, the targets'
order rotated in each of ``--repeats`` repeats; batched/unbatched throughput as a ratio per repeat.
Writes docs/results/serve_load.{json,md}; the load average is recorded before and after.

    python jobs/benchmarks/serve_load.py [--rounds 200] [--clients 8,32] [--seconds 6] [--repeats 3]
"""

# No "from __future__ import annotations": FastAPI must resolve the no-op app's route annotations,
# which are local to noop_app().

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import sys
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

K = 10
TARGETS = ("noop", "ray_cora", "ray_cora_unbatched", "ray_cora_sg2")
ROUTES = {"noop": "/noop", "ray_cora": "/rc", "ray_cora_unbatched": "/rcu", "ray_cora_sg2": "/sg2"}
BATCHED, UNBATCHED = 16, 1
# The targets (ms, ratio): p50 at 1 client vs the no-op with the same hops; batched vs
# unbatched requests/s at 32 clients; what the shard-group fan-out adds at p50 (2 groups vs 1).
TARGET_OVER_NOOP_MS, TARGET_BATCH_SPEEDUP, TARGET_FANOUT_MS = 3.0, 2.0, 5.0


def demo_questions() -> list[dict]:
    from ray_cora.data.qa import iter_qa
    from ray_cora.demo import DEMO_QUESTIONS

    return [{"question": q["question"], "lang": q["lang"], "k": K}
            for q in iter_qa(str(DEMO_QUESTIONS), dataset="jsonl")]


def summarize(latencies_s: list[float], elapsed_s: float | None = None, errors: int = 0) -> dict:
    """p50/p95/p99 in ms (None without latencies) and requests/s when ``elapsed_s`` is given."""
    ms = np.asarray(latencies_s, dtype=float) * 1000
    out = {"requests": len(ms), "errors": errors,
           **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) if len(ms) else None for q in (50, 95, 99)}}
    if elapsed_s is not None:
        out["seconds"] = round(elapsed_s, 2)
        out["requests_per_s"] = round(len(ms) / elapsed_s, 1) if elapsed_s > 0 else 0.0
    return out


def paired(rounds: list[dict[str, float]], target: str, base: str) -> dict:
    """Per-round ``target - base`` (ms) and ``target / base``: medians over the rounds where both ran."""
    pairs = [(r[target], r[base]) for r in rounds if target in r and base in r]
    if not pairs:
        return {"rounds": 0, "median_minus_ms": None, "median_ratio": None}
    return {"rounds": len(pairs),
            "median_minus_ms": round(statistics.median((t - b) * 1000 for t, b in pairs), 2),
            "median_ratio": round(statistics.median(t / b for t, b in pairs), 3)}


def excess(rounds: list[dict[str, float]], target: str, base: str, work: str) -> float | None:
    """Median per-round ``target - base - work`` (ms): what ``target`` adds beyond ``base``'s hops and
    the ``work`` itself (the direct call), i.e. Serve overhead the no-op app does not have."""
    rows = [r[target] - r[base] - r[work] for r in rounds if target in r and base in r and work in r]
    return round(statistics.median(rows) * 1000, 2) if rows else None


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# --- the no-op app: ray_cora's hops and HTTP models, no work ----------------------------------

def noop_app(answer: list[dict]):
    """Ingress (FastAPI, RetrieveRequest in, RetrieveResponse out) -> Constant, which returns
    ``answer``. Built in a function so Serve pickles it by value (this file is not a package)."""
    from fastapi import FastAPI
    from ray import serve

    from ray_cora.serve.schemas import RetrieveRequest, RetrieveResponse

    api = FastAPI()

    # max_ongoing_requests as build_app gives ray_cora's Ingress and Retriever: Serve's default (5)
    # would queue the no-op's requests at the router from 8 clients on.
    @serve.deployment(name="Constant", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
    class Constant:
        async def retrieve(self, question: str, k: int, lang: str | None) -> list[dict]:
            return answer

    @serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
    @serve.ingress(api)
    class Ingress:
        def __init__(self, constant) -> None:
            self.constant = constant

        @api.post("/v1/retrieve", response_model=RetrieveResponse)
        async def retrieve(self, body: RetrieveRequest) -> dict:
            passages = await self.constant.retrieve.remote(body.question, body.k or K, body.lang)
            return {"question": body.question, "lang": body.lang, "k": body.k or K, "retriever": "dense",
                    "passages": passages}

    return Ingress.bind(Constant.bind())


# --- clients ------------------------------------------------------------------------------------

async def one_client_rounds(base: str, questions: list[dict], direct, *, rounds: int, seed: int = 0) -> list[dict]:
    """Each round sends question ``i`` once to every target, in a shuffled order, and times it
    (``direct``: ``direct(question)`` in this process). Returns seconds per target per round."""
    import aiohttp

    rng, out = random.Random(seed), []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) as session:
        async def post(target: str, body: dict) -> float | None:
            start = time.perf_counter()
            async with session.post(base + ROUTES[target] + "/v1/retrieve", json=body) as response:
                await response.read()
                return time.perf_counter() - start if response.status == 200 else None

        for target in TARGETS:  # warm every route, replica and connection
            for body in questions[:4]:
                await post(target, body)
        for i in range(rounds):
            body, row = questions[i % len(questions)], {}
            order = [*TARGETS, "direct"]
            rng.shuffle(order)
            for target in order:
                if target == "direct":
                    start = time.perf_counter()
                    direct(body)
                    row[target] = time.perf_counter() - start
                else:
                    seconds = await post(target, body)
                    if seconds is not None:
                        row[target] = seconds
            out.append(row)
    return out


async def load_window(url: str, questions: list[dict], *, clients: int, max_requests: int,
                      max_seconds: float) -> dict:
    """``clients`` concurrent clients send requests until ``max_requests`` were sent or
    ``max_seconds`` passed; a non-200 answer counts as an error."""
    import aiohttp

    latencies: list[float] = []
    errors, sent = 0, 0
    deadline = time.perf_counter() + max_seconds

    async def client(session) -> None:
        nonlocal errors, sent
        while sent < max_requests and time.perf_counter() < deadline:
            body = questions[sent % len(questions)]
            sent += 1
            start = time.perf_counter()
            async with session.post(url, json=body) as response:
                await response.read()
                if response.status == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return summarize(latencies, elapsed, errors)


# --- the run ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_demo_index(folder: str) -> tuple[str, str]:
    """The demo corpus embedded with mUSE into a 5-shard index (40 vectors a shard) + a passage store."""
    from ray_cora.data.passage_store import build_passage_store
    from ray_cora.demo import DEMO_PASSAGES
    from ray_cora.encoders import load_encoder
    from ray_cora.serve.core import build_index

    index = build_index(load_encoder("muse"), str(DEMO_PASSAGES), os.path.join(folder, "index"), shard_size=40)
    store = os.path.join(folder, "store")
    build_passage_store(str(DEMO_PASSAGES), store, num_buckets=4)
    return index, store


def run(args, folder: str) -> dict:
    import ray
    from ray import serve

    from ray_cora.serve.app import build_app
    from ray_cora.serve.core import RetrieverCore

    questions = demo_questions()
    index, store = build_demo_index(folder)
    core = RetrieverCore.load(index=index, passage_store=store)
    answer = core.retrieve([questions[0]["question"]], [K])[0]
    common = {"index": index, "passage_store": store, "max_replicas": 1, "replica_cpus": 0.15, "max_k": 100}
    apps = {"noop": noop_app(answer),
            "ray_cora": build_app({**common, "max_batch_size": BATCHED}),
            "ray_cora_unbatched": build_app({**common, "max_batch_size": UNBATCHED}),
            "ray_cora_sg2": build_app({**common, "max_batch_size": BATCHED, "shard_groups": 2})}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started_ray = not ray.is_initialized()  # a test's Ray (tests/conftest.py ray_local) is reused
    if started_ray:
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level="WARNING", log_to_driver=False)
    results: dict = {"load_before": loadavg()}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for name, app in apps.items():  # serve.run returns once the app is RUNNING (or raises)
            serve.run(app, name=name, route_prefix=ROUTES[name], blocking=False)
        print(f"apps running at {base} (load {loadavg()})", flush=True)

        rounds = asyncio.run(one_client_rounds(
            base, questions, lambda q: core.retrieve([q["question"]], [q["k"]]), rounds=args.rounds))
        results["one_client"] = {
            "rounds": len(rounds),
            "p50": {t: summarize([r[t] for r in rounds if t in r]) for t in (*TARGETS, "direct")},
            "vs_noop": {t: paired(rounds, t, "noop") for t in TARGETS[1:]},
            "fanout": paired(rounds, "ray_cora_sg2", "ray_cora"),
            "beyond_noop_and_work_ms": excess(rounds, "ray_cora", "noop", "direct"),
            "batched_vs_unbatched": paired(rounds, "ray_cora", "ray_cora_unbatched"),
            "load_after": loadavg()}
        print(json.dumps(results["one_client"]["p50"]), flush=True)

        windows: dict = {}
        for repeat in range(args.repeats):
            order = TARGETS[repeat % len(TARGETS):] + TARGETS[:repeat % len(TARGETS)]
            for clients in args.clients:
                for target in order:
                    level = asyncio.run(load_window(base + ROUTES[target] + "/v1/retrieve", questions,
                                                    clients=clients, max_requests=args.requests,
                                                    max_seconds=args.seconds))
                    level["load"] = loadavg()
                    windows.setdefault(str(clients), {}).setdefault(target, []).append(level)
                    print(f"repeat {repeat} clients={clients:3d} {target:18s} {level}", flush=True)
        results["windows"] = windows
    finally:
        serve.shutdown()
        if started_ray:
            ray.shutdown()
    results["load_after"] = loadavg()
    return results


def speedups(windows: dict) -> dict:
    """Per client level: batched / unbatched requests/s in each repeat, and their median."""
    out = {}
    for clients, targets in windows.items():
        ratios = [b["requests_per_s"] / u["requests_per_s"] for b, u in
                  zip(targets.get("ray_cora", []), targets.get("ray_cora_unbatched", [])) if u["requests_per_s"]]
        out[clients] = {"per_repeat": [round(r, 2) for r in ratios],
                        "median": round(statistics.median(ratios), 2) if ratios else None}
    return out


def verdicts(results: dict) -> dict:
    """The issue's three targets, met or not, from the run's figures."""
    one = results["one_client"]
    over_noop = one["vs_noop"]["ray_cora"]["median_minus_ms"]
    fanout = one["fanout"]["median_minus_ms"]
    speedup = results["speedups"].get("32", {}).get("median")
    # The "+ 3 ms" was the work of a 3 ms direct call: p50_over_noop_ms includes ray_cora's
    # own work (encoding, search), which a no-op does not do; beyond_noop_and_work_ms takes the
    # direct call's time out, leaving what Serve adds beyond the no-op's hops.
    beyond = one.get("beyond_noop_and_work_ms")
    return {"p50_over_noop_ms": {"value": over_noop, "target": f"<= {TARGET_OVER_NOOP_MS}",
                                 "met": over_noop is not None and over_noop <= TARGET_OVER_NOOP_MS},
            "beyond_noop_and_work_ms": {"value": beyond, "target": f"<= {TARGET_OVER_NOOP_MS}",
                                        "met": beyond is not None and beyond <= TARGET_OVER_NOOP_MS},
            "batched_speedup_32_clients": {"value": speedup, "target": f">= {TARGET_BATCH_SPEEDUP}",
                                           "met": speedup is not None and speedup >= TARGET_BATCH_SPEEDUP},
            "fanout_p50_ms": {"value": fanout, "target": f"<= {TARGET_FANOUT_MS}",
                              "met": fanout is not None and fanout <= TARGET_FANOUT_MS}}


def _median(levels: list[dict], key: str):
    values = [lv[key] for lv in levels if lv.get(key) is not None]
    return round(statistics.median(values), 1) if values else None


def markdown(results: dict) -> str:
    one = results["one_client"]
    lines = [f"1 client, {one['rounds']} interleaved rounds (load average {results['load_before']} before, "
             f"{one['load_after']} after):", "",
             "| target | hops after the proxy | p50 ms | p95 ms | median per-round − noop ms | median ratio to noop |",
             "|---|---|---:|---:|---:|---:|"]
    hops = {"noop": "Ingress → Constant", "ray_cora": "Ingress → Retriever",
            "ray_cora_unbatched": "Ingress → Retriever", "ray_cora_sg2": "Ingress → Retriever → 2 IndexShardGroup actors (direct calls)",
            "direct": "none (Python call)"}
    for target in (*TARGETS, "direct"):
        p, vs = one["p50"][target], one["vs_noop"].get(target, {})
        lines.append(f"| {target} | {hops[target]} | {p['p50_ms']} | {p['p95_ms']} | "
                     f"{vs.get('median_minus_ms', '')} | {vs.get('median_ratio', '')} |")
    lines += ["", f"Shard-group fan-out (ray_cora_sg2 − ray_cora, per round): median "
              f"{one['fanout']['median_minus_ms']} ms. ray_cora − noop − direct (Serve cost beyond the "
              f"no-op's hops and the work itself), per round: median {one.get('beyond_noop_and_work_ms')} ms.", "",
              "Concurrent clients, windows rotated over the targets and repeated (medians over the repeats):", "",
              "| clients | target | requests/s | p50 ms | p95 ms | errors |", "|---:|---|---:|---:|---:|---:|"]
    for clients, targets in results["windows"].items():
        for target, levels in targets.items():
            lines.append(f"| {clients} | {target} | {_median(levels, 'requests_per_s')} | "
                         f"{_median(levels, 'p50_ms')} | {_median(levels, 'p95_ms')} | "
                         f"{sum(lv['errors'] for lv in levels)} |")
    lines += ["", "| clients | batched / unbatched requests/s per repeat | median |", "|---:|---|---:|"]
    for clients, s in results["speedups"].items():
        lines.append(f"| {clients} | {', '.join(map(str, s['per_repeat']))} | {s['median']} |")
    lines += ["", "| target | value | goal | met |", "|---|---:|---|---|"]
    for name, v in results["verdicts"].items():
        lines.append(f"| {name} | {v['value']} | {v['target']} | {'yes' if v['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="1-client rounds (one request per target each)")
    parser.add_argument("--clients", default="8,32", help="concurrent client levels")
    parser.add_argument("--seconds", type=float, default=6, help="most seconds per window")
    parser.add_argument("--requests", type=int, default=600, help="most requests per window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="docs/results", help="folder for serve_load.{json,md}")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as folder:
        results = run(args, folder)
    results["speedups"] = speedups(results["windows"])
    results["verdicts"] = verdicts(results)
    results["machine"] = {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "note": f"{os.cpu_count()}-core CPU machine, Ray num_cpus=2, loopback HTTP, one replica per deployment "
                f"(0.15 CPU each), mUSE on CPU; demo corpus (176 passages) in a 5-shard flat index, texts "
                f"from a passage store, /v1/retrieve k={K}; load average {results['load_before']} before, "
                f"{results['load_after']} after"}
    # Serve's own switches in effect (e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1), read by every replica at start.
    serve_env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("RAY_SERVE_")}
    results["machine"]["serve_env"] = serve_env
    if serve_env:
        results["machine"]["note"] += "; environment " + ", ".join(f"{k}={v}" for k, v in serve_env.items())
    results["settings"] = {"rounds": args.rounds, "clients": args.clients, "seconds": args.seconds,
                           "requests": args.requests, "repeats": args.repeats,
                           "max_batch_size": {"batched": BATCHED, "unbatched": UNBATCHED}}
    results["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    command = "python jobs/benchmarks/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "serve_load.md").write_text(f"# Serve load benchmark\n\n`{command.strip()}`: {results['machine']['note']}."
                                       f"\n\n{table}")
    print(table)
    print(f"wrote {out}/serve_load.json, serve_load.md in {results['seconds']} s")
    return results


if __name__ == "__main__":
    main()
