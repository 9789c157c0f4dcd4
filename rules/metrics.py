"""The rules engine's ``/metrics``: a custom collector over the last published evaluation.

The loop swaps one immutable :class:`RulesState` per evaluation; ``collect()`` only reads it, so a
scrape never sees half an evaluation and series of a resolved violation simply stop appearing.
Unknown results export nothing: an absent series, never a 0 that reads as "ok".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpupack.rules.evaluator import Evaluation, Status
from gpupack.rules.policy import ThroughputPolicy


@dataclass(frozen=True)
class RulesState:
    evaluation: Evaluation | None = None  # the last successful one
    evaluation_duration_seconds: float | None = None
    errors_total: int = 0
    source_up: bool | None = None  # None until the first fetch


class RulesCollector(Collector):
    def __init__(self, state: Callable[[], RulesState]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        violation = GaugeMetricFamily(
            "gpupack_policy_violation", "1 while the policy is violated (model is set for per-model rules).",
            labels=["policy", "device", "model", "severity"])
        headroom = GaugeMetricFamily(
            "gpupack_policy_headroom_ratio",
            "Share of the device's capacity left under a capacity policy's limit; negative when over.",
            labels=["policy", "device"])
        throughput = GaugeMetricFamily(
            "gpupack_policy_throughput_ratio",
            "What a model's copies serve over what its throughput policy requires (demand x headroom x min); "
            "below 1 the policy is violated, far above 1 for a long while capacity can be consolidated.",
            labels=["policy", "model"])
        if state.evaluation is not None and state.source_up:
            policies = state.evaluation.policies
            for r in state.evaluation.results:
                if r.status is Status.VIOLATED:
                    violation.add_metric([r.policy, r.device, r.model, policies[r.policy].severity.value], 1)
                if r.headroom_ratio is None or r.status is Status.UNKNOWN:
                    continue
                if isinstance(policies[r.policy], ThroughputPolicy):
                    throughput.add_metric([r.policy, r.model], 1 + r.headroom_ratio)
                else:
                    headroom.add_metric([r.policy, r.device], r.headroom_ratio)
        yield violation
        yield headroom
        yield throughput
        if state.evaluation_duration_seconds is not None:
            yield GaugeMetricFamily("gpupack_rules_evaluation_duration_seconds",
                                    "Time the last evaluation took, fetch included.",
                                    value=state.evaluation_duration_seconds)
        yield CounterMetricFamily("gpupack_rules_evaluation_errors",
                                  "Evaluations that failed (peaks unavailable): every policy was unknown.",
                                  value=state.errors_total)
        if state.source_up is not None:
            yield GaugeMetricFamily("gpupack_rules_source_up", "1 if the last fetch of peaks succeeded.",
                                    value=1 if state.source_up else 0)
