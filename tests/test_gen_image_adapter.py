"""ImagePreferenceAdapter on the tiny SDXL pipeline (and a tiny SD 1.x one): tokens in both
tokenizers with the same ids, only new rows (+ UNet LoRA) train, textual-inversion files load
into a fresh pipeline with identical embeddings and images, soft prompts, img2img, the latent
prior on the initial latents, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file

from prefgen.image_adapter import ImagePreferenceAdapter, UNetLoraOptions, load_preference_embeddings
from prefgen.latent_prior import LATENT_PRIOR_FILE, LatentPrior
from prefgen.prompts import build_image_prompt
from prefgen.soft_prompt import SoftPromptProjector
from prefgen.testing.offline_tokenizers import train_clip_tokenizer
from prefgen.testing.tiny import TinySDXLConfig, build_tiny_sdxl_pipeline
from prefgen.token_rows import AdapterFileError, PreferenceTokenError, TokenInit

TEXTS = ["a red striped dress", "a blue polka-dot shoe", "alder casual cotton t-shirt", "a product for"] * 10
TOKENS = [f"<pv_{level}_{code}>" for level in range(2) for code in range(3)]
SDXL_SIZE = TinySDXLConfig(image_size=16, vae_block_out_channels=[8, 8], vae_norm_num_groups=4, latent_channels=4,
                           unet_block_out_channels=[8, 16], unet_norm_num_groups=4, unet_attention_heads=2,
                           addition_time_embed_dim=4, text_hidden_size=16, text_projection_dim=8,
                           text_intermediate_size=32, text_heads=2, max_text_length=16)
GEN = {"num_inference_steps": 2, "height": 16, "width": 16, "guidance_scale": 3.0}


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = train_clip_tokenizer(TEXTS, vocab_size=600, model_max_length=16)
    torch.manual_seed(0)
    # One tokenizer object in both slots, as the zoo builds it: the adapter must decouple them.
    pipe = build_tiny_sdxl_pipeline(SDXL_SIZE, tokenizer)
    # Make the second encoder differ in width from the first, as CLIP-G does from CLIP-L.
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig.from_dict({**pipe.text_encoder.config.to_dict(), "hidden_size": 24, "projection_dim": 8})
    second = CLIPTextModelWithProjection(config)
    pipe = build_tiny_sdxl_pipeline(SDXL_SIZE, tokenizer, text_encoders=(pipe.text_encoder, second))
    folder = tmp_path_factory.mktemp("sdxl")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd_folder(sdxl_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A single-encoder Stable Diffusion 1.x-architecture pipeline built from the same parts."""
    from diffusers import UNet2DConditionModel

    parts = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    torch.manual_seed(1)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
                                attention_head_dim=2, norm_num_groups=4, cross_attention_dim=16)
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=unet,
                                   scheduler=parts.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("sd")
    pipe.save_pretrained(folder)
    return folder


def _images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1


def _snapshot(adapter: ImagePreferenceAdapter) -> dict[str, torch.Tensor]:
    modules = {"vae": adapter.vae, "unet": adapter.unet, **{f"enc{i}": e for i, e in enumerate(adapter.text_encoders)}}
    return {f"{m}.{n}": p.detach().clone() for m, module in modules.items() for n, p in module.named_parameters()}


def _train(adapter: ImagePreferenceAdapter, prompts: list[str], steps: int) -> list[float]:
    optimizer = torch.optim.AdamW(adapter.trainable_parameters(), lr=5e-2, weight_decay=0.1)
    adapter.protect_frozen_rows(optimizer)
    losses = []
    fixed = {"timesteps": torch.tensor([500, 700]), "noise": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))}
    for _ in range(steps):
        optimizer.zero_grad()
        loss = adapter.diffusion_loss(_images(), prompts, generator=torch.Generator().manual_seed(0), **fixed)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


def test_tokens_get_the_same_ids_in_both_tokenizers(sdxl_folder: Path) -> None:
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    adapter = ImagePreferenceAdapter(pipe, TOKENS, init=TokenInit(method="vectors", vectors=torch.randn(6, 5), projection="random"))
    assert pipe.tokenizer is not pipe.tokenizer_2
    prompt = build_image_prompt("a dress", TOKENS[1] + TOKENS[4])
    assert prompt == "a product for <pv_0_1><pv_1_1>: a dress"
    for tokenizer in adapter.tokenizers:
        assert tokenizer.convert_tokens_to_ids(TOKENS) == adapter.token_ids.tolist()
        ids = tokenizer(prompt)["input_ids"]
        assert adapter.token_ids[1] in ids and adapter.token_ids[4] in ids
    assert adapter.embedding_widths == [16, 24]
    assert [r.shape for r in adapter.token_embeddings()] == [(6, 16), (6, 24)]


@pytest.mark.parametrize("lora", [False, True])
def test_only_new_rows_and_unet_lora_change(sdxl_folder: Path, lora: bool) -> None:
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    adapter = ImagePreferenceAdapter(pipe, TOKENS, unet_lora=UNetLoraOptions(r=2) if lora else None)
    before = _snapshot(adapter)
    losses = _train(adapter, [build_image_prompt("a dress", TOKENS[:2]), build_image_prompt("a shoe", TOKENS[2:4])], steps=4)
    assert losses[-1] < losses[0], losses  # fixed noise/timesteps: the tokens (and LoRA) fit the images
    after = _snapshot(adapter)
    used = adapter.token_ids[:4]
    for name, value in after.items():
        if name.endswith("token_embedding.weight"):
            untouched = torch.ones(value.shape[0], dtype=torch.bool)
            untouched[adapter.token_ids] = False  # (unused preference rows may still feel weight decay)
            assert torch.equal(value[untouched], before[name][untouched]), f"old rows of {name} changed"
            assert not torch.equal(value[used], before[name][used]), f"new rows of {name} did not train"
        elif "lora_" in name:
            continue
        else:
            assert torch.equal(value, before[name]), f"frozen parameter {name} changed"
    lora_moved = [n for n in after if "lora_B" in n and not torch.equal(after[n], before[n])]
    assert bool(lora_moved) == lora


def test_encode_prompts_matches_the_pipeline(sdxl_folder: Path) -> None:
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    adapter = ImagePreferenceAdapter(pipe, TOKENS)
    prompts = [build_image_prompt("a dress", TOKENS[:2]), build_image_prompt("a shoe")]
    ours = adapter.encode_prompts(prompts)
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=torch.device("cpu"), do_classifier_free_guidance=False)
    torch.testing.assert_close(ours.prompt_embeds, embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=0)
    assert ours.prompt_embeds.shape == (2, 16, 16 + 24) and ours.pooled.shape == (2, 8)


def test_an_adapter_unpickled_in_a_fresh_process_still_encodes_prompts(sdxl_folder: Path, tmp_path: Path) -> None:
    """What ddp_spawn does: the workers unpickle an adapter built in the parent process."""
    import pickle
    import subprocess
    import sys

    adapter = ImagePreferenceAdapter(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), TOKENS)
    (tmp_path / "adapter.pkl").write_bytes(pickle.dumps(adapter))  # before any forward, as Lightning does
    prompt = build_image_prompt("a dress", TOKENS[:2])
    worker = (
        "import pickle, sys, torch; from pathlib import Path; folder = Path(sys.argv[1]); "
        "adapter = pickle.loads((folder / 'adapter.pkl').read_bytes()); "
        "torch.save(adapter.encode_prompts([sys.argv[2]]).prompt_embeds, folder / 'embeds.pt')"
    )
    subprocess.run([sys.executable, "-c", worker, str(tmp_path), prompt], check=True, timeout=300)
    # Written by the worker above in this test: a trusted file.
    embeds = torch.load(tmp_path / "embeds.pt", weights_only=True)
    torch.testing.assert_close(embeds, adapter.encode_prompts([prompt]).prompt_embeds, rtol=0, atol=0)


def test_saved_embeddings_load_into_a_fresh_pipeline_with_identical_images(sdxl_folder: Path, tmp_path: Path) -> None:
    adapter = ImagePreferenceAdapter(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), TOKENS, unet_lora=UNetLoraOptions(r=2))
    _train(adapter, [build_image_prompt("a dress", TOKENS[:2]), build_image_prompt("a shoe", TOKENS[2:4])], steps=2)
    folder = adapter.save(tmp_path / "adapter")
    first, second = load_file(folder / "learned_embeds.safetensors")["emb"], load_file(folder / "learned_embeds_2.safetensors")["emb"]
    assert first.shape == (6, 16) and second.shape == (6, 24)  # one file per encoder, each its own width

    fresh = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    load_preference_embeddings(fresh, folder)
    for tokenizer, encoder, rows in ((fresh.tokenizer, fresh.text_encoder, first), (fresh.tokenizer_2, fresh.text_encoder_2, second)):
        ids = tokenizer.convert_tokens_to_ids(TOKENS)
        assert ids == adapter.token_ids.tolist()
        torch.testing.assert_close(encoder.get_input_embeddings().weight[ids], rows, rtol=0, atol=0)
    for ours, theirs in zip(adapter.token_embeddings(), (first, second), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    prompts = [build_image_prompt("a dress", TOKENS[:2])]
    expected = adapter.generate(prompts, seed=7, **GEN)[0]
    # The plain diffusers call on the fresh pipeline: prompt text in, same image out.
    image = fresh(prompt=prompts, generator=torch.Generator("cpu").manual_seed(7), **GEN).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    reloaded = ImagePreferenceAdapter.load(folder, sdxl_folder)
    assert np.array_equal(np.asarray(reloaded.generate(prompts, seed=7, **GEN)[0]), np.asarray(expected))


def test_an_adapter_saved_by_another_process_has_the_same_bytes(sdxl_folder: Path, tmp_path: Path) -> None:
    """safetensors metadata and the LoRA's target modules come out in one order (prefgen.reproducible_files)."""
    import os
    import subprocess
    import sys

    adapter = ImagePreferenceAdapter(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), TOKENS, unet_lora=UNetLoraOptions(r=2))
    _train(adapter, [build_image_prompt("a dress", TOKENS[:2]), build_image_prompt("a shoe", TOKENS[2:4])], steps=1)
    here = adapter.save(tmp_path / "here")
    worker = ("import sys; from prefgen.image_adapter import ImagePreferenceAdapter; "
              "ImagePreferenceAdapter.load(sys.argv[1], sys.argv[2]).save(sys.argv[3])")
    for seed in (1, 2):
        there = tmp_path / f"there{seed}"
        subprocess.run([sys.executable, "-c", worker, str(here), str(sdxl_folder), str(there)], check=True, timeout=300,
                       env={**os.environ, "PYTHONHASHSEED": str(seed)})
        files = sorted(p.relative_to(here) for p in here.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(there) for p in there.rglob("*") if p.is_file())
        assert any(f.parts[0] == "unet_lora" for f in files) and len(files) >= 4
        for name in files:
            if name.name != "prefgen_image_adapter.json":  # it names the LoRA "default" here, "default_0" reloaded
                assert (here / name).read_bytes() == (there / name).read_bytes(), name


def test_sampler_steps_are_the_pipelines_sampler_and_carry_a_graph_to_the_token_rows(sdxl_folder: Path) -> None:
    adapter = ImagePreferenceAdapter(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), TOKENS)
    prompts = [build_image_prompt("a dress", TOKENS[:2]), build_image_prompt("a shoe", None)]
    with torch.no_grad():
        steps, latents = adapter.sampler_steps(prompts, num_inference_steps=2, guidance_scale=3.0, seed=7)
        assert len(steps) == 2 and latents.shape == (2, 4, 8, 8)
        for step in steps:
            latents = step(latents)
        images = adapter.decode_latents(latents)
    assert images.shape == (2, 3, 16, 16) and float(images.min()) >= -1 and float(images.max()) <= 1
    assert adapter.image_size == 16  # 8 latents times the VAE's factor 2
    # The pipeline's own call from the same seed: the same images, but for its rounding to 8 bits.
    expected = adapter.generate(prompts, seed=7, num_inference_steps=2, guidance_scale=3.0)
    ours = ((images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round()
    assert np.abs(ours - np.stack([np.asarray(image, dtype=np.float64) for image in expected])).max() <= 1

    steps, latents = adapter.sampler_steps(prompts[:1], num_inference_steps=2, guidance_scale=3.0, seed=7)
    with torch.no_grad():
        latents = steps[0](latents)
    adapter.decode_latents(steps[1](latents.detach())).mean().backward()
    grad = adapter.text_encoders[0].get_input_embeddings().weight.grad
    assert grad is not None and bool(grad[adapter.token_ids[:2]].abs().sum() > 0)


def test_cold_start_and_reference_image_generation(sdxl_folder: Path) -> None:
    adapter = ImagePreferenceAdapter(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), TOKENS)
    cold = build_image_prompt("a dress", None)
    assert cold == "a product: a dress"
    [image] = adapter.generate([cold], seed=1, **GEN)
    assert image.size == (16, 16)
    again = adapter.generate([cold], seed=1, **GEN)[0]
    assert np.array_equal(np.asarray(image), np.asarray(again))
    reference = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    gen = {k: v for k, v in GEN.items() if k not in ("height", "width")}
    [edited] = adapter.generate([build_image_prompt("a dress", TOKENS[:2])], seed=1, reference_images=reference, strength=0.5, **gen)
    assert edited.size == (16, 16)


def test_soft_prompt_vectors_condition_both_encoders(sdxl_folder: Path) -> None:
    adapter = ImagePreferenceAdapter(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), TOKENS, soft_prompt_slots=2)
    prompts = [build_image_prompt("a dress", adapter.soft_prompt_tokens)] * 2
    projectors = [SoftPromptProjector(5, 2, width, center=c, spread=s, init_scale=1.0)
                  for width, (c, s) in zip(adapter.embedding_widths, adapter.embedding_center_and_spread(), strict=True)]
    users = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), adapter.soft_prompt([p(users) for p in projectors]):
        cond = adapter.encode_prompts(prompts)
    assert not torch.allclose(cond.prompt_embeds[0], cond.prompt_embeds[1])
    assert not torch.allclose(cond.pooled[0], cond.pooled[1])
    loss = adapter.diffusion_loss(_images(), prompts, soft_prompt=[p(users) for p in projectors])
    loss.backward()
    assert all(p.linear.weight.grad is not None and p.linear.weight.grad.abs().sum() > 0 for p in projectors)
    with torch.no_grad():
        images = adapter.generate(prompts, seed=0, soft_prompt=[p(users) for p in projectors], **GEN)
    assert len(images) == 2
    with pytest.raises(ValueError, match="one \\[B, S, d\\] tensor per text encoder"):
        with adapter.soft_prompt([projectors[0](users)]):
            pass


def test_single_encoder_stable_diffusion_through_the_same_interface(sd_folder: Path, tmp_path: Path) -> None:
    adapter = ImagePreferenceAdapter(StableDiffusionPipeline.from_pretrained(sd_folder), TOKENS)
    assert len(adapter.text_encoders) == 1 and adapter.encode_prompts(["x"]).pooled is None
    optimizer = torch.optim.Adam(adapter.trainable_parameters(), lr=5e-2)
    before = adapter.text_encoders[0].get_input_embeddings().weight.detach().clone()
    optimizer.zero_grad()
    adapter.diffusion_loss(_images(), [build_image_prompt("a dress", TOKENS[:2])] * 2).backward()
    optimizer.step()
    after = adapter.text_encoders[0].get_input_embeddings().weight.detach()
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == adapter.token_ids[:2].tolist()  # plain Adam + gradient mask: exactly the used rows
    folder = adapter.save(tmp_path / "adapter")
    assert not (folder / "learned_embeds_2.safetensors").exists()
    fresh = StableDiffusionPipeline.from_pretrained(sd_folder)
    load_preference_embeddings(fresh, folder)
    prompts = [build_image_prompt("a dress", TOKENS[:2])]
    expected = adapter.generate(prompts, seed=3, **GEN)[0]
    image = fresh(prompt=prompts, generator=torch.Generator("cpu").manual_seed(3), **GEN).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_clear_errors(sdxl_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(PreferenceTokenError, match="already in the tokenizer vocabulary"):
        ImagePreferenceAdapter(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), ["<|endoftext|>"])
    with pytest.raises(PreferenceTokenError, match="width 16 but the text_encoder_2 embeddings have width 24"):
        ImagePreferenceAdapter(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), TOKENS,
                               init=TokenInit(method="vectors", vectors=torch.zeros(6, 16)))
    adapter = ImagePreferenceAdapter(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), TOKENS)
    folder = adapter.save(tmp_path / "adapter")
    with pytest.raises(PreferenceTokenError, match="already in tokenizer"):
        load_preference_embeddings(adapter.pipeline, folder)  # tokens present: load into a fresh pipeline
    weights = folder / "learned_embeds_2.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(AdapterFileError, match="learned_embeds_2.safetensors"):
        load_preference_embeddings(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), folder)
    weights.unlink()
    with pytest.raises(AdapterFileError, match="learned_embeds_2.safetensors is missing"):
        load_preference_embeddings(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), folder)
    (folder / "prefgen_image_adapter.json").unlink()
    with pytest.raises(AdapterFileError, match="prefgen_image_adapter.json is missing"):
        load_preference_embeddings(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), folder)


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
