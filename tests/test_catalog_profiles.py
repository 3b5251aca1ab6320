"""The catalog's profiles: the default one pinned, the sparse one short, partly popularity-driven,
with a shade that only the images show."""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pmg.config import ConfigError, load_config
from pmg.data import CatalogConfig, generate_catalog, read_dataset, render_item_image, write_catalog
from pmg.data.catalog import COLOURS, SHADES, SparseProfileConfig, shade_colour
from pmg.data.split import temporal_split

SMALL = {"num_users": 60, "num_items": 120}
# The default profile's files for this config, computed with the catalog code before profiles
# existed: it pins the default profile (a change here changes every default run's data).
# Images are hashed by their pixels, so that a Pillow build that encodes PNGs differently passes.
DEFAULT_PROFILE_DIGEST = "e74ae7ecb53809d72eb79ea2494368bde685e900b1adfa5780dc2d2ca052fd10"


def _catalog_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        if path.suffix == ".png":
            with Image.open(path) as image:
                digest.update(f"{image.mode} {image.size}".encode())
                digest.update(np.asarray(image).tobytes())
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _file_bytes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_profile_is_unchanged(tmp_path: Path) -> None:
    out = write_catalog(tmp_path / "d", CatalogConfig(seed=11, interactions_per_user=10, **SMALL))
    assert _catalog_digest(out) == DEFAULT_PROFILE_DIGEST
    assert "shade" not in read_dataset(out).attributes


@pytest.mark.parametrize("profile", ["default", "sparse"])
def test_each_profile_writes_byte_identical_files_for_a_seed(tmp_path: Path, profile: str) -> None:
    config = CatalogConfig(seed=5, profile=profile, **SMALL)
    a = _file_bytes(write_catalog(tmp_path / "a", config))
    b = _file_bytes(write_catalog(tmp_path / "b", config))
    assert a == b
    other = _file_bytes(write_catalog(tmp_path / "c", CatalogConfig(seed=6, profile=profile, **SMALL)))
    assert other["interactions.csv"] != a["interactions.csv"]


def test_sparse_histories_are_short_with_a_long_tail_and_split_leave_last_out() -> None:
    data, _ = generate_catalog(CatalogConfig(seed=1, profile="sparse", num_users=400, num_items=300, image_size=16))
    counts = np.bincount(data.user, minlength=data.num_users)
    assert np.median(counts) <= 8
    assert counts.min() >= 3
    assert counts.max() >= 3 * np.median(counts)  # the long tail
    split = temporal_split(data, "leave_last_out")
    assert len(np.unique(data.user[split.train])) == data.num_users  # every user keeps a training row


def _taste_match(data) -> float:
    return float((data.taste_labels("colour")[data.user] == data.item_labels("colour")[data.item]).mean())


def test_sparse_taste_share_sets_how_much_taste_drives_the_history() -> None:
    def match(share: float) -> float:
        config = CatalogConfig(seed=2, profile="sparse", num_users=300, num_items=300, image_size=16,
                               sparse=SparseProfileConfig(taste_share=share, median_interactions=8))
        return _taste_match(generate_catalog(config)[0])

    chance = 1 / len(COLOURS)
    none, some, full = match(0.0), match(0.6), match(1.0)
    assert abs(none - chance) < 0.04  # popularity alone ignores taste
    assert none + 0.05 < some < full - 0.05


def test_sparse_shade_is_a_hidden_visual_taste_no_text_names(tmp_path: Path) -> None:
    out = write_catalog(tmp_path / "s", CatalogConfig(seed=3, profile="sparse", num_users=150, num_items=200))
    data = read_dataset(out)
    spec = data.attributes["shade"]
    assert spec.hidden and spec.modality == "visual" and spec.values == SHADES
    assert set(data.user_tastes) == {"colour", "pattern", "material", "style", "shade"}
    assert {it.attributes["shade"] for it in data.items} == set(SHADES)
    assert set(data.user_tastes["shade"]) == set(SHADES)
    texts = [it.title for it in data.items] + [it.description for it in data.items] + data.review
    named = [t for t in texts if re.search("light|dark", t, re.IGNORECASE)]
    assert not named, named[:3]
    # The shade still drives interactions, so it is a taste the images alone reveal.
    assert (data.taste_labels("shade")[data.user] == data.item_labels("shade")[data.item]).mean() > 0.6


def test_shade_is_visible_in_the_images(tmp_path: Path) -> None:
    out = write_catalog(tmp_path / "s", CatalogConfig(seed=4, profile="sparse", **SMALL))
    data = read_dataset(out)
    brightness = {shade: [] for shade in SHADES}
    for it in data.items:
        with Image.open(it.image) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        drawn = np.abs(pixels - 236).sum(-1) > 12  # pixels off the grey background
        brightness[it.attributes["shade"]].append(pixels[drawn].mean())
    assert np.mean(brightness["dark"]) + 30 < np.mean(brightness["light"])
    for colour in COLOURS:
        dark = np.asarray(render_item_image("dress", colour, "plain", shade="dark"), dtype=np.float32)
        light = np.asarray(render_item_image("dress", colour, "plain", shade="light"), dtype=np.float32)
        assert dark[28:36, 28:36].mean() + 30 < light[28:36, 28:36].mean(), colour
    with pytest.raises(ValueError, match="shade"):
        render_item_image("dress", "red", "plain", shade="medium")


def _lab(rgb: tuple[int, int, int]) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour: distances in it follow how different colours look."""
    c = np.asarray(rgb, dtype=float) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    f = np.cbrt(xyz / np.array([0.95047, 1.0, 1.08883]))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_shaded_colours_stay_apart() -> None:
    # The unshaded palette's closest pair (blue / purple) is 30 apart; the shaded one's 23.
    shaded = {(c, s): shade_colour(c, s) for c in COLOURS for s in SHADES}
    for (a, rgb_a), (b, rgb_b) in itertools.combinations(shaded.items(), 2):
        apart = np.linalg.norm(_lab(rgb_a) - _lab(rgb_b))
        assert apart > (20 if a[0] != b[0] else 25), f"{a} {rgb_a} and {b} {rgb_b} are {apart:.0f} apart"
    assert shade_colour("red", None) == COLOURS["red"]


def test_profile_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Invalid value 'dense', expected one of \[default, sparse\] \(key: profile\)"):
        load_config(CatalogConfig, None, ["profile=dense"])
    with pytest.raises(ValueError, match="not one of"):
        generate_catalog(CatalogConfig(profile="Sparse"))
    with pytest.raises(ConfigError, match="taste_share"):
        load_config(CatalogConfig, None, ["profile=sparse", "sparse.taste_share=1.5"])
    with pytest.raises(ConfigError, match="min_interactions"):
        load_config(CatalogConfig, None, ["sparse.min_interactions=2"])
    from pmg.data.dataset_stage import DatasetConfig

    assert load_config(DatasetConfig, None, ["catalog.profile=sparse"]).catalog.profile == "sparse"
    assert load_config(CatalogConfig, Path(__file__).resolve().parents[1] / "configs" / "catalog.yaml") == CatalogConfig()


def test_the_judge_reads_the_hidden_shade_and_the_zoo_never_names_it() -> None:
    from pmg.data.split import temporal_split
    from pmg.zoo.config import HoldoutConfig, JudgeTrainingConfig, ZooConfig
    from pmg.zoo.corpus import attribute_caption, build_corpus, copy_warmup_documents
    from pmg.zoo.judge_recipe import judge_attributes

    config = JudgeTrainingConfig()
    default, _ = generate_catalog(CatalogConfig(seed=0, image_size=16, **SMALL))
    assert list(judge_attributes(config, SimpleNamespace(data=default))) == config.attributes
    sparse, _ = generate_catalog(CatalogConfig(seed=0, profile="sparse", image_size=16, **SMALL))
    read = judge_attributes(config, SimpleNamespace(data=sparse))
    assert list(read) == [*config.attributes, "shade"] and read["shade"] == SHADES

    item = sparse.items[0].attributes
    assert item["shade"] in SHADES and not re.search("light|dark", attribute_caption(item) or "")
    # Only when asked (zoo.sdxl.unet.hidden_visual_words, off by default) a caption names the shade, before the colour.
    named = attribute_caption(item, 0, ("shade",))
    assert named is not None and f"{item['shade']} {item['colour']}" in named
    article = re.compile(r"^an? ")
    assert article.sub("", named.replace(f"{item['shade']} ", "", 1)) == article.sub("", attribute_caption(item) or "")
    assert not ZooConfig().sdxl.unet.hidden_visual_words
    corpus = build_corpus(sparse, temporal_split(sparse), HoldoutConfig(combos=0), image_size=8)
    documents = corpus.lm_texts + copy_warmup_documents(corpus, 300, seed=0)
    assert not [d for d in documents if re.search(r"\b(light|dark)\b", d)]
