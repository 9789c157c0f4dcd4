"""When step 0 begins: a demand series' ``start``, carried to its forecast and to the schedule, so
that ``gpupack rules run --schedule`` can follow the schedule in time."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from gpupack.app.cli import main
from gpupack.demand_series import load_demand_series
from gpupack.errors import InputError
from gpupack.rules.demand_source import demand_series_from_prometheus
from gpupack.scheduler.demand.forecast import forecast

from tests.scheduler.demand.test_schedule import daily_fleet, schedule

MONDAY = 1796601600.0  # 2026-12-07T00:00:00Z


def series_file(tmp_path: Path, start_line: str) -> Path:
    path = tmp_path / "series.yaml"
    path.write_text(f"step: 1h\n{start_line}\nseries:\n  a: [1, 2, 3]\n")
    return path


@pytest.mark.parametrize("written", ["2026-12-07T00:00:00Z", "'2026-12-07T00:00:00Z'", "2026-12-07T01:00:00+01:00"])
def test_a_series_start_names_one_moment_whatever_its_zone(tmp_path: Path, written: str) -> None:
    assert load_demand_series(series_file(tmp_path, f"start: {written}")).start_seconds == MONDAY


def test_a_series_without_start_is_a_shape_not_a_date(tmp_path: Path) -> None:
    assert load_demand_series(series_file(tmp_path, "")).start_seconds is None


@pytest.mark.parametrize(("written", "message"), [
    ("2026-12-07T00:00:00", "has no zone"),
    ("2026-12-07", "is not a timestamp with a zone"),
    ("monday", "is not an RFC 3339 timestamp"),
])
def test_a_bad_start_is_refused_naming_file_line_and_field(tmp_path: Path, written: str, message: str) -> None:
    path = series_file(tmp_path, f"start: {written}")
    with pytest.raises(InputError) as refused:
        load_demand_series(path)
    assert str(refused.value).startswith(f"{path}:2: start: ") and message in str(refused.value)


def test_the_forecast_starts_where_its_history_ends(tmp_path: Path) -> None:
    path = tmp_path / "history.yaml"
    path.write_text("step: 1d\nstart: 2026-11-23T00:00:00Z\nseries:\n  a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, "
                    "14]\n")
    coming = forecast(load_demand_series(path), period_steps=7, periods=2, headroom_ratio=0.0)
    assert coming.start_seconds == MONDAY and coming.rates_per_second["a"] == (8, 9, 10, 11, 12, 13, 14)


def test_the_schedule_says_when_it_starts_in_json_and_in_its_table(tmp_path: Path, capsys) -> None:
    profile, series = daily_fleet(tmp_path)
    text = Path(series).read_text()
    status, document, _ = schedule(capsys, profile, series)
    assert status == 0 and document["start"] is None and document["step_seconds"] == 6 * 3600
    Path(series).write_text(text.replace("step: 6h\n", "step: 6h\nstart: 2026-12-07T01:00:00+01:00\n"))
    status, document, _ = schedule(capsys, profile, series)
    assert status == 0 and document["start"] == "2026-12-07T00:00:00Z"
    assert main(["plan", "--profile", profile, "--device-memory", "16GiB", "--demand-series", series, "--schedule",
                 "--time-limit", "60s"]) == 0
    assert "Starts: step 0 at 2026-12-07T00:00:00Z." in capsys.readouterr().out


class RangeQueries:
    """Answers /api/v1/query_range with one sample per step at the asked times, 5/s each."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                asked = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                first, end, step = float(asked["start"]), float(asked["end"]), float(asked["step"])
                values = [[first + k * step, "5"] for k in range(int(round((end - first) / step)) + 1)]
                body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
                    {"metric": {"model": "a"}, "values": values}]}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_series_from_prometheus_starts_one_step_before_its_first_sample() -> None:
    """Each sample is the peak of the step that ends at its time."""
    prometheus = RangeQueries()
    try:
        series = demand_series_from_prometheus(prometheus.url, 3 * 3600.0, 3600.0, at_seconds=MONDAY)
    finally:
        prometheus.server.shutdown()
    assert series.rates_per_second == {"a": (5.0, 5.0, 5.0)}
    assert series.start_seconds == MONDAY - 3 * 3600
