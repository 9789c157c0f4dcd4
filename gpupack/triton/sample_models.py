"""Sample model repositories with a known truth: each model's footprint is in its config.

Standalone (the CPU-only Triton image copies this file and runs it without gpupack installed).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

MIB = 2**20
MB = 10**6
SEED_SERVER_BASELINE_BYTES = 309 * MB

# Table 2 of the article (shared/SEED.md): max GPU memory (MB, server included), GPU utilisation.
SEED_TABLE2 = {
    "classification_breast": (1461, 0.23),
    "classification_chest": (5035, 0.56),
    "classification_malaria": (1851, 0.43),
    "segmentation_ct_colon_tumor": (6955, 0.60),
    "segmentation_ct_pancreas": (6955, 0.79),
    "segmentation_ct_spleen": (6955, 0.54),
    "segmentation_ct_liver": (11051, 0.76),
    "segmentation_mri_brain_tumor": (8579, 0.48),
    "segmentation_mri_hippocampus": (6955, 0.52),
}


@dataclass(frozen=True)
class SampleModel:
    name: str
    footprint_bytes: int
    spike_factor: float = 1.0
    spike_seconds: float = 0.0
    compute_seconds: float = 0.0  # per batch (one execute call)
    item_compute_seconds: float = 0.0  # per batch element, on top
    fail_to_load: bool = False  # initialize() raises: a load that Triton reports as failed
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    max_batch_size: int = 8
    input_width: int = 16
    dynamic_batching: bool = False

    def config_pbtxt(self) -> str:
        parameters = {
            "footprint_bytes": str(self.footprint_bytes),
            "spike_factor": repr(self.spike_factor),
            "spike_seconds": repr(self.spike_seconds),
            "compute_seconds": repr(self.compute_seconds),
            "item_compute_seconds": repr(self.item_compute_seconds),
            "fail_to_load": "1" if self.fail_to_load else "0",
        }
        parameter_text = "\n".join(
            f'parameters: {{ key: "{key}", value: {{ string_value: "{value}" }} }}' for key, value in parameters.items()
        )
        return f"""name: "{self.name}"
backend: "python"
max_batch_size: {self.max_batch_size}
input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ {self.input_width} ] }} ]
output [ {{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ {self.input_width} ] }} ]
instance_group [ {{ kind: {self.instance_kind}, count: {self.instance_count} }} ]
{"dynamic_batching { }" if self.dynamic_batching else ""}
{parameter_text}
"""


def seed_models(scale: float = 1 / 20) -> list[SampleModel]:
    """The article's nine models, footprints (server baseline removed) scaled down by ``scale``.

    Utilisation becomes CPU time per request: a request costs ``utilisation x 20 ms``.
    """
    return [
        SampleModel(
            name=name,
            footprint_bytes=int((memory_mb * MB - SEED_SERVER_BASELINE_BYTES) * scale),
            compute_seconds=round(utilization * 0.02, 4),
        )
        for name, (memory_mb, utilization) in SEED_TABLE2.items()
    ]


class PythonBackendModel(Protocol):
    """A model Triton's Python backend runs: its config and, in ``model.py``, the code that serves it."""

    @property
    def name(self) -> str: ...

    def config_pbtxt(self) -> str: ...


FOOTPRINT_MODEL = Path(__file__).with_name("footprint_model.py")


def write_model_repository(directory: str | Path, models: Iterable[PythonBackendModel],
                           model_source: Path = FOOTPRINT_MODEL) -> Path:
    """Lay out ``<dir>/<model>/config.pbtxt`` and ``<dir>/<model>/1/model.py`` (a copy of
    ``model_source``) for each model."""
    root = Path(directory)
    for model in models:
        version_dir = root / model.name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        (root / model.name / "config.pbtxt").write_text(model.config_pbtxt())
        shutil.copyfile(model_source, version_dir / "model.py")
    return root
