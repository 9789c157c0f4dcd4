"""Fixtures for the rules engine: the article's case study 1 as exporter peaks, a fake exporter, and
an engine serving /metrics on a thread of the test."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import requests

from gpupack.rules.loop import RulesEngine
from gpupack.timing import wait_until
from gpupack.triton.launcher import free_port

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def seed_document() -> dict:
    """Case study 1 of the article: 9 models packed on four 16 GiB GPUs by memory alone.

    With the 309 MB server baseline, GPU-3 (15143 MB) and GPU-4 (15225 MB) are above 80% of
    16 GiB; GPU-1 (11681 MB) and GPU-2 (12203 MB) are below.
    """
    return json.loads((FIXTURES / "seed_case1.json").read_text())


class FakeExporter:
    """Serves ``document`` on /api/v1/peaks like the exporter; ``status`` other than 200 fails it."""

    def __init__(self, document: dict) -> None:
        self.document, self.status = copy.deepcopy(document), 200
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = json.dumps(fake.document).encode() if self.path == "/api/v1/peaks" else b"{}"
                self.send_response(fake.status if self.path == "/api/v1/peaks" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_exporter(seed_document: dict) -> Iterator[FakeExporter]:
    exporter = FakeExporter(seed_document)
    yield exporter
    exporter.close()


def write_policies(directory: Path, text: str, name: str = "policies.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@contextlib.contextmanager
def serving(engine: RulesEngine, interval_seconds: float) -> Iterator[str]:
    """``engine`` serving on a free port for the block; yields its /metrics URL; stopped, and its
    thread ended, at the block's end."""
    port = free_port()
    thread = threading.Thread(target=engine.serve, args=(interval_seconds, "127.0.0.1", port))
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        engine.stop()
        thread.join(timeout=10)
        assert not thread.is_alive()


def wait_for(url: str, text: str, present: bool = True, timeout_seconds: float = 5.0) -> str:
    """The page at ``url`` once ``text`` is on it (``present``) or gone from it; a refused
    connection counts as not yet."""

    def page() -> str | None:
        with contextlib.suppress(requests.RequestException):
            body = requests.get(url, timeout=2).text
            if (text in body) == present:
                return body
        return None

    return wait_until(page, timeout_seconds, f"{text!r} {'appearing on' if present else 'leaving'} {url}",
                      interval_seconds=0.05)
