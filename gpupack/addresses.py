"""Host and port out of what users write for a server: a URL, ``host:port`` or ``[v6]:port``.

Server URLs come from flags, the environment and config files, with or without a scheme; every
reader of one (the exporter, the scheduler, the profiler, a daemon's listen address) splits it
here, so an IPv6 literal or a missing port means the same to all of them.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _split(address: str) -> SplitResult:
    return urlsplit(address if "//" in address else f"//{address}")


def host_and_port(address: str) -> tuple[str, int | None]:
    """The host (an IPv6 literal without its brackets) and the port, None where none is written.

    Raises :class:`ValueError` for a port that is not a number from 0 to 65535.
    """
    parts = _split(address)
    return parts.hostname or "", parts.port


def network_address(url: str) -> str:
    """``host:port`` to connect to; an http(s) URL without a port gets its scheme's (80, 443)."""
    parts = _split(url)
    if parts.port is not None or parts.scheme not in _DEFAULT_PORTS:
        return parts.netloc
    return f"{parts.netloc}:{_DEFAULT_PORTS[parts.scheme]}"


def http_client_address(url: str) -> tuple[str, bool]:
    """What tritonclient's HTTP client is given for an http(s) URL: ``host:port`` with any path
    prefix (a server behind a proxy), and whether to speak TLS."""
    parts = _split(url)
    return network_address(url) + parts.path.rstrip("/"), parts.scheme == "https"
