"""The peak store: rolling window maxima that survive a restart."""

from __future__ import annotations

from gpupack.exporter.peaks import PeakStore

KEY = ("t", "m", "1", "cpu:t", "gpu_memory")
DAY = 86400.0


def test_peak_is_the_window_maximum_and_survives_reopening(tmp_path):
    store = PeakStore(tmp_path / "p.sqlite3", 7 * DAY)
    store.record([(KEY, 100.0)], now_seconds=1000.0)
    store.record([(KEY, 300.0)], now_seconds=1001.0)
    store.record([(KEY, 200.0)], now_seconds=1002.0)
    store.record_sources([(KEY[:4], "process")])
    store.flush()
    assert store.peaks()[KEY] == 300.0
    reopened = PeakStore(tmp_path / "p.sqlite3", 7 * DAY)  # no close(): as after kill -9
    assert reopened.peaks()[KEY] == 300.0
    assert reopened.sources()[KEY[:4]] == "process"


def test_a_peak_older_than_the_window_is_forgotten_and_a_lower_recent_one_takes_over(tmp_path):
    store = PeakStore(tmp_path / "p.sqlite3", 7 * DAY)
    store.record([(KEY, 500.0)], now_seconds=10 * DAY)
    store.record([(KEY, 50.0)], now_seconds=14 * DAY)
    store.flush()
    assert store.peaks()[KEY] == 500.0
    store.record([(KEY, 40.0)], now_seconds=17.1 * DAY)
    store.flush()
    assert store.peaks()[KEY] == 50.0
    store.record([], now_seconds=30 * DAY)
    store.flush()
    assert KEY not in store.peaks() and KEY[:4] not in store.sources()
    assert KEY not in PeakStore(tmp_path / "p.sqlite3", 7 * DAY).peaks()
