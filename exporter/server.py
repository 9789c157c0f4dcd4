"""HTTP: ``/metrics`` (Prometheus text or OpenMetrics, gzip when asked), ``/api/v1/peaks`` (JSON),
``/healthz``.

``/metrics`` sends a body the render thread has already made; the other handlers read the current
snapshot once. None touches a source.
"""

from __future__ import annotations

import json
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from gpupack.exporter.pages import PageRenderer
from gpupack.exporter.peaks_api import peaks_document
from gpupack.exporter.snapshot import Snapshot


class ExporterHttpServer:
    """Binds at construction (so a taken port fails before anything starts), serves on a thread."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], Snapshot], pages: PageRenderer,
                 healthy: Callable[[], bool]) -> None:
        handler = _handler_class(pages, snapshot, healthy)
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="gpupack-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def _handler_class(pages: PageRenderer, snapshot: Callable[[], Snapshot],
                   healthy: Callable[[], bool]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # a body's last segment goes out at once: no 40 ms delayed-ACK stall

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                content_type, body, gzipped = pages.respond(self.headers.get("Accept"),
                                                            self.headers.get("Accept-Encoding"))
                self._send(200, content_type, body, "gzip" if gzipped else None)
            elif path == "/api/v1/peaks":
                self._send(200, "application/json", json.dumps(peaks_document(snapshot())).encode())
            elif path == "/healthz":
                ok = healthy()
                self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"sampler is not running\n")
            else:
                self._send(404, "text/plain", b"not found: try /metrics, /api/v1/peaks or /healthz\n")

        def _send(self, status: int, content_type: str, body: bytes, encoding: str | None = None) -> None:
            # The head is written here, not by send_header()/end_headers(), which send it on its own.
            head = (f"{self.protocol_version} {status} {HTTPStatus(status).phrase}\r\n"
                    f"Server: {self.version_string()}\r\nDate: {self.date_time_string()}\r\n"
                    f"Content-Type: {content_type}\r\n"
                    + (f"Content-Encoding: {encoding}\r\n" if encoding else "")
                    + f"Content-Length: {len(body)}\r\n\r\n")
            send_all(self.connection, head.encode("latin-1"), body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
            pass  # a scrape every few seconds is not news

    return Handler


def send_all(connection: socket.socket, *parts: bytes) -> None:
    """Head and body in as few system calls as the socket takes them, without joining them.

    Each call that blocks gives the GIL away, and winning it back waits on whichever of the
    sampler, render and poller threads holds it: a scrape's tail is counted in these round trips.
    """
    views = [memoryview(part) for part in parts if part]
    while views:
        sent = connection.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if sent:
            views[0] = views[0][sent:]
