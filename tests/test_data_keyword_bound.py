"""The keyword upper bound: the share of users whose training history's majority value is their taste."""

from __future__ import annotations

import numpy as np
import pytest

from pmg.data import AttributeSpec, CatalogConfig, InteractionData, Item, generate_catalog
from pmg.data.keyword_bound import history_majority_hit_rate
from pmg.data.split import temporal_split


def _tiny() -> tuple[InteractionData, np.ndarray]:
    colours = ["red", "blue", "red", "green", ""]  # item 4's colour is unknown
    items = [Item(f"i{i}", attributes={"colour": c, "material": "silk"} if c else {"material": "silk"})
             for i, c in enumerate(colours)]
    # (user, item, is a training row)
    rows = [
        (0, 0, True), (0, 2, True), (0, 1, True),   # red, red, blue: majority red = taste → 1
        (1, 0, True), (1, 1, True),                 # red, blue: a tie, the taste blue among 2 → 1/2
        (2, 1, True), (2, 4, True), (2, 3, False),  # blue (unknown skipped); green only in test → 0
        (3, 3, False),                              # no training row: all 3 values tie → 1/3
    ]
    data = InteractionData(
        name="tiny",
        user_ids=["u0", "u1", "u2", "u3"],
        items=items,
        user=np.array([r[0] for r in rows]),
        item=np.array([r[1] for r in rows]),
        timestamp=np.arange(len(rows)),
        rating=np.full(len(rows), np.nan),
        review=[""] * len(rows),
        attributes={"colour": AttributeSpec("visual", ("red", "blue", "green")),
                    "material": AttributeSpec("textual", ("silk", "wool"))},
        user_tastes={"colour": ["red", "blue", "green", "red"]},
    )
    return data, np.array([i for i, r in enumerate(rows) if r[2]])


def test_majority_vote_over_the_training_history_with_fractional_ties() -> None:
    data, train = _tiny()
    bound = history_majority_hit_rate(data, train)
    assert set(bound) == {"colour"}  # material has no ground-truth taste
    assert bound["colour"] == pytest.approx((1 + 0.5 + 0 + 1 / 3) / 4)
    assert history_majority_hit_rate(data, train, users=[0, 1]) == {"colour": pytest.approx(0.75)}
    # Every row as history: user 2 now votes blue vs green (a tie) and user 3 green vs its red taste.
    assert history_majority_hit_rate(data, np.arange(data.num_interactions), users=[2, 3]) == {"colour": pytest.approx(0.25)}


def test_needs_ground_truth_tastes() -> None:
    data, train = _tiny()
    data.user_tastes = None
    with pytest.raises(KeyError, match="ground-truth tastes"):
        history_majority_hit_rate(data, train)


def test_sparse_histories_reveal_far_less_than_default_ones() -> None:
    bounds = {}
    for profile in ("default", "sparse"):
        data, _ = generate_catalog(CatalogConfig(seed=0, profile=profile, num_users=200, num_items=300, image_size=16))
        bounds[profile] = history_majority_hit_rate(data, temporal_split(data).train)
    assert set(bounds["sparse"]) == {"colour", "pattern", "material", "style", "shade"}
    for taste, value in bounds["default"].items():
        assert value > 0.8 and bounds["sparse"][taste] < value - 0.2, taste
