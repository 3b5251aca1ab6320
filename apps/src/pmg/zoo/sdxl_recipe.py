"""The SDXL-architecture pipeline: build (or load), train the VAE, then the UNet on
precomputed latents and prompt embeddings (text encoders frozen)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, StableDiffusionXLPipeline
from torch.nn import functional as F
from transformers import CLIPModel, PreTrainedTokenizerBase

from pmg.data.modules import RowIndices
from pmg.zoo.config import SDXLTrainingConfig
from pmg.zoo.corpus import CAPTION_TEMPLATES, ZooCorpus
from pmg.zoo.fitting import FitCheckpoints, fit_steps
from pmg.zoo.lightning_modules import UNetDiffusionModule, VaeModule, trainable
from prefgen.testing.tiny import build_tiny_sdxl_pipeline, text_encoders_from_clip

__all__ = ["build_sdxl", "pipeline_images", "pipeline_resolution", "train_sdxl"]


def build_sdxl(config: SDXLTrainingConfig, tokenizer: PreTrainedTokenizerBase, clip: CLIPModel | None) -> StableDiffusionXLPipeline:
    """A tiny SDXL pipeline; its text encoders copy ``clip``'s text tower when configured."""
    encoders = text_encoders_from_clip(clip) if (config.text_encoders_from_clip and clip is not None) else None
    if encoders is not None:
        tokenizer.model_max_length = min(int(tokenizer.model_max_length), encoders[0].config.max_position_embeddings)
    else:
        tokenizer.model_max_length = config.model.max_text_length
    return build_tiny_sdxl_pipeline(config.model, tokenizer, tokenizer, text_encoders=encoders)


def pipeline_resolution(pipe: StableDiffusionXLPipeline) -> int:
    """The pipeline's default image side in pixels (UNet sample size × VAE factor)."""
    return int(pipe.default_sample_size * pipe.vae_scale_factor)


def pipeline_images(pipe: StableDiffusionXLPipeline, images: torch.Tensor) -> torch.Tensor:
    """``images`` [N, 3, S, S] in [-1, 1] resized (bicubic, antialiased) to the pipeline's resolution [N, 3, R, R]."""
    resolution = pipeline_resolution(pipe)
    if images.shape[-1] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bicubic", antialias=True).clamp(-1, 1)


class _ImageCollate:
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        return {"image": self.images[rows]}


class _LatentCollate:
    """Samples latents from the stored posterior and one caption template per example."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, scaling: float, prompt_index: torch.Tensor,
                 prompt_embeds: torch.Tensor, pooled: torch.Tensor) -> None:
        self.mean, self.std, self.scaling = mean, std, scaling
        self.prompt_index, self.prompt_embeds, self.pooled = prompt_index, prompt_embeds, pooled

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        index = torch.tensor(rows)
        latents = (self.mean[index] + self.std[index] * torch.randn_like(self.mean[index])) * self.scaling
        template = torch.randint(0, self.prompt_index.shape[1], (len(rows),))
        prompts = self.prompt_index[index, template]
        return {"latents": latents, "prompt_embeds": self.prompt_embeds[prompts], "pooled": self.pooled[prompts]}


@torch.no_grad()
def _encode_images(pipe: StableDiffusionXLPipeline, images: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for start in range(0, len(images), batch):
        posterior = pipe.vae.encode(images[start:start + batch]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def _encode_prompts(pipe: StableDiffusionXLPipeline, prompts: list[str], batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, pooled = [], []
    for start in range(0, len(prompts), batch):
        e, _, p, _ = pipe.encode_prompt(prompt=prompts[start:start + batch], device=torch.device("cpu"),
                                        num_images_per_prompt=1, do_classifier_free_guidance=False)
        embeds.append(e)
        pooled.append(p)
    return torch.cat(embeds), torch.cat(pooled)


def train_sdxl(config: SDXLTrainingConfig, corpus: ZooCorpus, pipe: StableDiffusionXLPipeline, log_dir: Path, *,
               train_vae: bool, checkpoints: FitCheckpoints | None = None) -> StableDiffusionXLPipeline:
    """Train the VAE (``train_vae``, tiny models only) and the UNet on the training items (each fit
    resumable from its part of ``checkpoints``: ``fit_steps``).

    Images [N, 3, R, R] at the pipeline's resolution R; the VAE's scaling factor is set to
    1 / std of the training latents when the VAE was trained here.
    """
    items = corpus.image_items(corpus.train_items)
    if len(items) < 1:
        raise ValueError("text-to-image training needs training items with images")
    resolution = pipeline_resolution(pipe)
    images = pipeline_images(pipe, corpus.images[torch.from_numpy(items)])
    for part in (pipe.text_encoder, pipe.text_encoder_2):
        trainable(part, False).eval()
    if train_vae:
        trainable(pipe.vae, True).train()
        module = VaeModule(pipe.vae, config.vae.optimizer, crop_size=config.vae.crop_size, kl_weight=config.vae.kl_weight,
                           colour_weight=config.vae.colour_weight, colour_pool=config.vae.colour_pool, lr_schedule=config.vae.lr_schedule)
        fit_steps(module, RowIndices(len(items)), trainer_config=config.vae.trainer, batch_size=min(config.vae.batch_size, len(items)),
                  log_dir=log_dir / "vae", collate=_ImageCollate(images), checkpoints=checkpoints.part("vae") if checkpoints else None)
    trainable(pipe.vae, False).eval()
    mean, std = _encode_images(pipe, images)
    if train_vae:
        pipe.vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    scaling = float(pipe.vae.config.scaling_factor)

    prompts: list[str] = []
    lookup: dict[str, int] = {}
    # Each template once plain and, with hidden visual words, once naming them: half the examples
    # say "a light red ...", so the UNet learns the words and still draws from a prompt without them.
    hidden = tuple(name for name, spec in corpus.data.attributes.items() if spec.hidden and spec.modality == "visual")
    variants = [()] + ([hidden] if config.unet.hidden_visual_words and hidden else [])
    prompt_index = np.zeros((len(items), len(CAPTION_TEMPLATES) * len(variants)), dtype=np.int64)
    for row, item in enumerate(items):
        for v, words in enumerate(variants):
            for t in range(len(CAPTION_TEMPLATES)):
                caption = corpus.caption(int(item), t, words)
                prompt_index[row, v * len(CAPTION_TEMPLATES) + t] = lookup.setdefault(caption, len(lookup))
    prompts = list(lookup)
    prompt_embeds, pooled = _encode_prompts(pipe, prompts)

    trainable(pipe.unet, True).train()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution])
    module = UNetDiffusionModule(pipe.unet, noise_scheduler, config.unet.optimizer, time_ids=time_ids,
                                 prompt_dropout=config.unet.prompt_dropout, snr_gamma=config.unet.snr_gamma,
                                 noise_offset=config.unet.noise_offset, ema_decay=config.unet.ema_decay,
                                 lr_schedule=config.unet.lr_schedule)
    collate = _LatentCollate(mean, std, scaling, torch.from_numpy(prompt_index), prompt_embeds, pooled)
    fit_steps(module, RowIndices(len(items)), trainer_config=config.unet.trainer, batch_size=min(config.unet.batch_size, len(items)),
              log_dir=log_dir / "unet", collate=collate, checkpoints=checkpoints.part("unet") if checkpoints else None)
    pipe.unet.load_state_dict(module.averaged_unet_state())
    trainable(pipe.unet, False).eval()
    return pipe
