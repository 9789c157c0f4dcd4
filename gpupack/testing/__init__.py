"""Real Triton servers and sample models with known footprints, for tests, benchmarks and the demo."""

from gpupack.triton.sample_models import SampleModel, seed_models, write_model_repository
from gpupack.router.launcher import HaproxyProcess, HaproxyStartError
from gpupack.testing.haproxy import haproxy_in_front
from gpupack.triton.launcher import (
    TritonInstallation,
    TritonServer,
    TritonStartError,
    find_tritonserver,
    triton_fleet,
)

__all__ = [
    "HaproxyProcess",
    "HaproxyStartError",
    "haproxy_in_front",
    "SampleModel",
    "TritonInstallation",
    "TritonServer",
    "TritonStartError",
    "find_tritonserver",
    "seed_models",
    "triton_fleet",
    "write_model_repository",
]
