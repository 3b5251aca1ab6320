"""Reading item images (``pmg.data.images``): every mode to RGB, EXIF orientation, the fits, bad
files named, and ``on_bad_images`` through the loaders and the data stage."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pmg.cli import main
from pmg.config import ConfigError, load_config
from pmg.data.dataset_stage import DATA_STAGE, SKIPPED_IMAGES_FILE, DatasetConfig, load_prepared
from pmg.data.format import read_dataset, write_dataset
from pmg.data.images import (
    ImageChecks,
    ImageFit,
    OnBadImages,
    fit_square,
    image_tensor,
    load_image,
    load_image_tensor,
    open_image,
    rgb_image,
    verify_image,
)
from pmg.data.records import DatasetError
from pmg.data.sources import load_movielens
from pmg.features import FeatureEncoderSpec, encode_items
from pmg.runs import RunDirectory, RunError, RunWarning
from pmg.zoo.stage import dataset_content_hash

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(image)[y, x])


# ---------------------------------------------------------------- square images read as before


@pytest.mark.parametrize("side", [16, 64, 97])
@pytest.mark.parametrize("fit", list(ImageFit))
def test_a_square_image_gives_the_old_pixels_under_every_fit(tmp_path: Path, side: int, fit: ImageFit) -> None:
    path = tmp_path / "square.png"
    _noise(side, side).save(path)
    with Image.open(path) as image:  # what every reader did before pmg.data.images
        old = image.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
    old_tensor = torch.from_numpy(np.asarray(old, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    assert np.array_equal(np.asarray(load_image(path, 64, fit)), np.asarray(old))
    assert torch.equal(load_image_tensor(path, 64, fit), old_tensor)
    tensor = load_image_tensor(path, 64, fit)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 64, 64) and -1.0 <= tensor.min() and tensor.max() <= 1.0


def test_clip_pixel_values_of_square_images_are_what_the_processor_gave_before(tmp_path: Path) -> None:
    from pmg.zoo.clip_recipe import _ImageProcessor, clip_pixel_values

    paths = []
    for side in (20, 64, 100):
        paths.append(tmp_path / f"{side}.png")
        _noise(side, side, seed=side).save(paths[-1])
    processor = SimpleNamespace(image_processor=_ImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3))
    old = []
    for path in paths:  # before: the file's RGB at its own size, resized and cropped by the processor
        with Image.open(path) as image:
            old.append(processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"])
    for fit in ImageFit:
        assert torch.equal(clip_pixel_values(processor, paths, fit), torch.cat(old))


# ---------------------------------------------------------------- fits


@pytest.mark.parametrize(("width", "height"), [(20, 30), (30, 20)])
def test_pad_letterboxes_the_short_side_with_the_fill_and_centres_the_content(tmp_path: Path, width: int, height: int) -> None:
    path = tmp_path / "poster.png"
    Image.new("RGB", (width, height), RED).save(path)
    square = load_image(path, 30)  # pad is the default
    assert square.size == (30, 30) and square.mode == "RGB"
    array = np.asarray(square)
    # The 20-pixel side is centred: 5 pixels of white fill on each side of it.
    content = array[:, 5:25] if width < height else array[5:25, :]
    before = array[:, :5] if width < height else array[:5, :]
    after = array[:, 25:] if width < height else array[25:, :]
    assert (content == RED).all() and (before == WHITE).all() and (after == WHITE).all()
    black = fit_square(open_image(path), 30, ImageFit.pad, fill=(0, 0, 0))
    assert _pixel(black, 0, 0) == (0, 0, 0) and _pixel(black, 15, 15) == RED


def test_pad_keeps_a_one_pixel_wide_image_as_a_centred_column(tmp_path: Path) -> None:
    path = tmp_path / "thin.png"
    Image.new("RGB", (1, 200), BLUE).save(path)
    array = np.asarray(load_image(path, 64, ImageFit.pad))
    assert (array[:, 31] == BLUE).all()
    assert (np.delete(array, 31, axis=1) == WHITE).all()


def test_squash_stretches_and_crop_keeps_the_centre(tmp_path: Path) -> None:
    path = tmp_path / "bands.png"
    bands = Image.new("RGB", (20, 30), GREEN)  # green 5-pixel bands above and below a red 20 x 20 centre
    bands.paste(Image.new("RGB", (20, 20), RED), (0, 5))
    bands.save(path)
    squashed = np.asarray(load_image(path, 20, ImageFit.squash))
    assert tuple(squashed[0, 10]) == GREEN and tuple(squashed[19, 10]) == GREEN and tuple(squashed[10, 10]) == RED
    assert not (squashed == WHITE).all(axis=-1).any()
    cropped = np.asarray(load_image(path, 20, ImageFit.crop))
    assert (cropped == RED).all()  # the bands were the ends of the long side, cut
    assert ImageFit("crop") is ImageFit.crop
    with pytest.raises(ValueError, match="stretch"):
        load_image(path, 20, "stretch")


# ---------------------------------------------------------------- modes


def test_grayscale_and_one_bit_become_grey_rgb(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 100).save(tmp_path / "grey.png")
    assert _pixel(open_image(tmp_path / "grey.png"), 3, 3) == (100, 100, 100)
    bits = Image.new("1", (8, 8), 0)
    bits.putpixel((2, 2), 1)
    bits.save(tmp_path / "bits.png")
    image = open_image(tmp_path / "bits.png")
    assert image.mode == "RGB" and _pixel(image, 2, 2) == WHITE and _pixel(image, 0, 0) == (0, 0, 0)


def test_palette_transparency_becomes_white(tmp_path: Path) -> None:
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, *RED] + [0] * (256 - 2) * 3)
    palette.putpixel((4, 4), 1)
    palette.save(tmp_path / "palette.png", transparency=0)
    image = open_image(tmp_path / "palette.png")
    assert _pixel(image, 0, 0) == WHITE  # index 0: black, but transparent
    assert _pixel(image, 4, 4) == RED
    palette.save(tmp_path / "palette.gif", transparency=0)
    assert _pixel(open_image(tmp_path / "palette.gif"), 0, 0) == WHITE


@pytest.mark.parametrize("suffix", [".png", ".webp"])
def test_rgba_is_composited_on_white(tmp_path: Path, suffix: str) -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (*BLUE, 255))
    rgba.putpixel((2, 2), (*RED, 128))
    path = tmp_path / f"rgba{suffix}"
    rgba.save(path, **({"lossless": True} if suffix == ".webp" else {}))
    image = open_image(path)
    assert _pixel(image, 0, 0) == WHITE
    assert _pixel(image, 1, 1) == BLUE
    assert _pixel(image, 2, 2) == (255, 127, 127)  # half red over white
    la = Image.new("LA", (4, 4), (0, 0))
    la.save(tmp_path / "la.png")
    assert _pixel(open_image(tmp_path / "la.png"), 0, 0) == WHITE


def test_cmyk_jpeg_red_is_red(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    with Image.open(tmp_path / "cmyk.jpg") as raw:
        assert raw.mode == "CMYK"
    red, green, blue = _pixel(open_image(tmp_path / "cmyk.jpg"), 8, 8)
    assert red > 220 and green < 40 and blue < 40


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    levels = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode.startswith("I")
    row = np.asarray(open_image(tmp_path / "deep.png"))[0]
    # convert("RGB") clipped every level above 255 to white; scaled, 1000 is nearly black and 32768 mid-grey.
    assert row[:, 0].tolist() == [0, 4, 128, 255] and (row == row[:, :1]).all()
    wide = Image.fromarray(levels.astype(np.int32))  # mode I, as older Pillow reads 16-bit PNG
    assert wide.mode == "I" and np.asarray(rgb_image(wide))[0, :, 0].tolist() == [0, 4, 128, 255]
    floats = Image.fromarray(np.array([[-3.0, 100.7, 300.0]], dtype=np.float32))  # mode F: Pillow's 0..255 scale
    assert floats.mode == "F" and np.asarray(rgb_image(floats))[0, :, 0].tolist() == [0, 101, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = Image.new("RGB", (30, 20), BLUE)
    stored.paste(Image.new("RGB", (8, 8), RED), (0, 0))  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; show the image rotated 90 degrees clockwise
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    image = open_image(tmp_path / "photo.jpg")
    assert image.size == (20, 30)
    red, _, blue = _pixel(image, 17, 2)  # rotated clockwise, the top-left corner is top-right
    assert red > 200 and blue < 60
    red, _, blue = _pixel(image, 2, 2)
    assert red < 60 and blue > 200


def test_image_tensor_of_a_pil_image_reads_like_the_file(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (10, 20), (*RED, 0))
    rgba.save(tmp_path / "clear.png")
    from_memory = image_tensor(rgba, 16)
    assert torch.equal(from_memory, load_image_tensor(tmp_path / "clear.png", 16))
    assert torch.equal(from_memory, torch.ones(3, 16, 16))  # all transparent: all white


# ---------------------------------------------------------------- bad files


def _bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """A truncated JPEG, a text file named .jpg and a missing file, each with its problem."""
    folder.mkdir(exist_ok=True)
    full = folder / "full.jpg"
    _noise(120, 80).save(full, quality=90)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    text = folder / "text.jpg"
    text.write_text("not an image\n")
    return {
        "truncated": (truncated, r"not a readable image: truncated or damaged \(image file is truncated"),
        "text": (text, "not a readable image: Pillow cannot identify its format"),
        "missing": (folder / "missing.jpg", "image file does not exist"),
    }


@pytest.mark.parametrize("kind", ["truncated", "text", "missing"])
def test_a_bad_file_is_an_error_naming_its_path_and_problem(tmp_path: Path, kind: str) -> None:
    path, problem = _bad_files(tmp_path)[kind]
    for read in (verify_image, open_image, lambda p: load_image(p, 16), lambda p: load_image_tensor(p, 16)):
        with pytest.raises(DatasetError, match=f"^{path}: {problem}") as caught:
            read(path)
        assert caught.value.path == path


def test_image_checks_raise_with_the_owner_or_skip_and_record(tmp_path: Path) -> None:
    bad = _bad_files(tmp_path)
    good = tmp_path / "full.jpg"
    strict = ImageChecks()
    assert strict.checked(good, item_id="a") == good
    with pytest.raises(DatasetError, match=r"items\.csv, line 7, column 'image': .*text\.jpg: not a readable image"):
        strict.checked(bad["text"][0], item_id="b", owner=tmp_path / "items.csv", line=7)
    lenient = ImageChecks(OnBadImages.skip)
    assert [lenient.checked(bad[k][0], item_id=k) for k in ("truncated", "text", "missing")] == [None] * 3
    assert [(s.item_id, Path(s.image).name) for s in lenient.skipped] == [
        ("truncated", "truncated.jpg"), ("text", "text.jpg"), ("missing", "missing.jpg")]
    assert lenient.skipped[2].reason == "image file does not exist"


# ---------------------------------------------------------------- through the loaders and the data stage


def _posters(folder: Path) -> Path:
    """Posters for ml-1m-cut: 1 and 3 read (2:3, as MovieLens posters are), 2 is truncated, 4 is text."""
    folder.mkdir()
    Image.new("RGB", (20, 30), RED).save(folder / "1.jpg")
    Image.new("RGBA", (20, 30), (*BLUE, 255)).save(folder / "3.png")
    bad = _bad_files(folder / "spare")
    (folder / "2.jpg").write_bytes(bad["truncated"][0].read_bytes())
    (folder / "4.jpg").write_text("not an image\n")
    return folder


def test_movielens_posters_stop_the_load_or_are_skipped_and_counted(tmp_path: Path) -> None:
    posters = _posters(tmp_path / "posters")
    with pytest.raises(DatasetError, match=r"posters/2\.jpg: not a readable image: truncated"):
        load_movielens(FIXTURES / "ml-1m-cut", posters=posters)
    with pytest.raises(DatasetError, match=r"posters/2\.jpg"):
        load_movielens(FIXTURES / "ml-1m-cut", posters=posters, on_bad_images="error")
    data = load_movielens(FIXTURES / "ml-1m-cut", posters=posters, on_bad_images=OnBadImages.skip)
    index = data.item_index()
    assert data.items[index["1"]].image == posters / "1.jpg" and data.items[index["3"]].image == posters / "3.png"
    assert data.items[index["2"]].image is None and data.items[index["4"]].image is None
    assert not data.has_image[index["2"]] and data.has_image[index["1"]]
    assert data.report.items_without_image == data.num_items - 2
    assert [(s.item_id, Path(s.image).name) for s in data.report.skipped_images] == [("2", "2.jpg"), ("4", "4.jpg")]
    assert "2 unreadable images skipped" in data.report.summary()
    with pytest.raises(ValueError, match="sometimes"):
        load_movielens(FIXTURES / "ml-1m-cut", posters=posters, on_bad_images="sometimes")


def test_read_dataset_skips_a_bad_image_with_on_bad_images_skip(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    posters = tmp_path / "posters"
    posters.mkdir()
    Image.new("RGB", (20, 30), RED).save(posters / "1.jpg")
    Image.new("RGB", (20, 30), BLUE).save(posters / "3.jpg")
    config = load_config(DatasetConfig, None, ["kind=movielens", f"path={FIXTURES / 'ml-1m-cut'}", f"images={posters}"])
    DATA_STAGE.run(config, run, "", False)
    dataset = run.stage_dir("data") / "dataset"
    broken = read_dataset(dataset).items[0].image
    assert broken is not None
    broken.write_bytes(b"garbage")
    # Later stages do not decode every image again: the stage's file record names the damage.
    with pytest.raises(RunError, match=f"{broken.name}.*--force data"):
        load_prepared(RunDirectory(run.root))
    with pytest.raises(DatasetError, match=r"items\.jsonl, line 1, column 'image': .*: not a readable image"):
        read_dataset(dataset)
    data = read_dataset(dataset, on_bad_images="skip")
    assert data.items[0].image is None and data.report.items_without_image == data.num_items - 1
    assert len(data.report.skipped_images) == 1 and "unreadable images skipped" in data.report.summary()


def test_data_stage_lists_skipped_images_and_records_the_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    posters = _posters(tmp_path / "posters")
    source = ["kind=movielens", f"path={FIXTURES / 'ml-1m-cut'}", f"images={posters}"]
    strict = RunDirectory(tmp_path / "strict")
    with pytest.raises(DatasetError, match=r"posters/2\.jpg"):
        DATA_STAGE.run(load_config(DatasetConfig, None, source), strict, "", False)

    run = RunDirectory(tmp_path / "run")
    with pytest.warns(RunWarning, match=r"2 unreadable item images .* left out"):
        result = DATA_STAGE.run(load_config(DatasetConfig, None, [*source, "on_bad_images=skip"]), run, "", False)
    listed = run.stage_dir("data") / SKIPPED_IMAGES_FILE
    assert f"2 unreadable images skipped: {listed}" in result.summary
    with open(listed, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["item_id"], Path(r["image"]).name) for r in rows] == [("2", "2.jpg"), ("4", "4.jpg")]
    assert rows[0]["reason"].startswith("not a readable image: truncated or damaged")
    assert "2 unreadable images skipped" in (run.stage_dir("data") / "load_report.txt").read_text()
    assert run.record("data")["skipped_images"] == 2
    meta = json.loads((run.stage_dir("data") / "dataset" / "dataset.json").read_text())
    assert meta["image_fit"] == "pad"  # the posters are 2:3: the fit changes what models see
    data = read_dataset(run.stage_dir("data") / "dataset")
    assert data.image_fit is ImageFit.pad and sum(data.has_image) == 2
    # Reused while the setting stays; back on `error`, the load must stop again rather than reuse.
    assert DATA_STAGE.run(load_config(DatasetConfig, None, [*source, "on_bad_images=skip"]), run, "", False).reused
    with pytest.raises(DatasetError, match=r"posters/2\.jpg"):
        DATA_STAGE.run(load_config(DatasetConfig, None, source), run, "", False)


def test_the_fit_is_recorded_only_for_non_square_images_and_keys_the_caches(tmp_path: Path) -> None:
    def prepared(name: str, posters: Path, fit: str) -> Path:
        config = load_config(DatasetConfig, None, ["kind=movielens", f"path={FIXTURES / 'ml-1m-cut'}", f"images={posters}",
                                                   f"image_fit={fit}"])
        run = RunDirectory(tmp_path / name)
        DATA_STAGE.run(config, run, "", False)
        return run.stage_dir("data") / "dataset"

    tall, square = tmp_path / "tall", tmp_path / "square"
    tall.mkdir()
    square.mkdir()
    for stem, colour in (("1", RED), ("3", BLUE)):
        Image.new("RGB", (20, 30), colour).save(tall / f"{stem}.png")
        Image.new("RGB", (30, 30), colour).save(square / f"{stem}.png")
    tall_pad, tall_squash = prepared("tall-pad", tall, "pad"), prepared("tall-squash", tall, "squash")
    assert dataset_content_hash(tall_pad) != dataset_content_hash(tall_squash)  # so the zoo caches differ
    square_pad, square_crop = prepared("square-pad", square, "pad"), prepared("square-crop", square, "crop")
    assert "image_fit" not in json.loads((square_pad / "dataset.json").read_text())
    assert dataset_content_hash(square_pad) == dataset_content_hash(square_crop)  # the same pixels either way
    assert read_dataset(square_pad).image_fit is None and read_dataset(square_pad).image_read_fit is ImageFit.pad

    cache = tmp_path / "features"
    spec = FeatureEncoderSpec("visual", "pixels")
    padded, squashed = encode_items(read_dataset(tall_pad), spec, cache), encode_items(read_dataset(tall_squash), spec, cache)
    assert len(list(cache.iterdir())) == 2  # one entry per fit, neither reused for the other
    assert not torch.equal(padded.values, squashed.values)


def test_config_rejects_an_unknown_policy_or_fit() -> None:
    with pytest.raises(ConfigError, match=r"expected one of \[error, skip\].*on_bad_images"):
        load_config(DatasetConfig, None, ["on_bad_images=sometimes"])
    with pytest.raises(ConfigError, match=r"expected one of \[pad, squash, crop\].*image_fit"):
        load_config(DatasetConfig, None, ["image_fit=stretch"])
    assert load_config(DatasetConfig, None, ["image_fit=crop"]).image_fit is ImageFit.crop


def test_data_convert_stops_at_a_bad_poster_or_lists_it_with_on_bad_images_skip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    posters = _posters(tmp_path / "posters")
    convert = ["data", "convert", "movielens", "--src", str(FIXTURES / "ml-1m-cut"), "--images", str(posters), "--out"]
    assert main([*convert, str(tmp_path / "strict")]) == 2
    assert "posters/2.jpg: not a readable image: truncated or damaged" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()
    out = tmp_path / "skipped"
    assert main([*convert, str(out), "--on-bad-images", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "2 unreadable images skipped" in printed and str(out / SKIPPED_IMAGES_FILE) in printed
    with open(out / SKIPPED_IMAGES_FILE, newline="") as f:
        assert [row["item_id"] for row in csv.DictReader(f)] == ["2", "4"]
    assert sum(read_dataset(out).has_image) == 2


def test_dataset_json_image_fit_round_trips_and_an_unknown_one_is_named(small_catalog: Path, tmp_path: Path) -> None:
    data = read_dataset(small_catalog)
    assert data.image_fit is None  # the catalog's images are square: no fit recorded
    data.image_fit = ImageFit.crop
    out = write_dataset(data, tmp_path / "cropped")
    assert json.loads((out / "dataset.json").read_text())["image_fit"] == "crop"
    assert read_dataset(out).image_fit is ImageFit.crop and read_dataset(out).image_read_fit is ImageFit.crop
    meta = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**meta, "image_fit": "stretch"}))
    with pytest.raises(DatasetError, match=r"dataset\.json: image_fit 'stretch' is not one of \['pad', 'squash', 'crop'\]"):
        read_dataset(out)
