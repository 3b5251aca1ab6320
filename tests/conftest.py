"""Fixtures shared across the suite: a small generated catalog and the real MovieLens data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ML_LATEST_SMALL = REPO.parent / "shared" / "datasets" / "ml-latest-small"


@pytest.fixture(scope="session")
def ml_latest_small() -> Path:
    """The real MovieLens latest-small folder beside the checkout (present on every dev and CI machine)."""
    assert (ML_LATEST_SMALL / "ratings.csv").is_file(), f"MovieLens latest-small is expected at {ML_LATEST_SMALL}"
    return ML_LATEST_SMALL


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 150-user, 240-item catalog written in the dataset format (read-only for tests)."""
    from pmg.data import CatalogConfig, write_catalog

    out = tmp_path_factory.mktemp("catalog") / "dataset"
    return write_catalog(out, CatalogConfig(seed=7, num_users=150, num_items=240, interactions_per_user=16))
