"""Write the CPU-only Triton image's sample model repository: ``python3 write_models.py DIR``.

Run at image build time beside gpupack's ``sample_models.py`` and ``footprint_model.py``, without gpupack
installed: each model holds a known amount of host memory, as the test suites' models do, so the
exporter's attribution can be checked against it. ``large-a`` and ``large-b`` together break an
80% policy on one 448 MiB device, either alone does not (the container suite's crowded fleet).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sample_models import SampleModel, write_model_repository  # noqa: E402 - gpupack/triton/sample_models.py, copied here

MIB = 2**20
MODELS = [SampleModel("large-a", 160 * MIB), SampleModel("large-b", 160 * MIB), SampleModel("small", 48 * MIB)]

if __name__ == "__main__":
    write_model_repository(sys.argv[1], MODELS)
