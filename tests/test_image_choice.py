"""The best of several images per user (pmg.generator.generate.ImageChoice) and the reward's
personalization scorer that chooses among them (pmg.reward.choice), on stand-in models whose
output is known: which noise each candidate came from, and what the scorer must prefer."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pmg.data.catalog import CatalogConfig, generate_catalog
from pmg.generator.config import GeneratorConfig
from pmg.generator.generate import ImageChoice, generate_for_users, user_seed
from pmg.reward import PersonalizationScorer, RewardConfig


class SeedPainter:
    """An image adapter whose image for a prompt is one flat grey: its noise seed modulo 251."""

    image_size = 8

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def generate(self, prompts: list[str], *, seed: list[int], **_: object) -> list[Image.Image]:
        self.calls.append(list(seed))
        return [Image.new("RGB", (self.image_size, self.image_size), (s % 251,) * 3) for s in seed]


def _grey(image: Image.Image) -> int:
    return image.getpixel((0, 0))[0]


def _data(users: int) -> SimpleNamespace:
    return SimpleNamespace(user_ids=[f"u{n}" for n in range(users)])


def test_each_user_gets_the_best_scored_of_its_candidates_drawn_from_consecutive_seeds() -> None:
    config, data, painter = GeneratorConfig(), _data(3), SeedPainter()
    users = [0, 1, 2]

    def brightest(images: list[Image.Image], users: list[int | None]) -> torch.Tensor:
        return torch.tensor([float(_grey(image)) for image in images])

    chosen = ImageChoice(5, brightest).draw(painter, ["a dress"] * 3, config, data, users)
    # Candidate k of a user is drawn from user_seed(sample.seed + k): the first is the one-draw image.
    assert painter.calls == [[user_seed(config.sample.seed + k, data, u) for u in users] for k in range(5)]
    for image, user in zip(chosen, users, strict=True):
        assert _grey(image) == max(user_seed(config.sample.seed + k, data, user) % 251 for k in range(5))


def test_one_candidate_is_the_plain_draw_and_ties_keep_the_first() -> None:
    config, data = GeneratorConfig(), _data(2)
    single = ImageChoice(1, lambda images, users: torch.zeros(len(images))).draw(SeedPainter(), ["x", "y"], config, data, [0, 1])
    assert [_grey(i) for i in single] == [user_seed(config.sample.seed, data, u) % 251 for u in (0, 1)]
    tied = ImageChoice(3, lambda images, users: torch.ones(len(images))).draw(SeedPainter(), ["x", "y"], config, data, [0, 1])
    assert [_grey(i) for i in tied] == [_grey(i) for i in single]
    with pytest.raises(ValueError, match="at least 1 candidate"):
        ImageChoice(0, lambda images, users: torch.zeros(len(images)))


def test_a_cold_start_user_keeps_its_one_draw_and_costs_no_candidates() -> None:
    config, data = GeneratorConfig(), _data(2)
    users: list[int | None] = [0, None, 1]
    seen: list[list[int | None]] = []

    def brightest(images: list[Image.Image], users: list[int | None]) -> torch.Tensor:
        seen.append(list(users))
        return torch.tensor([float(_grey(image)) for image in images])

    offsets = torch.arange(3.0)[:, None].expand(3, 4)  # [B, C]: each row names its user's place in the batch
    received: list[torch.Tensor] = []

    class OffsetPainter(SeedPainter):
        def generate(self, prompts: list[str], *, seed: list[int], latent_offsets: torch.Tensor | None = None,
                     **rest: object) -> list[Image.Image]:
            received.append(latent_offsets)
            return super().generate(prompts, seed=seed, **rest)

    painter = OffsetPainter()
    chosen = ImageChoice(4, brightest).draw(painter, ["a", "b", "c"], config, data, users, latent_offsets=offsets)
    # Every user's first draw, then three more for the two known users only, with their own offsets.
    assert painter.calls[0] == [user_seed(config.sample.seed, data, u) for u in users]
    assert painter.calls[1:] == [[user_seed(config.sample.seed + k, data, u) for u in (0, 1)] for k in range(1, 4)]
    assert torch.equal(received[0], offsets) and all(torch.equal(r, offsets[[0, 2]]) for r in received[1:])
    assert seen == [[0, 1]] * 4  # the scorer never sees the cold-start user
    assert _grey(chosen[1]) == user_seed(config.sample.seed, data, None) % 251
    for image, user in ((chosen[0], 0), (chosen[2], 1)):
        assert _grey(image) == max(user_seed(config.sample.seed + k, data, user) % 251 for k in range(4))


def test_generate_for_users_passes_the_users_to_the_scorer_and_keeps_each_its_own_choice() -> None:
    data, _ = generate_catalog(CatalogConfig(seed=0, num_users=6, num_items=40, image_size=16))
    config, painter = GeneratorConfig(), SeedPainter()
    seen: list[list[int | None]] = []

    def darkest_for_even_users(images: list[Image.Image], users: list[int | None]) -> torch.Tensor:
        seen.append(list(users))
        return torch.tensor([-float(_grey(i)) if u % 2 == 0 else float(_grey(i)) for i, u in zip(images, users, strict=True)])

    results = generate_for_users(data, config, users=[3, 0, 2], text_fragments=[None] * 3, image_fragments=["<pv_0_1>"] * 3,
                                 text_adapter=None, image_adapter=painter, history=np.zeros(0, dtype=np.int64),
                                 subjects=["a dress"] * 3, image_choice=ImageChoice(3, darkest_for_even_users))
    assert seen == [[3, 0, 2]] * 3
    for result, user in zip(results, [3, 0, 2], strict=True):
        greys = [user_seed(config.sample.seed + k, data, user) % 251 for k in range(3)]
        assert _grey(result.image) == (min(greys) if user % 2 == 0 else max(greys))


class FlatEmbedder(nn.Module):
    """A stand-in CLIP image embedder: an image's embedding is its mean RGB, unit length."""

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] in [-1, 1]
        return torch.nn.functional.normalize(images.mean(dim=(2, 3)) + 1.0, dim=-1)


def test_personalization_scorer_is_the_rewards_term_and_leaves_a_cold_start_user_unscored() -> None:
    visual_map = torch.eye(3)[:2]  # [d=2, d_c=3]: the red and green means
    preferences = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # user 0 likes red, user 1 green
    scorer = PersonalizationScorer(FlatEmbedder(), visual_map, preferences)
    red, green = Image.new("RGB", (4, 4), (250, 10, 10)), Image.new("RGB", (4, 4), (10, 250, 10))
    scores = scorer([red, green, red, green], [0, 0, 1, 1])
    assert scores[0] > scores[1] and scores[3] > scores[2]
    expected = (torch.nn.functional.cosine_similarity(FlatEmbedder().embed_images(
        torch.stack([torch.from_numpy(np.asarray(red, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0]))[:, :2],
        preferences[:1]) + 1) / 2
    assert scores[0] == pytest.approx(float(expected[0]), abs=1e-6)
    assert scorer([red, green], [None, None]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="2 images for 1 users"):
        scorer([red, green], [0])
    with pytest.raises(ValueError, match="preference dimension"):
        PersonalizationScorer(FlatEmbedder(), torch.eye(3), preferences)


def test_candidates_below_one_are_refused_at_config_load() -> None:
    config = RewardConfig()
    config.image.candidates = 0
    with pytest.raises(ValueError, match="reward.image.candidates must be >= 1"):
        config.validate()
