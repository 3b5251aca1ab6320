"""benchmarks/taste_probe.py: what drawing a hidden visual taste could add to an image over words."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from pmg.data import CatalogConfig, generate_catalog


def _row(chance: float, **rates: float) -> dict[str, object]:
    row: dict[str, object] = {"chance": chance}
    for name, rate in rates.items():
        row[name], row[f"{name}_ci"] = rate, [rate - 0.05, rate + 0.05]
    return row


def test_only_the_hidden_visual_taste_is_bounded_at_its_reading_above_chance_over_the_visual_tastes(
        benchmark_module: Callable[[str], ModuleType]) -> None:
    probe = benchmark_module("taste_probe")
    sparse, _ = generate_catalog(CatalogConfig(seed=1, profile="sparse", num_users=60, num_items=80, image_size=16))
    tastes = {"colour": _row(0.125, history_majority=0.6), "pattern": _row(0.25, history_majority=0.6),
              "material": _row(1 / 6, history_majority=0.6), "style": _row(1 / 6, history_majority=0.6),
              "shade": _row(0.5, history_majority=0.8, codes_visual=0.5)}
    gains = probe._hidden_image_gain(sparse, tastes)
    assert list(gains) == ["shade"]  # colour and pattern are named by words; material and style are not visual
    shade = gains["shade"]
    assert shade["visual_tastes"] == 3  # colour, pattern, shade
    assert shade["history_majority"] == pytest.approx(0.1)
    assert shade["history_majority_ci"] == pytest.approx([0.25 / 3, 0.35 / 3], abs=1e-4)
    assert shade["codes_visual"] == pytest.approx(0.0)  # a reading at chance adds nothing

    default, _ = generate_catalog(CatalogConfig(seed=1, num_users=60, num_items=80, image_size=16))
    assert probe._hidden_image_gain(default, {name: _row(0.2, history_majority=0.9) for name in default.user_tastes or {}}) == {}
