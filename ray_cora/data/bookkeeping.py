"""What the resumable Ray Data jobs (embed, retrieve, pivot build/run) share.

- Actor bodies hand back one row per unit of work: its marker ``entry`` (JSON), or the user error
  it raised, pickled (:func:`error_row`). Ray Data would wrap a raised error and lose its type and
  text; :func:`iter_entries` re-raises it on the driver as itself.
- :func:`refuse_stale_blocks` / :func:`require_all_blocks`: the block-keyed jobs (retrieve,
  pivot run) check their finished blocks against the input's before running and before committing.
- :func:`check_job_settings` records the settings that shape a job's output files next to them,
  and refuses a rerun into the same folder with other settings (it would mix two jobs' files).
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Iterable, Iterator

import numpy as np

from ray_cora import faults, storage
from ray_cora.errors import ConfigError, RayCoraError, StorageError


def error_row(key: str, name: str, exc: RayCoraError) -> dict[str, np.ndarray]:
    """The row an actor returns instead of raising ``exc`` for unit ``name`` (column ``key``)."""
    return {key: np.array([name], dtype=object), "entry": np.array([""], dtype=object),
            "error": np.array([pickle.dumps(exc)], dtype=object)}


def iter_entries(rows: Iterable[dict[str, Any]], *, unit: str = "unit") -> Iterator[dict[str, Any]]:
    """The finished units' entries, in the order Ray Data delivers them; an actor's error is raised.

    Runs on the driver. Fault point ``driver.entries`` (:mod:`ray_cora.faults`): once that many
    entries were handled by the caller, the driver stops with a ``SimulatedCrash``, as a killed job would.
    """
    plan = faults.current()
    for handled, row in enumerate(rows, start=1):
        if row["error"]:
            raise pickle.loads(row["error"])  # our own exception, pickled by our actor
        yield json.loads(row["entry"])
        plan.raise_after(faults.DRIVER_ENTRIES, handled, f"the driver stops after {handled} {unit}(s)")


def refuse_stale_blocks(out: storage.Location, done: dict[str, Any], counts: dict[str, int]) -> None:
    """Before a rerun: finished blocks this input does not make mean ``out`` holds another job."""
    stale = sorted(set(done) - set(counts))
    if stale:
        raise ConfigError(f"{out.uri} has parts {stale[:5]} this question set does not make: use another --out")


def require_all_blocks(out: storage.Location, done: dict[str, Any], counts: dict[str, int]) -> None:
    """Before committing: every block must have come back."""
    missing = sorted(set(counts) - set(done))
    if missing:
        raise StorageError(f"{out.uri}: blocks {missing[:10]} were not written; rerun the job to resume")


def check_job_settings(out: storage.Location, name: str, key: dict[str, Any], what: str) -> None:
    """Write ``key`` to ``out/name`` on the first run; on a rerun, a different ``key`` is a
    :class:`ConfigError` naming the settings that differ."""
    job = out.join(name)
    if job.is_file():
        saved = json.loads(storage.read_bytes(job))
        if saved != key:
            changed = sorted(k for k in set(key) | set(saved) if saved.get(k) != key.get(k))
            raise ConfigError(f"{out.uri} holds a {what} with other settings ({', '.join(changed)} differ): "
                              "use another --out, or delete that folder to start over")
    else:
        storage.write_bytes(job, json.dumps(key, indent=2).encode("utf-8"))
