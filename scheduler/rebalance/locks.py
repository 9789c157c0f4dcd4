"""One scheduler at a time: what the rebalancer holds while it acts.

- :class:`Lock` — what every lock offers: a ``with`` block, and :meth:`Lock.ensure_held`, asked
  before every step, because a lock that can expire (the Kubernetes Lease in
  :mod:`gpupack.scheduler.rebalance.lease`) may be lost in the middle of a run.
- :class:`FileLock` — an exclusive ``flock`` on a file in the state directory. The kernel drops
  it when the holder dies, so a crashed scheduler never leaves a stale lock behind.

Which lock a run takes is the ``lock`` setting's (:func:`gpupack.scheduler.rebalance.settings.lock_factory`).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Callable, Protocol

from gpupack.errors import GpupackError

LOCK_FILE_NAME = "rebalance.lock"


class LockHeldError(GpupackError):
    """Another scheduler is acting on the fleet."""


class StateError(GpupackError):
    """The state directory cannot be used."""


class LockLostError(GpupackError):
    """The lock was lost while acting: another scheduler may be moving models now."""


class Lock(Protocol):
    """What the rebalancer holds while it acts, and asks before every step whether it still does."""

    def __enter__(self) -> "Lock": ...

    def __exit__(self, *exc_info: object) -> None: ...

    def ensure_held(self) -> None:
        """Raise :class:`LockLostError` once the lock can no longer be trusted to be ours."""


LockFactory = Callable[[], Lock]


class FileLock:
    """Exclusive, non-blocking lock held for the life of a ``with`` block."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StateError(f"cannot open the lock file {self.path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockHeldError(f"another scheduler holds {self.path} ({holder})") from e
        # Who holds it, for the message the next contender prints.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.time():.0f}\n".encode(), 0)
        self._fd = fd

    def ensure_held(self) -> None:
        """A file lock held by an open descriptor cannot be taken away."""

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
