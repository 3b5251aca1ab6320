"""The keyword upper bound: how often a user's training history alone points at their true taste.

For each taste attribute, a user is a hit when the value most frequent among the items of their
training history (the split's training rows) is their true taste. The items' values are read
from the ground truth, as an oracle reading every history item perfectly would: a keyword
baseline that votes over what the history's texts name stays below it, and cannot reach it at
all for a ``hidden`` attribute (the sparse catalog's shade), which no text names. Short or
popularity-driven histories lower it.

    bound = history_majority_hit_rate(data, split.train)  # {"colour": 0.97, "shade": 0.71, ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pmg.data.format import InteractionData

__all__ = ["history_majority_hit_rate"]


def history_majority_hit_rate(data: InteractionData, train_rows: np.ndarray,
                              users: Sequence[int] | None = None) -> dict[str, float]:
    """``{attribute: share of users}`` whose training history's most frequent value is their taste.

    Args:
        data: a dataset with ground-truth tastes (``users.jsonl``); every attribute that has a
            taste and a schema entry is scored, in schema order.
        train_rows: int64 row indices of ``data``'s training interactions (``split.train``).
        users: user indices to score (None: every user of ``data``).

    Ties count fractionally: a user whose history has its maximum count at ``k`` values, the
    taste among them, scores ``1 / k``, the expected hit of a random tie-break. A user without
    training rows (or whose history items lack the attribute) ties at every value: ``1 / V``.

    Raises:
        KeyError: the dataset has no ground-truth tastes.
    """
    if not data.user_tastes:
        raise KeyError(f"dataset {data.name!r} has no ground-truth tastes (users.jsonl)")
    rows = np.asarray(train_rows, dtype=np.int64)
    scored = np.arange(data.num_users) if users is None else np.asarray(users, dtype=np.int64)
    if len(scored) == 0:
        raise ValueError("history_majority_hit_rate needs at least one user")
    result: dict[str, float] = {}
    for name, spec in data.attributes.items():
        if name not in data.user_tastes or not spec.values:
            continue
        labels = data.item_labels(name)[data.item[rows]]
        known = labels >= 0
        counts = np.zeros((data.num_users, len(spec.values)), dtype=np.int64)
        np.add.at(counts, (data.user[rows][known], labels[known]), 1)
        counts = counts[scored]
        tied = counts == counts.max(axis=1, keepdims=True)
        truth = data.taste_labels(name)[scored]
        hits = tied[np.arange(len(scored)), truth] / tied.sum(axis=1)
        result[name] = float(hits.mean())
    return result
