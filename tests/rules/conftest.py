"""Fixtures for the rules engine: the article's case study 1 as exporter peaks, a fake exporter."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

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
