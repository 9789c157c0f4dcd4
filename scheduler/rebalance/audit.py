"""The rebalancer's audit log: one JSON object per line, appended, never rewritten.

Each event carries wall-clock ``time_seconds`` so an operator (or a test) can line up what the
scheduler did with what Triton logged: when a target became ready, when a source was unloaded.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

from gpupack.errors import GpupackError


class AuditError(GpupackError):
    pass


class AuditLog:
    """Append-only JSON-lines file; each line is flushed before :meth:`record` returns."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"time_seconds": self._clock(), "event": event, **fields}
        line = json.dumps(entry, sort_keys=True, default=str)
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
            except OSError as e:
                raise AuditError(f"cannot write the audit log {self.path}: {e.strerror}") from e
        return entry


    def unfinished_run(self) -> dict[str, Any] | None:
        """The last ``run_started`` with no ``run_finished`` after it: a run whose engine was killed.

        Only the log's tail is read (a run is a few dozen lines), so a log of years costs nothing.
        """
        if not self.path.exists():
            return None
        with self._lock, self.path.open("rb") as handle:
            handle.seek(max(0, self.path.stat().st_size - _TAIL_BYTES))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:  # the first, cut line of the tail, or a line a crash cut short
                continue
            if entry.get("event") == "run_finished":
                return None
            if entry.get("event") == "run_started":
                return entry
        return None


_TAIL_BYTES = 256 * 1024


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """Every event in the log, oldest first; a missing log is an empty one."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
