"""Prompt builders (templates, cold start) and the token-row helpers (init, checks)."""

from __future__ import annotations

import pytest
import torch

from prefgen.prompts import (
    PromptTemplates,
    build_image_prompt,
    build_text_prompt,
    describe_subject,
    token_fragment,
)
from prefgen.soft_prompt import SoftPromptProjector, soft_prompt_tokens
from prefgen.token_rows import PreferenceTokenError, TokenInit, initial_token_rows


def test_prompts_place_fragments_and_fall_back_without_tokens() -> None:
    assert build_image_prompt("a dress", "<pv_0_3><pv_1_9>") == "a product for <pv_0_3><pv_1_9>: a dress"
    assert build_image_prompt("a dress", ["<pv_0_3>", "<pv_1_9>"]) == "a product for <pv_0_3><pv_1_9>: a dress"
    assert build_image_prompt("a dress", None) == build_image_prompt("a dress", "") == "a product: a dress"
    assert build_text_prompt("<pt_0_5><pt_1_2>") == "User <pt_0_5><pt_1_2> would love:"
    assert build_text_prompt(None) == "A shopper would love:"
    assert build_text_prompt("<pt_0_5>", context="a title") == "User <pt_0_5> would love: a title"
    custom = PromptTemplates(image="{subject}, in the style {tokens} likes", image_no_tokens="{subject}")
    assert build_image_prompt("a shoe", "<pv_0_1>", custom) == "a shoe, in the style <pv_0_1> likes"
    assert build_image_prompt("a shoe", None, custom) == "a shoe"
    assert token_fragment(soft_prompt_tokens(2)) == "<pmg_soft_0><pmg_soft_1>"


def test_describe_subject_puts_words_before_the_noun_and_fits_the_article() -> None:
    assert describe_subject("a jacket", ["orange"]) == "an orange jacket"
    assert describe_subject("an umbrella", ["red", "striped"]) == "a red striped umbrella"
    assert describe_subject("A hat", ["olive"]) == "An olive hat"
    assert describe_subject("poster art", ["blue"]) == "blue poster art"  # no article: words in front
    assert describe_subject(" a dress ", ["", "  "]) == "a dress"  # nothing named: unchanged
    assert build_image_prompt(describe_subject("a bag", ["green"]), "<pv_0_1>") == "a product for <pv_0_1>: a green bag"


def test_templates_are_checked() -> None:
    with pytest.raises(ValueError, match="must contain"):
        PromptTemplates(image="a product: {subject}")
    with pytest.raises(ValueError, match="must not contain"):
        PromptTemplates(text_no_tokens="User {tokens}")
    with pytest.raises(ValueError, match="unknown fields"):
        PromptTemplates(image="{tokens} {colour}")


def test_row_initialisation() -> None:
    existing = torch.randn(50, 8, generator=torch.Generator().manual_seed(0)) + 3.0
    mean_rows = initial_token_rows(existing, 4, TokenInit(noise=0.1))
    assert mean_rows.shape == (4, 8) and torch.allclose(mean_rows.mean(0), existing.mean(0), atol=0.3)
    assert torch.equal(mean_rows, initial_token_rows(existing, 4, TokenInit(noise=0.1)))  # seeded
    codes = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    rows = initial_token_rows(existing, 6, TokenInit(method="vectors", vectors=codes, projection="random"))
    spread = (existing - existing.mean(0)).norm(dim=1).mean()
    assert torch.allclose(rows.mean(0), existing.mean(0), atol=1e-5)
    assert torch.isclose((rows - rows.mean(0)).norm(dim=1).mean(), spread, rtol=1e-4)
    with pytest.raises(PreferenceTokenError, match=r"projection must be \[3, 8\]"):
        initial_token_rows(existing, 6, TokenInit(method="vectors", vectors=codes, projection=torch.zeros(3, 7)))
    with pytest.raises(PreferenceTokenError, match=r"must be \[5, k\]"):
        initial_token_rows(existing, 5, TokenInit(method="vectors", vectors=codes))


def test_soft_prompt_projector_shapes_and_center() -> None:
    center = torch.full((8,), 2.0)
    projector = SoftPromptProjector(5, 3, 8, center=center, spread=1.0, init_scale=0.1)
    out = projector(torch.zeros(4, 5))
    assert out.shape == (4, 3, 8) and torch.allclose(out, center.expand(4, 3, 8))
