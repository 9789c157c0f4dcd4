"""Column generation's LP bound, the proof status every device count carries, and the time budget."""

import dataclasses
import json
import time
from pathlib import Path

import pytest

from gpupack import timing
from gpupack.app.cli import main
from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.scheduler import plan_cli, planning
from gpupack.scheduler.packing.bounds import device_lower_bound
from gpupack.scheduler.packing import colgen
from gpupack.scheduler.packing.colgen import ColumnGeneration, declines
from gpupack.scheduler.packing.instance import compile_problem
from gpupack.scheduler.packing.problem import Objective, PlacementProblem, ProofStatus, ScopedLimit
from gpupack.scheduler.packing.solver import Strategy, solve
from gpupack.timing import Deadline

from tests.scheduler.packing.test_dive import triplet_instance

MEM, UTIL = Resource.GPU_MEMORY, Resource.GPU_UTILIZATION
SEED = str(Path(__file__).resolve().parents[3] / "examples" / "seed-profile.yaml")
# Volume, L2 and the dual-feasible bounds all say 5 devices; the LP says 5.17, so 6 (the optimum).
LP_BEATS_COMBINATORIAL = (29, 30, 30, 32, 33, 33, 35, 40, 42, 43, 48, 50, 55)


def packing(sizes, capacity=100, **rules) -> PlacementProblem:
    devices = tuple(Device(f"gpu-{k}", {MEM: capacity}) for k in range(len(sizes)))
    models = tuple(ModelFootprint(f"m{i}", {MEM: float(s), UTIL: 0.1}) for i, s in enumerate(sizes))
    return PlacementProblem(devices, models, **rules)


def test_lp_bound_proves_an_optimum_the_combinatorial_bounds_cannot():
    problem = packing(LP_BEATS_COMBINATORIAL)
    assert device_lower_bound(compile_problem(problem)) == 5
    result = solve(problem)
    assert (result.device_count, result.lower_bound, result.optimal) == (6, 6, True)
    assert result.proof.status is ProofStatus.OPTIMAL and result.proof.bound_source == "lp"


def test_classic_strategy_keeps_the_combinatorial_bound_and_says_why():
    result = solve(packing(LP_BEATS_COMBINATORIAL), strategy=Strategy.CLASSIC)
    assert result.device_count == 6
    assert result.proof.bound_source in ("combinatorial", "cp-sat")


def test_lp_bound_is_ceil_of_the_lp_on_an_irup_instance_and_the_dive_meets_it():
    lp = ColumnGeneration(compile_problem(packing(LP_BEATS_COMBINATORIAL)), None)
    root = lp.root(Deadline.after(30))
    assert root.converged and root.lp_value == pytest.approx(31 / 6, abs=1e-6) and root.lp_bound == 6
    assert len({d for ds in lp.plain_dive(Deadline.after(30)).values() for d in ds}) == 6


def test_a_passed_deadline_claims_no_convergence_and_the_dive_still_places_every_model():
    instance = compile_problem(packing(LP_BEATS_COMBINATORIAL))
    lp = ColumnGeneration(instance, None)
    root = lp.root(Deadline.after(-1))
    assert not root.converged and root.lp_bound <= 6
    assert sorted(lp.plain_dive(Deadline.after(-1))) == list(range(instance.n_models))


@pytest.mark.parametrize("rules, named", [
    ({"allowed_devices": {"m0": frozenset({"gpu-0"})}}, "pins"),
    ({"anti_affinity": (frozenset({"m0", "m1"}),)}, "anti-affinity"),
    ({"replicas": {"m0": 2}}, "replicas"),
    ({"max_devices": 9}, "fleet-size limit"),
])
def test_column_generation_declines_rules_it_does_not_model(rules, named):
    reason = declines(compile_problem(packing(LP_BEATS_COMBINATORIAL, **rules)), (Objective.MIN_DEVICES,))
    assert named in reason
    assert declines(compile_problem(packing(LP_BEATS_COMBINATORIAL)), (Objective.MIN_DEVICES,)) == ""


def test_column_generation_declines_problem_fields_it_was_not_written_for():
    @dataclasses.dataclass(frozen=True)
    class WithFutureRules(PlacementProblem):
        future_rules: tuple = ()

    base = packing(LP_BEATS_COMBINATORIAL)
    problem = WithFutureRules(base.devices, base.models, future_rules=("only-llms",))
    assert "future rules" in declines(compile_problem(problem), (Objective.MIN_DEVICES,))


def test_column_generation_declines_scoped_limits():
    base = packing(LP_BEATS_COMBINATORIAL)
    scoped = ScopedLimit("llms-on-a-device", MEM, {"m0": 29.0, "m1": 30.0}, {d.name: 40.0 for d in base.devices})
    problem = dataclasses.replace(base, scoped_limits=(scoped,))
    assert "scoped limits" in declines(compile_problem(problem), (Objective.MIN_DEVICES,))
    assert solve(problem).device_count >= 6


def test_declined_problem_is_still_solved_and_its_proof_names_the_reason_when_unproven():
    result = solve(packing(LP_BEATS_COMBINATORIAL, anti_affinity=(frozenset({"m0", "m1"}),)))
    assert result.device_count == 6
    assert result.proof.status is ProofStatus.OPTIMAL or "anti-affinity" in result.proof.note


def test_fewest_moves_first_attempts_no_device_proof():
    problem = packing([60, 50, 40], current=Placement({"m0": ("gpu-0",), "m1": ("gpu-1",), "m2": ("gpu-2",)}))
    result = solve(problem, (Objective.MIN_MOVES, Objective.BALANCE))
    assert result.proof.status is ProofStatus.NOT_ATTEMPTED
    assert "min-moves comes first" in result.proof.note


def test_plan_json_and_table_carry_the_proof_and_the_time_spent(capsys):
    assert main(["plan", "--profile", SEED, "--device-memory", "16GiB", "--resources", "memory", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["proof"]["status"] == "optimal" and document["proof"]["device_count"] == 4
    assert set(document["seconds_by_phase"]) >= {"bounds", "first-fit-decreasing"}
    assert main(["plan", "--profile", SEED, "--device-memory", "16GiB", "--resources", "memory"]) == 0
    out = capsys.readouterr().out
    assert "4 devices (proven optimal by the" in out and "Time: " in out and "of the 10 s limit" in out


def test_time_limit_is_one_budget_shared_by_both_plans(capsys, tmp_path, monkeypatch):
    """The plan under the policies gets its share of the limit and the plan at 100% what the
    first one left, so that the command ends within the limit even when each plan takes all it
    was given: here each one does, on a clock that jumps by its limit (the real seconds it spent
    come on top and only leave the second plan less)."""
    jumped = [0.0]
    monkeypatch.setattr(timing, "clock", lambda: time.monotonic() + jumped[0])
    given: list[float] = []
    real_solve = plan_cli.solve

    def solve_taking_the_whole_limit(problem, objectives, time_limit_seconds):
        given.append(time_limit_seconds)
        result = real_solve(problem, objectives, time_limit_seconds)
        jumped[0] += time_limit_seconds
        return result

    monkeypatch.setattr(plan_cli, "solve", solve_taking_the_whole_limit)
    monkeypatch.setattr(planning, "solve", solve_taking_the_whole_limit)  # the plan under the policies
    policy = tmp_path / "p.yaml"
    policy.write_text("policies:\n  - {name: memory-80, resource: gpu_memory, max: 80%}\n")
    args = ["plan", "--profile", SEED, "--device-memory", "16GiB", "--policies", str(policy), "--time-limit", "4s"]
    assert main(args) == 0
    assert len(given) == 2
    assert given[0] <= 4 * plan_cli.PLAN_SHARE
    assert sum(given) <= 4 - plan_cli.RESERVE_SECONDS  # the second plan got what the first one left
    assert "at 100% of capacity" in capsys.readouterr().out


def test_exchange_columns_leave_the_root_lp_value_unchanged():
    # How much they speed the root LP is measured by bench/placement.py.
    devices = tuple(Device(f"gpu-{k}", {MEM: 100}) for k in range(len(LP_BEATS_COMBINATORIAL)))
    models = tuple(ModelFootprint(f"m{i}", {MEM: float(s)}) for i, s in enumerate(LP_BEATS_COMBINATORIAL))
    instance = compile_problem(PlacementProblem(devices, models))  # one resource: sizes order the duals
    with_exchanges = ColumnGeneration(instance, None)
    assert with_exchanges.master.exchanges == len(with_exchanges.types.counts) - 1
    without = ColumnGeneration(instance, None)
    without.master.drop_exchanges()
    deadline = Deadline.after(30)
    assert with_exchanges.root(deadline).lp_value == pytest.approx(without.root(deadline).lp_value, abs=1e-6)
    assert with_exchanges.master.exchanges == 0  # gone before any dive fixes a column


class _CountingMaster(colgen._Master):
    """The master LP, counting HiGHS's simplex iterations; ``dual_only`` re-solves every LP by
    dual simplex, as the master did before it chose by what changed."""

    def __init__(self, types, columns, dual_only: bool):
        super().__init__(types, columns)
        self.dual_only, self.iterations = dual_only, 0

    def solve(self):
        if self.dual_only:
            self._rows_changed = True
        solved = super().solve()
        self.iterations += self.highs.getInfo().simplex_iteration_count
        return solved


def test_the_root_lp_re_solves_after_each_added_column_by_primal_simplex_in_fewer_iterations():
    """A column added keeps the basis primal feasible: primal simplex re-solves from it where dual
    simplex starts over in all but name (the triplets' root LP: 666 iterations against 1,974)."""
    instance = triplet_instance()
    types = colgen.item_types(instance)
    iterations = {}
    for dual_only in (False, True):
        master = _CountingMaster(types, colgen._initial_columns(instance, types, None), dual_only)
        _, bound, converged = colgen._generate(master, types.counts.copy(), Deadline.after(60), settle_early=True)
        assert (bound, converged) == (20, True)
        iterations[dual_only] = master.iterations
    assert iterations[False] * 2 < iterations[True]


def test_a_root_lp_closing_its_gap_too_slowly_for_its_deadline_gives_up():
    """csBB500_1's root LP: value and Farley bound draw together ever slower, and at the last
    stretch's pace would not meet by the deadline, while the value leaves room for one device more
    than the proven bound at most: it stops, for the searches to use the time."""
    pace = colgen.Pace(Deadline.after(30), proven=1821)
    start = pace.started
    # Before a third of its time the pace is not judged, however slow.
    assert not pace.hopeless(start + 1, value=1821.9, farley=1810.0)
    assert not pace.hopeless(start + 8, value=1821.6, farley=1810.5)
    # From 8 s to 12 s the gap closed by 0.6: 0.15 a second, 2.7 in the 18 s left, against 10.5.
    assert pace.hopeless(start + 12, value=1821.5, farley=1811.0) and pace.gave_up


def test_a_root_lp_keeps_going_where_it_can_converge_or_raise_the_bound_by_more():
    fast = colgen.Pace(Deadline.after(30), proven=1821)
    fast.hopeless(fast.started + 8, value=1821.6, farley=1810.6)
    assert not fast.hopeless(fast.started + 12, value=1821.2, farley=1818.2)  # 2 a second: 36 in 18 s
    # A value of 1822.5 leaves the LP room to prove 1823, two above the bound: the time is well spent.
    room = colgen.Pace(Deadline.after(30), proven=1821)
    room.hopeless(room.started + 8, value=1822.6, farley=1810.5)
    assert not room.hopeless(room.started + 12, value=1822.5, farley=1811.0)
    # No progress at all is no pace: a degenerate LP (csAA125_1) sits still for seconds, then converges.
    still = colgen.Pace(Deadline.after(30), proven=1821)
    still.hopeless(still.started + 8, value=1821.5, farley=1811.0)
    assert not still.hopeless(still.started + 12, value=1821.5, farley=1811.0) and not still.gave_up


def test_a_root_lp_that_gives_up_says_so_and_the_searches_still_reach_the_bound(monkeypatch):
    # The triplets' root LP converges in a tenth of a second; here its pace is judged hopeless at once.
    monkeypatch.setattr(colgen.Pace, "hopeless", lambda self, now, value, farley: setattr(self, "gave_up", True) or True)
    instance = triplet_instance()
    root = ColumnGeneration(instance, None).root(Deadline.after(30), 23, proven=20)
    assert (root.converged, root.hopeless) == (False, True)
    result = solve(instance.problem, time_limit_seconds=5)
    assert result.device_count == 20 and result.optimal
    assert result.seconds_by_phase["fixed-count-search"] > 0
