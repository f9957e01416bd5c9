"""``ray-cora serve``: start (or join) Ray, run the Serve application on 127.0.0.1, block until Ctrl-C."""

from __future__ import annotations

import signal
import threading
import time

from pydantic import Field

from ray_cora.config import RayJobConfig
from ray_cora.errors import RayCoraError
from ray_cora.serve.settings import ServeAppOptions


class ServeStartError(RayCoraError):
    """The Serve application failed to deploy."""


class ServeConfig(ServeAppOptions, RayJobConfig):
    """Serve the HTTP API (POST /v1/retrieve, /v1/answer, /v1/pivot; GET /healthz; /docs) on Ray Serve.
    Without --index the demo corpus is embedded with mUSE at replica start; --pivot-db demo builds
    the demo pivot database."""

    host: str = Field("127.0.0.1", description="Address Serve's HTTP proxy binds (0.0.0.0 exposes it "
                      "to the network)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")

    def app_options(self) -> ServeAppOptions:
        return ServeAppOptions.model_validate({k: v for k, v in self.to_dict().items()
                                               if k in ServeAppOptions.model_fields})


def start_app(config: ServeConfig) -> str:
    """Start Serve's proxy on ``host:port`` and deploy the app (Ray must be running); returns its URL."""
    from ray import serve

    from ray_cora.serve.app import APP_NAME, build_app

    app = build_app(config.app_options())
    serve.start(http_options={"host": config.host, "port": config.port})
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)  # returns once RUNNING
    except RuntimeError as exc:
        # A replica that cannot start (bad index URI, encoder mismatch ...) fails the deployment;
        # Serve's message ends with the replica's traceback, whose last line is the cause.
        lines = [l for l in str(exc).strip().splitlines() if l.strip()]
        raise ServeStartError(f"the app did not start: {lines[-1].strip() if lines else exc}") from None
    return f"http://{config.host}:{config.port}"


def run_serve(config: ServeConfig) -> None:
    """Serve until interrupted (Ctrl-C), then shut Serve down (and Ray, if this command started it)."""
    from ray import serve

    from ray_cora.runtime import ray_session

    if threading.current_thread() is threading.main_thread():
        # SIGTERM (kubectl delete, `kill`, a shell that ignores SIGINT in background jobs) stops
        # as cleanly as Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        url = start_app(config)
        print(f"ray_cora serving at {url} (docs: {url}/docs); Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        finally:
            serve.shutdown()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
