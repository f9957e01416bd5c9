"""The local Ray that ``init_ray`` starts listens on loopback only, keeps token authentication, and
leaves no process behind however its driver ends; an unreachable ``--ray-address`` fails fast, in
one line (docs/security.md)."""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
import psutil

from ray_cora.cli import main
from ray_cora.runtime import CONNECT_TIMEOUT_S, RayUnreachableError, init_ray
from tests.support import free_port

# Seconds in which every process of the driver's Ray session must be gone once the driver shut
# Ray down or died: ray.shutdown() plus SHUTDOWN_GRACE_S for each of wait, SIGTERM, SIGKILL, with
# room for a loaded CI machine.
GONE_WITHIN_S = 30

# A driver that starts a local Ray through init_ray, runs one task (so that a worker process
# listens too), says "ready", then does what the test writes on its stdin.
DRIVER = """
import os, signal, sys
import ray
import psutil
from ray_cora.runtime import init_ray, shutdown_ray

assert init_ray(num_cpus=1)

@ray.remote
def worker_pid():
    return os.getpid()

ray.get(worker_pid.remote())
print("ready", flush=True)
command = sys.stdin.readline().strip()
if command == "kill-raylet":
    # What ray.shutdown() does itself to a raylet still busy after its one-second grace.
    raylet = next(p for p in psutil.Process().children() if p.name() == "raylet")
    raylet.send_signal(signal.SIGKILL)
    raylet.wait(10)
shutdown_ray()
print("shut down", flush=True)
"""


@pytest.fixture
def driver():
    """The DRIVER in a subprocess with its local Ray up; yields it and the processes of its Ray
    session (every descendant of the driver). Whatever a test leaves is SIGKILLed by pid."""
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    session: list[psutil.Process] = []
    try:
        assert _said(proc, "ready"), f"the driver did not start Ray (exit {proc.wait(60)})"
        session = psutil.Process(proc.pid).children(recursive=True)
        yield proc, session
    finally:
        proc.kill()
        proc.wait(30)
        for process in session:
            try:
                process.kill()
            except psutil.Error:
                pass


def _said(proc: subprocess.Popen, word: str) -> bool:
    """Whether the driver printed ``word`` on a line of its own (Ray prints its logs there too)."""
    return any(line.strip() == word for line in iter(proc.stdout.readline, ""))


def _alive(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{process.pid} {' '.join(process.cmdline())[:60]}")
        except psutil.NoSuchProcess:
            pass
    return alive


def _alive_after(processes: list[psutil.Process], seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (alive := _alive(processes)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket's view
    return (mapped or address).is_loopback


def _listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    found = []
    for process in processes:
        try:
            name = f"{process.name()} {' '.join(process.cmdline())[:60]}"
            found += [(name, c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only_keeps_token_auth_and_stops_everything(driver):
    proc, session = driver
    sockets = _listening([psutil.Process(proc.pid), *session])
    names = " ".join(name for name, _, _ in sockets)
    # What listens (docs/security.md): the driver's and workers' core-worker gRPC, the GCS, the raylet
    # (node and object manager), the agents; the monitor's and dashboard's Prometheus endpoints too,
    # unless another Ray on this machine holds their fixed ports.
    for server in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"):
        assert server in names, f"{server} listens nowhere: {sockets}"
    # The exact list of what a local Ray may expose beyond loopback: nothing.
    assert [s for s in sockets if not _is_loopback(s[1])] == []

    # Token authentication stays on: the runtime env agent refuses a request without the token.
    agent_ports = [port for name, _, port in sockets if "ray::RuntimeEnvAgent" in name]
    request = urllib.request.Request(f"http://127.0.0.1:{agent_ports[0]}/get_runtime_envs_info", data=b"")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401

    proc.stdin.write("shutdown\n")
    proc.stdin.flush()
    assert _said(proc, "shut down")
    assert _alive_after(session, GONE_WITHIN_S) == []


@pytest.mark.slow
def test_processes_of_a_raylet_killed_at_shutdown_are_stopped(driver):
    # ray.shutdown() SIGKILLs a raylet that has not stopped within a second (a busy one, as on a
    # SIGTERMed `ray-cora demo`); its agents and workers then outlived the command by minutes.
    proc, session = driver
    proc.stdin.write("kill-raylet\n")
    proc.stdin.flush()
    assert _said(proc, "shut down")
    assert _alive_after(session, GONE_WITHIN_S) == []


def test_unreachable_ray_address_fails_fast_in_one_line(tmp_path, capsys):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    assert main(["demo", "--ray-address", address, "--out", str(tmp_path / "out")]) == 2
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"--ray-address {address}: no Ray answers" in err and "ray start --head" in err


def test_ray_address_from_the_environment_is_named_as_such(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{free_port()}")
    with pytest.raises(RayUnreachableError, match=r"^RAY_ADDRESS ray://127\.0\.0\.1:\d+: no Ray answers"):
        init_ray()
