"""gpupack: what every model on a Triton fleet costs on its GPU, and where it should run."""

__version__ = "0.1.0"
