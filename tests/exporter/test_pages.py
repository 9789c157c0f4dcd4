"""What a scraper gets from /metrics: the format and encoding it asked for, from ready bytes."""

from __future__ import annotations

import gzip
import threading

import pytest

from gpupack.exporter.collector import SnapshotCollector
from gpupack.exporter.pages import OPENMETRICS, TEXT, PageRenderer, gzip_accepted, negotiate_format
from gpupack.exporter.snapshot import ServerState, Snapshot, SnapshotHolder
from tests.exporter.conftest import wait_until

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PROMETHEUS_ACCEPT, OPENMETRICS),
        ("text/plain;version=0.0.4", TEXT),
        (None, TEXT),
        ("*/*", TEXT),
        ("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5", TEXT),
        ("application/openmetrics-text;version=2.0.0,text/plain;q=0.3", TEXT),  # a version we do not write
        ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,"
         "application/openmetrics-text;version=1.0.0;q=0.8", OPENMETRICS),
    ],
)
def test_the_format_is_negotiated_as_prometheus_client_golang_does(accept, expected):
    assert negotiate_format(accept) == expected


def test_gzip_is_used_only_when_accepted():
    assert gzip_accepted("gzip") and gzip_accepted("deflate, gzip;q=0.5")
    assert not gzip_accepted(None) and not gzip_accepted("identity") and not gzip_accepted("gzip;q=0")


def _holder(up: bool) -> SnapshotHolder:
    return SnapshotHolder(Snapshot(1.0, 60.0, servers=(ServerState("a", "http://a", up, not up),)))


def test_a_scrape_gets_the_page_of_the_newest_snapshot_and_gzip_once_asked():
    holder = _holder(up=False)
    no_sample_running = threading.Event()
    no_sample_running.set()
    renderer = PageRenderer(holder, SnapshotCollector(holder.get), sampler_idle=no_sample_running)
    renderer.start()
    try:
        content_type, body, gzipped = renderer.respond(PROMETHEUS_ACCEPT, "gzip")
        assert content_type.startswith("application/openmetrics-text; version=1.0.0") and not gzipped
        assert b'gpupack_server_up{server="a"} 0.0' in body and body.endswith(b"# EOF\n")
        # The gzip form is made by the render thread once asked, never by the scrape.
        _, zipped, gzipped = wait_until(lambda: (r := renderer.respond(PROMETHEUS_ACCEPT, "gzip"))[2] and r)
        assert gzip.decompress(zipped) == body
        holder.swap(Snapshot(2.0, 60.0, servers=(ServerState("a", "http://a", True, False),)))
        _, zipped, _ = wait_until(lambda: (r := renderer.respond(PROMETHEUS_ACCEPT, "gzip"))[1] != zipped and r)
        assert b'gpupack_server_up{server="a"} 1.0' in gzip.decompress(zipped)
        content_type, text, gzipped = renderer.respond("text/plain;version=0.0.4", None)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8" and not gzipped
        assert b'gpupack_server_up{server="a"} 1.0' in text and b"# EOF" not in text
    finally:
        renderer.stop()
