"""What to do with malformed input records: stop with a located error, or skip and quarantine."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from ray_cora.errors import BadRecordError

OnBadRecord = Literal["error", "skip"]


@dataclass
class BadRecords:
    """Collects malformed records seen while reading.

    With ``policy="error"`` the first bad record raises :class:`BadRecordError` naming the file
    and line. With ``policy="skip"`` it is counted and kept for the quarantine file, so nothing
    is dropped silently.

    >>> bad = BadRecords("skip")
    >>> bad.report("a.tsv", 3, "expected 3 columns, found 2", raw="1\\tx")
    >>> bad.count
    1
    """

    policy: OnBadRecord = "error"
    records: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in ("error", "skip"):
            raise ValueError(f"on_bad_record must be 'error' or 'skip', got {self.policy!r}")

    @property
    def count(self) -> int:
        return len(self.records)

    def report(self, source: str, line: int, reason: str, *, raw: str | bytes = "") -> None:
        if self.policy == "error":
            raise BadRecordError(source, line, reason)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        self.records.append({"source": source, "line": line, "reason": reason, "raw": raw[:10_000]})

    def merge(self, other: "BadRecords") -> None:
        self.records.extend(other.records)

    def to_jsonl(self) -> bytes:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records).encode("utf-8")
