"""The embedded catalog: determinism, ground truth, taste lift, rendering."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pmg.config import ConfigError, load_config
from pmg.data import CatalogConfig, generate_catalog, read_dataset, render_item_image, write_catalog
from pmg.data.catalog import CATEGORIES, COLOURS, PATTERNS


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    config = CatalogConfig(seed=3, num_users=40, num_items=60, interactions_per_user=8)
    a = _tree_digest(write_catalog(tmp_path / "a", config))
    b = _tree_digest(write_catalog(tmp_path / "b", config))
    assert a == b
    assert {"dataset.json", "items.jsonl", "interactions.csv", "users.jsonl"} <= set(a)
    c = _tree_digest(write_catalog(tmp_path / "c", CatalogConfig(seed=4, num_users=40, num_items=60, interactions_per_user=8)))
    assert c["interactions.csv"] != a["interactions.csv"]


def test_ground_truth_and_sizes(small_catalog: Path) -> None:
    data = read_dataset(small_catalog)
    assert data.num_users == 150 and data.num_items == 240
    assert data.user_tastes is not None and set(data.user_tastes) == {"colour", "pattern", "material", "style"}
    assert {data.attributes[a].modality for a in ("colour", "pattern", "category")} == {"visual"}
    assert {data.attributes[a].modality for a in ("material", "style", "brand")} == {"textual"}
    assert len(CATEGORIES) >= 8 and len(COLOURS) == 8 and set(PATTERNS) == {"plain", "stripes", "dots", "checks"}
    assert len(data.attributes["material"].values) >= 5 and len(data.attributes["style"].values) >= 5
    counts = np.bincount(data.user, minlength=data.num_users)
    assert counts.min() >= 5
    assert np.all(np.isin(data.rating, [1, 2, 3, 4, 5]))
    assert all(it.image is not None and it.image.is_file() for it in data.items)
    # Timestamps increase within each user's history as written.
    assert data.timestamp.min() >= CatalogConfig().start_timestamp


def test_default_size_matches_the_issue() -> None:
    config = CatalogConfig()
    assert (config.num_users, config.num_items, config.image_size) == (1000, 2000, 64)
    assert 25_000 <= config.num_users * config.interactions_per_user <= 35_000


def test_users_interact_with_their_tastes_far_above_chance() -> None:
    data, _ = generate_catalog(CatalogConfig(seed=1, num_users=300, num_items=500, interactions_per_user=20))
    for attribute in ("colour", "pattern", "material", "style"):
        match = (data.taste_labels(attribute)[data.user] == data.item_labels(attribute)[data.item]).mean()
        chance = 1.0 / len(data.attributes[attribute].values)
        assert match > 2.0 * chance, f"{attribute}: match rate {match:.2f} vs chance {chance:.2f}"


def test_ratings_rise_with_affinity_and_reviews_name_what_was_liked() -> None:
    data, _ = generate_catalog(CatalogConfig(seed=2, num_users=200, num_items=300, interactions_per_user=15))
    colour_match = data.taste_labels("colour")[data.user] == data.item_labels("colour")[data.item]
    assert data.rating[colour_match].mean() > data.rating[~colour_match].mean() + 0.3
    liked_colours = [data.items[i].attributes["colour"] for i in data.item[colour_match]]
    reviews = [data.review[r] for r in np.flatnonzero(colour_match)]
    named = np.mean([c in text for c, text in zip(liked_colours, reviews, strict=True)])
    assert named > 0.3


def test_modalities_carry_different_signals() -> None:
    data, _ = generate_catalog(CatalogConfig(seed=5, num_users=50, num_items=400))
    # Texts name the colour for only part of the items, so text is a weaker colour signal than the image.
    names_colour = np.mean([it.attributes["colour"] in it.text.lower() for it in data.items])
    assert 0.3 < names_colour < 0.7
    assert all(it.attributes["material"] in it.text.lower() for it in data.items)
    # Visual and textual tastes are drawn independently.
    colour, material = data.taste_labels("colour"), data.taste_labels("material")
    assert len({(c, m) for c, m in zip(colour, material, strict=True)}) > 20


def test_rendered_images_show_colour_and_differ_by_category(small_catalog: Path) -> None:
    red = np.asarray(render_item_image("dress", "red", "plain", size=64), dtype=np.float32)
    blue = np.asarray(render_item_image("dress", "blue", "plain", size=64), dtype=np.float32)
    centre = (slice(28, 36), slice(28, 36))
    assert red[centre][..., 0].mean() > 150 and red[centre][..., 2].mean() < 100
    assert blue[centre][..., 2].mean() > 150 and blue[centre][..., 0].mean() < 100
    masks = {c: (np.asarray(render_item_image(c, "green", "plain")).sum(-1) < 600) for c in CATEGORIES}
    for a in CATEGORIES:
        for b in CATEGORIES:
            if a < b:
                assert (masks[a] != masks[b]).mean() > 0.05, f"{a} and {b} silhouettes are nearly identical"
    striped = np.asarray(render_item_image("bag", "green", "stripes"), dtype=np.float32)
    plain = np.asarray(render_item_image("bag", "green", "plain"), dtype=np.float32)
    assert np.abs(striped - plain).mean() > 5
    with Image.open(read_dataset(small_catalog).items[0].image) as written:
        assert written.size == (64, 64) and written.mode == "RGB"


def test_catalog_config_is_validated(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.yaml"
    bad.write_text("num_user: 10\n")
    with pytest.raises(ConfigError, match="num_user"):
        load_config(CatalogConfig, bad)
    with pytest.raises(ConfigError, match="image_size"):
        load_config(CatalogConfig, None, ["image_size=8"])
    with pytest.raises(ConfigError, match="num_users"):
        load_config(CatalogConfig, None, ["num_users=many"])
