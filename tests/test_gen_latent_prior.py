"""prefgen's latent prior: the fit, its file, and how the image adapter starts its sampler from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from prefgen import (
    AdapterFileError,
    ImagePreferenceAdapter,
    LatentPrior,
    build_image_prompt,
    fit_latent_prior,
)
from prefgen.latent_prior import LATENT_PRIOR_FILE
from prefgen.testing.offline_tokenizers import train_clip_tokenizer
from prefgen.testing.tiny import TinySDXLConfig, build_tiny_sdxl_pipeline

TEXTS = ["a red striped dress", "a blue polka-dot shoe", "a product for"] * 10
TOKENS = [f"<pv_{level}_{code}>" for level in range(2) for code in range(3)]
SIZE = TinySDXLConfig(image_size=16, vae_block_out_channels=[8, 8], vae_norm_num_groups=4, latent_channels=4,
                      unet_block_out_channels=[8, 16], unet_norm_num_groups=4, unet_attention_heads=2,
                      addition_time_embed_dim=4, text_hidden_size=16, text_projection_dim=8,
                      text_intermediate_size=32, text_heads=2, max_text_length=16)
GEN = {"num_inference_steps": 2, "height": 16, "width": 16, "guidance_scale": 3.0}


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    pipe = build_tiny_sdxl_pipeline(SIZE, train_clip_tokenizer(TEXTS, vocab_size=600, model_max_length=16))
    folder = tmp_path_factory.mktemp("sdxl")
    pipe.save_pretrained(folder)
    return folder


def _one_hot(codes: torch.Tensor, per_level: int) -> torch.Tensor:
    """[U, L] codes → [U, L * per_level] counts, as a user's prompt holds one token per level."""
    out = torch.zeros(codes.shape[0], codes.shape[1] * per_level)
    for level in range(codes.shape[1]):
        out[torch.arange(codes.shape[0]), level * per_level + codes[:, level]] = 1
    return out


def test_the_fit_recovers_an_additive_per_token_signal_and_shrinks_with_the_ridge() -> None:
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 8, (400, 3), generator=generator)
    counts = _one_hot(codes, 8)
    truth = torch.randn(24, 4, generator=generator)
    targets = counts @ truth + 5.0 + 0.05 * torch.randn(400, 4, generator=generator)
    prior = fit_latent_prior(counts, targets, ridge=1e-3, scale=2.0)
    assert (prior.num_tokens, prior.channels, prior.scale) == (24, 4, 2.0)
    centred = targets - targets.mean(dim=0)
    explained = 1 - float(((counts @ prior.rows - centred) ** 2).sum() / (centred**2).sum())
    assert explained > 0.99
    torch.testing.assert_close(prior.offsets(counts[:3]), 2.0 * counts[:3] @ prior.rows)
    # A large ridge pulls every row towards zero; a shuffled target leaves little to explain.
    assert float(fit_latent_prior(counts, targets, ridge=1e4).rows.norm()) < 0.1 * float(prior.rows.norm())
    shuffled = fit_latent_prior(counts, targets[torch.randperm(400, generator=generator)], ridge=1.0)
    assert float(shuffled.rows.norm()) < 0.5 * float(prior.rows.norm())


def test_a_reduced_rank_prior_moves_along_the_direction_the_tokens_predict() -> None:
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 6, (300, 2), generator=generator)
    counts = _one_hot(codes, 6)
    direction = torch.tensor([0.6, 0.0, 0.8, 0.0])
    # The tokens predict a strong shift along one direction; the other channels are noise.
    targets = (counts @ torch.randn(12, generator=generator))[:, None] * direction + 0.3 * torch.randn(300, 4, generator=generator)
    full = fit_latent_prior(counts, targets, ridge=1.0)
    one = fit_latent_prior(counts, targets, ridge=1.0, rank=1)
    assert torch.linalg.matrix_rank(one.rows).item() == 1 and torch.linalg.matrix_rank(full.rows).item() == 4
    row_direction = one.rows[one.rows.norm(dim=1).argmax()]
    assert abs(float(torch.nn.functional.cosine_similarity(row_direction, direction, dim=0))) > 0.98
    assert torch.equal(fit_latent_prior(counts, targets, ridge=1.0, rank=4).rows, full.rows)
    with pytest.raises(ValueError, match="rank"):
        fit_latent_prior(counts, targets, rank=0)


def test_clear_errors_for_bad_inputs_and_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same U"):
        fit_latent_prior(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="no users"):
        fit_latent_prior(torch.zeros(0, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="ridge"):
        fit_latent_prior(torch.zeros(2, 4), torch.zeros(2, 4), ridge=0.0)
    with pytest.raises(ValueError, match="scale"):
        LatentPrior(torch.zeros(2, 4), scale=-1.0)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        LatentPrior(torch.zeros(2, 4)).offsets(torch.zeros(1, 3))
    saved = LatentPrior(torch.randn(6, 4), scale=1.5).save(tmp_path / LATENT_PRIOR_FILE)
    loaded = LatentPrior.load(saved)
    assert loaded.scale == 1.5 and loaded.rows.shape == (6, 4)
    saved.write_bytes(saved.read_bytes()[:40])
    with pytest.raises(AdapterFileError, match="latent_prior"):
        LatentPrior.load(saved)


def test_the_prior_shifts_only_prompts_with_tokens_and_travels_with_the_adapter(sdxl_folder: Path, tmp_path: Path) -> None:
    adapter = ImagePreferenceAdapter(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), TOKENS)
    tokens_prompt = build_image_prompt("a dress", TOKENS[1] + TOKENS[4])
    cold_prompt = build_image_prompt("a dress", None)
    prompts = [tokens_prompt, cold_prompt]
    counts = adapter.token_counts(prompts)
    assert counts.tolist() == [[0, 1, 0, 0, 1, 0], [0] * 6]
    plain = adapter.initial_latents(prompts, seed=3)
    before = adapter.generate(prompts, seed=3, **GEN)
    # Without a prior the adapter starts where diffusers does: passing the latents changes nothing.
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(before, adapter.generate(prompts, seed=3, latents=plain, **GEN), strict=True))

    rows = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="do not fit"):
        adapter.set_latent_prior(LatentPrior(rows[:5]))
    adapter.set_latent_prior(LatentPrior(rows, scale=3.0))
    shifted = adapter.initial_latents(prompts, seed=3)
    torch.testing.assert_close(shifted[0] - plain[0], (3.0 * (rows[1] + rows[4]))[:, None, None].expand(4, 8, 8))
    assert torch.equal(shifted[1], plain[1])
    after = adapter.generate(prompts, seed=3, **GEN)
    assert not np.array_equal(np.asarray(after[0]), np.asarray(before[0]))
    assert np.array_equal(np.asarray(after[1]), np.asarray(before[1]))
    # One seed per prompt: each image is the one its prompt gets alone.
    alone = adapter.generate([tokens_prompt], seed=[3], **GEN)[0]
    assert np.array_equal(np.asarray(adapter.generate(prompts, seed=[3, 9], **GEN)[0]), np.asarray(alone))
    # The reward loop's sampler starts from the same shifted latents.
    _, start = adapter.sampler_steps(prompts, num_inference_steps=2, guidance_scale=3.0, seed=3)
    scheduler = adapter.pipeline.scheduler
    torch.testing.assert_close(start, shifted * scheduler.init_noise_sigma)

    folder = adapter.save(tmp_path / "adapter")
    reloaded = ImagePreferenceAdapter.load(folder, sdxl_folder)
    assert reloaded.latent_prior is not None and reloaded.latent_prior.scale == 3.0
    assert np.array_equal(np.asarray(reloaded.generate(prompts, seed=3, **GEN)[0]), np.asarray(after[0]))
    reloaded.set_latent_prior(None)
    reloaded.save(folder)
    assert not (folder / LATENT_PRIOR_FILE).exists()
    assert ImagePreferenceAdapter.load(folder, sdxl_folder).latent_prior is None


def test_offsets_of_ones_own_steer_like_the_prior_does(sdxl_folder: Path) -> None:
    adapter = ImagePreferenceAdapter(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), TOKENS)
    prompts = [build_image_prompt("a dress", TOKENS[0] + TOKENS[3]), build_image_prompt("a shoe", None)]
    offsets = torch.tensor([[0.5, -1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    given = adapter.generate(prompts, seed=4, latent_offsets=offsets, **GEN)
    rows = torch.zeros(6, 4)
    rows[0] = offsets[0]
    adapter.set_latent_prior(LatentPrior(rows, scale=1.0))
    by_prior = adapter.generate(prompts, seed=4, **GEN)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(given, by_prior, strict=True))
    with pytest.raises(ValueError, match=r"\[2, 4\]"):
        adapter.initial_latents(prompts, latent_offsets=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="image-to-image"):
        adapter.generate(prompts[:1], reference_images=torch.rand(1, 3, 16, 16), latent_offsets=offsets[:1], num_inference_steps=2)
