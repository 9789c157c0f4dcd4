"""The /metrics bodies, ready before anyone asks: a scrape only picks one.

A render thread turns each new snapshot into the text and OpenMetrics bodies (and their gzip
forms, once some scraper has asked for gzip) and swaps them in whole. A scrape then negotiates
the format and encoding as Prometheus's own client library does and sends bytes that already
exist: it never renders, never compresses and never waits on the sampler.

Rendering shares the interpreter with the sampler, so it gives way: it pauses briefly between
families while a sample is being taken, and it paces itself to a small share of one core. Snapshots come at
5 Hz and thousands of models make a render tens of milliseconds; rendering each one would cost
more than sampling. The pause between renders is capped at a second, so the page is at most a
second and a render behind the newest sample -- nothing next to a 15 s scrape interval -- and
peaks are recorded by the sampler itself, so no spike is lost to a page that skipped a snapshot.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from dataclasses import dataclass, replace

from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE

from gpupack.exporter.collector import SnapshotCollector
from gpupack.exporter.exposition import ExpositionRenderer
from gpupack.exporter.snapshot import Snapshot, SnapshotHolder

log = logging.getLogger(__name__)

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT, OPENMETRICS = "text", "openmetrics"
RENDER_CPU_SHARE = 0.02  # of one core spent rendering, unless that would leave the page older than:
MAX_RENDER_PAUSE_SECONDS = 1.0
# Measured on a 2.5 MB page: level 1 takes 8 ms of CPU for 153 KiB, zlib's default 6 takes 27 ms for
# 122 KiB. A render is paid for once a second at most, a body's size at each 15 s scrape: at 5,000 models
# level 6 was a third of every render, for a quarter less of a transfer Prometheus hardly notices.
GZIP_LEVEL = 1
# Each pause waits at most this long: at 5,000 models a sample takes most of its 200 ms, and a render
# that waited out every one would leave the page tens of seconds old.
_SAMPLER_PAUSE_LIMIT_SECONDS = 0.02


@dataclass(frozen=True)
class Page:
    content_type: str
    body: bytes
    gzip_body: bytes | None = None  # once a scraper has asked for gzip


@dataclass(frozen=True)
class Pages:
    generated_at_seconds: float  # of the snapshot rendered
    text: Page
    openmetrics: Page

    def page(self, format_name: str) -> Page:
        return self.openmetrics if format_name == OPENMETRICS else self.text


def negotiate_format(accept: str | None) -> str:
    """The format for an ``Accept`` header, as client_golang's ``expfmt.Negotiate`` chooses: the
    most preferred (q-value, then order) of OpenMetrics 0.0.1/1.0.0 and text 0.0.4, else text."""
    ranked = []
    for position, part in enumerate((accept or "").split(",")):
        media_type, *params = (item.strip() for item in part.split(";"))
        values = dict(p.split("=", 1) for p in params if "=" in p)
        try:
            q = float(values.get("q", "1"))
        except ValueError:
            q = 0.0
        ranked.append((-q, position, media_type.lower(), values.get("version", "")))
    for negative_q, _, media_type, version in sorted(ranked):
        if negative_q >= 0:
            break
        if media_type == "application/openmetrics-text" and version in ("", "0.0.1", "1.0.0"):
            return OPENMETRICS
        if media_type == "text/plain" and version in ("", "0.0.4"):
            return TEXT
    return TEXT


def gzip_accepted(accept_encoding: str | None) -> bool:
    for part in (accept_encoding or "").split(","):
        coding, *params = (item.strip() for item in part.split(";"))
        if coding.lower() == "gzip" and not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000")
                                                 for p in params):
            return True
    return False


class PageRenderer:
    """Owns the ready pages and the thread that renders them."""

    def __init__(self, holder: SnapshotHolder, collector: SnapshotCollector, *,
                 sampler_idle: threading.Event | None = None, cpu_share: float = RENDER_CPU_SHARE) -> None:
        self._holder = holder
        self._collector = collector
        self._sampler_idle = sampler_idle
        self._cpu_share = cpu_share
        self._renderer = ExpositionRenderer()
        self._gzip_wanted: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rendered: Snapshot | None = None
        self.render_cpu_seconds: list[float] = []  # of the latest renders, for the benchmark
        self._pages = self._render(holder.get())
        holder.on_swap(self._wake.set)
        self._thread = threading.Thread(target=self._run, name="gpupack-render", daemon=True)

    @property
    def pages(self) -> Pages:
        return self._pages

    def respond(self, accept: str | None, accept_encoding: str | None) -> tuple[str, bytes, bool]:
        """(content type, body, whether the body is gzip) for one scrape, from the ready pages.

        Until the first gzip form exists the body goes out uncompressed, which ``Accept-Encoding``
        allows; the request is what tells the renderer to keep gzip forms from then on.
        """
        format_name = negotiate_format(accept)
        page = self._pages.page(format_name)
        if gzip_accepted(accept_encoding):
            if page.gzip_body is not None:
                return page.content_type, page.gzip_body, True
            if format_name not in self._gzip_wanted:
                self._gzip_wanted.add(format_name)
                self._wake.set()
        return page.content_type, page.body, False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            started = time.thread_time()
            try:
                snapshot = self._holder.get()
                if snapshot is not self._rendered:
                    self._pages = self._render(snapshot)
                else:
                    self._pages = self._compressed(self._pages)
            except Exception:  # noqa: BLE001 - a bad render must not end the pages: the last good one stays
                log.exception("rendering /metrics failed; serving the previous page")
                self._rendered = self._holder.get()
            cost = time.thread_time() - started
            self.render_cpu_seconds = [*self.render_cpu_seconds[-99:], cost]
            # Paced to a share of a core; a new snapshot meanwhile only sets the event again.
            self._stop.wait(min(cost / self._cpu_share - cost, MAX_RENDER_PAUSE_SECONDS))

    def _render(self, snapshot: Snapshot) -> Pages:
        exposition = self._renderer.render(self._collector.families(snapshot), self._give_way)
        self._rendered = snapshot
        return self._compressed(Pages(snapshot.generated_at_seconds, Page(TEXT_CONTENT_TYPE, exposition.text),
                                      Page(OPENMETRICS_CONTENT_TYPE, exposition.openmetrics)))

    def _compressed(self, pages: Pages) -> Pages:
        for format_name in tuple(self._gzip_wanted):
            page = pages.page(format_name)
            if page.gzip_body is None:
                self._give_way()
                page = replace(page, gzip_body=gzip.compress(page.body, GZIP_LEVEL, mtime=0))
                pages = replace(pages, openmetrics=page) if format_name == OPENMETRICS else replace(pages, text=page)
        return pages

    def _give_way(self) -> None:
        if self._sampler_idle is not None:
            self._sampler_idle.wait(_SAMPLER_PAUSE_LIMIT_SECONDS)
