"""benchmarks/scale.py: its graph-only catalog keeps the catalog's statistics, one size is measured
end to end, and the JSON line across sizes has every key the issue asks for (its --check itself:
tests/test_benchmark_targets.py)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest

from pmg.data.split import temporal_split

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def bench(benchmark_module: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_module("scale")


def test_the_graph_only_catalog_has_the_catalog_statistics(bench: ModuleType) -> None:
    data, features = bench.scale_catalog(3000, seed=1)
    assert data.num_items == bench.items_for(3000) == 3464
    counts = np.bincount(data.user, minlength=data.num_users)
    assert counts.min() >= bench.MIN_INTERACTIONS and abs(counts.mean() - 25.0) < 0.5
    keys = data.user * data.num_items + data.item
    assert len(np.unique(keys)) == len(keys), "each user's items are drawn without replacement"
    # Popularity skews item degrees well past a uniform draw's spread.
    degree = np.bincount(data.item, minlength=data.num_items)
    assert degree.max() > 3 * degree.mean()
    assert {m: tuple(v.shape) for m, v in features.items()} == {"visual": (3464, 160), "textual": (3464, 384)}
    assert np.allclose(features["visual"].norm(dim=1).numpy(), 1.0, atol=1e-5)
    split = temporal_split(data, "leave_last_out")
    assert len(split.test) == len(split.val) == data.num_users
    again, _ = bench.scale_catalog(3000, seed=1)
    assert np.array_equal(again.item, data.item), "seeded"


def test_one_size_is_measured_and_the_summary_has_every_key(bench: ModuleType) -> None:
    args = argparse.Namespace(seed=0, interactions_per_user=25.0, steps_per_epoch=4, eval_users=300, quantize_steps=8,
                              lightgcn_steps=2)
    one = bench.measure_size(600, args, log=lambda message: None)
    assert one["users"] == 600 and one["steps"] == 4 and one["batch_size"] == math.ceil(one["interactions"] / 4)
    assert one["lightgcn_timed_steps"] == 2 and one["eval_users"] == 300
    for key in ("epoch_seconds", "lightgcn_epoch_seconds", "peak_gb", "quantize_seconds", "eval_seconds"):
        assert one[key] > 0, key
    assert set(one["phase_seconds"]) == set(bench.PHASES) and min(one["phase_seconds"].values()) > 0
    assert sum(one["phase_seconds"].values()) <= one["epoch_seconds"]
    low, high = one["recall20_ci"]
    assert 0.0 <= low <= one["recall20"] <= high <= 1.0
    # Three sizes of the same shape: the summary's lists, slopes and largest-size figures.
    per_size = [dict(one, users=u, interactions=e, epoch_seconds=t, lightgcn_epoch_seconds=2 * t)
                for u, e, t in ((600, 1e4, 1.0), (6000, 1e5, 10.0), (60000, 1e6, 100.0))]
    result = bench.summarise(per_size)
    assert result["sizes"] == [600, 6000, 60000]
    for key in ("epoch_seconds", "lightgcn_epoch_seconds", "peak_gb"):
        assert len(result[key]) == 3, key
    assert result["slope_ours"] == pytest.approx(1.0) and result["slope_lightgcn"] == pytest.approx(1.0)
    assert result["epoch_ratio_largest"] == pytest.approx(0.5)
    assert result["largest_minutes"] == pytest.approx((100.0 + one["eval_seconds"]) / 60)
    assert result["generation_users_per_second"] is None and "not measured" in result["generation_note"]
    measured = {"generation_users_per_second": 2.0, "generation_users": 200, "generation_note": "on a run"}
    assert {k: v for k, v in bench.summarise(per_size, measured).items() if k.startswith("generation")} == measured
