"""ConsistencyReward and CLIP-based personalization on a tiny CLIP trained on solid colours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from prefgen.testing.offline_tokenizers import train_clip_tokenizer
from prefgen.testing.tiny import TinyClipConfig, build_tiny_clip
from prefreward import ClipEmbedder, ConsistencyReward, PersonalizationReward, reward_backprop_loss

COLOURS = ["red", "green", "blue"]
PALETTE = torch.eye(3)  # rows: pure red, green, blue in [0, 1]


def _solid(colours: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3] colours in [0, 1] → [N, 3, size, size] images."""
    return colours.view(-1, 3, 1, 1).expand(-1, 3, size, size).contiguous()


@pytest.fixture(scope="module")
def clip_and_tokenizer():
    """A tiny CLIP (16×16 images) trained for 40 steps to match solid colours to their names."""
    torch.manual_seed(0)
    tokenizer = train_clip_tokenizer(COLOURS * 4, vocab_size=530, model_max_length=8)
    config = TinyClipConfig(
        text_hidden_size=32, text_layers=2, text_heads=2, text_intermediate_size=64, max_text_length=8,
        vision_hidden_size=32, vision_layers=1, vision_heads=2, vision_intermediate_size=64,
        image_size=16, patch_size=8, projection_dim=16,
    )
    clip = build_tiny_clip(config, tokenizer)
    tokens = tokenizer(COLOURS, padding=True, return_tensors="pt")
    optimiser = torch.optim.Adam(clip.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    clip.train()
    for _ in range(40):
        labels = torch.arange(12) % 3
        colours = PALETTE[labels] * 0.8 + 0.2 * torch.rand(12, 1, generator=generator)
        pixels = (_solid(colours, 16) + 0.1 * torch.rand(12, 3, 16, 16, generator=generator)) * 2 - 1  # mean/std 0.5
        out = clip(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
        loss = F.cross_entropy(out.logits_per_image, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    clip.eval()
    return clip, tokenizer


@pytest.fixture()
def reward(clip_and_tokenizer) -> ConsistencyReward:
    clip, tokenizer = clip_and_tokenizer
    return ConsistencyReward.from_model(clip, tokenizer, image_mean=[0.5] * 3, image_std=[0.5] * 3, image_range="0,1")


def test_prefers_the_matching_caption(reward: ConsistencyReward) -> None:
    images = _solid(PALETTE, 24)  # not the CLIP size: exercises the resize
    with torch.no_grad():
        scores = torch.stack([reward(images, [name] * 3) for name in COLOURS], dim=1)  # [image, caption]
    for index in range(3):
        others = [j for j in range(3) if j != index]
        assert scores[index, index] > scores[index, others].max() + 0.1, scores


def test_rewards_bounded_in_both_scales(clip_and_tokenizer) -> None:
    clip, tokenizer = clip_and_tokenizer
    images = torch.rand(4, 3, 20, 28) * 2 - 1
    texts = ["red", "blue", "a green thing", ""]
    cosine = ConsistencyReward.from_model(clip, tokenizer, image_mean=[0.5] * 3, image_std=[0.5] * 3)(images, texts)
    unit = ConsistencyReward.from_model(clip, tokenizer, image_mean=[0.5] * 3, image_std=[0.5] * 3, unit_interval=True)(images, texts)
    assert cosine.shape == (4,) and unit.shape == (4,)
    assert bool((cosine.abs() <= 1 + 1e-5).all()) and bool(((unit >= -1e-6) & (unit <= 1 + 1e-6)).all())
    torch.testing.assert_close(unit, (cosine + 1) / 2)


def test_contrastive_mode_pays_for_naming_what_sets_the_image_apart(clip_and_tokenizer) -> None:
    """Texts score the probability of picking their own image among the batch's: the right name
    beats an unspecific text, which beats a wrong name; shared images via image_index."""
    clip, tokenizer = clip_and_tokenizer
    contrastive = ConsistencyReward.from_model(clip, tokenizer, image_mean=[0.5] * 3, image_std=[0.5] * 3, image_range="0,1",
                                               mode="contrastive")
    assert contrastive.logit_scale == pytest.approx(float(clip.logit_scale.exp()))
    images = _solid(PALETTE, 16)
    shared = torch.tensor([0, 0, 0, 1, 1, 1])  # two images, three texts each (a GRPO group per image)
    texts = ["red", "", "green", "green", "", "red"]
    with torch.no_grad():
        scores = contrastive(images[:2], texts, image_index=shared)
        each = contrastive(images, COLOURS)
    assert bool(((scores >= 0) & (scores <= 1)).all())
    for right, none, wrong in ((0, 1, 2), (3, 4, 5)):
        assert scores[right] > scores[none] > scores[wrong], scores
    assert bool((each > 1 / 3).all()), each
    # Rows of one text sum to 1 over the images: the scores of every image for one text.
    with torch.no_grad():
        per_image = torch.stack([contrastive(images, ["red"] * 3, image_index=torch.full((3,), k))[0] for k in range(3)])
    torch.testing.assert_close(per_image.sum(), torch.tensor(1.0))
    # The cosine form scores the same pairs with image_index, and gradients reach the images.
    cosine = ConsistencyReward.from_model(clip, tokenizer, image_mean=[0.5] * 3, image_std=[0.5] * 3, image_range="0,1")
    with torch.no_grad():
        torch.testing.assert_close(cosine(images[:2], texts, image_index=shared), cosine(images[shared], texts))
    pixels = images.clone().requires_grad_(True)
    contrastive(pixels, COLOURS).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="image_index"):
        contrastive(images, ["red", "green"], image_index=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="probability already"):
        ConsistencyReward(contrastive.embedder, unit_interval=True, mode="contrastive")
    with pytest.raises(ValueError, match="mode"):
        ConsistencyReward(contrastive.embedder, mode="softmax")


def test_gradients_reach_the_images_not_clip(reward: ConsistencyReward) -> None:
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    reward(images, ["red", "blue"]).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in reward.parameters())


def test_image_ranges_and_normalisation(clip_and_tokenizer) -> None:
    clip, tokenizer = clip_and_tokenizer
    zero_one = ClipEmbedder(clip, tokenizer, image_mean=[0.5] * 3, image_std=[0.5] * 3, image_range="0,1")
    minus_one = ClipEmbedder(clip, tokenizer, image_mean=[0.5] * 3, image_std=[0.5] * 3, image_range="-1,1")
    images = torch.rand(2, 3, 16, 16)
    # At the CLIP size no resize happens: exactly (x - mean) / std.
    torch.testing.assert_close(zero_one.pixel_values(images), (images - 0.5) / 0.5)
    torch.testing.assert_close(minus_one.pixel_values(images * 2 - 1), zero_one.pixel_values(images))
    # Non-square input: shortest edge to 16, then a centre crop.
    assert zero_one.pixel_values(torch.rand(1, 3, 32, 48)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError):
        zero_one.pixel_values(torch.rand(3, 16, 16))
    with pytest.raises(ValueError):
        ClipEmbedder(clip, tokenizer, image_range="0,255")  # type: ignore[arg-type]


def test_from_model_takes_mean_std_from_a_processor(clip_and_tokenizer) -> None:
    from transformers import CLIPImageProcessor, CLIPProcessor

    clip, tokenizer = clip_and_tokenizer
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(image_mean=[0.5] * 3, image_std=[0.25] * 3), tokenizer=tokenizer)
    reward = ConsistencyReward.from_model(clip, processor)
    assert reward.embedder.image_std.flatten().tolist() == [0.25] * 3
    assert reward.embedder.tokenizer is tokenizer
    default = ConsistencyReward.from_model(clip, tokenizer)  # no processor: OpenAI's normalisation
    assert default.embedder.image_mean.flatten()[0].item() == pytest.approx(0.48145466)


def test_from_pretrained_folder_reads_normalisation(clip_and_tokenizer, tmp_path: Path) -> None:
    clip, tokenizer = clip_and_tokenizer
    clip.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    # The processor config a CLIPProcessor writes (pmg zoo layout): mean/std nested under image_processor.
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}}))
    loaded = ConsistencyReward.from_pretrained(tmp_path, image_range="0,1")
    assert loaded.embedder.image_mean.flatten().tolist() == [0.5] * 3
    images = _solid(PALETTE, 16)
    in_memory = ConsistencyReward.from_model(clip, tokenizer, image_mean=[0.5] * 3, image_std=[0.5] * 3, image_range="0,1")
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, COLOURS), in_memory(images, COLOURS))


def test_reward_backprop_moves_a_colour_generator_to_the_caption(reward: ConsistencyReward) -> None:
    """A learnable palette mixture rendered as an image, starting mostly blue, learns 'red'."""
    logits = torch.tensor([0.0, 0.0, 1.0], requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.2)
    first = None
    for _ in range(10):
        images = _solid((logits.softmax(0) @ PALETTE).unsqueeze(0).expand(2, 3), 20)
        rewards = reward(images, ["red", "red"])
        first = rewards.mean().item() if first is None else first
        optimiser.zero_grad()
        reward_backprop_loss(rewards).backward()
        optimiser.step()
    weights = logits.softmax(0)
    with torch.no_grad():
        final = reward(_solid((weights @ PALETTE).unsqueeze(0), 20), ["red"]).item()
    assert weights[0] > 0.6 and weights[0] > weights[2], weights
    assert final > first + 0.3


def test_personalization_on_clip_embeddings_is_differentiable(clip_and_tokenizer) -> None:
    clip, tokenizer = clip_and_tokenizer
    embedder = ClipEmbedder(clip, tokenizer, image_mean=[0.5] * 3, image_std=[0.5] * 3, image_range="0,1")
    personalization = PersonalizationReward(content_dim=embedder.embedding_dim, preference_dim=8, trainable=True)
    images = torch.rand(3, 3, 16, 16, requires_grad=True)
    preference = torch.randn(3, 8)
    rewards = personalization(embedder.embed_images(images), preference)
    assert rewards.shape == (3,) and bool((rewards.abs() <= 1 + 1e-5).all())
    rewards.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert personalization.projection.weight.grad is not None
    # A user whose preference is the text embedding of "red" prefers the red image (identity map).
    identity = PersonalizationReward(embedder.embedding_dim, embedder.embedding_dim)
    user = embedder.embed_texts(["red", "red"])
    with torch.no_grad():
        scores = identity(embedder.embed_images(_solid(PALETTE[[0, 2]], 16)), user)
    assert scores[0] > scores[1] + 0.1
