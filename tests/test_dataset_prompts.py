"""Dataset-aware prompts: what an item is comes from the dataset (``item_kind``), the catalog's
prompts stay byte for byte what they were, and MovieLens items are movie posters."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pmg.data import read_dataset, write_dataset
from pmg.data.catalog import CatalogConfig, generate_catalog
from pmg.data.format import DatasetError, ItemKind
from pmg.data.sources import load_movielens
from pmg.data.split import temporal_split
from pmg.data.subjects import caption_words, image_subject, item_subject, liked_caption_words, subject_caption
from pmg.generator.config import GeneratorConfig, ImagePromptForm
from pmg.generator.prompts import (
    item_image_prompt,
    keyword_prompts,
    prompt_attributes,
    prompt_keywords,
    prompt_templates,
    subject_attributes,
    user_image_prompt,
)
from prefgen import build_text_prompt

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _catalog_prompts(config: GeneratorConfig) -> list[str]:
    """Every kind of prompt the generators use, on a small catalog: per item its training image
    prompt, per user (and a cold start) the generation image prompt, and the text prompts."""
    data, _ = generate_catalog(CatalogConfig(num_users=40, num_items=60, interactions_per_user=8))
    split = temporal_split(data)
    out = []
    _, image_attributes = prompt_attributes(data, config)
    templates = prompt_templates(data, config.image.default_subject, config.text.audience, config.image.prompt_form)
    for i in range(data.num_items):
        values = {a: data.items[i].attributes[a] for a in image_attributes if data.items[i].attributes.get(a)}
        out.append(item_image_prompt(data, i, values, "<pv_0_1><pv_1_2>" if i % 2 else None, templates, config.image.default_subject))
    described = subject_attributes(data, config)
    _, words = keyword_prompts(data, prompt_keywords(data, config, split.train, list(range(data.num_users))), config)
    for u in [*range(data.num_users), None]:
        out.append(user_image_prompt(data, config, u, "a red silk dress", "<pv_0_3>" if (u or 0) % 3 else None, described, split.train,
                                     keywords=words[u] if u is not None else None))
    out += [build_text_prompt(fragment, context, templates)
            for fragment in (None, "<pt_0_1>", "silk <pt_0_1><pv_0_2>") for context in config.text.contexts]
    return out


def _noun_first() -> GeneratorConfig:
    config = GeneratorConfig()
    config.image.prompt_form = ImagePromptForm.noun_first
    return config


def test_the_catalogs_noun_first_prompts_are_byte_identical_to_before_dataset_subjects() -> None:
    # Recorded at e442d91, before prompts took their words from the dataset: the same 110 prompts
    # through the functions of then (build_image_prompt(described_subject(item_subject(...)))...).
    prompts = _catalog_prompts(_noun_first())
    assert prompts[:2] == ["a product: a pink polka-dot hat", "a product for <pv_0_1><pv_1_2>: a purple striped bag"]
    assert prompts[61] == "a product for <pv_0_3>: a blue checked trousers"
    assert prompts[-1] == "User silk <pt_0_1><pv_0_2> would love: review:"
    assert "A shopper would love:" in prompts
    assert len(prompts) == 110
    assert hashlib.sha256("\n".join(prompts).encode()).hexdigest() == "388b78bf25b9e9d640a6cc8654b46bd95372128914cd51d9011a4d12fff82867"


def test_subject_first_image_prompts_are_the_zoos_captions_then_the_tokens() -> None:
    noun_first, subject_first = _catalog_prompts(_noun_first()), _catalog_prompts(GeneratorConfig())
    # The default: no noun in front, so a prompt without tokens is a caption the zoo's UNet trained on.
    assert subject_first[:2] == ["a pink polka-dot hat", "a purple striped bag for <pv_0_1><pv_1_2>"]
    assert subject_first[61] == "a blue checked trousers for <pv_0_3>"
    # Only the image prompts differ; the text prompts are the same in both forms.
    changed = [n for n, (a, b) in enumerate(zip(noun_first, subject_first, strict=True)) if a != b]
    assert changed == list(range(60 + 41))


def test_the_configs_subject_and_audience_override_the_datasets() -> None:
    config = _noun_first()
    config.image.default_subject, config.text.audience = "a garment", "A buyer"
    prompts = _catalog_prompts(config)
    # Items with a category keep theirs; the noun opening each prompt and the no-token text are the config's.
    assert prompts[0] == "a garment: a pink polka-dot hat"
    assert "A buyer would love:" in prompts and not any(p.startswith("a product") for p in prompts)


def test_movielens_items_are_movie_posters_described_by_their_genres() -> None:
    data = load_movielens(FIXTURES / "ml-1m-cut")
    assert data.item_kind.subject == "a movie poster" and data.item_kind.subject_attribute is None
    heat = next(i for i, it in enumerate(data.items) if it.title == "Heat (1995)")
    assert caption_words(data, heat) == ["action", "crime", "thriller"]
    assert item_subject(data, heat, image_subject(data)) == "a movie poster"
    assert subject_caption("a movie poster", data.items[heat].title, caption_words(data, heat)) == \
        "a movie poster of Heat (1995), action, crime, thriller"
    config = _noun_first()
    templates = prompt_templates(data, config.image.default_subject, config.text.audience, config.image.prompt_form)
    assert item_image_prompt(data, heat, {}, "<pv_0_1>", templates) == "a movie poster for <pv_0_1>: a movie poster, action, crime, thriller"
    assert item_image_prompt(data, heat, {}, None, templates) == "a movie poster: a movie poster, action, crime, thriller"
    first = prompt_templates(data, config.image.default_subject, config.text.audience)  # subject_first, the default
    assert item_image_prompt(data, heat, {}, "<pv_0_1>", first) == "a movie poster, action, crime, thriller for <pv_0_1>"
    assert build_text_prompt(None, "review:", templates) == "A viewer would love: review:"
    assert build_text_prompt("<pt_0_1>", "", templates) == "User <pt_0_1> would love:"
    # A user's generation prompt: the genres their training history holds most, no title.
    split = temporal_split(data)
    user = int(data.user[split.train[0]])
    genres = liked_caption_words(data, split.train, user)
    assert 1 <= len(genres) <= 3
    prompt = user_image_prompt(data, config, user, "Heat (1995)", "<pv_0_2>", {}, split.train)
    assert prompt == f"a movie poster for <pv_0_2>: a movie poster, {', '.join(genres)}"


def test_item_kind_round_trips_and_an_old_folder_reads_as_the_catalog(small_catalog: Path, tmp_path: Path) -> None:
    data = load_movielens(FIXTURES / "ml-1m-cut")
    out = write_dataset(data, tmp_path / "ml")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["version"] == 1
    assert meta["item_kind"] == {"subject": "a movie poster", "subject_attribute": None, "caption_attributes": ["genres"], "audience": "A viewer"}
    assert read_dataset(out).item_kind == data.item_kind
    # The catalog's dataset.json holds no item_kind (it is the default), and reads as it always did.
    catalog = Path(shutil.copytree(small_catalog, tmp_path / "catalog"))
    assert "item_kind" not in json.loads((catalog / "dataset.json").read_text())
    old = read_dataset(catalog)
    assert old.item_kind == ItemKind() and image_subject(old) == "a product"
    assert item_subject(old, 0, image_subject(old)) == f"a {old.items[0].attributes['category']}"
    meta["item_kind"] = {"subject": "a poster", "colour": "red"}
    (out / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"item_kind: unknown item_kind keys \['colour'\]"):
        read_dataset(out)


def test_zoo_captions_use_the_subject_title_and_genres(tmp_path: Path) -> None:
    from pmg.zoo.config import HoldoutConfig
    from pmg.zoo.corpus import build_corpus

    data = load_movielens(FIXTURES / "ml-1m-cut")
    corpus = build_corpus(data, temporal_split(data), HoldoutConfig(combos=0, item_fraction=0.0), image_size=8)
    heat = next(i for i, it in enumerate(data.items) if it.title == "Heat (1995)")
    assert corpus.caption(heat) == "a movie poster of Heat (1995), action, crime, thriller"
    assert corpus.caption(heat, 2) == corpus.caption(heat)
    assert np.all([corpus.caption(i).startswith("a movie poster") for i in range(data.num_items)])


def test_data_item_kind_overrides_the_datasets_in_the_runs_copy(small_catalog: Path, tmp_path: Path) -> None:
    from pmg.config import load_config
    from pmg.data.dataset_stage import DatasetConfig, prepare_dataset
    from pmg.runs import RunDirectory

    config = load_config(DatasetConfig, None, ["kind=pmg", f"path={small_catalog}", "item_kind.subject=a garment photo",
                                               "item_kind.subject_attribute=''"])
    data, _, _ = prepare_dataset(config, RunDirectory(tmp_path / "run"))
    assert data.item_kind == ItemKind(subject="a garment photo", subject_attribute=None)
    assert read_dataset(tmp_path / "run" / "data" / "dataset").item_kind == data.item_kind
    assert item_subject(data, 0, image_subject(data)) == "a garment photo"
    # The source folder is untouched; the generator's own setting still wins over the dataset's.
    assert read_dataset(small_catalog).item_kind == ItemKind()
    assert image_subject(data, "a sketch") == "a sketch"
