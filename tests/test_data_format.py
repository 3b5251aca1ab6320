"""The dataset format: round trips and every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from pmg.atomic import atomic_directory, atomic_file
from pmg.data import DatasetError, read_dataset, write_dataset


@pytest.fixture()
def dataset(small_catalog: Path, tmp_path: Path) -> Path:
    """A writable copy of the small catalog."""
    return Path(shutil.copytree(small_catalog, tmp_path / "ds"))


def test_round_trip_keeps_everything(dataset: Path, tmp_path: Path) -> None:
    data = read_dataset(dataset)
    out = write_dataset(data, tmp_path / "copy")
    again = read_dataset(out)
    assert again.user_ids == data.user_ids
    assert [it.item_id for it in again.items] == [it.item_id for it in data.items]
    assert [it.text for it in again.items] == [it.text for it in data.items]
    assert [it.attributes for it in again.items] == [it.attributes for it in data.items]
    for name in ("user", "item", "timestamp"):
        np.testing.assert_array_equal(getattr(again, name), getattr(data, name))
    np.testing.assert_array_equal(again.rating, data.rating)
    assert again.review == data.review and again.user_tastes == data.user_tastes
    assert again.items[0].image.read_bytes() == data.items[0].image.read_bytes()


def _edit_csv(path: Path, line: int, new: str | None) -> None:
    lines = path.read_text().splitlines()
    if new is None:
        lines.insert(line, lines[line - 1])
    else:
        lines[line - 1] = new
    path.write_text("\n".join(lines) + "\n")


def test_missing_column_is_named(dataset: Path) -> None:
    _edit_csv(dataset / "interactions.csv", 1, "user,item_id,timestamp,rating,review")
    with pytest.raises(DatasetError, match=r"interactions\.csv, line 1: missing column\(s\) \['user_id'\]"):
        read_dataset(dataset)


def test_unknown_item_id_is_named_with_line(dataset: Path) -> None:
    _edit_csv(dataset / "interactions.csv", 5, "u00001,nope,1704067200,4,")
    with pytest.raises(DatasetError, match=r"line 5, column 'item_id': unknown item_id 'nope'"):
        read_dataset(dataset)


def test_duplicated_row_is_an_error_or_dropped_on_request(dataset: Path) -> None:
    _edit_csv(dataset / "interactions.csv", 3, None)
    with pytest.raises(DatasetError, match=r"line 4: duplicate interaction .* line 3"):
        read_dataset(dataset)
    data = read_dataset(dataset, duplicates="drop")
    assert data.report.duplicate_interactions_dropped == 1


def test_bad_number_is_named(dataset: Path) -> None:
    _edit_csv(dataset / "interactions.csv", 2, "u00000,i00001,yesterday,4,")
    with pytest.raises(DatasetError, match=r"line 2, column 'timestamp'"):
        read_dataset(dataset)


def test_broken_encoding_is_reported(dataset: Path) -> None:
    path = dataset / "items.jsonl"
    path.write_bytes(path.read_bytes().replace(b"cotton", b"cott\xff\xfen", 1))
    with pytest.raises(DatasetError, match=r"items\.jsonl, line \d+: not valid utf-8"):
        read_dataset(dataset)


def test_malformed_json_line_is_named(dataset: Path) -> None:
    path = dataset / "items.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"items\.jsonl, line 3: not valid JSON"):
        read_dataset(dataset)


def test_missing_and_unreadable_images(dataset: Path) -> None:
    data = read_dataset(dataset)
    data.items[3].image.unlink()
    with pytest.raises(DatasetError, match=r"items\.jsonl, line 4, column 'image': .*\.png: image file does not exist"):
        read_dataset(dataset)
    data.items[3].image.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"items\.jsonl, line 4, column 'image': .*\.png: not a readable image"):
        read_dataset(dataset)


def test_items_without_image_or_text_are_kept_and_counted(dataset: Path) -> None:
    path = dataset / "items.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["image"] = None
    rows[1]["title"], rows[1]["description"] = "", ""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = read_dataset(dataset)
    assert data.num_items == len(rows)
    assert data.report.items_without_image == 1 and data.report.items_without_text == 1
    assert not data.has_image[0] and not data.has_text[1] and data.has_image[1]


@pytest.mark.parametrize("name", ["interactions.csv", "items.jsonl"])
def test_empty_file(dataset: Path, name: str) -> None:
    (dataset / name).write_text("")
    with pytest.raises(DatasetError, match=rf"{name}: file is empty"):
        read_dataset(dataset)


def test_wrong_format_version_and_not_a_dataset(dataset: Path, tmp_path: Path) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["version"] = 99
    (dataset / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="format version 99 is not supported"):
        read_dataset(dataset)
    with pytest.raises(DatasetError, match="not a pmg dataset directory"):
        read_dataset(tmp_path)


def test_failed_write_leaves_previous_dataset_intact(dataset: Path) -> None:
    data = read_dataset(dataset)
    before = (dataset / "interactions.csv").read_bytes()
    data.items[0].image = dataset / "images" / "missing.png"
    with pytest.raises(DatasetError, match="does not exist"):
        write_dataset(data, dataset)
    assert (dataset / "interactions.csv").read_bytes() == before
    assert not [p for p in dataset.parent.iterdir() if p.name.startswith(".ds.")]


def test_atomic_file_keeps_old_content_on_error(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    with atomic_directory(tmp_path / "dir") as tmp:
        (tmp / "a").write_text("1")
    with atomic_directory(tmp_path / "dir") as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "weights.bin"]


def test_atomic_writes_get_the_modes_open_and_mkdir_would_give(tmp_path: Path) -> None:
    # Not mkstemp's 0600 / mkdtemp's 0700: another account must read a shared run or a job's shards.
    previous = os.umask(0o027)
    try:
        with atomic_file(tmp_path / "file.bin") as tmp:
            tmp.write_bytes(b"x")
        with atomic_directory(tmp_path / "dir") as tmp:
            (tmp / "a").write_text("1")
        with atomic_directory(tmp_path / "partial", resumable=True) as tmp:
            (tmp / "a").write_text("1")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "file.bin").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "partial").stat().st_mode) == 0o750
