"""Search each model's configurations, as Model Analyzer does, and reach an answer where it doesn't.

The run is a :class:`~gpupack.profiler.sweep.Sweep` (server alone first, then each model alone,
whatever stops it ends in a result) whose per-model step tries variants instead of one config:

- each variant is loaded with a config override built from the model's own config, measured at
  single-item requests under a rising concurrency (or request rate), then unloaded (the server
  found the model unloaded, and so it leaves it, after Ctrl-C, a failed variant or an error);
- a variant's ramp stops as soon as throughput stops growing, falls short of the offered rate, or
  p99 passes the budget: there is
  nothing to learn by queueing more on a saturated server, which is where Model Analyzer sat;
- ``exhaustive`` measures every variant; ``quick`` hill-climbs from the fewest instances and the
  smallest batch (dynamic batching on where allowed) to the best neighbour, one axis step at a
  time, until no neighbour improves the objective;
- every point goes to the checkpoint as it is measured; a resumed run re-measures none of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

from gpupack.profiler.checkpoint import Checkpoint
from gpupack.profiler.control import ModelLoadError, ServerControl
from gpupack.profiler.loadgen import UnsupportedModelError, signature_from_config
from gpupack.profiler.rank import Constraints, MeasuredConfig
from gpupack.profiler.sampler import Peaks
from gpupack.profiler.stats import PointResult, PointStatus
from gpupack.profiler.sweep import LoadRunner, ModelOutcome, Sweep, SweepPlan
from gpupack.profiler.variants import SearchSpace, Variant
from gpupack.units import counted

log = logging.getLogger(__name__)

STRATEGIES = ("exhaustive", "quick")
# A step up in concurrency must add this much throughput to count as growth; less is saturation.
SATURATION_GAIN_RATIO = 0.05
# A neighbour must beat the current config by this much to move the climb: less is noise.
CLIMB_GAIN_RATIO = 0.02
CLIENT_BATCH_SIZE = 1  # requests as serving traffic sends them; the server batches them


@dataclass
class ModelSearch:
    model: str
    configs: list[MeasuredConfig] = field(default_factory=list)  # in the order measured


class ConfigSearch(Sweep):
    """``plan.batch_sizes`` is unused: clients send single items; ``max_batch_size`` is searched."""

    def __init__(self, plan: SweepPlan, space: SearchSpace, strategy: str, constraints: Constraints,
                 checkpoint: Checkpoint, control: ServerControl, probe_factory: Callable, loadgen_factory: Callable,
                 *, on_loaded: Callable[[str | None], None] = lambda model: None, **kwargs: object) -> None:
        super().__init__(plan, control, probe_factory, loadgen_factory, **kwargs)  # type: ignore[arg-type]
        self._on_loaded = on_loaded  # told before every load and after every unload (the guard)
        self.space = space
        self.strategy = strategy
        self.constraints = constraints
        self.checkpoint = checkpoint
        self.searches: dict[str, ModelSearch] = {}
        self._total = len(plan.models) * len(space.indexes()) * len(plan.loads)

    def run(self):  # type: ignore[no-untyped-def]
        self._restore_left_over()
        return super().run()

    def _restore_left_over(self) -> None:
        """A run killed with a variant loaded left it there: unload it before anything else."""
        model = self.checkpoint.loaded
        if model is None:
            return  # and nothing is written: a run refused before it starts leaves no checkpoint
        if model in self._control.ready_models():
            log.warning("unloading %s: a variant the interrupted run left loaded", model)
            self._unload(model)
        self.checkpoint.loaded = None
        self.checkpoint.save()

    def _baseline(self) -> Peaks:
        if self.checkpoint.baseline is None:
            self.checkpoint.baseline = super()._baseline()
            self.checkpoint.save()
        return self.checkpoint.baseline

    def _profile_model(self, outcome: ModelOutcome, baseline: Peaks) -> None:
        model = outcome.model
        search = self.searches[model] = ModelSearch(model)
        self._report(model)
        base = self._base_config(model, outcome)
        if base is None:
            self._skip(len(self.space.indexes()) * len(self.plan.loads), model)
            return
        measured: dict[tuple[int, ...], MeasuredConfig] = {}

        def evaluate(index: tuple[int, ...]) -> float | None:
            if index not in measured:
                config = self._variant(model, self.space.variant(index), base, baseline)
                measured[index] = config
                search.configs.append(config)
                outcome.points.extend(config.points)
            return self.constraints.score(measured[index])

        (exhaustive if self.strategy == "exhaustive" else hill_climb)(self.space, evaluate)
        self._skip((len(self.space.indexes()) - len(measured)) * len(self.plan.loads), model)
        if all(c.failure for c in search.configs):
            outcome.failure = "every configuration failed: " + "; ".join(
                dict.fromkeys(str(c.failure) for c in search.configs))

    def _base_config(self, model: str, outcome: ModelOutcome) -> dict | None:
        """The model's own config, read from the server (loaded once as the repository has it)."""
        if model in self.checkpoint.base_configs:
            return self.checkpoint.base_configs[model]
        self._mark_loaded(model)
        try:
            self._control.load(model)
            config = self._control.config(model)
        except ModelLoadError as e:
            outcome.failure = str(e)
            log.warning("%s; skipping it", e)
            return None
        finally:
            self._unload(model)
            self._mark_loaded(None)
        self.checkpoint.base_configs[model] = config
        self.checkpoint.save()
        return config

    def _variant(self, model: str, variant: Variant, base: dict, baseline: Peaks) -> MeasuredConfig:
        measured = self.checkpoint.record(model, variant) or MeasuredConfig(variant, variant.override(base))
        if self.checkpoint.is_done(model, variant):
            self._done += len(measured.points)
            self._skip(len(self.plan.loads) - len(measured.points), model)
            return measured
        self._mark_loaded(model)
        try:
            self._control.load(model, measured.config)
            signature = signature_from_config(self._control.config(model))
            self._ramp(model, measured, self._loadgen_factory(signature), baseline)
        except (ModelLoadError, UnsupportedModelError) as e:
            measured.failure = f"{variant.name}: {e}"
            log.warning("%s", measured.failure)
        finally:
            self._unload(model)
            self._mark_loaded(None)
        self.checkpoint.store(model, measured, done=True)
        return measured

    def _ramp(self, model: str, measured: MeasuredConfig, loadgen: LoadRunner, baseline: Peaks) -> None:
        probe = self._probe_factory()
        done = {p.load: p for p in measured.points}
        ramp: list[PointResult] = []
        for n, load in enumerate(self.plan.loads):
            point = done.get(load)
            if point is None:
                point = self._point(model, loadgen, probe, CLIENT_BATCH_SIZE, load, baseline)
                measured.points.append(point)
                self.checkpoint.store(model, measured, done=False)
            self._done += 1
            self._report(model)
            ramp.append(point)
            reason = stop_reason(ramp)
            if reason is not None:
                if point.status is PointStatus.ERRORS:
                    measured.failure = f"{measured.name}: {reason}"
                measured.stopped = reason
                self._skip(len(self.plan.loads) - n - 1, model)
                return

    def _mark_loaded(self, model: str | None) -> None:
        self._on_loaded(model)
        self.checkpoint.loaded = model
        self.checkpoint.save()


def stop_reason(ramp: Sequence[PointResult]) -> str | None:
    """Why raising the load further would teach nothing, or None to go on."""
    point = ramp[-1]
    where = str(point.load)
    if point.status is PointStatus.ERRORS:
        return f"{counted(point.error_count, 'failed request')} at {where}" + (f": {point.errors[0]}" if point.errors else "")
    if point.status is PointStatus.OVER_LATENCY_BOUND:
        p99 = point.latencies.p99_seconds if point.latencies else 0.0
        return f"p99 {p99 * 1000:.1f} ms passed the budget at {where}"
    if point.short_of_rate:
        return f"saturated: served {point.request_count / point.window_seconds:.1f} of the {where} offered"
    if len(ramp) > 1:
        before = max(p.throughput_per_second for p in ramp[:-1])
        if point.throughput_per_second < before * (1 + SATURATION_GAIN_RATIO):
            return f"saturated: throughput stopped growing at {where}"
    return None


def exhaustive(space: SearchSpace, evaluate: Callable[[tuple[int, ...]], float | None]) -> None:
    for index in space.indexes():
        evaluate(index)


def hill_climb(space: SearchSpace, evaluate: Callable[[tuple[int, ...]], float | None]) -> None:
    batching_axis = space.axes[3]
    start_batching = next((i for i, b in enumerate(batching_axis) if b.enabled), 0)
    current: tuple[int, ...] = (0, 0, 0, start_batching)
    current_score = evaluate(current)
    while True:
        scored = [(evaluate(n), n) for n in _neighbours(current, space)]
        best_score, best = max(scored, key=lambda s: -1.0 if s[0] is None else s[0], default=(None, current))
        if best_score is None or (current_score is not None and best_score <= current_score * (1 + CLIMB_GAIN_RATIO)):
            return
        current, current_score = best, best_score


def _neighbours(index: tuple[int, ...], space: SearchSpace) -> list[tuple[int, ...]]:
    found = []
    for axis, size in enumerate(len(a) for a in space.axes):
        for step in (1, -1):
            moved = index[axis] + step
            if 0 <= moved < size:
                found.append(index[:axis] + (moved,) + index[axis + 1:])
    return found
