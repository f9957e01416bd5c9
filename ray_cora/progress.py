"""What a long driver says while it runs: per-unit progress lines, the resume line, the summary (pure).

The Ray Data jobs (embed, retrieve, pivot build/run, generate, Wikidata labels, passages) and
``iterate`` cut their work into *units* (shards, blocks, parts, files, stages). The driver learns
that a unit is finished when its entry comes back from the actors (the unit's marker is written by
then), and hands it to a :class:`JobProgress`, which formats::

    embed: resuming: 120 of 436 shards already done, skipping them
    embed: shard 132/436 done (5.1k passages, 1.3k passages/s, 310 MB written), ETA 41 min
    embed: 436 shards (43.6M passages) in 5 h 12 min (2.3k passages/s); 120 skipped as already done (resumed)

``done/total`` counts every unit of the job, skipped ones included (how far the job is); the
numbers in parentheses are this run's (what it embedded, how fast, what it wrote). The ETA is the
remaining work at this run's rate so far: by items when the job knows how many items the pending
units hold (passages, questions), else by units. A job without items shows units/s.
``uniform=False`` leaves rate and ETA out where units are too unlike for them to mean anything
(iterate's stages: seconds of mining beside hours of training).

How often: every unit of a small job (at most ``every_unit_up_to`` units to do: a line per shard
costs nothing there and is what a test or a user watching wants), and otherwise at most one line
per ``every_s`` seconds, plus the first and the last unit (a 40k-block retrieval must not print 40k
lines into ``ray job logs``; a 5-hour embed with a shard every 40 s still prints every shard).

Lines go through ``emit`` (default :func:`print_line`: stdout, flushed at once, so a driver whose
stdout is a pipe — ``ray job logs -f``, a subprocess — shows them as they happen).

>>> t = [0.0]
>>> lines = []
>>> p = JobProgress("embed", unit="shard", total=4, items="passages", already_done=1, already_items=10,
...                 todo_items=30, clock=lambda: t[0], emit=lines.append)
>>> p.start()
>>> t[0] = 10.0
>>> p.add(items=10, bytes=2_000_000)
>>> t[0] = 20.0
>>> p.add(items=10, bytes=2_000_000)
>>> print("\\n".join(lines))
embed: resuming: 1 of 4 shards already done, skipping them
embed: shard 2/4 done (10 passages, 1.0 passages/s, 2.0 MB written), ETA 20 s
embed: shard 3/4 done (20 passages, 1.0 passages/s, 4.0 MB written), ETA 10 s
>>> print(p.summary())
embed: 4 shards (30 passages) in 20 s (1.0 passages/s, 4.0 MB written); 1 skipped as already done (resumed)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

DEFAULT_EVERY_S = 10.0
DEFAULT_EVERY_UNIT_UP_TO = 20


def print_line(line: str) -> None:
    """Print ``line`` on stdout and flush: a piped stdout (``ray job logs``) is block-buffered."""
    print(line, flush=True)


def format_count(n: float) -> str:
    """A count as people read it: exact below 1000, else 3 significant digits with k/M/G.

    >>> [format_count(n) for n in (0, 61, 999, 5_100, 12_345, 310_000, 43_600_000, 2.5e9)]
    ['0', '61', '999', '5.1k', '12.3k', '310k', '43.6M', '2.5G']
    """
    if n < 1000:
        return f"{n:.0f}" if float(n).is_integer() else f"{n:.1f}"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            value = n / scale
            return (f"{value:.1f}" if value < 100 else f"{value:.0f}") + suffix
    return str(n)  # unreachable


def format_rate(per_second: float) -> str:
    """A rate per second: one decimal below 10, whole numbers below 1000, then k/M.

    >>> [format_rate(r) for r in (0.04, 3.25, 42.4, 1300.0, 2_345_678.0)]
    ['0.0', '3.2', '42', '1.3k', '2.3M']
    """
    if per_second < 10:
        return f"{per_second:.1f}"
    if per_second < 1000:
        return f"{per_second:.0f}"
    return format_count(per_second)


def format_bytes(n: float) -> str:
    """A size in decimal units (kB = 1000 B), as ``ls -h --si`` and S3 consoles show them.

    >>> [format_bytes(n) for n in (0, 512, 96_000, 310_000_000, 1_234_000_000, 12e12)]
    ['0 B', '512 B', '96 kB', '310 MB', '1.2 GB', '12 TB']
    """
    if n < 1000:
        return f"{n:.0f} B"
    for scale, suffix in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {suffix}" if value < 10 else f"{value:.0f} {suffix}"
    return f"{n:.0f} B"  # unreachable


def format_duration(seconds: float) -> str:
    """A duration in words: ``12 s``, ``3 min 20 s``, ``41 min``, ``5 h 12 min``, ``2 d 3 h``;
    ``?`` when unknown (no work done yet to measure a rate).

    >>> [format_duration(s) for s in (0.2, 12.4, 200, 2460, 18_720, 183_600, float("nan"), -1)]
    ['0 s', '12 s', '3 min 20 s', '41 min', '5 h 12 min', '2 d 3 h', '?', '?']
    """
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    if total < 60:
        return f"{total} s"
    if total < 600:
        minutes, secs = divmod(total, 60)
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    minutes = int(round(total / 60))  # past 10 minutes, to the nearest minute
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 24 * 60:
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(int(round(total / 3600)), 24)  # past a day, to the nearest hour
    return f"{days} d {hours} h" if hours else f"{days} d"


def eta_seconds(done: float, remaining: float, elapsed: float) -> float:
    """Seconds left for ``remaining`` work at the rate ``done`` work took ``elapsed`` seconds;
    NaN when nothing is done yet (no rate to go by).

    >>> eta_seconds(10, 30, 20.0), eta_seconds(0, 5, 3.0) != eta_seconds(0, 5, 3.0), eta_seconds(4, 0, 9.0)
    (60.0, True, 0.0)
    """
    if remaining <= 0:
        return 0.0
    if done <= 0 or elapsed <= 0:
        return float("nan")
    return elapsed / done * remaining


def plural(n: int, word: str) -> str:
    """``1 shard``, ``2 shards`` (regular English plurals: the units here are all regular).

    >>> plural(1, "shard"), plural(3, "block"), plural(0, "stage")
    ('1 shard', '3 blocks', '0 stages')
    """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class JobProgress:
    """Counts a job's finished units on the driver and says so (see the module docstring).

    ``total``: every unit of the job; ``already_done`` / ``already_items``: the units (and their
    items) a previous run finished, skipped by this one; ``items``: the plural noun of what a unit
    holds (``"passages"``), or None when units are all there is; ``todo_items``: the items the
    pending units hold, when known (a better ETA than by units when units differ in size).
    ``clock`` and ``emit`` are injectable for tests.

    >>> lines = []
    >>> p = JobProgress("iterate", unit="stage", total=3, uniform=False, clock=lambda: 0.0, emit=lines.append)
    >>> p.start(); p.add(skipped=True, note="round-1/data"); p.add(note="round-1/mdpr")
    >>> lines
    ['iterate: stage 1/3 done (round-1/data, skipped: finished before)', 'iterate: stage 2/3 done (round-1/mdpr)']
    """

    def __init__(self, job: str, *, unit: str, total: int, items: str | None = None, already_done: int = 0,
                 already_items: int = 0, todo_items: int | None = None, every_s: float = DEFAULT_EVERY_S,
                 every_unit_up_to: int = DEFAULT_EVERY_UNIT_UP_TO, uniform: bool = True,
                 clock: Callable[[], float] = time.monotonic, emit: Callable[[str], None] = print_line) -> None:
        self.job, self.unit, self.total, self.items, self.uniform = job, unit, total, items, uniform
        self.already_done, self.already_items, self.todo_items = already_done, already_items, todo_items
        self.every_s, self.every_unit_up_to = every_s, every_unit_up_to
        self.clock, self.emit = clock, emit
        self.started = self._last_line = clock()
        self.done_now = 0  # units this run finished (skipped ones not included)
        self.skipped_now = 0  # units found finished while running (jobs that learn it per unit)
        self.items_now = 0
        self.bytes_now = 0

    @property
    def done(self) -> int:
        """Units finished so far, whoever finished them."""
        return self.already_done + self.skipped_now + self.done_now

    @property
    def skipped(self) -> int:
        return self.already_done + self.skipped_now

    def resuming_line(self) -> str | None:
        """What a resumed run says first (None when nothing was finished before)."""
        if not self.already_done:
            return None
        return (f"{self.job}: resuming: {self.already_done} of {plural(self.total, self.unit)} already done, "
                "skipping them")

    def start(self) -> None:
        """Emit the resume line, if any; elapsed time and rates count from here."""
        self.started = self._last_line = self.clock()
        line = self.resuming_line()
        if line:
            self.emit(line)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def eta(self) -> float:
        """Seconds left at this run's rate so far (by items when ``todo_items`` is known)."""
        elapsed = self.elapsed()
        if self.todo_items is not None and self.items:
            return eta_seconds(self.items_now, self.todo_items - self.items_now, elapsed)
        return eta_seconds(self.done_now, self.total - self.done, elapsed)

    def due(self) -> bool:
        """Whether the unit just counted gets a line (see the module docstring)."""
        todo = self.total - self.already_done
        return (todo <= self.every_unit_up_to or self.done >= self.total or self.done_now + self.skipped_now == 1
                or self.clock() - self._last_line >= self.every_s)

    def line(self, *, note: str | None = None, skipped: bool = False) -> str:
        """The progress line for the state now."""
        details = [note] if note else []
        if skipped:
            details.append("skipped: finished before")
        else:
            elapsed = self.elapsed()
            if self.items:
                details.append(f"{format_count(self.items_now)} {self.items}")
                if elapsed > 0:
                    details.append(f"{format_rate(self.items_now / elapsed)} {self.items}/s")
            elif self.uniform and elapsed > 0:
                details.append(f"{format_rate(self.done_now / elapsed)} {self.unit}s/s")
            if self.bytes_now:
                details.append(f"{format_bytes(self.bytes_now)} written")
        text = f"{self.job}: {self.unit} {self.done}/{self.total} done"
        if details:
            text += f" ({', '.join(details)})"
        if not skipped and self.uniform and self.done < self.total:
            text += f", ETA {format_duration(self.eta())}"
        return text

    def add(self, *, items: int = 0, bytes: int = 0, skipped: bool = False, note: str | None = None) -> None:
        """One unit finished (``skipped``: found finished by an earlier run; its ``items`` count in the
        summary's total only); emits a line when due."""
        if skipped:
            self.skipped_now += 1
            self.already_items += items
        else:
            self.done_now += 1
            self.items_now += items
            self.bytes_now += bytes
        if self.due():
            self._last_line = self.clock()
            self.emit(self.line(note=note, skipped=skipped))

    def summary(self) -> str:
        """The final line: every unit and item of the job, this run's time, rate and bytes, and what
        it skipped."""
        elapsed = self.elapsed()
        what = plural(self.total, self.unit)
        if self.items:
            what += f" ({format_count(self.already_items + self.items_now)} {self.items})"
        text = f"{self.job}: {what} in {format_duration(elapsed)}"
        details = []
        if self.items and self.items_now and elapsed > 0:
            details.append(f"{format_rate(self.items_now / elapsed)} {self.items}/s")
        elif not self.items and self.uniform and self.done_now and elapsed > 0:
            details.append(f"{format_rate(self.done_now / elapsed)} {self.unit}s/s")
        if self.bytes_now:
            details.append(f"{format_bytes(self.bytes_now)} written")
        if details:
            text += f" ({', '.join(details)})"
        if self.skipped:
            text += f"; {self.skipped} skipped as already done (resumed)"
        return text

    def finish(self) -> None:
        """Emit :meth:`summary`."""
        self.emit(self.summary())
