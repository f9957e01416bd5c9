"""User-facing errors: each says what went wrong, where, and how to fix it, in one line."""

from __future__ import annotations


class RayCoraError(Exception):
    """An error caused by input or configuration; the CLI prints it as one line and exits 2."""


class ConfigError(RayCoraError):
    """A configuration value or file is invalid."""


class StorageError(RayCoraError):
    """An object or file could not be read or written, or is not what its manifest says."""


class ChecksumError(StorageError):
    """A file's sha256 does not match the one recorded in its manifest."""


class BadRecordError(RayCoraError):
    """A malformed record in an input file, located by file and line."""

    def __init__(self, source: str, line: int, reason: str, *, hint: str | None = None) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        self.hint = hint or "fix the record, or pass --on-bad-record skip to quarantine it and go on"
        super().__init__(f"{source}:{line}: {reason} ({self.hint})")

    def __reduce__(self):
        # Ray ships exceptions between processes by pickling; keep the keyword-only hint.
        return (_rebuild_bad_record, (self.source, self.line, self.reason, self.hint))


def _rebuild_bad_record(source: str, line: int, reason: str, hint: str) -> BadRecordError:
    return BadRecordError(source, line, reason, hint=hint)
