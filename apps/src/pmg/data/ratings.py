"""How much a user liked each interaction, read from its rating: the one weighting of a history by
ratings that the preference stage (its graph and content vectors) and keyword extraction share."""

from __future__ import annotations

import numpy as np

from pmg.data.format import InteractionData

__all__ = ["rating_weights"]


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
