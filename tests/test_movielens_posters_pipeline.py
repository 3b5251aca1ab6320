"""MovieLens with posters end to end: a cut of ml-latest-small and stand-in posters through
``pmg pipeline`` with ``configs/movielens_posters.yaml`` at the tests' tiny sizes. The image
prompts say what the dataset says an item is ("a movie poster"), never the catalog's "a product"."""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pmg.cli import main
from pmg.data.posters import write_standin_posters
from pmg.data.sources import load_movielens
from pmg.zoo.manifest import load_zoo

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = Path(__file__).resolve().parent / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("single_thread")


def _cut(source: Path, out: Path, users: int) -> Path:
    """ml-latest-small's first ``users`` users: their ratings and tags, the movies they rated."""
    out.mkdir()
    with open(source / "ratings.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["userId"]) <= users]
    movies = {r["movieId"] for r in rows}
    for name, keep in (("ratings.csv", lambda r: int(r["userId"]) <= users), ("movies.csv", lambda r: r["movieId"] in movies),
                       ("tags.csv", lambda r: int(r["userId"]) <= users and r["movieId"] in movies)):
        with open(source / name, newline="") as f, open(out / name, "w", newline="") as g:
            reader = csv.DictReader(f)
            writer = csv.DictWriter(g, reader.fieldnames or [])
            writer.writeheader()
            writer.writerows(r for r in reader if keep(r))
    return out


def test_movielens_with_stand_in_posters_runs_end_to_end_prompting_movie_posters(ml_latest_small: Path, tmp_path: Path,
                                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    movielens = _cut(ml_latest_small, tmp_path / "ml", users=12)
    posters = write_standin_posters(load_movielens(movielens), tmp_path / "posters")
    # The posters config at the tests' tiny sizes (tiny.yaml's catalog settings are unused here).
    config = OmegaConf.merge(OmegaConf.load(REPO / "configs" / "movielens_posters.yaml"), OmegaConf.load(TINY_CONFIG))
    OmegaConf.save(config, tmp_path / "config.yaml")
    run = tmp_path / "run"
    assert main(["pipeline", "--config", str(tmp_path / "config.yaml"), "--run", str(run), f"data.path={movielens}",
                 f"data.images={posters}", "data.split.user_k=2", "data.split.item_k=2", f"zoo.cache_dir={tmp_path / 'zoo-cache'}",
                 "generator.baselines.soft_prompt=false"]) == 0
    meta = json.loads((run / "data" / "dataset" / "dataset.json").read_text())
    assert meta["item_kind"]["subject"] == "a movie poster"
    for stage in ("generator", "reward"):
        samples = json.loads((run / stage / "samples" / "samples.json").read_text())
        prompts = [s["image_prompt"] for s in samples]
        # "a movie poster, action, adventure, comedy for <pv_0_3><pv_1_6>": the genres the user's history holds most.
        assert samples and all(p.startswith("a movie poster") and "a product" not in p for p in prompts), prompts
        cold = next(s for s in samples if s["cold_start"])
        assert cold["text_prompt"].startswith("A viewer would love:") and cold["image_prompt"].startswith("a movie poster, ")
        assert " for <" not in cold["image_prompt"]
    # The zoo's judge reads genres off posters (a multi-label head, configs/movielens_posters.yaml) and measures itself
    # beside its chance; the evaluation scores every variant's posters against the users' favourite genres.
    metrics = load_zoo(run).metrics
    assert 0 <= metrics["judge_genres_top1_hit"] <= 1 and 0 < metrics["judge_genres_top1_chance"] <= 1
    sections = json.loads((run / "evaluate" / "evaluation.json").read_text())["sections"]
    rows = {r["metric"]: r for s in sections if s["name"] == "generation" for r in s["rows"]}
    for metric in ("image_favourite_genres", "image_favourite_genres_shuffled"):
        for variant in ("tokens_reward", "retrieve", "no_tokens"):
            cell = rows[metric]["cells"][variant]
            assert cell["value"] is not None and 0 <= cell["value"] <= 1 and cell["n"] >= 2, (metric, variant, cell)
    assert re.search(r"\[evaluate\].*favourite genres ours \(reward\) [01]\.\d{3} vs another user's [01]\.\d{3}",
                     capsys.readouterr().out)
    assert (run / "report" / "report.html").is_file()
    print(f"MovieLens posters pipeline: {time.monotonic() - started:.0f} s")
