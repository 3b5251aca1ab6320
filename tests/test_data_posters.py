"""Stand-in posters: one readable image per movie, mostly 2:3, colours and shapes by genre, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pmg.cli import main
from pmg.data.posters import poster_layout, standin_poster
from pmg.data.sources import load_movielens

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_posters_for_every_movie_mostly_two_by_three_and_loaded_as_the_image_modality(tmp_path: Path) -> None:
    out = tmp_path / "posters"
    assert main(["data", "posters", "--src", str(FIXTURES / "ml-1m-cut"), "--out", str(out), "--seed", "3"]) == 0
    movies = load_movielens(FIXTURES / "ml-1m-cut")
    files = sorted(out.iterdir())
    assert {f.name for f in files} == {f"{it.item_id}.jpg" for it in movies.items}
    sizes = [Image.open(f).size for f in files]
    two_by_three = sum(abs(w / h - 2 / 3) < 0.02 for w, h in sizes) / len(sizes)  # 27:40 too, as many real posters
    assert 0.7 <= two_by_three <= 0.9, two_by_three
    assert {(150, 200), (200, 200)} <= set(sizes)
    # The loader finds them: every movie has an image.
    with_posters = load_movielens(FIXTURES / "ml-1m-cut", posters=out)
    assert with_posters.has_image.all()
    # The same seed writes the same bytes; another seed other posters.
    again = tmp_path / "again"
    main(["data", "posters", "--src", str(FIXTURES / "ml-1m-cut"), "--out", str(again), "--seed", "3"])
    assert all((again / f.name).read_bytes() == f.read_bytes() for f in files)


def test_a_posters_colours_and_shapes_follow_its_genres() -> None:
    heat, goldeneye, toy_story = (poster_layout(g) for g in (["Action", "Crime", "Thriller"], ["Action", "Adventure"],
                                                              ["Adventure", "Animation"]))
    assert heat[0] == goldeneye[0] != toy_story[0]  # the first genre's background
    assert heat[1] != goldeneye[1]  # the second genre's shapes
    assert poster_layout([]) != heat and poster_layout(["Noir-Western"]) == poster_layout(["Noir-Western"])
    # The background fills most of the top of the poster: the signal a model can learn.
    image = np.asarray(standin_poster("Heat (1995)", ["Action", "Crime"], np.random.default_rng(0)))
    top = image[: image.shape[0] * 3 // 4].reshape(-1, 3)
    share = (np.abs(top.astype(int) - np.array(heat[0])).sum(axis=1) < 40).mean()
    assert share > 0.3, share
