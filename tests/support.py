"""Helpers the tests share (paths, free ports, stopping servers, loading benchmark scripts): plain
functions, imported as ``from tests.support import ...``; the fixtures are in the conftest files."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

S3_ACCESS_KEY = "ray-cora-test"
S3_SECRET_KEY = "ray-cora-test-secret"
S3_BUCKET = "ray-cora-test"


def load_benchmark(name: str):
    """Import ``jobs/benchmarks/<name>.py`` (a script, not a package) so tests can call its functions."""
    path = REPO_ROOT / "jobs" / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped (with the reason) when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the project's shared/data folder sits beside "
                    "the repository in CI; a user's clone does not have it)")
    return path


def free_port_pair() -> int:
    """A port P such that P and P + 10000 (SeaweedFS puts gRPC there) are both free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def stop_process(proc: subprocess.Popen, terminate, *, grace_s: float) -> None:
    """Stop a server we started: ``terminate()``, then SIGKILL its process group after ``grace_s``."""
    terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
