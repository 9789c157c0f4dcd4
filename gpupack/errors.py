"""Typed errors. Library code raises these; only the CLI turns them into exit codes."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    FAILURE = 1  # the command ran and found a problem (a violation, a failed step)
    USAGE = 2  # bad flags, bad or missing input: nothing was started or changed


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
