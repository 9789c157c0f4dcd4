"""Triton as gpupack drives it: the control API, its backend processes, a local server and sample models."""
