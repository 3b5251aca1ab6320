"""Stand-in movie posters for tests and demos: no real posters ship with pmg.

Each poster is a coloured background with shapes and the movie's title in Pillow's default
font. The background colour is the first genre's, the shapes' kind and colour the second's
(the first's again for a single genre), so that a model can learn genres from the images: there
is signal to learn, as on real posters, though nothing like them. Sizes vary, mostly 2:3
(200×300, 160×240, 120×180, 270×400), a few 3:4 and square, as a scraped poster folder does.

    uv run pmg data posters --src ../shared/datasets/ml-latest-small --out data/posters
    uv run pmg pipeline --config configs/movielens_posters.yaml data.images=data/posters

Each movie's poster depends on the seed and its id alone (not on the order or on the other
movies), so a cut of a dataset gets the same posters as the whole.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pmg.atomic import atomic_directory
from pmg.data.format import InteractionData

__all__ = ["GENRE_COLOURS", "GENRE_SHAPES", "POSTER_SIZES", "poster_layout", "standin_poster", "write_standin_posters"]

# RGB per MovieLens genre (ml-100k's "Children's" and ml-latest's "Children" alike).
GENRE_COLOURS: dict[str, tuple[int, int, int]] = {
    "Action": (200, 30, 30), "Adventure": (230, 130, 20), "Animation": (250, 210, 40), "Children": (120, 220, 90),
    "Children's": (120, 220, 90), "Comedy": (255, 240, 120), "Crime": (40, 40, 40), "Documentary": (140, 140, 120),
    "Drama": (70, 60, 140), "Fantasy": (170, 80, 200), "Film-Noir": (15, 15, 15), "Horror": (90, 0, 0),
    "IMAX": (0, 150, 200), "Musical": (240, 120, 190), "Mystery": (30, 50, 90), "Romance": (230, 80, 120),
    "Sci-Fi": (20, 190, 200), "Thriller": (60, 80, 60), "War": (110, 100, 60), "Western": (180, 120, 60),
}
# The shapes drawn over the background, per genre.
GENRE_SHAPES: dict[str, str] = {
    "Action": "triangles", "Adventure": "triangles", "Animation": "circles", "Children": "circles", "Children's": "circles",
    "Comedy": "circles", "Crime": "bars", "Documentary": "bars", "Drama": "rings", "Fantasy": "rings", "Film-Noir": "bars",
    "Horror": "triangles", "IMAX": "rings", "Musical": "stripes", "Mystery": "rings", "Romance": "circles",
    "Sci-Fi": "stripes", "Thriller": "bars", "War": "stripes", "Western": "stripes",
}
SHAPES = ("circles", "triangles", "bars", "rings", "stripes")
# (width, height) and how often: mostly 2:3, as movie posters are.
POSTER_SIZES: tuple[tuple[tuple[int, int], float], ...] = (
    ((200, 300), 0.35), ((160, 240), 0.2), ((120, 180), 0.15), ((270, 400), 0.1), ((150, 200), 0.1), ((200, 200), 0.1),
)


def _genre_colour(genre: str) -> tuple[int, int, int]:
    if genre in GENRE_COLOURS:
        return GENRE_COLOURS[genre]
    # A genre of another release: a colour of its own, the same every time.
    code = zlib.crc32(genre.encode())
    return (code & 0xFF, (code >> 8) & 0xFF, (code >> 16) & 0xFF)


def _contrast(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    return (255, 255, 255) if sum(colour) < 380 else (0, 0, 0)


def poster_layout(genres: Sequence[str]) -> tuple[tuple[int, int, int], str, tuple[int, int, int]]:
    """(background RGB, shape kind, shape RGB) of a poster of ``genres``: the first genre's colour,
    the second's shape and colour (the first's shape on its contrast colour for one genre; grey
    bars for none)."""
    if not genres:
        return (128, 128, 128), "bars", (90, 90, 90)
    background = _genre_colour(genres[0])
    second = genres[1] if len(genres) > 1 else genres[0]
    shape = GENRE_SHAPES.get(second, SHAPES[zlib.crc32(second.encode()) % len(SHAPES)])
    colour = _genre_colour(second) if len(genres) > 1 else _contrast(background)
    if colour == background:
        colour = _contrast(background)
    return background, shape, colour


def _draw_shapes(draw: ImageDraw.ImageDraw, shape: str, colour: tuple[int, int, int], width: int, height: int,
                 rng: np.random.Generator) -> None:
    area_height = int(height * 0.75)  # the bottom quarter holds the title
    count = int(rng.integers(3, 7))
    for _ in range(count):
        size = int(rng.integers(width // 8, width // 3))
        x, y = int(rng.integers(0, max(width - size, 1))), int(rng.integers(0, max(area_height - size, 1)))
        if shape == "circles":
            draw.ellipse((x, y, x + size, y + size), fill=colour)
        elif shape == "rings":
            draw.ellipse((x, y, x + size, y + size), outline=colour, width=max(size // 8, 2))
        elif shape == "triangles":
            draw.polygon([(x + size // 2, y), (x, y + size), (x + size, y + size)], fill=colour)
        elif shape == "bars":
            draw.rectangle((x, 0, x + size // 3, area_height), fill=colour)
        else:  # stripes
            draw.rectangle((0, y, width, y + size // 4), fill=colour)


def _wrapped(title: str, font: ImageFont.ImageFont, draw: ImageDraw.ImageDraw, width: int) -> list[str]:
    lines: list[str] = []
    for word in title.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


def standin_poster(title: str, genres: Sequence[str], rng: np.random.Generator) -> Image.Image:
    """An RGB stand-in poster of a movie: its size drawn from :data:`POSTER_SIZES`, the colours and
    shapes of :func:`poster_layout` placed by ``rng``, the title in the bottom quarter."""
    sizes, weights = zip(*POSTER_SIZES, strict=True)
    width, height = sizes[int(rng.choice(len(sizes), p=np.asarray(weights) / sum(weights)))]
    background, shape, colour = poster_layout(genres)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    _draw_shapes(draw, shape, colour, width, height, rng)
    band = int(height * 0.75)
    draw.rectangle((0, band, width, height), fill=_contrast(background))
    font = ImageFont.load_default()
    y = band + 4
    for line in _wrapped(title, font, draw, width - 8):
        draw.text((4, y), line, fill=background, font=font)
        y += 12
    return image


def write_standin_posters(data: InteractionData, out: str | Path, *, seed: int = 0, genre_attribute: str = "genres") -> Path:
    """Write a stand-in poster ``{item_id}.jpg`` for every item of ``data`` (MovieLens:
    ``item_id`` is the movieId, genres in the ``genres`` attribute, ``|``-separated) into the
    folder ``out``, atomically (the folder appears complete or not at all). Returns ``out``."""
    out = Path(out)
    with atomic_directory(out) as tmp:
        for item in data.items:
            genres = [g for g in item.attributes.get(genre_attribute, "").split("|") if g]
            rng = np.random.default_rng([seed, zlib.crc32(item.item_id.encode())])
            standin_poster(item.title or item.item_id, genres, rng).save(tmp / f"{item.item_id}.jpg", "JPEG", quality=90)
    return out
