"""Starting or joining Ray, and turning errors raised inside Ray tasks back into user errors."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import ray

from ray_cora.errors import RayCoraError


def init_ray(*, address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray on 127.0.0.1.

    Returns True when this call started Ray (the caller then shuts it down).
    """
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], **quiet)
    else:
        # address="local": start a new Ray even if another one runs on this machine (plain
        # ray.init() would silently join it, with its resources and its auth settings).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", **quiet)
    return True


STORAGE_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                    "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def worker_runtime_env() -> dict:
    """A ``runtime_env`` that hands the driver's storage settings (AWS_* variables) to Ray workers,
    which may have been started before they were set, or on other nodes."""
    env_vars = {name: os.environ[name] for name in STORAGE_ENV_VARS if os.environ.get(name)}
    return {"env_vars": env_vars} if env_vars else {}


@contextlib.contextmanager
def ray_session(*, address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of a job: shut down on exit only if this job started it."""
    started = init_ray(address=address, num_cpus=num_cpus)
    try:
        with user_errors_from_ray():
            yield
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def user_errors_from_ray() -> Iterator[None]:
    """Re-raise a :class:`RayCoraError` that a Ray task or actor raised as itself, not wrapped."""
    try:
        yield
    except RayCoraError:
        raise
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, RayCoraError):
                raise cause from None
            cause = getattr(cause, "cause", None) or cause.__cause__
        raise
