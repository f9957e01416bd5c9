"""A real two-node Ray cluster on loopback: `ray start --head`, `ray start --address` for a second
node, token authentication on both, and `ray job submit` of the embedding job across them."""

from __future__ import annotations

import itertools
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_cora.demo import DEMO_PASSAGES
from ray_cora.index.sharded import ShardedIndex
from tests.support import REPO_ROOT, free_port, stop_process

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


_worker_port_blocks = itertools.count(1)


def _ephemeral_port_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _node_ports() -> list[str]:
    """Free ports for every per-node server: two Rays on one machine collide on the defaults.

    Ray refuses to start when a server port falls inside its worker port range, and `_free_port`
    hands out ports from the kernel's ephemeral range, so each node's worker range is its own
    block just below that range (and above Ray's default 10002-19999, used by other tests' Rays).
    """
    ports: list[int] = []
    while len(ports) < 6:
        if (port := free_port()) not in ports:
            ports.append(port)
    low = _ephemeral_port_floor() - 300 * next(_worker_port_blocks)
    assert low > 20000, "ran out of worker port blocks"
    names = ["dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "node-manager-port", "object-manager-port"]
    return [f"--{name}={port}" for name, port in zip(names, ports)] + [
        f"--min-worker-port={low}", f"--max-worker-port={low + 200}"]


def _log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _wait_for(predicate, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout_s:.0f} s")
        time.sleep(1)


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("ray-two-nodes")
    env = {**__import__("os").environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    gcs, dashboard = free_port(), free_port()
    address = f"http://127.0.0.1:{dashboard}"
    procs = []
    try:
        head_log = open(logs / "head.log", "wb")
        procs.append((subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
             f"--ray-client-server-port={free_port()}", "--num-cpus=2", "--disable-usage-stats", *_node_ports()],
            stdout=head_log, stderr=subprocess.STDOUT, env=env, start_new_session=True), head_log))

        def job_api_ready() -> bool:
            assert procs[0][0].poll() is None, f"ray start --head exited:\n{_log_tail(logs / 'head.log')}"
            probe = subprocess.run([RAY, "job", "submit", "--address", address, "--", "true"],
                                   capture_output=True, text=True, timeout=120, env=env)
            return probe.returncode == 0

        _wait_for(job_api_ready, "the head's job API did not answer", 180)
        worker_log = open(logs / "worker.log", "wb")
        procs.append((subprocess.Popen(
            [RAY, "start", "--block", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1",
             "--num-cpus=1", "--disable-usage-stats", *_node_ports()],
            stdout=worker_log, stderr=subprocess.STDOUT, env=env, start_new_session=True), worker_log))

        def two_nodes_alive() -> bool:
            assert procs[1][0].poll() is None, f"ray start --address exited:\n{_log_tail(logs / 'worker.log')}"
            status = subprocess.run([RAY, "status", f"--address=127.0.0.1:{gcs}"],
                                    capture_output=True, text=True, timeout=60, env=env).stdout
            return status.count("node_") >= 2

        _wait_for(two_nodes_alive, "the second node did not join", 180)
        yield {"address": address, "gcs": f"127.0.0.1:{gcs}", "env": env}
    finally:
        for proc, log in reversed(procs):
            stop_process(proc, proc.terminate, grace_s=60)
            log.close()


def test_second_node_needs_the_token(two_node_cluster, tmp_path):
    env = {**two_node_cluster["env"], "RAY_AUTH_TOKEN": "not-the-token"}
    result = subprocess.run([RAY, "start", "--block", f"--address={two_node_cluster['gcs']}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=1", *_node_ports()],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0 and "auth" in (result.stdout + result.stderr).lower(), \
        (result.stdout + result.stderr)[-3000:]


def test_embedding_job_spreads_over_both_nodes(two_node_cluster, tmp_path):
    out = tmp_path / "index"
    result = subprocess.run(
        [RAY, "job", "submit", "--address", two_node_cluster["address"], "--",
         sys.executable, str(REPO_ROOT / "jobs" / "embed_corpus.py"), "--passages", str(DEMO_PASSAGES),
         "--out", str(out), "--shard-size", "20", "--concurrency", "2", "--actor-cpus", "0.5"],
        capture_output=True, text=True, timeout=600, env=two_node_cluster["env"], cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_vectors"] == 176 and len(manifest["shards"]) == 9
    built_on = {json.loads(p.read_text())["node_id"] for p in (out / "shards").glob("shard-*.json")}
    assert len(built_on) == 2, f"all shards were built on one node: {built_on}"
    index = ShardedIndex.open(str(out))
    assert len(index) == 176
