"""Search each model's configurations, as Model Analyzer does, and reach an answer where it doesn't.

The run is a :class:`~gpupack.profiler.sweep.Sweep` (server alone first, then each model alone,
whatever stops it ends in a result) whose per-model step tries variants instead of one config:

- each variant is loaded with a config override built from the model's own config, measured at
  single-item requests under a rising concurrency (or request rate), then unloaded (the server
  found the model unloaded, and so it leaves it, after Ctrl-C, a failed variant or an error);
- a variant's load is searched, not ramped level by level (:func:`search_loads`): from the load
  that fills its instances' batches, doubling while throughput grows and p99 holds the budget
  (halving when that first load already saturates or breaks it), then bisecting between the
  last load within the budget and the first past it. Nothing is learnt by queueing more on a
  saturated server, which is where Model Analyzer sat; every point is measured until stable
  (:class:`~gpupack.profiler.stats.Stability`), and a variant is warmed up once, when loaded;
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
from gpupack.profiler.loadgen import Load, UnsupportedModelError, signature_from_config
from gpupack.profiler.rank import SATURATION_GAIN_RATIO, Constraints, MeasuredConfig
from gpupack.profiler.sampler import Peaks
from gpupack.profiler.stats import PointResult, PointStatus
from gpupack.profiler.sweep import LoadRunner, ModelOutcome, Sweep, SweepPlan
from gpupack.profiler.variants import SearchSpace, Variant
from gpupack.units import counted

log = logging.getLogger(__name__)

STRATEGIES = ("exhaustive", "quick")
# Bisection ends when the last load within the budget is this close below the first past it.
BISECT_PRECISION_RATIO = 0.25
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
        # Progress counts a variant as its doubling ramp; the search corrects the total as it goes.
        self._per_variant = len(_doubling(_levels(plan.loads), 0))
        self._total = len(plan.models) * len(space.indexes()) * self._per_variant

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
            self._skip(len(self.space.indexes()) * self._per_variant, model)
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
        self._skip((len(self.space.indexes()) - len(measured)) * self._per_variant, model)
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
            self._skip(self._per_variant - len(measured.points), model)
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
        loads = self.plan.loads
        warm = False  # the variant was just loaded: its first point measured here warms it up

        def measure(index: int) -> PointResult:
            nonlocal warm
            point = done.get(loads[index])
            if point is None:
                point = self._point(model, loadgen, probe, CLIENT_BATCH_SIZE, loads[index], baseline, not warm)
                warm = True
                done[point.load] = point
                measured.points.append(point)
                self.checkpoint.store(model, measured, done=False)
            self._done += 1
            self._report(model)
            return point

        reason = search_loads(loads, measure, start_index(loads, measured.variant))
        self._skip(self._per_variant - len(measured.points), model)
        if reason is not None:
            if any(p.status is PointStatus.ERRORS for p in measured.points):
                measured.failure = f"{measured.name}: {reason}"
            measured.stopped = reason

    def _mark_loaded(self, model: str | None) -> None:
        self._on_loaded(model)
        self.checkpoint.loaded = model
        self.checkpoint.save()


def start_index(loads: Sequence[Load], variant: Variant) -> int:
    """Where a variant's concurrency search starts: the load that keeps each instance's batch full
    (instances x max batch with dynamic batching, one request per instance without), which is
    where such a variant usually stops gaining. A rate search starts at the lowest rate."""
    if loads and loads[0].concurrency is None:
        return 0
    fill = variant.instance_count * (variant.max_batch_size if variant.batching.enabled else 1)
    levels = _levels(loads)
    return max((i for i, level in enumerate(levels) if level <= fill), default=0)


def search_loads(loads: Sequence[Load], measure: Callable[[int], PointResult], start: int = 0) -> str | None:
    """Find the highest throughput within the limits over ``loads`` (rising), measuring few of them.

    From ``start``: double the load while throughput grows (by :data:`SATURATION_GAIN_RATIO`) and
    the point is within the budget; a first load already saturated, its requests queueing in
    Triton longer than an execution, is halved while nothing is lost, and one already past the
    budget is halved until within it. Between the last load within the budget and the first past
    it, bisect to :data:`BISECT_PRECISION_RATIO`. ``measure(i)`` measures ``loads[i]`` (or returns
    it measured before). Returns why raising the load further would teach nothing (None: the last
    load was reached still growing)."""
    levels = _levels(loads)
    points: dict[int, PointResult] = {}

    def at(index: int) -> PointResult:
        if index not in points:
            points[index] = measure(index)
        return points[index]

    first = at(start)
    if (failed := _failed(first)) is not None:
        return failed
    if _over(first) is not None:
        high = start
        for low in _halving(levels, start):
            point = at(low)
            if (failed := _failed(point)) is not None:
                return failed
            if _over(point) is None:
                return _bisect(levels, at, low, high)
            high = low
        return _over(at(high))
    low, saturated = start, False
    for up in _doubling(levels, start)[1:]:
        point = at(up)
        if (failed := _failed(point)) is not None:
            return failed
        if _over(point) is not None:
            return _bisect(levels, at, low, up)
        if not _grew(at(low), point):
            saturated = True
            break
        low = up
    if low == start and _queued(at(start)):  # the first load may be past the knee: is half of it as good?
        for down in _halving(levels, start):
            point = at(down)
            if _failed(point) is not None or _over(point) is not None or _grew(point, at(low)):
                break
            low, saturated = down, True
    return f"saturated: throughput stopped growing at {loads[low]}" if saturated else None


def _bisect(levels: Sequence[float], at: Callable[[int], PointResult], low: int, high: int) -> str | None:
    """``low`` within the budget, ``high`` past it: narrow the bracket, then say why ``high`` stopped it."""
    while high - low > 1 and levels[high] > levels[low] * (1 + BISECT_PRECISION_RATIO):
        middle_value = (levels[low] + levels[high]) / 2
        middle = min(range(low + 1, high), key=lambda i: abs(levels[i] - middle_value))
        point = at(middle)
        if (failed := _failed(point)) is not None:
            return failed
        if _over(point) is not None:
            high = middle
        elif not _grew(at(low), point):
            return f"saturated: throughput stopped growing at {at(low).load}"
        else:
            low = middle
    return _over(at(high))


def _failed(point: PointResult) -> str | None:
    """Failed requests end a variant: more load would fail more, and its numbers are never used."""
    if point.status is not PointStatus.ERRORS:
        return None
    return f"{counted(point.error_count, 'failed request')} at {point.load}" + (f": {point.errors[0]}" if point.errors else "")


def _over(point: PointResult) -> str | None:
    """Past the limits: p99 over the budget, or an offered rate served short (saturated)."""
    if point.status is PointStatus.OVER_LATENCY_BOUND:
        p99 = point.latencies.p99_seconds if point.latencies else 0.0
        return f"p99 {p99 * 1000:.1f} ms passed the budget at {point.load}"
    if point.short_of_rate:
        return f"saturated: served {point.request_count / point.window_seconds:.1f} of the {point.load} offered"
    return None


def _queued(point: PointResult) -> bool:
    """Requests waited in Triton's queue longer than an execution takes: more were in flight than
    the instances could take, so a lighter load may serve as much. (Unknown: assume so.) Less
    waiting than that is the batch being formed while the last one runs: no load to spare."""
    server = point.server_latency
    return server is None or server.queue_seconds > server.compute_infer_seconds


def _grew(before: PointResult, after: PointResult) -> bool:
    return after.throughput_per_second >= before.throughput_per_second * (1 + SATURATION_GAIN_RATIO)


def _levels(loads: Sequence[Load]) -> list[float]:
    return [float(load.concurrency if load.concurrency is not None else load.request_rate_per_second or 0.0)
            for load in loads]


def _doubling(levels: Sequence[float], start: int) -> list[int]:
    """``start``, then each next level at least twice the one before (the last level to end on)."""
    chain = [start]
    while chain[-1] < len(levels) - 1:
        chain.append(next((i for i in range(chain[-1] + 1, len(levels)) if levels[i] >= 2 * levels[chain[-1]]),
                          len(levels) - 1))
    return chain


def _halving(levels: Sequence[float], start: int) -> list[int]:
    """The levels below ``start``, each at most half the one before (the lowest to end on)."""
    chain = [start]
    while chain[-1] > 0:
        chain.append(max((i for i in range(chain[-1]) if levels[i] <= levels[chain[-1]] / 2), default=0))
    return chain[1:]


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
