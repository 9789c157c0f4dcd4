"""``/api/v1/placement`` serves routers that poll it: a URL, a state, a weight and a share per copy,
and a generation; it follows every phase of a step, so a router polling it sees the target serving
before the source drains and the source draining before it is gone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from gpupack.router import DRAINING, OFF, SERVING
from gpupack.scheduler.rebalance.current import FleetView, LoadedModel
from gpupack.scheduler.rebalance.metrics import RebalanceSnapshot, RebalanceState, placement_document

from tests.scheduler.rebalance.test_routed_executor import Fleet, rebalancer


class RecordingState(RebalanceState):
    """Keeps the document after every publish, as a router polling without pause would see it."""

    def __init__(self) -> None:
        super().__init__()
        self.documents: list[dict[str, Any]] = []

    def _swap(self, change: Callable[[RebalanceSnapshot], RebalanceSnapshot]) -> None:
        super()._swap(change)
        self.documents.append(placement_document(self.snapshot()))


def copies(document: dict[str, Any], model: str) -> dict[str, str]:
    return {m["server"]: m["state"] for m in document["models"] if m["model"] == model}


@pytest.mark.parametrize("routed", [True, False])
def test_every_phase_of_a_move_is_published_with_a_new_generation(tmp_path: Path, routed: bool) -> None:
    fleet = Fleet(a=["large-a", "large-b"], b=[])
    balancer = rebalancer(tmp_path, fleet, router=routed, progress=[])
    balancer.state = state = RecordingState()
    plan = balancer.plan()
    (step,) = plan.admission.admitted
    before = len(state.documents)
    assert balancer.apply(plan).succeeded
    seen = state.documents[before:]
    for earlier, later in zip([state.documents[before - 1], *seen], seen):
        # A router applies a document only when its generation is newer: every change has one.
        assert later["generation"] >= earlier["generation"]
        assert later["models"] == earlier["models"] or later["generation"] > earlier["generation"]
    # What a router polling the document saw of the moving model, in order, without repeats.
    views = []
    for document in seen:
        view = copies(document, step.model)
        if not views or views[-1] != view:
            views.append(view)
    if routed:
        assert views == [{"a": SERVING}, {"a": SERVING, "b": OFF}, {"a": SERVING, "b": SERVING},
                         {"a": DRAINING, "b": SERVING}, {"a": OFF, "b": SERVING}, {"b": SERVING}]
    else:
        assert views == [{"a": SERVING}, {"a": SERVING, "b": SERVING}, {"a": OFF, "b": SERVING}, {"b": SERVING}]


def test_each_copy_carries_its_url_state_weight_and_share_by_what_its_configuration_serves() -> None:
    snapshot = RebalanceSnapshot(
        placement=(LoadedModel("a", "ranker", "1", "GPU-0"), LoadedModel("b", "ranker", "1", "GPU-1"),
                   LoadedModel("c", "ranker", "1", "GPU-2")),
        server_urls={"a": "http://a:8000", "b": "http://b:8000", "c": "http://c:8000"},
        capacities={("ranker", "a"): 300.0, ("ranker", "b"): 100.0, ("ranker", "c"): 100.0},
        routes={("ranker", "c"): DRAINING}, generation=7)
    document = placement_document(snapshot)
    assert document["generation"] == 7
    by_server = {m["server"]: m for m in document["models"]}
    assert by_server["a"]["url"] == "http://a:8000"
    assert [by_server[s]["state"] for s in "abc"] == [SERVING, SERVING, DRAINING]
    assert by_server["a"]["traffic_share"] == pytest.approx(0.75) and by_server["b"]["traffic_share"] == 0.25
    assert [by_server[s]["weight"] for s in "abc"] == [256, 85, 0]
    assert by_server["c"]["traffic_share"] == 0  # draining: takes nothing new


def test_a_copy_that_left_loses_its_routing_state_and_the_generation_still_grows() -> None:
    state = RebalanceState(clock=lambda: 1765000000.0)
    assert state.snapshot().generation == 1765000000000  # a restarted engine's documents are still newer
    loaded = (LoadedModel("a", "ranker", "1", "GPU-0"), LoadedModel("b", "ranker", "1", "GPU-1"))
    state.publish_placement(FleetView(loaded, 1.0), {})
    state.publish_routes("ranker", {"a": DRAINING})
    assert copies(placement_document(state.snapshot()), "ranker") == {"a": DRAINING, "b": SERVING}
    state.publish_placement(FleetView(loaded[1:], 2.0), {})
    state.publish_placement(FleetView(loaded, 3.0), {})  # loaded there again later: serving, not draining
    document = placement_document(state.snapshot())
    assert copies(document, "ranker") == {"a": SERVING, "b": SERVING} and document["generation"] == 1765000000000 + 4
