"""examples/generative_retrieval/run.py at tiny size: prefquant used as an outside project would use it."""

from __future__ import annotations

import ast
import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import torch

from prefquant import SemanticIdMap

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "generative_retrieval" / "run.py"
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def write_tiny_movielens(folder: Path, num_movies: int = 60, num_users: int = 30, seed: int = 0) -> None:
    """A MovieLens-format folder where users stick to two genres, so histories predict the next movie."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    with open(folder / "movies.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["movieId", "title", "genres"])
        for movie in range(1, num_movies + 1):
            genre = GENRES[movie % len(GENRES)]
            writer.writerow([movie, f"{genre} story number {movie} (19{movie % 90 + 10})", genre])
    with open(folder / "ratings.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        for user in range(1, num_users + 1):
            liked = {user % len(GENRES), (user + 1) % len(GENRES)}
            pool = [m for m in range(1, num_movies + 1) if m % len(GENRES) in liked]
            for step, movie in enumerate(rng.sample(pool, 12)):
                writer.writerow([user, movie, 4.0, 1_000_000 + 1000 * user + step])


def test_example_imports_only_prefquant_torch_and_the_standard_library():
    tree = ast.parse(EXAMPLE.read_text(encoding="utf-8"))
    top_level = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert top_level <= {
        "__future__",
        "argparse",
        "json",
        "math",
        "sys",
        "time",
        "dataclasses",
        "pathlib",
        "torch",
        "prefquant",
    }, top_level


def test_tiny_run_prints_figures_and_saves_a_map(tmp_path):
    data = tmp_path / "ml-tiny"
    write_tiny_movielens(data)
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--tiny",
            "--data",
            str(data),
            "--text-encoder",
            "words",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "ids"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in (
        "recall10_semantic_ids",
        "recall10_item_ids",
        "recall10_popularity",
        "ndcg10_semantic_ids",
        "collision_rate",
    ):
        assert key in report, key
    for key in ("recall10_semantic_ids", "recall10_item_ids", "recall10_popularity", "ndcg10_semantic_ids"):
        assert 0.0 <= report[key] <= 1.0
    assert report["ndcg10_semantic_ids"] <= report["recall10_semantic_ids"]
    assert report["eval_points"] == 30 and report["items"] == 60
    assert 0.0 <= report["collision_rate"] <= 1.0 and report["ids_unique"] is True
    # Users keep to two genres: a sequence model must beat chance (10 of about 50 unseen movies).
    assert max(report["recall10_semantic_ids"], report["recall10_item_ids"]) > 0.2

    id_map = SemanticIdMap.from_pretrained(tmp_path / "ids")
    assert len(id_map) == report["warm_items"] + report["cold_items"] == 60
    assert torch.unique(id_map.ids, dim=0).shape[0] == 60
    assert list(id_map.level_sizes) == report["id_level_sizes"]
