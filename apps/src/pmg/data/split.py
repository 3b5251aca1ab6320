"""k-core filtering and temporal train/validation/test splits."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import numpy as np

from pmg.atomic import atomic_file
from pmg.data.format import InteractionData

__all__ = ["kcore", "Split", "SplitScheme", "temporal_split", "training_split"]


class SplitScheme(StrEnum):
    """How interactions are split by time (``data.split.scheme``; :func:`temporal_split` says how each cuts)."""

    leave_last_out = "leave_last_out"
    ratio = "ratio"
    global_time = "global_time"


def kcore(data: InteractionData, user_k: int = 5, item_k: int = 5) -> InteractionData:
    """Keep the largest sub-dataset where every user has >= ``user_k`` and every item >= ``item_k``
    interactions, removing users and items iteratively, then remap ids to contiguous indices.

    The surviving raw ids stay in ``user_ids`` / ``items``, so the id maps are the lists
    themselves. Items are filtered like users: an item with too few interactions leaves.
    """
    if user_k < 1 or item_k < 1:
        raise ValueError("k-core thresholds must be >= 1")
    keep = np.ones(data.num_interactions, dtype=bool)
    while True:
        user_deg = np.bincount(data.user[keep], minlength=data.num_users)
        item_deg = np.bincount(data.item[keep], minlength=data.num_items)
        bad = keep & ((user_deg[data.user] < user_k) | (item_deg[data.item] < item_k))
        if not bad.any():
            break
        keep &= ~bad
    if not keep.any():
        raise ValueError(f"the {user_k}/{item_k}-core of {data.name!r} is empty; lower the thresholds")
    users = np.unique(data.user[keep])
    items = np.unique(data.item[keep])
    user_map = np.full(data.num_users, -1, dtype=np.int64)
    user_map[users] = np.arange(len(users))
    item_map = np.full(data.num_items, -1, dtype=np.int64)
    item_map[items] = np.arange(len(items))
    rows = np.flatnonzero(keep)
    tastes = None
    if data.user_tastes is not None:
        tastes = {k: [v[u] for u in users] for k, v in data.user_tastes.items()}
    result = InteractionData(
        name=data.name,
        user_ids=[data.user_ids[u] for u in users],
        items=[data.items[i] for i in items],
        user=user_map[data.user[rows]],
        item=item_map[data.item[rows]],
        timestamp=data.timestamp[rows],
        rating=data.rating[rows],
        review=[data.review[r] for r in rows],
        attributes=data.attributes,
        user_tastes=tastes,
        source=data.source,
        report=data.report,
        item_kind=data.item_kind,
    )
    result.report.notes.append(
        f"{user_k}/{item_k}-core kept {len(users)}/{data.num_users} users, {len(items)}/{data.num_items} items, "
        f"{len(rows)}/{data.num_interactions} interactions"
    )
    result.refresh_report()
    return result


@dataclass
class Split:
    """Row indices into an ``InteractionData`` for train, validation and test (int64 arrays)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    scheme: str

    def save(self, path: str | Path) -> None:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps({
                "scheme": self.scheme,
                "train": self.train.tolist(),
                "val": self.val.tolist(),
                "test": self.test.tolist(),
            }))

    @classmethod
    def load(cls, path: str | Path) -> Split:
        raw = json.loads(Path(path).read_text())
        return cls(
            train=np.array(raw["train"], dtype=np.int64),
            val=np.array(raw["val"], dtype=np.int64),
            test=np.array(raw["test"], dtype=np.int64),
            scheme=raw["scheme"],
        )


def temporal_split(
    data: InteractionData,
    scheme: SplitScheme | str = SplitScheme.leave_last_out,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    min_train: int = 1,
) -> Split:
    """Split interactions by time.

    Schemes:
        ``leave_last_out``: per user, the last interaction is test, the one before validation.
        ``ratio``: per user, the oldest ``1 - val - test`` share trains, then validation, then
            test (the 8:1:1 setup of the personalized-generation papers).
        ``global_time``: one time cut for everybody at the quantiles of all timestamps.

    A user with too few interactions to keep ``min_train`` training rows under a per-user
    scheme stays wholly in train. Ties in time break by row order, so the split is deterministic.

    Raises:
        ValueError: an unknown scheme, bad fractions, or a dataset with no validation or test rows.
    """
    if scheme not in tuple(SplitScheme):
        raise ValueError(f"unknown split scheme {scheme!r}; expected one of {[s.value for s in SplitScheme]}")
    scheme = SplitScheme(scheme)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in [0, 1) with a sum below 1")
    n = data.num_interactions
    part = np.zeros(n, dtype=np.int8)  # 0 train, 1 val, 2 test
    if scheme is SplitScheme.global_time:
        order = np.lexsort((np.arange(n), data.timestamp))
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        part[order[n - n_test:]] = 2
        part[order[n - n_test - n_val:n - n_test]] = 1
    else:
        order = np.lexsort((np.arange(n), data.timestamp, data.user))
        users = data.user[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts, ends, strict=True):
            count = e - s
            if scheme is SplitScheme.leave_last_out:
                n_test, n_val = 1, 1
            else:
                n_test = int(round(count * test_fraction))
                n_val = int(round(count * val_fraction))
            if count - n_test - n_val < min_train:
                continue
            if n_test:
                part[order[e - n_test:e]] = 2
            if n_val:
                part[order[e - n_test - n_val:e - n_test]] = 1
    split = Split(
        train=np.flatnonzero(part == 0), val=np.flatnonzero(part == 1), test=np.flatnonzero(part == 2), scheme=scheme.value
    )
    if len(split.train) == 0 or len(split.test) == 0 or (val_fraction > 0 or scheme is SplitScheme.leave_last_out) and len(split.val) == 0:
        raise ValueError(
            f"dataset {data.name!r} is too small for a {scheme} split "
            f"({n} interactions, {data.num_users} users): train {len(split.train)}, "
            f"validation {len(split.val)}, test {len(split.test)} rows"
        )
    return split


def training_split(data: InteractionData, split: Split, users: np.ndarray) -> Split:
    """``split`` restricted to the interactions of ``users`` (data user indices [T])."""
    keep = np.isin(data.user, users)
    return replace(split, train=split.train[keep[split.train]], val=split.val[keep[split.val]], test=split.test[keep[split.test]])
