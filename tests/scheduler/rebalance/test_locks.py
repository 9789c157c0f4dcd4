"""One scheduler at a time: the file lock refuses a second holder and frees itself when its holder dies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpupack.scheduler.rebalance.locks import FileLock, LockHeldError, StateError

# Holds the lock until its stdin closes or it is killed.
HOLD_LOCK = """
import sys
from gpupack.scheduler.rebalance.locks import FileLock
with FileLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_scheduler_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "rebalance.lock"
    with subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with pytest.raises(LockHeldError, match=f"another scheduler holds {path} \\(pid {holder.pid} on "):
                FileLock(path).acquire()
        finally:
            holder.kill()  # dies holding it
    # The kernel drops a dead holder's lock: no stale lock to clean up by hand.
    with FileLock(path):
        assert path.read_text().startswith(f"pid {os.getpid()} on ")


def test_the_lock_is_free_again_after_the_with_block(tmp_path: Path) -> None:
    path = tmp_path / "state" / "rebalance.lock"
    with FileLock(path):
        with pytest.raises(LockHeldError, match=f"\\(pid {os.getpid()} on "):
            FileLock(path).acquire()
    assert path.read_text() == ""  # released: it names no holder
    with FileLock(path):
        assert path.read_text().startswith(f"pid {os.getpid()} on ")


def test_a_lock_file_that_cannot_be_created_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the state directory should be")
    with pytest.raises(StateError, match=f"cannot open the lock file {tmp_path / 'state' / 'rebalance.lock'}"):
        FileLock(tmp_path / "state" / "rebalance.lock").acquire()
