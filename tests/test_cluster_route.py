"""The documented route to a cluster, run by its real clients against a `ray start --head` on
127.0.0.1 with token authentication: `ray job submit --runtime-env cluster/runtime_env.yaml
--working-dir .` of the demo from a clean checkout, and `serve deploy` of a loopback variant of
cluster/serve_config.yaml. Beside them, what nodes rely on for S3: no secret travels in a runtime env,
and the region comes from the AWS SDK's chain when the environment does not set it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from ray_cora.configs.serve import ServeAppOptions
from ray_cora.runtime import worker_runtime_env
from ray_cora.serve.app import API_KEY_HEADER, APP_NAME, deployment_names
from tests.support import REPO_ROOT, free_port

RAY_BIN = str(Path(sys.executable).with_name("ray"))
SERVE_BIN = str(Path(sys.executable).with_name("serve"))
API_KEY_ENV = "RAY_CORA_API_KEY"  # what cluster/serve_config.yaml's api_key_env names
API_KEY = "cluster-route-test-key"


@pytest.fixture(scope="module", autouse=True)
def _node_environment():
    """What a cluster node's environment has before `ray start --head` (the ray_head fixture copies
    os.environ): the image's python first on PATH (entrypoints say `python`), and the API key the
    Serve app's args name (KubeRay: the ray-cora-api-key secret)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PATH", str(Path(sys.executable).parent), prepend=":")
        env.setenv(API_KEY_ENV, API_KEY)
        yield


def _clean_checkout(dest: Path) -> Path:
    """The working tree's files as a fresh clone has them (tracked and not ignored: no .venv, no
    egg-info, no outputs), so the job cannot lean on anything a user's checkout lacks."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():  # a file deleted in the working tree but still tracked is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _run(cmd: list[str], *, env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


# ------------------------------------------------------------------ no secrets in runtime envs, SDK region

def test_worker_runtime_env_carries_no_aws_secret(monkeypatch):
    secrets = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "t0ken"}
    settings = {"AWS_REGION": "eu-west-3", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000"}
    for name, value in {**secrets, **settings}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    env = worker_runtime_env()
    # Where S3 is travels (workers started before it was set, or on other nodes, need it); what
    # opens it never does: a runtime env lands in the GCS, the dashboard and the job records.
    assert env == {"env_vars": settings}
    assert not set(secrets.values()) & set(json.dumps(env).split('"'))


def test_s3_region_comes_from_the_sdk_chain_when_the_environment_has_none(tmp_path):
    """Checked in a fresh process: pyarrow initialises the AWS SDK once per process and reads the
    config file then, so a process whose earlier tests opened S3 keeps what it read first."""
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = eu-west-3\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")  # no instance metadata lookup off EC2
    probe = "from ray_cora import storage; print(storage.s3_filesystem().region)"
    region = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert region.stdout.strip() == "eu-west-3", region.stderr  # the profile's, as boto3 and the CLI
    env["AWS_REGION"] = "ap-northeast-1"
    region = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert region.stdout.strip() == "ap-northeast-1", region.stderr  # the environment still wins


# ------------------------------------------------------------------ the real clients against a real head

@pytest.mark.slow
def test_ray_job_submit_of_the_demo_from_a_clean_checkout(ray_head, tmp_path):
    checkout = _clean_checkout(tmp_path / "checkout")
    out = tmp_path / "demo-out"
    submit = [RAY_BIN, "job", "submit", "--address", ray_head["address"],
              "--runtime-env", "cluster/runtime_env.yaml", "--working-dir", ".", "--"]
    # The command cluster/README.md gives, run from the checkout's root.
    result = _run([*submit, "python", "jobs/demo.py", "--out", str(out), "--actors", "1", "--actor-cpus", "0.5"],
                  env=ray_head["env"], cwd=checkout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "succeeded" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_passages"] > 0 and metrics["num_questions"] > 0 and (out / "report.md").is_file()
    # The uploaded checkout is what runs (Ray's copy of the working directory, first on the path),
    # not the ray_cora installed on the node.
    which = _run([*submit, "python", "-c", "import ray_cora; print('ray_cora from', ray_cora.__file__)"],
                 env=ray_head["env"], cwd=checkout, timeout=300)
    (imported,) = [line for line in which.stdout.splitlines() if line.startswith("ray_cora from")]
    assert "working_dir_files" in imported and str(REPO_ROOT) not in imported


@pytest.mark.slow
def test_ray_job_logs_of_an_embed_and_a_training_job_show_their_progress(ray_head, tiny_bert, tmp_path):
    """Issue 17: what `ray job logs` shows while a long job runs: embed's per-shard lines and summary,
    train-mdpr's step lines (step, loss, samples/s, lr, ETA), epoch and checkpoint lines and summary."""
    import uuid

    from ray_cora.demo import DEMO_PASSAGES
    from tests.support import dpr_rows

    submit = [RAY_BIN, "job", "submit", "--address", ray_head["address"], "--runtime-env",
              "cluster/runtime_env.yaml", "--working-dir", "."]
    train = tmp_path / "train.json"
    train.write_text(json.dumps(dpr_rows(8)))
    jobs = {
        "embed": ["python", "jobs/embed_corpus.py", "--passages", str(DEMO_PASSAGES), "--out", str(tmp_path / "index"),
                  "--shard-size", "50", "--actors", "1", "--actor-cpus", "0.5"],
        "train-mdpr": ["python", "jobs/train_mdpr.py", "--train", str(train), "--out", str(tmp_path / "mdpr"),
                       "--init", f"hf:{tiny_bert}", "--max-length", "32", "--batch-size", "4", "--epochs", "2",
                       "--num-workers", "1", "--cpus-per-worker", "0.5", "--log-every-steps", "1"],
    }
    logs = {}
    for name, command in jobs.items():
        job_id = f"ray_cora_{name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        result = _run([*submit, "--submission-id", job_id, "--", *command], env=ray_head["env"], cwd=REPO_ROOT)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        logs[name] = _run([RAY_BIN, "job", "logs", job_id, "--address", ray_head["address"]],
                          env=ray_head["env"], cwd=REPO_ROOT, timeout=120).stdout
    embed = logs["embed"]
    assert re.search(r"embed: shard 1/4 done \(\d+ passages, [\d.]+k? passages/s, [\d.]+ [kM]B written\)", embed), embed[-3000:]
    assert "embed: shard 4/4 done" in embed and re.search(r"embed: 4 shards \(176 passages\) in ", embed)
    trained = logs["train-mdpr"]
    assert re.search(r"train-mdpr: step 1/4 \(25%\) epoch 1/2 loss \d+\.\d{4} samples/s [\d.]+ lr \S+ elapsed "
                     r"\d:\d\d:\d\d eta \d:\d\d:\d\d", trained), trained[-3000:]
    assert "train-mdpr: step 4/4" in trained and "train-mdpr: training done at step 4/4" in trained


def _loopback_serve_config(index: str, port: int) -> dict:
    """cluster/serve_config.yaml on this machine: the proxy on 127.0.0.1, the demo index split over
    two shard groups, nothing from S3, small replicas (no GPUs, no 40 GiB memory reservations)."""
    config = yaml.safe_load((REPO_ROOT / "cluster" / "serve_config.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    (app,) = config["applications"]
    args = {name: value for name, value in app["args"].items() if "s3://" not in str(value)}
    app["args"] = {**args, "index": index, "shard_groups": 2, "shard_group_cpus": 0.1, "shard_group_memory": None}
    wanted = set(deployment_names(ServeAppOptions.model_validate(app["args"])))
    deployments = [d for d in app["deployments"] if d["name"] in wanted]
    for deployment in deployments:
        deployment["ray_actor_options"] = {"num_cpus": 0.1}
        deployment["autoscaling_config"].update(min_replicas=1, initial_replicas=1, max_replicas=1)
    app["deployments"] = deployments
    assert {d["name"] for d in deployments} == wanted  # the real file configures every one of them
    return config


def _app_status(ray_head, tmp_path) -> str:
    status = _run([SERVE_BIN, "status", "--address", ray_head["address"]], env=ray_head["env"], cwd=tmp_path,
                  timeout=120)
    if status.returncode != 0:
        return f"serve status failed: {status.stderr[-500:]}"
    apps = (yaml.safe_load(status.stdout) or {}).get("applications") or {}
    return (apps.get(APP_NAME) or {}).get("status", "absent")


@pytest.mark.slow
def test_serve_deploy_of_the_loopback_serve_config_answers_retrieve(ray_head, demo_index, tmp_path):
    port = free_port()
    config_file = tmp_path / "serve_config.yaml"
    config_file.write_text(yaml.safe_dump(_loopback_serve_config(demo_index, port), allow_unicode=True))
    deploy = _run([SERVE_BIN, "deploy", str(config_file), "--address", ray_head["address"]],
                  env=ray_head["env"], cwd=tmp_path, timeout=300)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    try:
        deadline = time.monotonic() + 300
        while (status := _app_status(ray_head, tmp_path)) != "RUNNING":
            assert status not in ("DEPLOY_FAILED", "UNHEALTHY"), f"the app is {status}"
            assert time.monotonic() < deadline, f"the app is still {status} after 300 s"
            time.sleep(2)
        url = f"http://127.0.0.1:{port}/v1/retrieve"
        body = {"question": "富士山の高さは？", "lang": "ja", "k": 3}
        headers = {"Content-Type": "application/json", API_KEY_HEADER: API_KEY}
        response = requests.post(url, data=json.dumps(body), headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        passages = response.json()["passages"]
        assert len(passages) == 3 and "mount_fuji" in passages[0]["pid"]
        # The key the app's args name, from the node's environment, guards the route.
        no_key = requests.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=60)
        assert no_key.status_code == 401
    finally:
        _run([SERVE_BIN, "shutdown", "-y", "--address", ray_head["address"]], env=ray_head["env"], cwd=tmp_path,
             timeout=300)
