"""The evaluate and report stages on the tiny run: the table's variants, metrics and ranges, that its
figures come from the same users as the records beside it, the self-contained report, missing
metrics and stages reported with their reason, and failing runs that leave earlier outputs intact."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pmg.cli import main
from pmg.runs import RunDirectory
from pmg.zoo.manifest import load_zoo

VARIANTS = ("no_tokens", "soft_prompt", "keywords", "keywords_tuned", "keywords_best_of", "history_latent", "hybrid", "retrieve",
            "tokens_sft", "tokens_reward")
GENERATION_METRICS = ("image_colour_accuracy", "image_pattern_accuracy", "image_personalization", "text_material_accuracy",
                      "text_style_accuracy", "text_personalization", "consistency", "joint", "clip_score", "user_preference_image",
                      "user_preference_text")
# The field's rows (pmg.evaluate.field_metrics), after the judge-based and CLIP ones.
FIELD_METRICS = ("clip_i_history", "clip_i_target", "ssim_history", "ssim_target", "pixel_history", "pixel_target",
                 "fid_colour_target", "bleu1_target", "bleu4_target", "rouge_l_target", "distinct_1", "distinct_2")
SET_LEVEL_METRICS = ("fid_colour_target", "distinct_1", "distinct_2")  # one figure per variant, N but no interval


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_pipeline: Callable[..., int]) -> Path:
    run = tmp_path_factory.mktemp("evaluate") / "run"
    assert tiny_pipeline(run) == 0
    return run


def _table(run: Path) -> dict:
    return json.loads((run / "evaluate" / "evaluation.json").read_text())


def _section(table: dict, name: str) -> dict:
    return next(s for s in table["sections"] if s["name"] == name)


def _cell(table: dict, section: str, metric: str, column: str) -> float | None:
    row = next(r for r in _section(table, section)["rows"] if r["metric"] == metric)
    return row["cells"][column]["value"]


def test_table_has_every_section_variant_and_metric_with_values_in_range(tiny_run: Path) -> None:
    table = _table(tiny_run)
    assert [s["name"] for s in table["sections"]] == ["recommendation", "quantizer", "generation"]
    assert _section(table, "recommendation")["columns"] == ["popularity", "lightgcn", "ours"]
    assert _section(table, "quantizer")["columns"] == ["visual", "textual", "id", "random"]
    generation = _section(table, "generation")
    assert generation["columns"] == list(VARIANTS)
    assert [r["metric"] for r in generation["rows"]] == [*GENERATION_METRICS, *FIELD_METRICS]
    assert {r["metric"] for r in _section(table, "recommendation")["rows"]} == {"recall@20", "ndcg@20"}
    quantizer = {r["metric"] for r in _section(table, "quantizer")["rows"]}
    assert {"usage_level0", "usage_level1", "nmi_colour", "nmi_pattern", "nmi_material", "nmi_style"} == quantizer
    for section in table["sections"]:
        for row in section["rows"]:
            low, high = row["range"]
            assert set(row["cells"]) == set(section["columns"])
            for column, cell in row["cells"].items():
                if cell["value"] is None:
                    assert cell["missing"], f"{row['metric']}/{column} is missing without a reason"
                else:
                    assert low <= cell["value"] <= high, (row["metric"], column, cell)
    # The tiny run has both generators, the judge, ground truth and the soft-prompt baseline:
    # every generation figure is computed; only the random column's usage rows are not applicable.
    for row in generation["rows"]:
        # Except distinct-n where the tiny LM writes no word at all ("::::::"): nothing to count, and it says so.
        computed = {c: cell for c, cell in row["cells"].items() if cell["value"] is not None}
        if row["metric"].startswith("distinct_"):
            assert "retrieve" in computed, row  # catalog texts have words
            for column, cell in row["cells"].items():
                assert column in computed or cell["missing"] == f"the variant's texts have no {row['metric'][-1]}-gram", cell
        else:
            assert len(computed) == len(row["cells"]), row
        # Each generation figure rests on the evaluated users and carries its 95% interval (set-level ones: N only).
        for cell in computed.values():
            if row["metric"] in SET_LEVEL_METRICS:
                assert cell["n"] >= 2 and "interval" not in cell, (row["metric"], cell)
            else:
                assert cell["n"] >= 2 and cell["interval"][0] <= cell["value"] <= cell["interval"][1], (row["metric"], cell)
    for row in _section(table, "quantizer")["rows"]:
        missing = [c for c, cell in row["cells"].items() if cell["value"] is None]
        assert missing == (["random"] if row["metric"].startswith("usage") else [])
    markdown = (tiny_run / "evaluate" / "evaluation.md").read_text()
    for label in ("no tokens", "soft prompt", "keywords", "keywords (tuned adapters)", "keywords + history latent", "keywords + tokens", "retrieve (top-1 item)", "ours (SFT)",
                  "ours (reward)", "Recall@20", "NMI with true colour",
                  "CLIP image–text score", "user preference: image vs future items", "CLIP-I vs history images (zoo CLIP",
                  "SSIM vs target images (grayscale)", "pixel features vs history images (colour histogram + thumbnail, no model)",
                  "FID vs all target images, colour-histogram space", "BLEU-4, smoothed", "ROUGE-L F1", "distinct-2"):
        assert label in markdown
    metrics = json.loads((tiny_run / "evaluate" / "metrics.json").read_text())
    assert metrics["recommendation/recall@20/ours"] == _cell(table, "recommendation", "recall@20", "ours")


def _first(generation: dict, attribute: str) -> str | None:
    """The first value of ``attribute`` the generation's texts name (as the evaluation reads them, joined)."""
    from pmg.generator.evaluation import named_value

    values = {"colour": ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown"),
              "material": ("cotton", "silk", "wool", "denim", "leather", "linen")}[attribute]
    return named_value(" ".join(generation["texts"].values()), values)


def test_recommenders_are_ranked_on_the_same_test_users_as_the_preference_stage(tiny_run: Path) -> None:
    from pmg.data.dataset_stage import load_prepared
    from pmg.preference.baselines import held_out_ranking, split_graph
    from prefgraph import popularity_scorer

    table = _table(tiny_run)
    preference = json.loads((tiny_run / "preference" / "metrics.json").read_text())
    # "ours" is the stage's own model under the stage's own protocol, on every test user.
    assert _cell(table, "recommendation", "recall@20", "ours") == pytest.approx(preference["test/recall@20"])
    assert _cell(table, "recommendation", "ndcg@20", "ours") == pytest.approx(preference["test/ndcg@20"])
    data, split = load_prepared(RunDirectory(tiny_run))
    popularity = held_out_ranking(popularity_scorer(split_graph(data, split.train)), data, split, [20])
    assert _cell(table, "recommendation", "recall@20", "popularity") == pytest.approx(popularity["recall@20"])
    users = len(set(data.user[split.test].tolist()))
    assert f"{users} test users, the same for every column" in _section(table, "recommendation")["notes"][0]
    lightgcn_note = _section(table, "recommendation")["notes"][1]
    assert "3 layers, a budget of 2 epochs" in lightgcn_note  # tiny.yaml: lightgcn.max_epochs 2
    assert "lr 0.005, L2 0.0001 chosen on validation ndcg@20" in lightgcn_note  # tiny.yaml: lightgcn.lrs [0.005]


def test_generation_figures_match_the_per_user_records_of_the_same_users(tiny_run: Path) -> None:
    from pmg.data.dataset_stage import load_prepared

    table = _table(tiny_run)
    record = json.loads((tiny_run / "evaluate" / "generations.json").read_text())
    users = record["users"]
    evaluation = json.loads((tiny_run / "data" / "user_roles.json").read_text())["evaluation"]
    assert len(users) == 4 and {u["user_id"] for u in users} <= set(evaluation)  # tiny.yaml: 4 evaluation users
    assert record["missing"] == {}
    for variant in VARIANTS:
        generations = record["variants"][variant]
        assert len(generations) == len(users)
        for generation in generations:
            with Image.open(tiny_run / "evaluate" / generation["image"]) as image:
                assert image.size[0] >= 16
            assert set(generation["judge"]) >= {"colour", "pattern"}
        # The table's accuracy is the share of these users whose image the judge reads as their colour.
        hits = [g["judge"]["colour"] == u["tastes"]["colour"] for g, u in zip(generations, users, strict=True)]
        assert _cell(table, "generation", "image_colour_accuracy", variant) == pytest.approx(sum(hits) / len(hits))
        # Joint: the user's colour in the image, their material first in the text, the text's colour the image's.
        joint = [g["judge"]["colour"] == u["tastes"]["colour"] and _first(g, "material") == u["tastes"]["material"]
                 and _first(g, "colour") == g["judge"]["colour"] for g, u in zip(generations, users, strict=True)]
        assert _cell(table, "generation", "joint", variant) == pytest.approx(sum(joint) / len(joint))
    # Tokens are in the SFT, reward and hybrid prompts, never in the no-token or keyword ones.
    for variant in ("tokens_reward", "tokens_sft", "hybrid"):
        assert all("<pv_" in g["image_prompt"] and "<pt_" in g["text_prompt"] for g in record["variants"][variant])
    for variant in ("no_tokens", "keywords", "keywords_tuned", "history_latent"):
        assert not any("<p" in g["image_prompt"] + g["text_prompt"] for g in record["variants"][variant])
    # The words-and-images baseline is the tuned keyword variant but for where its images start.
    for shifted, words in zip(record["variants"]["history_latent"], record["variants"]["keywords_tuned"], strict=True):
        assert (shifted["texts"], shifted["image_prompt"], shifted["text_prompt"]) == (words["texts"], words["image_prompt"], words["text_prompt"])
    # The run prompts with keywords and tokens (generator.prompt's default): the hybrid is its own reward variant.
    def without_path(generations: list[dict]) -> list[dict]:
        return [{k: v for k, v in g.items() if k != "image"} for g in generations]

    assert without_path(record["variants"]["hybrid"]) == without_path(record["variants"]["tokens_reward"])
    for keyworded, hybrid in zip(record["variants"]["keywords"], record["variants"]["tokens_reward"], strict=True):
        words = keyworded["text_prompt"].removeprefix("User ").split(" would love:")[0]
        assert hybrid["text_prompt"].startswith(f"User {words} <p") and "<pt_" in hybrid["text_prompt"]
    assert users[0]["tokens"]["visual"].startswith("<pv_0_")
    # Retrieval shows a catalog item the user did not have in training, with its own text.
    data, split = load_prepared(RunDirectory(tiny_run))
    for generation, user in zip(record["variants"]["retrieve"], users, strict=True):
        item = data.item_index()[generation["text_prompt"].removeprefix("(item ").removesuffix(")")]
        seen = data.item[split.train][data.user[split.train] == data.user_index()[user["user_id"]]]
        assert item not in seen and generation["texts"]["title"] == data.items[item].title


def test_image_seed_benchmark_starts_from_the_evaluated_image_and_bounds_every_choice_by_the_judge(
        tiny_run: Path, benchmark_module: Callable[[str], object]) -> None:
    bench = benchmark_module("image_seeds")
    # As many seeds as the reward stage's candidates (reward.image.candidates' default, 4), so that the
    # best-of choices below are the ones `pmg evaluate` made.
    figures = bench.profile_figures(RunDirectory(tiny_run), seeds=4, limit=4, best_of=[2])
    table = _table(tiny_run)
    assert figures["n_users"] == 4 and figures["tastes"] == ["colour", "pattern"]
    for variant in ("tokens_reward", "keywords", "keywords_tuned"):
        shown = figures["variants"][variant]
        if variant != "tokens_reward":
            # Seed 0 is the image `pmg evaluate` judged for the same users.
            assert shown["per_seed"][0] == pytest.approx(_cell(table, "generation", "image_personalization", variant), abs=1e-4)
        assert len(shown["per_seed"]) == 4 and shown["mean"] == pytest.approx(np.mean(shown["per_seed"]), abs=1e-3)
        assert shown["mean"] == pytest.approx((shown["colour"] + shown["pattern"]) / 2, abs=1e-3)
    difference = figures["differences"]["default_vs_keywords_tuned"]
    assert difference["per_seed"] == pytest.approx(np.subtract(figures["variants"]["tokens_reward"]["per_seed"],
                                                               figures["variants"]["keywords_tuned"]["per_seed"]), abs=1e-3)
    for variant, chosen in figures["best_of_seeds"].items():
        assert set(chosen) >= {"first", "history_clip", "oracle"}
        assert chosen["first"]["image_personalization"] == pytest.approx(figures["variants"][variant]["per_seed"][0], abs=1e-4)
        # No scorer picks better than the judge, which picks at least the best seed's images on average.
        assert all(c["image_personalization"] <= chosen["oracle"]["image_personalization"] + 1e-9 for c in chosen.values())
        assert chosen["oracle"]["image_personalization"] >= max(figures["variants"][variant]["per_seed"]) - 1e-9
        assert chosen["oracle"]["agreement"] in (None, 1.0)
    assert {"personalization", "personalization_pixels", "recommender", "prompt", "history_pixels"} <= set(figures["best_of_seeds"]["tokens_reward"])
    for variant, two in figures["best_of_first"]["2"].items():  # the best of each user's first 2 seeds
        assert two["first"]["image_personalization"] == figures["best_of_seeds"][variant]["first"]["image_personalization"]
        assert two["oracle"]["image_personalization"] <= figures["best_of_seeds"][variant]["oracle"]["image_personalization"] + 1e-9
        assert two["oracle"]["image_personalization"] >= max(figures["variants"][variant]["per_seed"][:2]) - 1e-9
    for chosen in figures["best_of_seeds"]["tokens_reward"].values():  # each taste's rate in the chosen images
        assert chosen["image_personalization"] == pytest.approx((chosen["colour"] + chosen["pattern"]) / 2, abs=1e-3)
    # The evaluation's default image is the best of the 4 seeds by the reward's personalization term, and its
    # equal-cost words baseline the tuned keyword variant's best by the user's history images.
    chosen = figures["best_of_seeds"]
    assert chosen["tokens_reward"]["personalization"]["image_personalization"] == pytest.approx(
        _cell(table, "generation", "image_personalization", "tokens_reward"), abs=1e-4)
    assert chosen["keywords_tuned"]["history_pixels"]["image_personalization"] == pytest.approx(
        _cell(table, "generation", "image_personalization", "keywords_best_of"), abs=1e-4)


def test_history_pixel_scorer_prefers_the_users_own_history_image_and_refuses_a_user_it_did_not_read(tiny_run: Path) -> None:
    from pmg.data.dataset_stage import load_prepared
    from pmg.data.images import load_image
    from pmg.evaluate.field_metrics import FieldReferences, pixel_vectors
    from pmg.evaluate.generation import HistoryPixelScorer, history_items
    from pmg.reward import image_choice

    data, split = load_prepared(RunDirectory(tiny_run))
    owners = data.user[split.train]
    users = [int(u) for u in np.unique(owners)[:2]]
    scorer = HistoryPixelScorer(data, history_items(data, split, users), users)
    mine = [load_image(data.items[int(data.item[split.train][owners == u][0])].image, 32) for u in users]
    # The score is the evaluation's pixel_history of that image for that user (its per-user mean cosine).
    references = FieldReferences.of_users(data, history_items(data, split, users), [np.zeros(0, dtype=np.int64)] * 2, {})
    for images in (mine, mine[::-1]):
        expected = references.user_similarities("history", "pixels", pixel_vectors(images))
        assert scorer(images, users).tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert scorer([mine[0]], [None]).tolist() == [0.0]
    with pytest.raises(ValueError, match="not one of the 2"):
        scorer([mine[0]], [int(np.setdiff1d(np.arange(data.num_users), users)[0])])
    # The reward stage saved the map its default choice scores with: 4 candidates, by the personalization term.
    choice = image_choice(RunDirectory(tiny_run), load_zoo(RunDirectory(tiny_run)))
    assert choice is not None and choice.candidates == 4
    assert (tiny_run / "reward" / "personalization_map.safetensors").is_file()
    # The selection users a setting is chosen on (image_seeds --role selection) are never evaluation users.
    from pmg.data.dataset_stage import load_user_roles
    from pmg.evaluate.stage import evaluation_users
    from pmg.quantize.stage import load_user_tokens

    tokens = load_user_tokens(RunDirectory(tiny_run))
    selection = evaluation_users(RunDirectory(tiny_run), data, tokens, 0, "selection")
    assert selection == sorted(int(u) for u in load_user_roles(RunDirectory(tiny_run), data).selection)
    assert not set(selection) & set(evaluation_users(RunDirectory(tiny_run), data, tokens, 0))


def test_a_damaged_or_missing_personalization_map_names_the_file_and_the_command(tiny_run: Path, tmp_path: Path) -> None:
    from pmg.reward import image_choice
    from pmg.runs import RunError

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("evaluate", "report"))
    saved = copy / "reward" / "personalization_map.safetensors"
    saved.write_bytes(saved.read_bytes()[:20])
    with pytest.raises(RunError, match=r"personalization_map.safetensors is damaged .*--force reward"):
        image_choice(RunDirectory(copy), load_zoo(RunDirectory(copy)))
    saved.unlink()
    with pytest.raises(RunError, match=r"personalization_map.safetensors is missing .*--force reward"):
        image_choice(RunDirectory(copy), load_zoo(RunDirectory(copy)))


def test_seed_choice_agreement_counts_pairs_ordered_as_the_judge_and_skips_users_without_a_difference(
        benchmark_module: Callable[[str], object]) -> None:
    import torch

    agreement = benchmark_module("image_seeds")._agreement
    shares = torch.tensor([[0.0, 0.5, 1.0], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    scores = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [0.0, 1.0, 1.0]])
    # User 0: all three pairs in order; user 1: no pair differs; user 2: both pairs reversed, the tie not counted.
    assert agreement(scores, shares).tolist() == [1.0, 0.0]
    assert agreement(torch.zeros(1, 3), shares[:1]).tolist() == [0.5]  # ties count half


def test_preference_score_is_chance_for_identical_content_and_one_for_matching_content() -> None:
    import torch

    from pmg.evaluate.generation import _preference_shares

    future = [torch.nn.functional.normalize(torch.eye(4)[i : i + 1], dim=1) for i in range(4)]
    assert _preference_shares(torch.eye(4), future).tolist() == [1.0] * 4  # each user's content points at its own future item
    assert _preference_shares(torch.ones(4, 4) / 2, future).tolist() == [0.5] * 4  # the same content for everyone: chance


def test_consistency_counts_the_first_named_value_against_the_judges_reading() -> None:
    from pmg.generator.evaluation import consistency_hits

    colours = ("red", "blue", "green")
    hits = consistency_hits(["a red dress, not blue", "Blue wool", "plain cotton", "green"], ["red", "red", "red", "blue"], colours)
    assert hits.tolist() == [True, False, False, False]


def test_table_round_trips_and_footnotes_missing_cells() -> None:
    from pmg.evaluate.table import Cell, EvaluationTable, Section

    section = Section("s", "Section", ["a", "b"], notes=["on 3 users"])
    section.add("m", "metric m", (0.0, 1.0), {"a": Cell.of(0.25), "b": Cell.absent("no images")})
    section.add("n", "metric n", (0.0, 1.0), {"a": Cell.of(float("nan"))})  # b: not given
    table = EvaluationTable("runs/x", "catalog", [section])
    again = EvaluationTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again == table
    markdown = table.to_markdown({"a": "A"})
    assert "| metric | A | b |" in markdown and "| metric m | 0.250 | — (1) |" in markdown
    assert "| metric n | — (2) | — (3) |" in markdown
    assert "- (1) no images" in markdown and "- (2) no users to average over" in markdown
    assert table.flat_metrics() == {"s/m/a": 0.25}


def test_missing_ground_truth_and_modalities_are_reported_with_a_reason(tiny_run: Path) -> None:
    from pmg.data.dataset_stage import load_prepared
    from pmg.evaluate.generation import GenerationJudges, generation_section
    from pmg.evaluate.recommendation import quantizer_section
    from pmg.generator.generate import UserGeneration
    from pmg.quantize.stage import load_user_tokens
    from pmg.zoo.manifest import load_zoo
    from prefreward import ConsistencyReward

    run = RunDirectory(tiny_run)
    data, split = load_prepared(run)
    no_truth = dataclasses.replace(data, user_tastes=None)  # as on MovieLens
    quantizer = quantizer_section(no_truth, load_user_tokens(run), seed=0)
    nmi = quantizer.row("nmi")
    assert all("no ground-truth user tastes" in (cell.missing or "") for cell in nmi.cells.values())

    record = json.loads((tiny_run / "evaluate" / "generations.json").read_text())
    index = data.user_index()
    users = [index[u["user_id"]] for u in record["users"]]
    saved = record["variants"]["tokens_sft"]
    with_images = [UserGeneration(u, False, g["text_prompt"], g["texts"], g["image_prompt"],
                                  Image.open(tiny_run / "evaluate" / g["image"]).convert("RGB")) for u, g in zip(users, saved, strict=True)]
    text_only = [dataclasses.replace(g, image=None) for g in with_images]
    zoo = load_zoo(run)
    clip, processor = zoo.load_clip()
    judges = GenerationJudges(zoo.load_judge(), "", ConsistencyReward.from_model(clip, processor).embedder)
    generations = {"no_tokens": "not trained here", "soft_prompt": "not trained here", "keywords": "not trained here",
                   "keywords_tuned": "not trained here", "keywords_best_of": "not trained here", "history_latent": "not trained here", "hybrid": "not trained here", "retrieve": "not trained here", "tokens_sft": with_images,
                   "tokens_reward": text_only}
    section, _ = generation_section(no_truth, split, users, generations, judges, "colour", "material")
    assert [r.metric for r in section.rows] == ["image_personalization", "text_personalization", "consistency", "joint",
                                                "clip_score", "user_preference_image", "user_preference_text", *FIELD_METRICS]
    assert section.row("joint").cells["tokens_sft"].missing.startswith("needs ground-truth tastes")
    assert section.row("image_personalization").cells["tokens_sft"].missing.startswith("the dataset has no ground-truth")
    assert section.row("clip_score").cells["tokens_sft"].value is not None  # no ground truth needed
    assert section.row("consistency").cells["no_tokens"].missing == "not trained here"
    assert "image generator" in section.row("user_preference_image").cells["tokens_reward"].missing
    assert section.row("user_preference_text").cells["tokens_reward"].value is not None
    assert "both an image and a text" in section.row("clip_score").cells["tokens_reward"].missing
    # The field's rows need no ground truth either; a text-only variant has its text rows and says why not its image rows.
    # (The tiny LM writes no word, "::::::": distinct-n has no n-gram to count and says so.)
    for metric in FIELD_METRICS:
        cell = section.row(metric).cells["tokens_sft"]
        assert cell.value is not None or (metric.startswith("distinct_") and "texts have no" in cell.missing), (metric, cell)
        assert section.row(metric).cells["no_tokens"].missing == "not trained here"
    for metric in ("clip_i_history", "ssim_target", "pixel_history", "fid_colour_target"):
        assert "image generator" in section.row(metric).cells["tokens_reward"].missing
    for metric in ("bleu4_target", "rouge_l_target"):
        assert section.row(metric).cells["tokens_reward"].n == len(users)


def test_field_rows_rank_a_catalog_image_above_noise_and_a_target_text_at_one(tiny_run: Path) -> None:
    from pmg.data.dataset_stage import load_prepared
    from pmg.evaluate.generation import GenerationJudges, future_items, generation_section
    from pmg.generator.generate import UserGeneration
    from pmg.zoo.manifest import load_zoo
    from prefreward import ConsistencyReward

    run = RunDirectory(tiny_run)
    data, split = load_prepared(run)
    record = json.loads((tiny_run / "evaluate" / "generations.json").read_text())
    users = [data.user_index()[u["user_id"]] for u in record["users"]]
    retrieved = [UserGeneration(data.user_ids[u], False, g["text_prompt"], g["texts"], g["image_prompt"],
                                Image.open(tiny_run / "evaluate" / g["image"]).convert("RGB"))
                 for u, g in zip(users, record["variants"]["retrieve"], strict=True)]
    size = retrieved[0].image.size
    rng = np.random.default_rng(0)
    # Noise images beside each user's first held-out item's own title and description as the text.
    targets = [data.items[int(items[0])] for items in future_items(data, split, users)]
    noise = [dataclasses.replace(g, texts={"title": item.title, "description": item.description},
                                 image=Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)))
             for g, item in zip(retrieved, targets, strict=True)]
    zoo = load_zoo(run)
    clip, processor = zoo.load_clip()
    judges = GenerationJudges(zoo.load_judge(), "", ConsistencyReward.from_model(clip, processor).embedder)
    generations: dict = {variant: "not compared here" for variant in VARIANTS}
    generations |= {"retrieve": retrieved, "tokens_sft": noise}
    section, _ = generation_section(data, split, users, generations, judges, "colour", "material")

    def value(metric: str, variant: str) -> float:
        return section.row(metric).cells[variant].value

    # A catalog image looks like the user's other catalog images; noise has no structure and every colour
    # (measured: SSIM 0.14 against 0.006, pixel cosine 0.69 against 0.02, CLIP-I 0.998 against 0.70). The
    # colour FID is not compared: on 4 users it is sampling noise (tests/test_field_metrics.py checks it).
    for which in ("history", "target"):
        assert value(f"ssim_{which}", "retrieve") > value(f"ssim_{which}", "tokens_sft") + 0.1
        assert value(f"pixel_{which}", "retrieve") > value(f"pixel_{which}", "tokens_sft") + 0.3
        assert value(f"clip_i_{which}", "retrieve") > value(f"clip_i_{which}", "tokens_sft")
    # A text that is one of the user's targets matches it exactly: the best match over targets is 1.
    for metric in ("bleu1_target", "bleu4_target", "rouge_l_target"):
        assert value(metric, "tokens_sft") == pytest.approx(1.0), metric
    assert section.row("distinct_1").cells["tokens_sft"].n == len(users)

    # Without item images, the image rows against history and targets say why they are missing.
    no_images = dataclasses.replace(data, items=[dataclasses.replace(item, image=None) for item in data.items])
    section, _ = generation_section(no_images, split, users, generations, judges, "colour", "material")
    assert section.row("clip_i_history").cells["retrieve"].missing == "no evaluated user has a history item with an image"
    assert section.row("ssim_target").cells["retrieve"].missing == "no evaluated user has a target item with an image"
    assert "fewer than 2 evaluated users" in section.row("fid_colour_target").cells["retrieve"].missing
    assert section.row("rouge_l_target").cells["tokens_sft"].value == pytest.approx(1.0)


def test_report_is_one_self_contained_page_with_the_table_images_and_plots(tiny_run: Path) -> None:
    out = tiny_run / "report"
    page = (out / "report.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["evaluation_generation.png", "evaluation_headline.png", "evaluation_quantizer.png",
                    "evaluation_recommendation.png", "training_curves.png"]
    for name in pngs:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 200
    # Every src is an inline data URI: no file, no network reference.
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    # 5 plots + 2 users × (3 history thumbnails + the variants' images).
    assert len(sources) == 5 + 2 * (3 + len(VARIANTS))
    plot = base64.b64decode(sources[0].split(",", 1)[1])
    with Image.open(io.BytesIO(plot)) as image:
        assert image.format == "PNG"
    # The evaluation table, the users' tokens and the judge's verdicts are on the page.
    table = _table(tiny_run)
    assert f"{_cell(table, 'recommendation', 'recall@20', 'ours'):.3f}" in page
    interval = next(r for r in _section(table, "generation")["rows"] if r["metric"] == "joint")["cells"]["keywords"]["interval"]
    assert f"[{interval[0]:.2f}, {interval[1]:.2f}]" in page  # the report shows each figure's interval
    record = json.loads((tiny_run / "evaluate" / "generations.json").read_text())
    for user in record["users"][:2]:
        assert user["user_id"] in page and user["tokens"]["visual"].replace("<", "&lt;").replace(">", "&gt;") in page
    assert "ours (reward)" in page and "judge" in page and ("✓" in page or "✗" in page)
    stage = json.loads((out / "stage.json").read_text())
    assert stage["report"] == str((out / "report.html").resolve())


def test_pipeline_prints_the_report_path(tiny_run: Path, tiny_pipeline: Callable[..., int],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert tiny_pipeline(tiny_run) == 0
    out = capsys.readouterr().out
    assert f"report: {(tiny_run / 'report' / 'report.html').resolve()}" in out.splitlines()[-1]
    assert "[evaluate]" in out and "[report]" in out


def test_missing_stages_and_unknown_runs_say_what_to_run(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unknown = tmp_path / "nowhere"
    assert main(["evaluate", "--run", str(unknown)]) == 2
    assert f"{unknown} is not a run directory" in capsys.readouterr().err and not unknown.exists()

    run = Path(shutil.copytree(tiny_run, tmp_path / "partial"))
    before = (run / "evaluate" / "evaluation.json").read_bytes()
    (run / "reward" / "stage.json").unlink()
    assert main(["evaluate", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "stage 'reward' has not completed" in err and f"pmg reward fit --run {run}" in err
    (run / "generator" / "stage.json").unlink()
    assert main(["report", "--run", str(run)]) == 2
    assert "stage 'generator' has not completed" in capsys.readouterr().err  # the first missing stage is named
    assert (run / "evaluate" / "evaluation.json").read_bytes() == before

    no_evaluation = Path(shutil.copytree(tiny_run, tmp_path / "no-evaluation"))
    (no_evaluation / "evaluate" / "stage.json").unlink()
    assert main(["report", "--run", str(no_evaluation)]) == 2
    err = capsys.readouterr().err
    assert "stage 'evaluate' has not completed" in err and f"pmg evaluate --run {no_evaluation}" in err


def test_a_failing_evaluation_or_report_leaves_the_previous_outputs(tiny_run: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import pmg.evaluate.generation
    import pmg.report.page
    from pmg.config import load_config
    from pmg.evaluate import EvaluateConfig, run_evaluate_stage
    from pmg.report import ReportConfig, run_report_stage

    run_path = Path(shutil.copytree(tiny_run, tmp_path / "failing"))
    run = RunDirectory(run_path)
    evaluation = {p.relative_to(run_path): p.read_bytes() for p in (run_path / "evaluate").rglob("*") if p.is_file()
                  and p.name != "stage.json"}
    report = (run_path / "report" / "report.html").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("judge crashed")

    monkeypatch.setattr(pmg.evaluate.generation, "_variant_cells", broken)
    config = load_config(EvaluateConfig, overrides=["generation.num_users=2", "recommendation.lightgcn.max_epochs=1"])
    with pytest.raises(RuntimeError, match="judge crashed"):
        run_evaluate_stage(config, run, run.require("reward")["fingerprint"], True)
    after = {p.relative_to(run_path): p.read_bytes() for p in (run_path / "evaluate").rglob("*") if p.is_file()
             and p.name != "stage.json"}
    assert after == evaluation

    (run_path / "evaluate" / "stage.json").write_text(json.dumps({"fingerprint": "x", "summary": "restored"}))
    # A headline row the evaluation lacks is refused before the earlier report is cleared, record included.
    with pytest.raises(ValueError, match="'generation/jiont'"):
        run_report_stage(load_config(ReportConfig, overrides=["headline=[generation/jiont]"]), run, "x", True)
    assert run.record("report") is not None and (run_path / "report" / "report.html").read_bytes() == report

    monkeypatch.setattr(pmg.report.page, "_card", broken)
    with pytest.raises(RuntimeError, match="judge crashed"):
        run_report_stage(load_config(ReportConfig), run, "x", True)
    assert (run_path / "report" / "report.html").read_bytes() == report
    assert not [p for p in run_path.iterdir() if p.name.startswith(".report.")]  # no temporary folder left behind


def test_an_evaluation_made_under_another_protocol_is_made_again_not_reused(tiny_run: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import pmg.evaluate.stage
    from pmg.config import load_config
    from pmg.evaluate import EvaluateConfig, run_evaluate_stage

    run = RunDirectory(Path(shutil.copytree(tiny_run, tmp_path / "protocol")))
    config = load_config(EvaluateConfig, overrides=["generation.num_users=2", "recommendation.lightgcn.max_epochs=1"])
    upstream = run.require("reward")["fingerprint"]
    first = run_evaluate_stage(config, run, upstream, True)
    assert run_evaluate_stage(config, run, upstream, False).reused
    monkeypatch.setattr(pmg.evaluate.stage, "EVALUATION_PROTOCOL", pmg.evaluate.stage.EVALUATION_PROTOCOL + 1)
    again = run_evaluate_stage(config, run, upstream, False)
    assert not again.reused and again.fingerprint != first.fingerprint


def test_config_errors_name_the_key() -> None:
    from pmg.config import ConfigError, load_config
    from pmg.evaluate import EvaluateConfig
    from pmg.report import ReportConfig

    with pytest.raises(ConfigError, match="Key 'user_pool' not in"):  # the users are the data stage's evaluation users
        load_config(EvaluateConfig, overrides=["generation.user_pool=everyone"])
    with pytest.raises(ConfigError, match="num_users must be 0"):
        load_config(EvaluateConfig, overrides=["generation.num_users=1"])
    with pytest.raises(ConfigError, match="lightgcn.max_epochs"):
        load_config(EvaluateConfig, overrides=["recommendation.lightgcn.max_epochs=0"])
    with pytest.raises(ConfigError, match="num_user"):
        load_config(ReportConfig, overrides=["num_user=3"])
    with pytest.raises(ConfigError, match="section/metric"):
        load_config(ReportConfig, overrides=["headline=[joint]"])


def test_headline_chart_holds_the_named_rows_in_order_and_names_a_misspelt_one(tiny_run: Path) -> None:
    from pmg.evaluate.stage import load_evaluation
    from pmg.report.plots import headline_section

    table, _ = load_evaluation(RunDirectory(tiny_run))
    generation = table.section("generation")
    chosen = headline_section(table, ["generation/joint", "recommendation/recall@20", "generation/image_personalization"])
    assert chosen is not None and [row.metric for row in chosen.rows] == ["joint", "recall@20", "image_personalization"]
    assert chosen.columns == generation.columns  # the first named section's columns
    joint = next(row for row in generation.rows if row.metric == "joint")
    assert chosen.rows[0].cells == joint.cells and chosen.rows[0].label == joint.label
    # The recommendation's row is read under the headline's columns; the variants it has no figure for are missing.
    assert set(chosen.rows[1].cells) == set(generation.columns)
    assert all(chosen.rows[1].cells[c].value is None for c in generation.columns if c not in table.section("recommendation").columns)
    assert headline_section(table, ["nosuch/joint"]) is None  # a run without that section draws no headline chart
    with pytest.raises(ValueError, match="generation/jiont.*generation/joint"):
        headline_section(table, ["generation/jiont"])


# Debian names its package's binary chromium, Ubuntu's chromium-browser; both under /usr/bin when installed.
BROWSERS = ("chromium", "chromium-browser", "/usr/bin/chromium", "/usr/bin/chromium-browser", "google-chrome")
# Once the page has loaded (every image decoded or failed), what the browser shows goes into the DOM,
# which --dump-dom prints: each image's natural size (0 when it did not decode) and each table's shape.
PROBE = """<script>addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]),
    tables: [...document.querySelectorAll("table")].map(t => [t.className, t.rows.length, t.rows[0].cells.length]),
  });
  document.body.append(out);
});</script>"""


def find_chromium() -> str | None:
    """The first of ``BROWSERS`` on this machine that answers ``--version`` (a snap stub without snapd does not)."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path is None:
            continue
        try:
            if subprocess.run([path, "--version"], capture_output=True, timeout=60).returncode == 0:
                return path
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def _chromium_or_skip() -> str:
    path = find_chromium()
    if path is None:
        reason = f"no working Chromium among {', '.join(BROWSERS)} (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, and CI must run the browser test (.ci/run installs Chromium)")
        pytest.skip(reason)
    return path


def _headless(chromium: str, profile: Path, *args: str) -> str:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_renders_in_headless_chromium_with_every_image_and_table(tiny_run: Path, tmp_path: Path) -> None:
    """A real browser decodes every inlined image at the size PIL reads, lays out every table of the
    evaluation and the user cards, and paints the plots: matplotlib's first bar colour (#1f77b4) is on the screenshot."""
    chromium = _chromium_or_skip()
    report = (tiny_run / "report" / "report.html").resolve()
    page = report.read_text()
    sizes = []
    for encoded in re.findall(r'<img[^>]* src="data:image/[a-z]+;base64,([^"]*)"', page):
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
            image.load()
            sizes.append([*image.size])
    assert len(sizes) == 5 + 2 * (3 + len(VARIANTS))  # the headline chart, 3 section charts and the curves

    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", f"{PROBE}</body>"))
    dom = _headless(chromium, tmp_path / "profile", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the page's load event never came: {dom[-500:]!r}"
    shown = json.loads(html.unescape(found.group(1)))
    assert all(complete and width > 0 for complete, width, _ in shown["images"]), shown["images"]
    assert [[width, height] for _, width, height in shown["images"]] == sizes
    # One metrics table per evaluation section (a header row + a row per metric, a column per variant)
    # and one variants table per user card (head, image, text and judge rows).
    table = _table(tiny_run)
    assert [shape for shape in shown["tables"] if shape[0] == "metrics"] == [
        ["metrics", len(section["rows"]) + 1, len(section["columns"]) + 1] for section in table["sections"]]
    assert [shape for shape in shown["tables"] if shape[0] == "variants"] == [["variants", 4, len(VARIANTS) + 1]] * 2
    assert len(shown["tables"]) == len(table["sections"]) + 2

    shot = tmp_path / "report.png"
    _headless(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,4000", report.as_uri())
    with Image.open(shot) as image:
        assert image.size == (1200, 4000)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    blue = (np.abs(pixels - np.array([31, 119, 180])).sum(axis=-1) < 30).sum()
    assert blue > 500, f"only {blue} pixels of the plots' bar colour: the images did not render"


def test_prompt_wording_benchmark_pairs_both_forms_on_the_zoos_held_out_and_trained_combinations(
        tiny_run: Path, benchmark_module: Callable[[str], object], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    bench = benchmark_module("prompt_wrapping")
    monkeypatch.setattr(sys, "argv", ["prompt_wrapping", "--run", str(tiny_run), "--combos", "3", "--images-per-combo", "2"])
    with pytest.raises(SystemExit) as exited:
        bench.main()
    assert exited.value.code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["templates"] == {"subject_first": "{subject}", "noun_first": "a product: {subject}"}
    zoo = load_zoo(RunDirectory(tiny_run))
    assert result["heldout"]["combos"] == len(zoo.heldout_combos) and result["seen"]["combos"] == 3
    for part in ("heldout", "seen"):
        for attribute in ("colour", "pattern"):
            shown = result[part][attribute]
            assert 0 <= shown["subject_first"] <= 1 and 0 <= shown["noun_first"] <= 1
            assert shown["noun_first_minus_subject_first"] == pytest.approx(shown["noun_first"] - shown["subject_first"])
            low, high = shown["interval"]
            assert low <= shown["noun_first_minus_subject_first"] <= high
