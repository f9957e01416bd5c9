"""``ray-cora serve``: start (or join) Ray, run the Serve application on 127.0.0.1, block until Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from typing import Mapping

import ray
from ray import serve

from ray_cora.configs.serve import ServeConfig
from ray_cora.errors import RayCoraError
from ray_cora.runtime import ray_session
from ray_cora.serve.app import APP_NAME, build_app


# Ray Serve's switch for its throughput-optimized mode (Ray >= 2.55; docs/serving.md has the figures).
THROUGHPUT_OPTIMIZED_ENV = "RAY_SERVE_THROUGHPUT_OPTIMIZED"


class ServeStartError(RayCoraError):
    """The Serve application failed to deploy."""


def start_app(config: ServeConfig) -> str:
    """Start Serve's proxy on ``host:port`` and deploy the app (Ray must be running); returns its URL.
    A busy port, or a replica that cannot start, is a :class:`ServeStartError` of one line."""

    app = build_app(config.app_options())
    if config.ray_address is None:  # our own Ray: nothing of ours listens there yet
        check_port_free(config.host, config.port)
    serve.start(http_options={"host": config.host, "port": config.port})
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)  # returns once RUNNING
    except RuntimeError as exc:
        # A replica that cannot start (bad index URI, encoder mismatch ...) fails its deployment; the
        # app's message only names the deployment, the deployment's own ends with the replica's error.
        try:
            deployments = {name: (str(d.status), d.message or "")
                           for name, d in serve.status().applications[APP_NAME].deployments.items()}
        except Exception:  # Serve itself is gone: its own message is all there is
            deployments = {}
        raise ServeStartError(f"the app did not start: {deploy_failure(str(exc), deployments)}") from None
    return f"http://{config.host}:{config.port}"


def check_port_free(host: str, port: int) -> None:
    """Refuse a ``host:port`` something already listens on, in one line (Serve's proxy would fail
    with a traceback)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds it
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeStartError(f"port {port} on {host} is in use ({exc.strerror}): stop what listens there, "
                                  "or serve on another port with --port") from None


def deploy_failure(message: str, deployments: Mapping[str, tuple[str, str]]) -> str:
    """One line saying why the app failed to deploy: each failed deployment with the last line of
    its replica's error (the exception, without its module path), else the last line of Serve's
    ``message``. ``deployments``: name -> (status, message), as ``serve.status()`` gives them.

    >>> deploy_failure("Deploying application ray_cora failed: Failed to update the deployments ['Retriever'].",
    ...                {"Ingress": ("HEALTHY", ""), "Retriever": ("DEPLOY_FAILED", "The deployment failed to "
    ...                 "start 3 times in a row. Error:\\nTraceback ...\\n  File x\\nray_cora.errors.ConfigError: "
    ...                 "index /i: bad")})
    'Retriever: ConfigError: index /i: bad'
    """
    failed = [f"{name}: {_last_line(text)}" for name, (status, text) in deployments.items()
              if status.rsplit(".", 1)[-1] in ("DEPLOY_FAILED", "UNHEALTHY") and text.strip()]
    return "; ".join(failed) if failed else _last_line(message)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else text.strip()
    # "ray_cora.errors.ConfigError: ..." -> "ConfigError: ..."
    return re.sub(r"^(?:[A-Za-z_][\w]*\.)+(?=[A-Za-z_]\w*(?:Error|Exception)\b)", "", last)


def run_serve(config: ServeConfig) -> None:
    """Serve until interrupted (Ctrl-C), then shut Serve down (and Ray, if this command started it)."""

    if threading.current_thread() is threading.main_thread():
        # SIGTERM (kubectl delete, `kill`, a shell that ignores SIGINT in background jobs) stops
        # as cleanly as Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
    for name, value in serve_environment(config, ray_running=ray.is_initialized()).items():
        os.environ.setdefault(name, value)  # a value the user exported wins
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        url = start_app(config)
        print(f"ray_cora serving at {url} (docs: {url}/docs); Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        finally:
            serve.shutdown()


def serve_environment(config: ServeConfig, *, ray_running: bool) -> dict[str, str]:
    """What ``ray-cora serve`` adds to the environment before it starts its own Ray: read by every
    Ray process at start (the Serve controller, proxy and replicas), so nothing when it joins a
    running Ray or a cluster, whose nodes' environment decides.

    >>> serve_environment(ServeConfig(), ray_running=False)
    {'RAY_SERVE_THROUGHPUT_OPTIMIZED': '1'}
    >>> serve_environment(ServeConfig(ray_address="auto"), ray_running=False)
    {}
    """
    if config.throughput_optimized and config.ray_address is None and not ray_running:
        return {THROUGHPUT_OPTIMIZED_ENV: "1"}
    return {}


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
