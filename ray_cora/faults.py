"""Fault injection for tests: one plan of where a job should crash, empty in production.

A test says where to fail with a :class:`FaultPlan` and runs the job under :func:`inject`::

    with faults.inject(FaultPlan({RETRIEVE_WRITER_BLOCK: "ja-00000"}, once_marker=str(tmp / "died"))):
        run_retrieval(config)

Production code reads the plan from one place, :func:`current`, on the driver only, and hands it
by value to its Ray actors (constructor arguments) and Ray Train workers (``train_loop_config``):
those run in other processes, where the driver's module globals are not set. Each injection point
then asks the plan with one dict lookup; with the empty plan nothing ever happens.

The points are named in :data:`POINTS`; a plan with an unknown name is refused when it is made,
so a typo fails the test instead of silently injecting nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# --- injection points: name -> what its value means -------------------------------------------

RETRIEVE_WRITER_BLOCK = "retrieve.writer_block"
EMBED_ACTOR_SHARD = "embed.actor_shard"
DRIVER_ENTRIES = "driver.entries"
PIVOT_ANSWER_PARTS = "pivot.answer_parts"
TRAIN_KILL_WORKER_AT_STEP = "train.kill_worker_at_step"
TRAIN_FAIL_AFTER_STEP = "train.fail_after_step"
ITERATE_AFTER_STAGE = "iterate.after_stage"

POINTS: dict[str, str] = {
    RETRIEVE_WRITER_BLOCK: "a retrieve writer actor dies once (os._exit) after writing this block's part, "
                           "before its marker",
    EMBED_ACTOR_SHARD: "an embed actor dies once (os._exit) in the middle of this shard number",
    DRIVER_ENTRIES: "a Ray Data driver (embed, retrieve, pivot build/run) raises SimulatedCrash after "
                    "handling this many finished units",
    PIVOT_ANSWER_PARTS: "pivot build's driver raises SimulatedCrash after writing this many answer parts",
    TRAIN_KILL_WORKER_AT_STEP: "the last Ray Train worker is SIGKILLed once right after this step",
    TRAIN_FAIL_AFTER_STEP: "every Ray Train worker raises SimulatedCrash after this step (max_failures 0)",
    ITERATE_AFTER_STAGE: "iterate raises SimulatedCrash right after this stage wrote its marker",
}
# Points whose process dies "once": the marker file remembers it across the restart.
DIE_ONCE_POINTS = frozenset({RETRIEVE_WRITER_BLOCK, EMBED_ACTOR_SHARD, TRAIN_KILL_WORKER_AT_STEP})


class SimulatedCrash(RuntimeError):
    """Raised by an injected fault that stops a job midway, as if it had been killed there (never in
    normal runs; not a user error)."""


@dataclass(frozen=True)
class FaultPlan:
    """Where a test wants a job to fail: ``points`` maps a point name (see :data:`POINTS`) to its
    value; ``once_marker`` is the file the die-once points create before dying (a restarted actor
    or worker sees it and goes on). Frozen and picklable: it travels to actors by value.

    >>> plan = FaultPlan({DRIVER_ENTRIES: 2})
    >>> plan.get(DRIVER_ENTRIES), plan.get(ITERATE_AFTER_STAGE), bool(FaultPlan())
    (2, None, False)
    """

    points: Mapping[str, Any] = field(default_factory=dict, hash=False)
    once_marker: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", dict(self.points))  # a private copy, plain (picklable)
        unknown = sorted(set(self.points) - set(POINTS))
        if unknown:
            raise ValueError(f"FaultPlan: unknown injection point(s) {unknown}; known: {sorted(POINTS)}")
        needs_marker = sorted(set(self.points) & DIE_ONCE_POINTS)
        if needs_marker and not self.once_marker:
            raise ValueError(f"FaultPlan: point(s) {needs_marker} die once and need once_marker (a file path)")

    def __bool__(self) -> bool:
        return bool(self.points)

    def get(self, point: str, default: Any = None) -> Any:
        """The value set for ``point``, else ``default``."""
        return self.points.get(point, default)

    def die_once_here(self, point: str, value: Any, *, sigkill: bool = False) -> None:
        """When ``point`` is set to ``value`` and its marker is not there yet: create the marker,
        then end this process at once (``os._exit(1)``, or SIGKILL with ``sigkill``)."""
        if point not in self.points or self.points[point] != value:
            return
        try:
            open(self.once_marker, "x").close()  # atomic: of concurrent actors, exactly one dies
        except FileExistsError:
            return  # died here once already
        if sigkill:
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)

    def raise_after(self, point: str, count: int, what: str = "") -> None:
        """Raise :class:`SimulatedCrash` once ``count`` reached the value set for ``point``."""
        if point in self.points and count >= self.points[point]:
            raise SimulatedCrash(f"test hook {point}: {what or f'stopped after {count}'}")

    def raise_at(self, point: str, value: Any, what: str = "") -> None:
        """Raise :class:`SimulatedCrash` when ``point`` is set to ``value``."""
        if point in self.points and self.points[point] == value:
            raise SimulatedCrash(f"test hook {point}: {what or f'stopped at {value}'}")


EMPTY = FaultPlan()
_current: FaultPlan = EMPTY


def current() -> FaultPlan:
    """The plan in force in this process: :data:`EMPTY` unless a test is inside :func:`inject`.
    Call it on the driver; actors and train workers get the driver's plan by value."""
    return _current


@contextlib.contextmanager
def inject(plan: FaultPlan) -> Iterator[FaultPlan]:
    """Make ``plan`` the current one inside the ``with`` block; the previous plan comes back after
    it (so injections nest: the innermost plan wins).

    >>> with inject(FaultPlan({DRIVER_ENTRIES: 1})) as plan:
    ...     current() is plan
    True
    >>> current() is EMPTY
    True
    """
    global _current
    previous, _current = _current, plan
    try:
        yield plan
    finally:
        _current = previous
