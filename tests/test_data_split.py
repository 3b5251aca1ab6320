"""k-core filtering and temporal splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pmg.data import InteractionData, Item, read_dataset
from pmg.data.split import Split, kcore, temporal_split


def _toy(users: list[int], items: list[int], times: list[int]) -> InteractionData:
    return InteractionData(
        name="toy",
        user_ids=[f"u{u}" for u in range(max(users) + 1)],
        items=[Item(item_id=f"i{i}") for i in range(max(items) + 1)],
        user=np.array(users), item=np.array(items), timestamp=np.array(times),
        rating=np.full(len(users), np.nan), review=[""] * len(users),
    )


def test_kcore_removes_iteratively_and_remaps() -> None:
    # u2 has one interaction; dropping it leaves i3 with one (u3's), dropping that leaves
    # u3 with one: the cascade removes u2, i3 and u3, and i2 survives through u0 and u1.
    data = _toy([0, 0, 1, 1, 0, 1, 2, 3, 3], [0, 1, 0, 1, 2, 2, 3, 3, 2], list(range(9)))
    core = kcore(data, user_k=2, item_k=2)
    assert core.user_ids == ["u0", "u1"]
    assert [it.item_id for it in core.items] == ["i0", "i1", "i2"]
    assert np.bincount(core.user).min() >= 2 and np.bincount(core.item).min() >= 2
    assert core.num_interactions == 6 and core.item.max() == 2
    with pytest.raises(ValueError, match="is empty"):
        kcore(data, user_k=10, item_k=10)


def test_leave_last_out_holds_out_each_users_latest(small_catalog: Path) -> None:
    data = read_dataset(small_catalog)
    split = temporal_split(data, "leave_last_out")
    assert len(split.test) == data.num_users and len(split.val) == data.num_users
    parts = np.concatenate([split.train, split.val, split.test])
    assert len(np.unique(parts)) == data.num_interactions
    for u in range(0, data.num_users, 17):
        rows = np.flatnonzero(data.user == u)
        latest = rows[np.argmax(data.timestamp[rows])]
        test_row = split.test[data.user[split.test] == u]
        assert data.timestamp[test_row[0]] == data.timestamp[latest]
        val_row = split.val[data.user[split.val] == u]
        train_rows = split.train[data.user[split.train] == u]
        assert data.timestamp[train_rows].max() <= data.timestamp[val_row[0]] <= data.timestamp[test_row[0]]


def test_ratio_split_is_8_1_1_by_time(small_catalog: Path, tmp_path: Path) -> None:
    data = read_dataset(small_catalog)
    split = temporal_split(data, "ratio", val_fraction=0.1, test_fraction=0.1)
    share = len(split.test) / data.num_interactions
    assert 0.05 < share < 0.15
    split.save(tmp_path / "split.json")
    again = Split.load(tmp_path / "split.json")
    np.testing.assert_array_equal(again.test, split.test)


def test_global_time_cut(small_catalog: Path) -> None:
    data = read_dataset(small_catalog)
    split = temporal_split(data, "global_time", val_fraction=0.1, test_fraction=0.2)
    assert data.timestamp[split.train].max() <= data.timestamp[split.val].min()
    assert data.timestamp[split.val].max() <= data.timestamp[split.test].min()
    assert abs(len(split.test) - 0.2 * data.num_interactions) <= 1


def test_too_small_for_a_split_is_a_clear_error() -> None:
    data = _toy([0, 1], [0, 1], [1, 2])
    with pytest.raises(ValueError, match="too small for a leave_last_out split"):
        temporal_split(data, "leave_last_out")
    with pytest.raises(ValueError, match="unknown split scheme"):
        temporal_split(data, "random")
