"""The zoo's held-out figures on any dataset: their arithmetic on inputs whose answer is known,
and a toy zoo built on a dataset without the catalog's colour, pattern and category (MovieLens'
shape: titles and a ``genres``-like attribute) that still measures retrieval, CLIP scores and
perplexity, and writes every figure as a finite number or null with a reason, never NaN."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pmg.config import load_config
from pmg.data.catalog import CatalogConfig, write_catalog
from pmg.data.dataset_stage import DatasetConfig, DatasetKind, load_prepared, prepare_dataset
from pmg.data.format import read_dataset, write_dataset
from pmg.data.sources import MOVIELENS_ITEM_KIND
from pmg.pipeline import PipelineConfig
from pmg.runs import RunDirectory
from pmg.zoo import ZooConfig, load_zoo, read_zoo_folder, run_zoo_stage
from pmg.zoo.config import CausalLMTrainingConfig, HoldoutConfig, ZooEvalConfig
from pmg.zoo.corpus import build_corpus
from pmg.zoo.evaluation import lm_heldout_perplexity, own_and_shuffled_cosines, unigram_log_probs
from pmg.zoo.lm_recipe import build_lm, lm_token_batch
from pmg.zoo.manifest import ZooMetrics
from prefgen.testing.offline_tokenizers import train_causal_lm_tokenizer
from prefgen.testing.tiny import TinyCausalLMConfig

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_CONFIG = Path(__file__).resolve().parent / "tiny.yaml"


def _strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in zoo.json")

    return json.loads(text, parse_constant=refuse)


def test_unigram_perplexity_on_a_known_token_stream() -> None:
    # Counts 2, 1, 0 of 3 tokens over a vocabulary of 3, add-one: 3/6, 2/6, 1/6.
    log_probs = unigram_log_probs(torch.tensor([0, 0, 1]), vocab_size=3)
    torch.testing.assert_close(log_probs.exp(), torch.tensor([0.5, 1 / 3, 1 / 6], dtype=torch.float64))
    heldout = torch.tensor([0, 1, 2])
    assert math.exp(-float(log_probs[heldout].mean())) == pytest.approx(36 ** (1 / 3))
    # Nothing to fit on: every token equally likely, perplexity the vocabulary size.
    assert math.exp(-float(unigram_log_probs(torch.zeros(0, dtype=torch.long), 7)[heldout].mean())) == pytest.approx(7)


def test_a_uniform_lm_has_its_vocabulary_size_as_perplexity_on_the_tokens_it_predicts() -> None:
    texts = ["Heat (1995)", "Toy Story (1995)", "Genres: Action, Crime.", "a red striped dress", "great film"]
    tokenizer = train_causal_lm_tokenizer(texts * 4, vocab_size=300, model_max_length=64)
    config = CausalLMTrainingConfig(model=TinyCausalLMConfig(hidden_size=16, layers=1, heads=2, kv_heads=1,
                                                             intermediate_size=32, max_position_embeddings=64))
    torch.manual_seed(0)
    lm = build_lm(config, tokenizer)
    with torch.no_grad():
        lm.get_output_embeddings().weight.zero_()  # every logit 0: a uniform next-token distribution
    heldout = ["Heat (1995)", "a red dress"]
    found = lm_heldout_perplexity(lm, tokenizer, texts, heldout, max_length=32, batch=1)
    assert found is not None
    assert found.lm == pytest.approx(lm.config.vocab_size, rel=1e-6)
    # Every token after a text's first is predicted; end of text is appended as in training.
    lengths = lm_token_batch(tokenizer, heldout, 32)["attention_mask"].sum(1)
    assert found.tokens == int((lengths - 1).sum()) and found.texts == 2
    # Fitted on texts that hold the held-out words, the unigram beats a uniform guess but not by magic.
    assert 1 < found.unigram < len(tokenizer)
    assert lm_heldout_perplexity(lm, tokenizer, texts, [], max_length=32) is None


def test_the_shuffled_baseline_of_identical_embeddings_scores_as_the_pairing() -> None:
    same = torch.nn.functional.normalize(torch.ones(4, 3), dim=-1)
    own, shuffled = own_and_shuffled_cosines(same, same)
    torch.testing.assert_close(own, shuffled)
    # Distinct orthonormal rows: each row meets itself (1) and, shuffled, another one (0).
    own, shuffled = own_and_shuffled_cosines(torch.eye(3), torch.eye(3))
    torch.testing.assert_close(own, torch.ones(3))
    torch.testing.assert_close(shuffled, torch.zeros(3))
    with pytest.raises(ValueError, match="two or more"):
        own_and_shuffled_cosines(torch.eye(1), torch.eye(1))


def test_a_metric_not_measured_is_null_with_its_reason_in_valid_json() -> None:
    metrics = ZooMetrics()
    metrics.add("clip_top1", float("nan"), "fewer than 2 held-out items with an image")
    metrics.add("clip_candidates", 1, "")
    metrics.add("lm_heldout_perplexity", 12.5, "unused")
    text = json.dumps({"metrics": metrics.values, "metrics_missing": metrics.missing}, allow_nan=False)
    manifest = _strict_json(text)
    assert manifest["metrics"] == {"clip_top1": None, "clip_candidates": 1, "lm_heldout_perplexity": 12.5}
    assert manifest["metrics_missing"] == {"clip_top1": "fewer than 2 held-out items with an image"}
    # What older zoo.json files hold: a bare NaN (Python's json reads it), and no reasons.
    old = ZooMetrics.from_manifest(json.loads('{"metrics": {"clip_top1": NaN, "clip_candidates": 0}}'))
    assert old.values == {"clip_top1": None, "clip_candidates": 0} and "NaN" in old.missing["clip_top1"]
    with pytest.raises(ValueError, match="t2i_clip_items"):
        ZooEvalConfig(t2i_clip_items=1).validate()
    with pytest.raises(ValueError, match="lm_heldout_texts"):
        ZooEvalConfig(lm_heldout_texts=-1).validate()


def _attributeless_dataset(folder: Path) -> Path:
    """The tiny catalog as MovieLens has it: titles, descriptions, images, reviews and a
    ``genres`` attribute per item ("dress|red") that describes it in captions, no attribute schema,
    no colour/pattern/category."""
    generated = write_catalog(folder / "catalog", CatalogConfig(num_users=20, num_items=60, interactions_per_user=8, image_size=32))
    data = read_dataset(generated)
    for item in data.items:
        item.attributes = {"genres": f"{item.attributes['category']}|{item.attributes['colour']}"}
    data.attributes, data.user_tastes, data.item_kind = {}, None, MOVIELENS_ITEM_KIND
    return write_dataset(data, folder / "attributeless")


@pytest.fixture(scope="module")
def attributeless_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDirectory, ZooConfig, str]:
    root = tmp_path_factory.mktemp("zoo-any")
    run = RunDirectory(root / "run")
    _, _, data_fp = prepare_dataset(DatasetConfig(kind=DatasetKind.pmg, path=str(_attributeless_dataset(root))), run)
    config = load_config(PipelineConfig, TINY_CONFIG, [f"zoo.cache_dir={root / 'cache'}", "zoo.eval.t2i_clip_items=4"]).zoo
    result = run_zoo_stage(config, run, data_fp, False, log=lambda _: None)
    assert not result.reused
    return run, config, data_fp


def test_a_zoo_on_a_dataset_without_the_catalogs_attributes_measures_itself(attributeless_zoo) -> None:
    run, config, data_fp = attributeless_zoo
    zoo = load_zoo(run)
    manifest = _strict_json((zoo.root / "zoo.json").read_text())
    assert zoo.judge is None
    for name, value in manifest["metrics"].items():
        assert value is None or (isinstance(value, int | float) and math.isfinite(value)), name
        assert (value is None) == (name in manifest["metrics_missing"]), name
    metrics, missing = manifest["metrics"], manifest["metrics_missing"]
    assert "no judge" in missing["judge_colour_acc"] and missing.keys() == {n for n, v in metrics.items() if v is None}
    # Retrieval among subject captions ("a movie poster of <title>, <genres>"): a real figure over a stated candidate set, with its chance.
    assert metrics["clip_candidates"] >= 2 and 0.0 <= metrics["clip_top1"] <= 1.0
    assert metrics["clip_chance"] == pytest.approx(1 / metrics["clip_candidates"])
    assert metrics["t2i_clip_items"] == 4
    for name in ("t2i_clip_score", "t2i_clip_score_shuffled", "t2i_clip_i", "t2i_clip_i_shuffled"):
        assert -1.0 <= metrics[name] <= 1.0
    assert metrics["lm_heldout_perplexity"] > 1 and metrics["lm_unigram_perplexity"] > 1
    assert metrics["lm_heldout_tokens"] > metrics["lm_heldout_texts"] > 0
    # The sample sheet sits in the entry, recorded with the other files: one row per generated item.
    assert "heldout_samples.png" in manifest["files"] and not (zoo.root / "t2i_samples.png").exists()
    with Image.open(zoo.root / "heldout_samples.png") as sheet:
        assert sheet.height >= 4 * 64 and sheet.width >= 2 * 64
    # The stage's summary names what was not measured and why, and where the sheet is.
    summary = run_zoo_stage(config, run, data_fp, True).summary
    assert "heldout_samples.png" in summary and "not measured (no judge" in summary and not re.search(r"\bnan\b", summary)


def test_the_captions_retrieval_ranks_are_titles_and_genres(attributeless_zoo) -> None:
    run, _, _ = attributeless_zoo
    data, split = load_prepared(run)
    corpus = build_corpus(data, split, HoldoutConfig(combos=4, item_fraction=0.2), image_size=8)
    item = int(corpus.heldout_items[0])
    genres = data.items[item].attributes["genres"].split("|")
    assert corpus.caption(item) == f"a movie poster of {data.items[item].title}, {', '.join(genres)}"
    # No combination can be held out without the attributes: the items held out are the random share.
    assert corpus.heldout_combos == [] and 0 < len(corpus.heldout_items) < data.num_items
    heldout = set(corpus.heldout_items.tolist())
    assert corpus.heldout_lm_texts and {i for i, _ in corpus.heldout_lm_sources} <= heldout
    assert not {i for i, _ in corpus.lm_sources} & heldout


def test_an_older_zoo_json_with_nan_still_loads(attributeless_zoo, tmp_path: Path) -> None:
    run, _, _ = attributeless_zoo
    copy = tmp_path / "entry"
    shutil.copytree(load_zoo(run).root, copy)
    manifest = json.loads((copy / "zoo.json").read_text())
    manifest["metrics"]["clip_top1"] = float("nan")
    del manifest["metrics_missing"]
    (copy / "zoo.json").write_text(json.dumps(manifest))  # as zoo.json was written before: NaN and all
    zoo = read_zoo_folder(copy)
    assert zoo.metrics["clip_top1"] is None and "NaN" in zoo.metrics_missing["clip_top1"]
    assert np.isfinite(zoo.metrics["lm_heldout_perplexity"])


def test_a_build_resumed_after_every_model_finished_measures_the_same(attributeless_zoo, tmp_path: Path) -> None:
    from pmg.zoo.models import ZooProgress, train_models

    run, config, _ = attributeless_zoo
    data, split = load_prepared(run)
    out = tmp_path / "entry"
    progress = ZooProgress(out, "key", log=lambda _: None)
    first = train_models(config, data, split, out, tmp_path / "logs", progress, log=lambda _: None)
    lines: list[str] = []
    again = train_models(config, data, split, out, tmp_path / "logs", ZooProgress(out, "key", lines.append), log=lines.append)
    assert any("lm: kept from the interrupted build" in line for line in lines)  # loaded, not trained
    assert again["metrics"] == first["metrics"] and again["metrics_missing"] == first["metrics_missing"]
    assert first["metrics"]["lm_heldout_perplexity"] == load_zoo(run).metrics["lm_heldout_perplexity"]
