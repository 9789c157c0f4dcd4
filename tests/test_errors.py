import socket

import pytest
import requests

from gpupack.errors import ExitStatus, UnreachableError, network_reason
from gpupack.timing import process_age_seconds


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_dependency_is_one_line_naming_it_and_its_url():
    url = f"http://127.0.0.1:{_closed_port()}/metrics"
    with pytest.raises(requests.ConnectionError) as raised:
        requests.get(url, timeout=2)
    error = UnreachableError("the exporter", url, raised.value)
    assert str(error) == f"cannot reach the exporter at {url}: connection refused"
    assert error.exit_status == ExitStatus.UNREACHABLE == 3


def test_the_reason_is_the_innermost_cause_not_the_nested_repr():
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError("HTTPConnectionPool(host='x', port=1): Max retries exceeded <object at 0x7f>") from inner
    except RuntimeError as outer:
        assert network_reason(outer) == "connection refused"


def test_process_age_is_measured_to_the_clock_tick(tmp_path):
    stat = tmp_path / "stat"
    fields = ["S"] + ["0"] * 18 + ["1000"] + ["0"] * 30  # field 22 (start time) = 1000 ticks
    stat.write_text("123 (python (x)) " + " ".join(fields))
    uptime = tmp_path / "uptime"
    uptime.write_text("12.34 99.0\n")
    import os
    assert process_age_seconds(str(stat), str(uptime)) == pytest.approx(12.34 - 1000 / os.sysconf("SC_CLK_TCK"))


def test_this_process_age_is_small_and_positive():
    assert 0 <= process_age_seconds() < 3600
