"""The exposition as Prometheus itself judges it: promtool, and real scrapes by a real server in
both formats (OpenMetrics as Prometheus asks by default, text as older scrapers ask)."""

from __future__ import annotations

import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
import requests
from prometheus_client import parser as text_parser
from prometheus_client.openmetrics import parser as openmetrics_parser

from gpupack.exporter.families import parse_family_selection

from tests.deploy.promstack import Prometheus, require_binary, run_prometheus
from tests.exporter.conftest import wait_until

pytestmark = [pytest.mark.triton, pytest.mark.prometheus]
OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
TEXT_ACCEPT = "text/plain;version=0.0.4"


def _scrape(url: str, accept: str) -> requests.Response:
    return requests.get(f"{url}/metrics", headers={"Accept": accept}, timeout=5)


def test_both_formats_pass_their_judges_on_a_real_scrape(start_triton, exporter_factory):
    """promtool (2.42) lints the text format -- it has no OpenMetrics parser, and would read an
    OpenMetrics counter's family as help-less. OpenMetrics is held to prometheus_client's strict
    OpenMetrics parser (which refuses a body without ``# EOF``) and must carry the same samples;
    the real Prometheus scrapes below parse it with Prometheus's own."""
    promtool = require_binary("promtool")
    server = start_triton(name="a", models=["small"])
    exporter = exporter_factory([server])
    # Utilisation needs two samples (a CPU-time rate): until then the two scrapes may differ by it.
    wait_until(lambda: "gpupack_model_utilization_ratio{" in _scrape(exporter.url, TEXT_ACCEPT).text)
    text = _scrape(exporter.url, TEXT_ACCEPT)
    openmetrics = _scrape(exporter.url, OPENMETRICS_ACCEPT)
    assert text.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert openmetrics.headers["Content-Type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    result = subprocess.run([promtool, "check", "metrics"], input=text.text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr
    assert "NaN" not in text.text and "NaN" not in openmetrics.text

    def series(families: Iterator) -> set[tuple[str, tuple]]:
        return {(s.name, tuple(sorted(s.labels.items()))) for f in families for s in f.samples}

    from_openmetrics = series(openmetrics_parser.text_string_to_metric_families(openmetrics.text))
    assert ("gpupack_model_memory_peak_bytes", (("device", "cpu:a"), ("model", "small"), ("server", "a"),
                                                ("version", "1"))) in from_openmetrics
    # The same series in both (values may move between the two scrapes).
    assert from_openmetrics == series(text_parser.text_string_to_metric_families(text.text))


def test_a_family_left_out_of_metrics_is_absent_from_a_real_scrape_in_both_formats(start_triton, exporter_factory):
    server = start_triton(name="a", models=["small"])
    exporter = exporter_factory([server], families=parse_family_selection("gpupack_model_memory_bytes,gpupack_server_*"))
    wait_until(lambda: "gpupack_model_memory_bytes{" in _scrape(exporter.url, TEXT_ACCEPT).text)
    for accept in (TEXT_ACCEPT, OPENMETRICS_ACCEPT):
        text = _scrape(exporter.url, accept).text
        assert 'gpupack_server_up{server="a"} 1.0' in text
        assert "gpupack_model_memory_peak_bytes" not in text and "gpupack_device_" not in text
        assert "gpupack_model_utilization" not in text and "gpupack_collect_errors" not in text


class _TextOnlyScraper:
    """Forwards Prometheus's scrapes with ``Accept: text/plain;version=0.0.4``, as a scraper that
    knows no OpenMetrics asks (Prometheus 2.42 cannot be told to); the body comes back untouched."""

    def __init__(self, target: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                headers = {"Accept": TEXT_ACCEPT, "Accept-Encoding": self.headers.get("Accept-Encoding", "")}
                answer = requests.get(f"{target}{self.path}", headers=headers, timeout=5, stream=True)
                body = answer.raw.read(decode_content=False)
                self.send_response(answer.status_code)
                for name in ("Content-Type", "Content-Encoding"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def text_only_scraper() -> Iterator[type[_TextOnlyScraper]]:
    made: list[_TextOnlyScraper] = []

    def make(target: str) -> _TextOnlyScraper:
        made.append(_TextOnlyScraper(target))
        return made[-1]

    yield make  # type: ignore[misc]
    for scraper in made:
        scraper.close()


def _metadata(prometheus: Prometheus) -> dict:
    return requests.get(f"{prometheus.url}/api/v1/metadata", timeout=10).json()["data"]


@pytest.mark.parametrize("fmt", ["openmetrics", "text"])
def test_a_real_prometheus_scrapes_the_exporter_in_both_formats(start_triton, exporter_factory, text_only_scraper,
                                                                tmp_path, fmt):
    server = start_triton(name="a", models=["small"])
    exporter = exporter_factory([server])
    target = exporter.url.removeprefix("http://") if fmt == "openmetrics" else text_only_scraper(exporter.url).address
    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [{"job_name": "gpupack", "static_configs": [{"targets": [target]}]}]}
    with run_prometheus(config, tmp_path / "prometheus") as prometheus:
        (series,) = wait_until(lambda: prometheus.query('gpupack_model_memory_bytes{model="small"}'), 60,
                             "Prometheus to scrape the model's memory")
        assert series["metric"]["source"] == "process" and float(series["value"][1]) > 40 * 2**20
        (up,) = prometheus.query('gpupack_server_up{server="a"}')
        assert up["value"][1] == "1"
        # Each parser names a counter family its own way: the proof of which format was read.
        family = "gpupack_collect_errors" if fmt == "openmetrics" else "gpupack_collect_errors_total"
        metadata = wait_until(lambda: _metadata(prometheus).get(family), 30, f"metadata of {family}")
        assert metadata[0]["type"] == "counter"
        (target_state,) = prometheus.active_targets()
        assert target_state["health"] == "up" and not target_state["lastError"]
