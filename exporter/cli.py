"""Run the exporter daemon: sample devices and Triton servers, record per-model peaks, and serve
them on /metrics (Prometheus) and /api/v1/peaks (JSON for the rules engine)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from gpupack.config import ConfigFile
from gpupack.exporter.daemon import Exporter, settle_heap, shorten_switch_interval
from gpupack.exporter.settings import BACKENDS, load_settings

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", dest="servers", action="append", metavar="NAME=URL",
                        help="a Triton server to watch (repeat), e.g. triton-0=http://127.0.0.1:8000")
    parser.add_argument("--backend", metavar="|".join(BACKENDS), action="append",
                        help="device backend (repeat; default: nvml when an NVIDIA driver is present, else host)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="where to serve /metrics and /api/v1/peaks (default: 0.0.0.0:9478)")
    parser.add_argument("--state-dir", metavar="DIR", help="where peaks are kept (default: ~/.local/state/gpupack/exporter)")
    parser.add_argument("--sample-hz", metavar="N", help="samples per second (default: 5)")
    parser.add_argument("--metrics", metavar="FAMILY,...",
                        help="series families to export, names or globs such as 'gpupack_device_*' (default: all)")


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    flags = {"servers": args.servers, "backend": args.backend, "listen": args.listen,
             "state_dir": args.state_dir, "sample_hz": args.sample_hz, "metrics": args.metrics}
    settings = load_settings(config, os.environ, flags)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    shorten_switch_interval()
    with Exporter(settings) as exporter:
        settle_heap()
        log.info("serving %s/metrics for %s (backends: %s, %.3g samples/s, peaks in %s)", exporter.url,
                 ", ".join(s.name for s in settings.servers), ", ".join(settings.backends),
                 1 / settings.sample_interval_seconds, settings.state_dir)
        stop.wait()
    log.info("stopped")
    return 0
