"""User-facing errors: each says what went wrong, where, and how to fix it, in one line."""

from __future__ import annotations

import importlib
import re
from typing import Iterator

# A traceback's last line: "package.module.ClassName: message" at the start of a line.
_TRACEBACK_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*)\.([A-Za-z_]\w*): (.+)$", re.MULTILINE)
# What Ray puts around text it prints: colour codes.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RayCoraError(Exception):
    """An error caused by input or configuration; the CLI prints it as one line and exits 2."""

    @classmethod
    def from_message(cls, message: str) -> "RayCoraError":
        """An error of this class whose text is ``message`` (rebuilt from a traceback's last line
        when Ray passed the error on as text only, see :func:`user_error_from_text`)."""
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        return error


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

    @classmethod
    def from_message(cls, message: str) -> "BadRecordError":
        """The error whose text is ``message`` ("source:line: reason (hint)"), fields recovered."""
        match = re.fullmatch(r"(.+?):(\d+): (.*) \((.*)\)", message)
        if match:
            return cls(match[1], int(match[2]), match[3], hint=match[4])
        return RayCoraError.from_message(message)  # not our format: the line matters, not the class


def _user_error_classes(root: type[RayCoraError] = RayCoraError) -> Iterator[type[RayCoraError]]:
    yield root
    for sub in root.__subclasses__():
        yield from _user_error_classes(sub)


def user_error_from_text(text: str) -> RayCoraError | None:
    """The last :class:`RayCoraError` a traceback text ends with, rebuilt as its own class with its
    own one line, or None. Ray hands some errors back as text only: an actor whose ``__init__``
    raised (``ActorDiedError``), a Ray Data UDF error (``UserCodeException``, whose cause does not
    survive pickling).

    >>> error = user_error_from_text("Traceback ...\\nray_cora.errors.StorageError: x.json: not found")
    >>> type(error).__name__, str(error)
    ('StorageError', 'x.json: not found')
    """
    classes = {f"{c.__module__}.{c.__qualname__}": c for c in _user_error_classes()}
    found = None
    for match in _TRACEBACK_ERROR_LINE.finditer(_ANSI.sub("", text)):
        cls = classes.get(f"{match[1]}.{match[2]}") or _our_error_class(match[1], match[2])
        if cls is not None:
            found = (cls, match[3].rstrip())
    return found[0].from_message(found[1]) if found else None


def _our_error_class(module: str, name: str) -> type[RayCoraError] | None:
    """A user-error class of a ray_cora module the driver has not imported (a worker's), or None;
    nothing outside this package is imported."""
    if module != "ray_cora" and not module.startswith("ray_cora."):
        return None
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, RayCoraError) else None


def _rebuild_bad_record(source: str, line: int, reason: str, hint: str) -> BadRecordError:
    return BadRecordError(source, line, reason, hint=hint)


def find_user_error(exc: BaseException) -> RayCoraError | None:
    """The :class:`RayCoraError` an exception from Ray wraps, or None (a bug: keep its traceback).

    Ray hands errors back in several wrappings: ``RayTaskError(...)`` whose ``cause`` is the error
    (tasks, read tasks), Ray Data's ``UserCodeException`` whose own cause was lost in pickling (a
    UDF's ``__call__``), ``ActorDiedError`` with the traceback as text only (an actor's
    ``__init__``), Ray Train's errors around a worker's. The error object is used where it
    survives (``cause``, ``__cause__``, ``__context__``, outermost first); else its one line is
    recovered from the traceback text (:func:`user_error_from_text`).

    >>> find_user_error(RuntimeError("wrapped")) is None
    True
    """
    chain: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        error = todo.pop(0)
        if any(error is seen for seen in chain):
            continue
        chain.append(error)
        for inner in (getattr(error, "cause", None), error.__cause__, error.__context__):
            if isinstance(inner, BaseException):
                todo.append(inner)
    for error in chain:
        if isinstance(error, RayCoraError):
            return error
    for error in chain:
        recovered = user_error_from_text(_error_text(error))
        if recovered is not None:
            return recovered
    return None


def _error_text(error: BaseException) -> str:
    # RayTaskError keeps the remote traceback in traceback_str; RayActorError in error_msg.
    parts = [getattr(error, name, None) for name in ("traceback_str", "error_msg")]
    try:
        parts.append(str(error))
    except Exception:  # a broken __str__ of a foreign exception must not hide the original error
        pass
    return "\n".join(p for p in parts if isinstance(p, str))
