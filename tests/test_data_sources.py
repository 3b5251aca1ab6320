"""Loaders of public layouts into the dataset format: MovieLens, Amazon Reviews 2023, tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pmg.data import DatasetError, read_dataset, write_dataset
from pmg.data.sources import TableMapping, load_amazon2023, load_movielens, load_table

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_movielens_latest_small_for_real(ml_latest_small: Path, tmp_path: Path) -> None:
    data = load_movielens(ml_latest_small)
    assert (data.num_users, data.num_items, data.num_interactions) == (610, 9742, 100836)
    toy_story = data.items[data.item_index()["1"]]
    assert toy_story.title == "Toy Story (1995)" and "Animation" in toy_story.description
    assert "pixar" in toy_story.description  # tags become item text
    assert sum(bool(r) for r in data.review) > 1000  # a user's tags on a movie become the review
    assert set(np.unique(data.rating)) <= {0.5 * k for k in range(1, 11)}
    # No posters given: every item is flagged without image, none dropped.
    assert data.report.items_without_image == 9742
    out = write_dataset(data, tmp_path / "ml")
    again = read_dataset(out)
    assert again.num_interactions == data.num_interactions and again.report.items_without_image == 9742


def test_movielens_posters_give_the_image_modality(tmp_path: Path) -> None:
    posters = tmp_path / "posters"
    posters.mkdir()
    Image.new("RGB", (20, 30), (200, 10, 10)).save(posters / "1.jpg")
    Image.new("RGB", (20, 30), (10, 10, 200)).save(posters / "3.png")
    data = load_movielens(FIXTURES / "ml-1m-cut", posters=posters)
    index = data.item_index()
    assert data.items[index["1"]].image == posters / "1.jpg"
    assert data.items[index["3"]].image == posters / "3.png"
    assert data.report.items_without_image == data.num_items - 2
    (posters / "1.jpg").write_bytes(b"truncated")
    with pytest.raises(DatasetError, match=r"posters/1\.jpg: not a readable image: Pillow cannot identify its format"):
        load_movielens(FIXTURES / "ml-1m-cut", posters=posters)


@pytest.mark.parametrize("layout", ["ml-100k-cut", "ml-1m-cut"])
def test_movielens_older_layouts(layout: str) -> None:
    data = load_movielens(FIXTURES / layout)
    assert data.num_interactions == 600 and data.num_users == 6 and data.num_items == 511
    index = data.item_index()
    assert data.items[index["1"]].title == "Toy Story (1995)"
    assert "Animation" in data.items[index["1"]].description
    assert set(np.unique(data.rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_movielens_bad_inputs(ml_latest_small: Path, tmp_path: Path) -> None:
    root = tmp_path / "ml"
    root.mkdir()
    shutil.copy(ml_latest_small / "movies.csv", root)
    ratings = (ml_latest_small / "ratings.csv").read_text().splitlines()[:50]
    (root / "ratings.csv").write_text("\n".join(["userId,itemId,rating,timestamp", *ratings[1:]]) + "\n")
    with pytest.raises(DatasetError, match=r"ratings\.csv, line 1: missing column\(s\) \['movieId'\]"):
        load_movielens(root)
    (root / "ratings.csv").write_text("\n".join([*ratings, "1,99999999,4.0,964982703"]) + "\n")
    with pytest.raises(DatasetError, match=r"ratings\.csv, line 51: unknown item id '99999999'"):
        load_movielens(root)
    (root / "ratings.csv").write_text("\n".join([*ratings, ratings[10]]) + "\n")
    with pytest.raises(DatasetError, match=r"line 51: duplicate interaction .* line 11"):
        load_movielens(root)
    assert load_movielens(root, duplicates="drop").report.duplicate_interactions_dropped == 1
    (root / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n1,1,4.0,9\xff\n")
    with pytest.raises(DatasetError, match=r"ratings\.csv, line 2: not valid utf-8"):
        load_movielens(root)
    (root / "ratings.csv").write_text("")
    with pytest.raises(DatasetError, match=r"ratings\.csv: file is empty"):
        load_movielens(root)
    with pytest.raises(DatasetError, match="not a MovieLens folder"):
        load_movielens(tmp_path)


def _amazon(tmp_path: Path) -> tuple[Path, Path, Path]:
    meta = [
        {"parent_asin": "B01", "title": "Red silk scarf", "features": ["100% silk"], "description": ["Soft."], "main_category": "Fashion", "store": "Alder"},
        {"parent_asin": "B02", "title": "Wool hat", "features": [], "description": [], "main_category": "Fashion"},
        {"parent_asin": "B03", "title": "", "features": [], "description": []},
    ]
    reviews = [
        {"rating": 5.0, "title": "Love it", "text": "Great colour.", "parent_asin": "B01", "user_id": "U1", "timestamp": 1588687728923},
        {"rating": 3.0, "title": "", "text": "Itchy.", "parent_asin": "B02", "user_id": "U1", "timestamp": 1588687729923},
        {"rating": 4.0, "title": "Nice", "text": "", "parent_asin": "B02", "user_id": "U2", "timestamp": 1600000000000},
        {"rating": 2.0, "title": "Meh", "text": "", "parent_asin": "B03", "user_id": "U2", "timestamp": 1600000001000},
    ]
    images = tmp_path / "img"
    images.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(images / "B01.jpg")
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    return tmp_path / "reviews.jsonl", tmp_path / "meta.jsonl", images


def test_amazon2023(tmp_path: Path) -> None:
    reviews, meta, images = _amazon(tmp_path)
    data = load_amazon2023(reviews, meta, images=images)
    assert data.num_users == 2 and data.num_items == 3 and data.num_interactions == 4
    assert data.items[0].text == "Red silk scarf. 100% silk Soft." and data.items[0].attributes["store"] == "Alder"
    assert data.timestamp[0] == 1588687728
    assert data.review[0] == "Love it Great colour."
    assert data.report.items_without_image == 2 and data.report.items_without_text == 1
    (images / "B02.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    with pytest.raises(DatasetError, match=r"img/B02\.png: not a readable image"):
        load_amazon2023(reviews, meta, images=images)
    skipped = load_amazon2023(reviews, meta, images=images, on_bad_images="skip")
    assert skipped.items[1].image is None and skipped.report.items_without_image == 2
    assert [(s.item_id, Path(s.image).name) for s in skipped.report.skipped_images] == [("B02", "B02.png")]
    lines = reviews.read_text().splitlines()
    reviews.write_text("\n".join([*lines, '{"rating": 5, "parent_asin": "B09", "user_id": "U3", "timestamp": 1}']) + "\n")
    with pytest.raises(DatasetError, match=r"reviews\.jsonl, line 5: unknown item id 'B09'"):
        load_amazon2023(reviews, meta)
    reviews.write_text("\n".join([*lines, '{"rating": 5, "parent_asin": "B01", "timestamp": 1}']) + "\n")
    with pytest.raises(DatasetError, match=r"line 5, column 'user_id': missing required field"):
        load_amazon2023(reviews, meta)


def test_generic_table_with_mapping(tmp_path: Path) -> None:
    (tmp_path / "catalog.jsonl").write_text(
        '{"sku": "x", "name": "Blue shirt", "pic": "x.png", "colour": "blue"}\n{"sku": "y", "name": "Plain mug"}\n'
    )
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    mapping = TableMapping(user="who", item="sku", timestamp="when", rating="stars", review=None,
                           item_title="name", item_description=None, item_image="pic", extra_item_attributes=["colour"])
    (tmp_path / "log.csv").write_text("who,sku,when,stars\na,x,10,5\na,y,11,\nb,x,12,3\n")
    data = load_table(tmp_path / "log.csv", items=tmp_path / "catalog.jsonl", mapping=mapping)
    assert data.num_users == 2 and data.num_items == 2
    assert np.isnan(data.rating[1]) and data.rating[0] == 5.0
    assert data.items[0].image == (tmp_path / "x.png").resolve() and data.items[0].attributes == {"colour": "blue"}
    assert data.report.items_without_image == 1
    (tmp_path / "catalog.jsonl").write_text('{"sku": "x", "name": "Blue shirt", "pic": "x.png"}\n{"sku": "y", "pic": "gone.png"}\n')
    with pytest.raises(DatasetError, match=r"catalog\.jsonl, line 2, column 'image': .*gone\.png: image file does not exist"):
        load_table(tmp_path / "log.csv", items=tmp_path / "catalog.jsonl", mapping=mapping)
    skipped = load_table(tmp_path / "log.csv", items=tmp_path / "catalog.jsonl", mapping=mapping, on_bad_images="skip")
    assert skipped.items[1].image is None and skipped.items[0].image is not None
    assert [(s.item_id, s.reason) for s in skipped.report.skipped_images] == [("y", "image file does not exist")]
    bare = load_table(tmp_path / "log.csv", mapping=TableMapping(user="who", item="sku", timestamp="when", rating="stars", review=None))
    assert bare.report.items_without_text == 2
    with pytest.raises(DatasetError, match=r"log\.csv, line 1: missing column\(s\) \['user_id', 'item_id', 'timestamp'\]"):
        load_table(tmp_path / "log.csv")
