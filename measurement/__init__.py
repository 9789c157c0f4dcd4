"""Where device readings come from: the NVML door and the host (psutil, /proc). Triton's own APIs
are read by the exporter (``exporter/triton_source.py``).

Each source returns frozen readings and raises :class:`SourceError` when a whole server or
device cannot be read; everything above deals in plain values.
"""

from gpupack.errors import GpupackError


class SourceError(GpupackError):
    """A server or device could not be read this time; the daemon counts it and carries on."""
