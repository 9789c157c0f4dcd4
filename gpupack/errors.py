"""Typed errors. Library code raises these; only the CLI turns them into exit codes."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    FAILURE = 1  # the command ran and found a problem (a violation, a failed step)
    USAGE = 2  # bad flags, bad or missing input: nothing was started or changed
    UNREACHABLE = 3  # a dependency (exporter, Prometheus, Triton, Alertmanager) did not answer: "unknown"


class GpupackError(Exception):
    exit_status = ExitStatus.FAILURE


class InputError(GpupackError):
    """Bad user input. The message names where: ``FILE:LINE: FIELD: what is wrong``."""

    exit_status = ExitStatus.USAGE

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}")


class TritonNotFoundError(GpupackError):
    exit_status = ExitStatus.USAGE


class UnreachableError(GpupackError):
    """A dependency did not answer. Like a monitoring plugin's UNKNOWN, this is not "no": the
    command could not tell, so the message names what it tried to reach and where."""

    exit_status = ExitStatus.UNREACHABLE

    def __init__(self, what: str, url: str, cause: BaseException | str):
        self.what, self.url = what, url
        self.reason = cause if isinstance(cause, str) else network_reason(cause)
        super().__init__(f"cannot reach {what} at {url}: {self.reason}")


def network_reason(error: BaseException) -> str:
    """One short line for a network failure: the innermost cause (``connection refused``, ``timed
    out``), not the nested repr that requests and urllib3 build around it."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        nested = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        reason = getattr(current, "reason", None)
        current = current.__cause__ or current.__context__ or (
            reason if isinstance(reason, BaseException) else nested[0] if nested else None)
    for candidate in reversed(seen):
        if isinstance(candidate, OSError) and candidate.strerror:
            return candidate.strerror.lower()
        if isinstance(candidate, TimeoutError) or "timeout" in type(candidate).__name__.lower():
            return "timed out"
    text = str(seen[-1]).strip() or type(seen[-1]).__name__
    text = text.split(": ", 1)[-1] if "object at 0x" in text else text
    return text.splitlines()[0][:160]
