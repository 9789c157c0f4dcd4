"""The exporter daemon: collect (NVML, host, Triton) -> attribute -> record peaks -> expose."""
