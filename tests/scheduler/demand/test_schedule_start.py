"""When step 0 begins: a demand series' ``start``, carried to its forecast and to the schedule, so
that ``gpupack rules run --schedule`` can follow the schedule in time."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupack.app.cli import main
from gpupack.demand_series import load_demand_series
from gpupack.errors import InputError
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
