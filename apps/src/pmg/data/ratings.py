"""How much a user liked each interaction, read from its rating: the one weighting of a history by
ratings that the preference stage (its graph and content vectors) and keyword extraction
(``generator.keywords``) share."""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from pmg.data.format import InteractionData

__all__ = ["InteractionWeight", "interaction_weights", "rating_weights"]


class InteractionWeight(StrEnum):
    """How much each interaction of a history counts: ``binary``, every one alike (LightGCN, a
    plain majority of the history's words); ``rating``, ``max(rating - rating_offset, 0)``
    (:func:`rating_weights`), so what a user rated high counts more, and an interaction without a
    rating weighs the median of the known weights."""

    binary = "binary"
    rating = "rating"


def rating_weights(data: InteractionData, rows: np.ndarray, offset: float = 2.0) -> np.ndarray:
    """Float32 [P]: ``max(rating - offset, 0)`` for each interaction row of ``rows``, so what a user rated
    at or below ``offset`` counts nothing and a 5 counts three times a 3 (with the default offset 2).
    A row without a rating weighs the median of the known weights.

    Raises:
        ValueError: none of ``rows`` has a rating (the dataset is implicit feedback).
    """
    ratings = data.rating[np.asarray(rows, dtype=np.int64)].astype(np.float64)
    known = np.isfinite(ratings)
    if not known.any():
        raise ValueError(f"dataset {data.name!r} has no ratings on the {len(ratings)} interactions given, so they "
                         "cannot be weighted by rating")
    weights = np.clip(ratings - offset, 0.0, None)
    weights[~known] = np.median(weights[known])
    return weights.astype(np.float32)


def interaction_weights(kind: InteractionWeight, data: InteractionData, rows: np.ndarray, rating_offset: float = 2.0,
                        *, key: str = "weight") -> np.ndarray | None:
    """Float32 [P] weights of the interaction rows ``rows`` under ``kind``; None for ``binary``
    (every row alike, which callers treat as unweighted).

    Raises:
        ValueError: ``rating`` on a dataset none of whose ``rows`` has a rating; the message names
            the config ``key`` that asked for it.
    """
    if InteractionWeight(kind) is InteractionWeight.binary:
        return None
    try:
        return rating_weights(data, rows, rating_offset)
    except ValueError as err:
        raise ValueError(f"{key} is rating, but {err}; set it to binary") from err
