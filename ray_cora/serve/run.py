"""``ray-cora serve``: start (or join) Ray, run the Serve application on 127.0.0.1, block until Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading
import time

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
    """Start Serve's proxy on ``host:port`` and deploy the app (Ray must be running); returns its URL."""

    app = build_app(config.app_options())
    serve.start(http_options={"host": config.host, "port": config.port})
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)  # returns once RUNNING
    except RuntimeError as exc:
        # A replica that cannot start (bad index URI, encoder mismatch ...) fails the deployment;
        # Serve's message ends with the replica's traceback, whose last line is the cause.
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        raise ServeStartError(f"the app did not start: {lines[-1].strip() if lines else exc}") from None
    return f"http://{config.host}:{config.port}"


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
