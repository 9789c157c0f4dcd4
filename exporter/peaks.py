"""Rolling-window peaks per ``(server, model, version, device, metric)``, kept in SQLite.

The window is cut into buckets (1/168 of it: an hour for the default 7 days); each bucket holds
the maximum seen in it, so the window maximum is exact to one bucket and expiring old data is a
``DELETE`` of whole buckets rather than a scan of samples. Rows are written once per sample that
raised a maximum, in WAL mode, so ``kill -9`` loses at most the sample being taken.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Iterator, Mapping

BUCKETS_PER_WINDOW = 168
SERVER_MODEL = ""  # the model name under which a server's own (unattributed) use is recorded

PeakKey = tuple[str, str, str, str, str]  # server, model, version, device, metric
SeriesKey = tuple[str, str, str, str]  # server, model, version, device

_SCHEMA = """
CREATE TABLE IF NOT EXISTS peaks (
    server TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, device TEXT NOT NULL,
    metric TEXT NOT NULL, bucket_start_seconds INTEGER NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (server, model, version, device, metric, bucket_start_seconds)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sources (
    server TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, device TEXT NOT NULL, source TEXT NOT NULL,
    PRIMARY KEY (server, model, version, device)
) WITHOUT ROWID;
"""


class PeakStore:
    """Used by the sampler thread only; readers get :meth:`peaks`, an immutable copy."""

    def __init__(self, path: Path, window_seconds: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.window_seconds = window_seconds
        self.bucket_seconds = max(1, int(window_seconds // BUCKETS_PER_WINDOW))
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable against process death
        self._db.executescript(_SCHEMA)
        self._buckets: dict[PeakKey, dict[int, float]] = {}
        self._maxima: dict[PeakKey, float] = {}
        self._sources: dict[SeriesKey, str] = {}
        self._dirty: dict[tuple[PeakKey, int], float] = {}
        self._dirty_sources: dict[SeriesKey, str] = {}
        self._oldest_bucket = 0
        self._view: Mapping[PeakKey, float] = MappingProxyType({})
        self._load()

    def _load(self) -> None:
        for server, model, version, device, metric, bucket, value in self._db.execute("SELECT * FROM peaks"):
            self._buckets.setdefault((server, model, version, device, metric), {})[bucket] = value
        for server, model, version, device, source in self._db.execute("SELECT * FROM sources"):
            self._sources[(server, model, version, device)] = source
        self._recompute()

    def bucket_start_seconds(self, now_seconds: float) -> int:
        """The bucket a value recorded now goes into: one already recorded in it cannot rise by being
        recorded again."""
        return int(now_seconds // self.bucket_seconds) * self.bucket_seconds

    def record(self, values: Iterable[tuple[PeakKey, float]], now_seconds: float) -> None:
        bucket = self.bucket_start_seconds(now_seconds)
        for key, value in values:
            buckets = self._buckets.setdefault(key, {})
            if value > buckets.get(bucket, float("-inf")):
                buckets[bucket] = value
                self._dirty[(key, bucket)] = value
                if value > self._maxima.get(key, float("-inf")):
                    self._maxima[key] = value
        self._expire(now_seconds)

    def record_sources(self, sources: Iterable[tuple[SeriesKey, str]]) -> None:
        for key, source in sources:
            if self._sources.get(key) != source:
                self._sources[key] = self._dirty_sources[key] = source

    def flush(self) -> None:
        """Write what changed since the last flush, in one transaction."""
        if not self._dirty and not self._dirty_sources:
            return
        rows = [(*key, bucket, value) for (key, bucket), value in self._dirty.items()]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO peaks VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET value = max(value, excluded.value)",
                rows,
            )
            self._db.executemany("INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?, ?)",
                                 [(*key, source) for key, source in self._dirty_sources.items()])
        self._dirty.clear()
        self._dirty_sources.clear()
        self._view = MappingProxyType(dict(self._maxima))

    def peaks(self) -> Mapping[PeakKey, float]:
        """Window maxima as of the last flush; an immutable mapping, safe to hand to readers."""
        return self._view

    def sources(self) -> Mapping[SeriesKey, str]:
        return MappingProxyType(dict(self._sources))

    def close(self) -> None:
        self.flush()
        self._db.close()

    def _expire(self, now_seconds: float) -> None:
        # A bucket stays while any part of it is inside the window.
        oldest = self.bucket_start_seconds(now_seconds - self.window_seconds)
        if oldest <= self._oldest_bucket:
            return
        self._oldest_bucket = oldest
        with self._transaction():
            self._db.execute("DELETE FROM peaks WHERE bucket_start_seconds < ?", (oldest,))
            self._db.execute(
                "DELETE FROM sources WHERE NOT EXISTS (SELECT 1 FROM peaks p WHERE p.server = sources.server"
                " AND p.model = sources.model AND p.version = sources.version AND p.device = sources.device)"
            )
        for key in list(self._buckets):
            buckets = self._buckets[key]
            for bucket in [b for b in buckets if b < oldest]:
                del buckets[bucket]
            if not buckets:
                del self._buckets[key]
        self._recompute()

    def _recompute(self) -> None:
        self._maxima = {key: max(buckets.values()) for key, buckets in self._buckets.items()}
        live = {key[:4] for key in self._maxima}
        self._sources = {key: source for key, source in self._sources.items() if key in live}
        self._view = MappingProxyType(dict(self._maxima))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

