import pytest

from gpupack.scheduler.rebalance.current import LoadedModel
from gpupack.scheduler.rebalance.metrics import RebalanceSnapshot, placement_document


def test_each_copy_carries_its_even_share_of_its_models_traffic():
    snapshot = RebalanceSnapshot(placement=(
        LoadedModel("a", "ranker", "1", "GPU-0"), LoadedModel("b", "ranker", "1", "GPU-1"),
        LoadedModel("c", "ranker", "1", "GPU-2"), LoadedModel("a", "detector", "1", "GPU-0"),
        LoadedModel("b", "detector", "2", "GPU-1"),
    ))
    shares = {(m["server"], m["model"], m["version"]): m["traffic_share"] for m in placement_document(snapshot)["models"]}
    assert shares[("a", "ranker", "1")] == pytest.approx(1 / 3)
    assert sum(v for (_, model, _), v in shares.items() if model == "ranker") == pytest.approx(1)
    assert shares[("a", "detector", "1")] == shares[("b", "detector", "2")] == 1
