"""The bootstrap interval of a per-user mean, on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from pmg.evaluate.intervals import bootstrap_interval
from pmg.evaluate.table import Cell


def test_interval_of_a_known_binomial_mean_matches_the_normal_approximation() -> None:
    hits = np.array([1.0] * 120 + [0.0] * 280)  # p = 0.3, n = 400: standard error sqrt(.3 * .7 / 400) = 0.0229
    low, high = bootstrap_interval(hits)
    assert low < 0.3 < high
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(0.3 * 0.7 / 400), rel=0.1)
    assert (low, high) == bootstrap_interval(hits)  # seeded
    # Four times the users halve the width.
    wide = np.subtract(*bootstrap_interval(hits[np.r_[0:30, 120:190]])[::-1])
    assert wide == pytest.approx(2 * (high - low), rel=0.2)


def test_degenerate_and_paired_cases() -> None:
    assert bootstrap_interval(np.ones(50)) == (1.0, 1.0)
    assert bootstrap_interval(np.array([0.25])) == (0.25, 0.25)
    better, worse = np.r_[np.ones(80), np.zeros(20)], np.r_[np.ones(60), np.zeros(40)]
    low, high = bootstrap_interval(better - worse)  # paired: a mean difference of 0.2
    assert 0.0 < low < 0.2 < high
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval(np.zeros(0))


def test_cell_of_users_keeps_mean_interval_n_and_reads_back() -> None:
    cell = Cell.of_users([1, 0, 1, 1])
    assert cell.value == 0.75 and cell.n == 4 and cell.interval is not None and cell.interval[0] <= 0.75 <= cell.interval[1]
    back = Cell.from_json(cell.to_json())
    assert (back.value, back.interval, back.n) == (cell.value, cell.interval, cell.n)
    assert cell.shown().startswith("0.750 [")
    assert Cell.of_users([]).missing
