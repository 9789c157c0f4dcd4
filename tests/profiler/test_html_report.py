"""What a reader of ``report.html`` sees: when, where and how long the run was, what each
configuration name means, and charts that are titled and show the points, not empty space."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from gpupack.profiler.html_report import _plot_latency, write_html_report
from gpupack.profiler.rank import Constraints, rank
from gpupack.profiler.search import ModelSearch
from gpupack.profiler.search_report import ModelRanking, RunHeader
from gpupack.profiler.variants import Batching

from tests.profiler.test_search import _config, _point

FAST = [_point(1, 100, p99=0.004), _point(2, 180, p99=0.006), _point(4, 200, p99=0.010)]


def _search() -> ModelSearch:
    return ModelSearch("m", [_config(2, *FAST, batch=1, batching=Batching(True, 0.0)),
                             _config(1, _point(1, 90, p99=0.005), batch=8, batching=Batching(False))])


def test_report_says_when_where_and_how_long_and_spells_out_every_config_name(tmp_path: Path) -> None:
    search = _search()
    constraints = Constraints(latency_p99_seconds=0.1)
    header = RunHeader(datetime(2026, 12, 6, 7, 5, 0, tzinfo=timezone.utc), 192.4, "http://10.0.0.7:8000",
                       "/models")

    html = write_html_report(tmp_path, {"m": search}, {"m": ModelRanking(*rank(search.configs, constraints))},
                             constraints, header).read_text()

    assert "2026-12-06 07:05:00 UTC" in html and "3 min 12 s" in html
    assert "http://10.0.0.7:8000" in html and "/models" in html
    assert "i2-b1-dyn-0us</td><td>2 instances, max batch 1, dynamic batching with 0 µs maximum queue delay" in html
    assert "i1-b8-dyn-off</td><td>1 instance, max batch 8, dynamic batching off" in html


def test_latency_chart_fits_the_points_and_names_a_budget_far_beyond_them() -> None:
    figure = _plot_latency("m", _search(), Constraints(latency_p99_seconds=0.1))
    axes = figure.axes[0]

    assert axes.get_title() == "m: throughput against p99 latency, per configuration"
    left, right = axes.get_xlim()
    assert left == 0 and 10 <= right <= 12  # the slowest point is at 10 ms; the budget at 100 ms
    assert any("p99 budget 100 ms" in text.get_text() for text in axes.texts)


def test_latency_chart_draws_a_budget_close_to_the_points_as_a_line() -> None:
    figure = _plot_latency("m", _search(), Constraints(latency_p99_seconds=0.012))
    axes = figure.axes[0]

    assert axes.get_xlim()[1] >= 12
    assert any(line.get_label() == "p99 budget (12 ms)" for line in axes.get_lines())
