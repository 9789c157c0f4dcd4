"""Faults an operator's game day injects into the running loop: every model is served again, by
exactly one server, within the bound, asked of Triton directly (bench/faults.py holds the scenarios
and repeats them; here each runs once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import CONVERGE_BOUND_SECONDS, SCENARIOS, Scenario, run_scenario
from gpupack.testing import TritonInstallation


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_model_is_served_once_again_after(scenario: Scenario, triton_installation: TritonInstallation,
                                                 tmp_path: Path) -> None:
    outcome = run_scenario(scenario, tmp_path, triton_installation)
    assert outcome.lost == () and outcome.duplicated == (), outcome.error
    assert outcome.seconds is not None and outcome.seconds <= CONVERGE_BOUND_SECONDS
