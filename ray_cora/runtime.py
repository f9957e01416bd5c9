"""Starting or joining Ray (a local Ray on loopback only, see docs/security.md), stopping every process
it started, and turning errors raised inside Ray tasks back into user errors."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from typing import Iterator

import ray
import psutil  # after ray, which ships psutil in ray/thirdparty_files and puts that on sys.path
from ray._private import ray_constants  # a private module, for _loopback_node only: read why there

from ray_cora.errors import ConfigError, RayCoraError, find_user_error


logger = logging.getLogger(__name__)

# How long `--ray-address` may take to accept a TCP connection before the job gives up
# (docs/security.md); Ray itself would retry for minutes without a word.
CONNECT_TIMEOUT_S = 5.0
# How long the processes of a local Ray may take to exit after ray.shutdown() before they are
# sent SIGTERM, then SIGKILL (each with this much time again).
SHUTDOWN_GRACE_S = 2.0
RAY_CLIENT_PORT = 10001  # Ray Client's default port, for a ray:// address without one

# Ray's switch for "no multi-node clusters", on by default on macOS/Windows only: with it off,
# Ray keeps a loopback node IP instead of replacing it with the machine's (see _loopback_node).
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# The processes the local Ray of this process started (GCS, raylet, dashboard, monitor, log
# monitor), found at start; their descendants (agents, workers) are found again at shutdown.
_local_ray_processes: list[psutil.Process] = []
_watchdogs: list[subprocess.Popen] = []  # the one of the running local Ray (_WATCHDOG_SOURCE)
# The cluster init_ray joined (None: a local Ray, or Ray started by someone else in this process).
_joined_address: str | None = None


class RayUnreachableError(RayCoraError):
    """The Ray cluster that ``--ray-address`` (or ``RAY_ADDRESS``) names does not answer."""


def init_ray(*, address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray on 127.0.0.1.

    A local Ray listens on loopback only (docs/security.md lists every port) and keeps Ray's
    token authentication; :func:`shutdown_ray` stops every process it started. An address that
    does not accept a connection within :data:`CONNECT_TIMEOUT_S` is a :class:`RayUnreachableError`.
    Returns True when this call started Ray (the caller then calls :func:`shutdown_ray`).
    """
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    source = "--ray-address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        check_reachable(address, source=source)
        ray.init(address=address, **quiet)
        global _joined_address
        _joined_address = address
        return True
    me = psutil.Process()
    before = {child.pid for child in me.children()}
    try:
        # address="local": start a new Ray even if another one runs on this machine (plain
        # ray.init() would silently join it, with its resources and its auth settings).
        with _loopback_node():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     _node_ip_address="127.0.0.1", **quiet)
    except BaseException:
        # A failed or interrupted start (SIGTERM while Ray starts) leaves what it started.
        _local_ray_processes[:] = [child for child in me.children() if child.pid not in before]
        with contextlib.suppress(Exception):  # the start's own error is the one to report
            shutdown_ray()
        raise
    _local_ray_processes[:] = [child for child in me.children() if child.pid not in before]
    _start_watchdog(_local_ray_processes)
    return True


def shutdown_ray() -> list[int]:
    """``ray.shutdown()``, then stop by pid what the local Ray that :func:`init_ray` started
    left running; returns the pids that had to be signalled.

    Ray gives its raylet one second to stop its workers and agents before it SIGKILLs it; a busy
    raylet takes longer, and its DashboardAgent and RuntimeEnvAgent then live on for a minute or
    more. Only this process's own Ray session is touched, never another Ray on the machine.
    """
    global _joined_address
    _joined_address = None
    processes = _with_descendants(_local_ray_processes)
    _local_ray_processes.clear()
    ray.shutdown()
    signalled = stop_processes(processes, grace_s=SHUTDOWN_GRACE_S)
    while _watchdogs:  # its work is done
        watchdog = _watchdogs.pop()
        watchdog.kill()
        watchdog.wait()
    return signalled


def stop_processes(processes: list[psutil.Process], *, grace_s: float) -> list[int]:
    """Wait up to ``grace_s`` for ``processes`` to exit, then SIGTERM, then SIGKILL the rest (each
    signal followed by ``grace_s`` of waiting); returns the pids that had to be signalled.
    psutil checks each process's start time, so a pid reused since is never signalled."""
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    signalled = [process.pid for process in alive]
    for stop in (psutil.Process.terminate, psutil.Process.kill):
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                stop(process)
        _, alive = psutil.wait_procs(alive, timeout=grace_s)
    if signalled:
        logger.info("stopped %d Ray processes left after ray.shutdown(): pids %s", len(signalled), signalled)
    return signalled


# Run by a separate Python (not a Ray process, started in its own session so that a terminal's
# Ctrl-C does not reach it) for the driver's local Ray: it notes the Ray processes and their
# descendants while the driver lives, and stops those left once the driver is gone, however it
# went: Ray's SIGTERM handler can abort the driver inside ray.shutdown() (seen with Serve), and a
# SIGKILLed driver runs no code at all.
_WATCHDOG_SOURCE = """
import sys, time
sys.path.insert(0, sys.argv[1])
import psutil
driver, grace = psutil.Process(int(sys.argv[2])), float(sys.argv[3])
def running(process):
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
roots, known = [], {}
for pid in sys.argv[4:]:
    try:
        roots.append(psutil.Process(int(pid)))
    except psutil.NoSuchProcess:
        pass
while running(driver):
    for root in roots:
        try:
            for process in [root, *root.children(recursive=True)]:
                known.setdefault(process.pid, process)
        except psutil.NoSuchProcess:
            pass
    time.sleep(0.5)
_, alive = psutil.wait_procs(list(known.values()), timeout=grace)
for stop in (psutil.Process.terminate, psutil.Process.kill):
    for process in alive:
        try:
            stop(process)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=grace)
"""


def _start_watchdog(processes: list[psutil.Process]) -> None:
    psutil_path = os.path.dirname(os.path.dirname(psutil.__file__))
    _watchdogs.append(subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG_SOURCE, psutil_path, str(os.getpid()), str(SHUTDOWN_GRACE_S),
         *(str(process.pid) for process in processes)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True))


def _with_descendants(processes: list[psutil.Process]) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            for member in [process, *process.children(recursive=True)]:
                found.setdefault(member.pid, member)
    return list(found.values())


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While a local Ray starts, keep 127.0.0.1 as its node IP, so that every Ray server binds
    loopback.

    On Linux ``ray.init`` replaces a loopback ``_node_ip_address`` by the machine's IP
    (``services.resolve_ip_for_localhost``; ray-project/ray#26293), and the GCS, raylet and worker
    gRPC servers then listen on every interface, the agents and metrics servers on that IP or
    0.0.0.0. Ray keeps loopback where multi-node clusters are off (``get_node_ip_address``), as on
    macOS and Windows. Ray reads that switch once, at import, into
    ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``: the driver's copy is set here for the start;
    the processes Ray starts inherit the environment variable.
    """
    saved_env = os.environ.get(_LOCAL_ONLY_ENV)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_LOCAL_ONLY_ENV, None)
        else:
            os.environ[_LOCAL_ONLY_ENV] = saved_env


def check_reachable(address: str, *, source: str = "--ray-address", timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, in one line, a Ray address whose host does not accept a TCP connection on its port
    within ``timeout_s``: Ray would retry it for minutes, silently. ``"auto"`` (Ray finds the
    address of a Ray started on this machine) is left to Ray.

    >>> check_reachable("auto")
    """
    if address == "auto":
        return
    scheme, _, target = address.rpartition("://")
    host, colon, port = target.rpartition(":")
    if not colon and scheme == "ray":
        host, port = target, str(RAY_CLIENT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ConfigError(f"{source} {address!r}: not an address; give host:port (the head node's GCS "
                          f"port, 6379 by default), ray://host:port, or auto")
    started = time.monotonic()
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise RayUnreachableError(
            f"{source} {address}: no Ray answers at {host}:{port} ({reason} after "
            f"{time.monotonic() - started:.1f} s); check that `ray start --head` runs there and that port "
            f"{port} is open from this machine (the GCS port, 6379 by default; {RAY_CLIENT_PORT} for "
            f"ray://), or unset {source} to start a local Ray") from None


# Where S3 is (non-secret). Credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)
# are never forwarded: a runtime env is stored in the cluster's GCS and shown in its dashboard and
# job records. Each node's AWS SDK chain finds them itself: its environment (a local Ray inherits the
# driver's at start), a profile, an instance role, IRSA or EKS Pod Identity.
STORAGE_ENV_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def worker_runtime_env() -> dict:
    """A ``runtime_env`` that hands the driver's S3 location settings (region, endpoint; the
    ``STORAGE_ENV_VARS`` it has set) to Ray workers, which may have been started before they were
    set, or on other nodes. Secrets are not included: workers get credentials from their own node.

    >>> set(worker_runtime_env().get("env_vars", {})) <= set(STORAGE_ENV_VARS)
    True
    """
    env_vars = {name: os.environ[name] for name in STORAGE_ENV_VARS if os.environ.get(name)}
    return {"env_vars": env_vars} if env_vars else {}


@contextlib.contextmanager
def ray_session(*, address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of a job: shut down on exit (also on SIGTERM, which Ray turns into
    ``SystemExit``) only if this job started it, every process of its local Ray included."""
    started = init_ray(address=address, num_cpus=num_cpus)
    try:
        with user_errors_from_ray():
            yield
    finally:
        if started:
            shutdown_ray()


@contextlib.contextmanager
def user_errors_from_ray() -> Iterator[None]:
    """Re-raise a :class:`RayCoraError` that a Ray task or actor raised as itself, not wrapped,
    whichever way Ray wrapped it (see :func:`~ray_cora.errors.find_user_error`); anything else is
    a bug and keeps its traceback."""
    try:
        yield
    except RayCoraError:
        raise
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is not None:
            raise user_error from None
        raise


def check_resources_fit(requests: dict[str, tuple[float, float]]) -> None:
    """Refuse, before any actor is asked for, an actor (or task) whose CPUs/GPUs no node of the
    running Ray has: Ray would wait for them forever, silently. ``requests`` maps the options that
    set a reservation (``"--actor-cpus/--actor-gpus"``) to its ``(cpus, gpus)``.

    On a cluster this job joined (``--ray-address``, ``RAY_ADDRESS``, ``ray job submit``) the
    autoscaler may still add a node that fits (cluster/aws.yaml and KubeRay start GPU workers on
    demand, from zero): there it is one warning line, and the job waits for the node.
    """
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    most = {kind: max((float(res.get(kind, 0)) for res in nodes), default=0.0) for kind in ("CPU", "GPU")}
    for options, (cpus, gpus) in requests.items():
        cpu_option, _, gpu_option = options.partition("/")
        for option, wanted, kind in ((cpu_option, cpus, "CPU"), (gpu_option or cpu_option, gpus, "GPU")):
            if wanted and wanted > most[kind]:
                if _joined_address is not None:
                    print(f"ray-cora: no running node of the cluster at {_joined_address} has {wanted:g} {kind}s "
                          f"for {option} yet; waiting for the autoscaler to start one (Ctrl-C stops)",
                          file=sys.stderr, flush=True)
                    continue
                more = "more CPUs (--num-cpus for a local Ray)" if kind == "CPU" else "a node with GPUs"
                raise ConfigError(
                    f"{option} {wanted:g} asks for {wanted:g} {kind}s for each actor or task, but the largest "
                    f"node of this Ray has {most[kind]:g}: Ray would wait for them forever; lower {option} "
                    f"or give Ray {more}")
