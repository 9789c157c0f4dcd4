"""A watchdog that restores the server when the profiler dies without cleaning up (``kill -9``).

The profiler starts it as a child in a session of its own (Ctrl-C in the terminal does not reach
it) and tells it on a pipe which model has a variant loaded, before each load and after each
unload. The pipe closes when the profiler exits, however it exits: the guard then unloads what
was left loaded (nothing, after a clean end) and quits.
"""

from __future__ import annotations

import subprocess
import sys

from gpupack.triton.control import TritonControl, TritonControlError
from gpupack.servers import ServerConfig

_UNLOAD_TIMEOUT_SECONDS = 120.0


class Guard:
    """The profiler's end of the pipe."""

    def __init__(self, address: str) -> None:
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "gpupack.profiler.guard", address],
            stdin=subprocess.PIPE, start_new_session=True, text=True)

    def loaded(self, model: str | None) -> None:
        """``model`` has a variant loaded now (None: nothing is)."""
        assert self._process.stdin is not None
        self._process.stdin.write(f"loaded {model}\n" if model else "clear\n")
        self._process.stdin.flush()

    def close(self) -> None:
        """Waits while the guard unloads whatever the last word left loaded."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait()


def main(address: str) -> int:
    left_loaded: str | None = None
    for line in sys.stdin:
        command, _, model = line.strip().partition(" ")
        left_loaded = model if command == "loaded" and model else None
    if left_loaded is None:
        return 0
    control = TritonControl(ServerConfig("profiled", f"http://{address}"), _UNLOAD_TIMEOUT_SECONDS)
    try:
        control.unload(left_loaded)
        control.wait_unloaded(left_loaded, _UNLOAD_TIMEOUT_SECONDS)
    except TritonControlError as e:
        print(f"gpupack profile guard: could not unload {left_loaded}: {e}", file=sys.stderr)
        return 1
    print(f"gpupack profile guard: the profiler exited with {left_loaded} loaded; unloaded it", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
