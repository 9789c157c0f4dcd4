"""``gpupack demo --keep`` as a user starts it, for the tests that need a running fleet: its output
read as it comes, the URLs it says it serves, and its whole process tree."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

SERVING = "Every subcommand reads the fleet from it"  # the last line --keep prints before it waits
_URL_LINE = re.compile(r"^  (\S+(?: \S+)?)\s+(http://\S+)")


class KeptDemo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process = subprocess.Popen([sys.executable, "-m", "gpupack", "demo", "--keep", "--workdir", str(workdir)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._read_all = False
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout_seconds: float = 240) -> None:
        """Until a line containing ``text`` is printed; fails with the output so far if it never is."""
        deadline = time.monotonic() + timeout_seconds
        while not any(text in line for line in self.lines):
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout_seconds:.0f}s:\n{self.output}") from None
            if line is None:
                self._read_all = True
                raise AssertionError(f"the demo ended (status {self.process.wait()}) before {text!r}:\n{self.output}")
            self.lines.append(line)

    def ended(self, timeout_seconds: float = 30) -> int:
        """Its exit status, once it has ended; ``output`` then holds everything it printed."""
        status = self.process.wait(timeout=timeout_seconds)
        while not self._read_all:
            line = self._queue.get(timeout=timeout_seconds)
            self._read_all = line is None
            if line is not None:
                self.lines.append(line)
        return status

    def serving(self) -> "KeptDemo":
        self.wait_for(SERVING)
        return self

    def urls(self) -> dict[str, list[str]]:
        """What the --keep block lists: name (``triton-0``, ``exporter``, ``rules engine``) -> its URLs."""
        block = self.output.split("(--keep)")[-1]
        return {m.group(1): re.findall(r"http://[^\s)]+", line)
                for line in block.splitlines() if (m := _URL_LINE.match(line))}

    def config(self) -> dict:
        """Its gpupack.yaml, as every subcommand reads it."""
        return yaml.safe_load((self.workdir / "gpupack.yaml").read_text())

    def children(self) -> list[psutil.Process]:
        """Every process under the demo: Triton servers, their model stubs, exporter, rules engine."""
        return psutil.Process(self.process.pid).children(recursive=True)

    def signalled(self, signum: int, within_seconds: float = 10) -> tuple[int | None, list[str]]:
        """Send ``signum``; the demo's exit status (None if it still runs) and the command lines of
        those of its children that still run, ``within_seconds`` later."""
        children = self.children()
        deadline = time.monotonic() + within_seconds
        self.process.send_signal(signum)
        try:
            status: int | None = self.process.wait(timeout=within_seconds)
        except subprocess.TimeoutExpired:
            status = None
        # Not the demo itself: psutil would reap it, and Popen would then read its status as 0.
        _, alive = psutil.wait_procs(children, timeout=max(0.0, deadline - time.monotonic()))
        return status, [" ".join(p.cmdline()) for p in alive]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
