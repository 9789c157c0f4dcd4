"""Where readings come from: the NVML door, the host (psutil) and Triton's own APIs.

Each source returns frozen readings and raises :class:`SourceError` when a whole server or
device cannot be read; everything above deals in plain values.
"""

from gpupack.errors import GpupackError


class SourceError(GpupackError):
    """A server or device could not be read this time; the daemon counts it and carries on."""
