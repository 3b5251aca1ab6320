"""The zoo's LightningModules: one per trained model. Each wraps the real architecture's
module (CLIPModel, AutoencoderKL, UNet2DConditionModel, Qwen2ForCausalLM, the judge) and
logs its loss to TensorBoard; data preparation lives with the stage."""

from __future__ import annotations

import math

import lightning as L
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import CLIPModel, PreTrainedModel

from pmg.training import LrScheduleConfig, OptimizerConfig, build_lr_scheduler, build_optimizer
from pmg.zoo.clip_features import image_embeddings, text_embeddings
from pmg.zoo.config import JudgeAugmentConfig
from pmg.zoo.judge import AttributeJudge

__all__ = [
    "ClipContrastiveModule",
    "VaeModule",
    "UNetDiffusionModule",
    "CausalLMModule",
    "JudgeModule",
    "grouped_contrastive_loss",
]


class _OptimizedModule(L.LightningModule):
    def __init__(self, optimizer: OptimizerConfig, lr_schedule: LrScheduleConfig | None = None) -> None:
        super().__init__()
        self.optimizer_config = optimizer
        self.lr_schedule = lr_schedule or LrScheduleConfig()

    def configure_optimizers(self) -> dict[str, object]:
        optimizer = build_optimizer([p for p in self.parameters() if p.requires_grad], self.optimizer_config)
        # The zoo trains by steps (max_steps batches, one epoch). Not estimated_stepping_batches: it sets
        # the training loader up before a resumed fit restores the loader's position, which is then lost.
        scheduler = build_lr_scheduler(optimizer, self.lr_schedule, int(self.trainer.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def grouped_contrastive_loss(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over image→text ``logits`` [B, B] where every pair in the same group
    (``groups`` int64 [B]) is a positive: items that look alike are not pushed apart."""
    same = (groups[:, None] == groups[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


class ClipContrastiveModule(_OptimizedModule):
    """Batches: ``pixel_values`` [B, 3, S, S], ``input_ids`` / ``attention_mask`` [B, T], ``group`` [B]."""

    def __init__(self, model: CLIPModel, optimizer: OptimizerConfig) -> None:
        super().__init__(optimizer)
        self.model = model

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images = image_embeddings(self.model, batch["pixel_values"])
        texts = text_embeddings(self.model, batch["input_ids"], batch["attention_mask"])
        scale = self.model.logit_scale.exp().clamp(max=100.0)
        loss = grouped_contrastive_loss(scale * images @ texts.t(), batch["group"])
        self.log("clip/loss", loss, prog_bar=True)
        self.log("clip/logit_scale", scale)
        return loss


class VaeModule(_OptimizedModule):
    """Batches: ``image`` [B, 3, S, S] in [-1, 1]; trains on random ``crop_size`` crops.

    Loss: pixel MSE + ``colour_weight`` × MSE of the ``colour_pool``-average-pooled images +
    ``kl_weight`` × KL. The pooled term weighs the flat colour of each region: the pixel MSE
    spends a tiny VAE's capacity on edges and pattern accents and leaves a hue cast (blue
    decoded towards purple) that every image the pipeline draws inherits.
    """

    def __init__(self, vae: AutoencoderKL, optimizer: OptimizerConfig, *, crop_size: int, kl_weight: float,
                 colour_weight: float = 0.0, colour_pool: int = 8, lr_schedule: LrScheduleConfig | None = None) -> None:
        super().__init__(optimizer, lr_schedule)
        self.vae, self.crop_size, self.kl_weight = vae, crop_size, kl_weight
        self.colour_weight, self.colour_pool = colour_weight, colour_pool

    def _crop(self, images: torch.Tensor) -> torch.Tensor:
        size, full = self.crop_size, images.shape[-1]
        if size >= full:
            return images
        offsets = torch.randint(0, full - size + 1, (len(images), 2))
        return torch.stack([im[:, y:y + size, x:x + size] for im, (y, x) in zip(images, offsets.tolist(), strict=True)])

    def loss(self, images: torch.Tensor, reconstruction: torch.Tensor, kl: torch.Tensor) -> dict[str, torch.Tensor]:
        """images, reconstruction [B, 3, s, s]; kl [B] → {"loss", "mse", "colour", "kl"} (scalars)."""
        mse = F.mse_loss(reconstruction, images)
        colour = (F.mse_loss(F.avg_pool2d(reconstruction, self.colour_pool), F.avg_pool2d(images, self.colour_pool))
                  if self.colour_weight > 0 else mse.new_zeros(()))
        kl = kl.mean()
        return {"loss": mse + self.colour_weight * colour + self.kl_weight * kl, "mse": mse, "colour": colour, "kl": kl}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images = self._crop(batch["image"])
        posterior = self.vae.encode(images).latent_dist
        terms = self.loss(images, self.vae.decode(posterior.sample()).sample, posterior.kl())
        self.log("vae/mse", terms["mse"], prog_bar=True)
        self.log("vae/colour", terms["colour"])
        self.log("vae/kl", terms["kl"])
        return terms["loss"]


class UNetDiffusionModule(_OptimizedModule):
    """Epsilon-prediction training of an SDXL ``text_time`` UNet on precomputed inputs.

    Batches: ``latents`` [B, C, h, w] (already multiplied by the VAE scaling factor),
    ``prompt_embeds`` [B, T, D] (both encoders' penultimate states concatenated),
    ``pooled`` [B, P] (encoder 2's projected pooled output). ``time_ids`` [6] are the
    constant size/crop ids (H, W, 0, 0, H, W) that the pipeline passes at inference.

    ``ema_decay`` > 0 keeps ``ema``, an exponential moving average of the UNet's weights updated
    after every step (the first step copies them), which is part of the module's state and so of
    its resume checkpoints; :meth:`averaged_unet_state` gives its weights.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        noise_scheduler: DDPMScheduler,
        optimizer: OptimizerConfig,
        *,
        time_ids: torch.Tensor,
        prompt_dropout: float,
        snr_gamma: float,
        noise_offset: float = 0.0,
        ema_decay: float = 0.0,
        lr_schedule: LrScheduleConfig | None = None,
    ) -> None:
        super().__init__(optimizer, lr_schedule)
        self.unet, self.noise_scheduler = unet, noise_scheduler
        self.ema: AveragedModel | None = None
        if ema_decay > 0:
            self.ema = AveragedModel(unet, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)  # the optimizer takes every parameter that requires a gradient
        self.prompt_dropout, self.snr_gamma, self.noise_offset = prompt_dropout, snr_gamma, noise_offset
        self.register_buffer("time_ids", time_ids.float(), persistent=False)
        self.register_buffer("alphas_cumprod", noise_scheduler.alphas_cumprod.float().clone(), persistent=False)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        latents, prompt_embeds, pooled = batch["latents"], batch["prompt_embeds"], batch["pooled"]
        b = len(latents)
        noise = torch.randn_like(latents)
        if self.noise_offset > 0:
            noise = noise + self.noise_offset * torch.randn(b, latents.shape[1], 1, 1, device=latents.device)
        steps = torch.randint(0, len(self.alphas_cumprod), (b,), device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, steps)
        # Zeros are the pipeline's unconditional input (force_zeros_for_empty_prompt).
        keep = (torch.rand(b, device=latents.device) >= self.prompt_dropout).float()
        prediction = self.unet(
            noisy,
            steps,
            encoder_hidden_states=prompt_embeds * keep[:, None, None],
            added_cond_kwargs={"text_embeds": pooled * keep[:, None], "time_ids": self.time_ids.expand(b, -1)},
        ).sample
        per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        if self.snr_gamma > 0:
            alpha = self.alphas_cumprod[steps]
            snr = alpha / (1 - alpha)
            per_sample = per_sample * torch.clamp(snr, max=self.snr_gamma) / snr
        loss = per_sample.mean()
        self.log("unet/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: object, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.unet)

    def averaged_unet_state(self) -> dict[str, torch.Tensor]:
        """The UNet's weights to keep: their moving average with ``ema_decay``, else the last step's."""
        source = self.ema.module if self.ema is not None else self.unet
        return {name: tensor.detach().clone() for name, tensor in source.state_dict().items()}


class CausalLMModule(_OptimizedModule):
    """Batches: ``input_ids`` / ``attention_mask`` [B, T], ``labels`` [B, T] (-100 on padding)."""

    def __init__(self, model: PreTrainedModel, optimizer: OptimizerConfig) -> None:
        super().__init__(optimizer)
        self.model = model

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("lm/loss", loss, prog_bar=True)
        return loss


class JudgeModule(_OptimizedModule):
    """Batches: ``image`` [B, 3, S, S] in [-1, 1] and one label tensor per attribute: int64 [B]
    value indices for a single-label attribute (cross-entropy), float [B, V] 0/1 value sets for a
    multi-label one (binary cross-entropy per value).

    Each image is perturbed per ``augment`` (shift and zoom, gamma, contrast, tint, whitened
    light parts, box blur, pixel noise): generated images differ from catalog drawings in
    exactly these ways, and the judge must read them as reliably as catalog ones.
    """

    def __init__(self, judge: AttributeJudge, optimizer: OptimizerConfig, *, augment: JudgeAugmentConfig) -> None:
        super().__init__(optimizer)
        self.judge, self.augment = judge, augment

    def _uniform(self, b: int, bound: float, *shape: int) -> torch.Tensor:
        """[b, *shape] draws from U(-bound, bound)."""
        return (torch.rand(b, *shape, device=self.device) * 2 - 1) * bound

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        config, b = self.augment, len(images)
        theta = torch.zeros(b, 2, 3, device=images.device)
        scale = 1 + self._uniform(b, config.scale_jitter)
        theta[:, 0, 0] = theta[:, 1, 1] = scale
        theta[:, :, 2] = self._uniform(b, 2 * config.max_shift, 2)  # affine_grid spans [-1, 1]: 2 units per side
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
        pixels = ((images + 1) / 2).clamp(1e-4, 1)
        pixels = pixels ** torch.exp(self._uniform(b, math.log(config.gamma_jitter), 1, 1, 1))
        contrast = 1 + self._uniform(b, config.contrast_jitter, 1, 1, 1)
        pixels = (pixels - 0.5) * contrast + 0.5 + config.tint_std * torch.randn(b, 3, 1, 1, device=images.device)
        light = (pixels.mean(dim=1, keepdim=True) > 0.6).float()
        pixels = pixels + light * torch.rand(b, 1, 1, 1, device=images.device) * config.whiten * (1 - pixels)
        images = pixels * 2 - 1
        sizes = torch.randint(0, config.max_blur // 2 + 1, (b,), device=images.device) * 2 + 1
        blurred = images.clone()
        for size in sizes.unique().tolist():
            if size > 1:
                pick = sizes == size
                blurred[pick] = F.avg_pool2d(F.pad(images[pick], (size // 2,) * 4, mode="replicate"), size, stride=1)
        sigma = torch.rand(b, 1, 1, 1, device=images.device) * config.noise_std
        return blurred + sigma * torch.randn_like(blurred)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.judge(self._augment(batch["image"]))
        loss = torch.zeros((), device=batch["image"].device)
        for name, out in logits.items():
            if name in self.judge.multi_label:
                # Per-value presence, not one class: a poster may show several genres at once.
                part = F.binary_cross_entropy_with_logits(out, batch[name])
                accuracy = batch[name].gather(1, out.argmax(-1, keepdim=True)).mean()
            else:
                part = F.cross_entropy(out, batch[name])
                accuracy = (out.argmax(-1) == batch[name]).float().mean()
            self.log(f"judge/{name}_accuracy", accuracy)
            loss = loss + part
        self.log("judge/loss", loss, prog_bar=True)
        return loss


def trainable(module: nn.Module, flag: bool) -> nn.Module:
    """Set ``requires_grad`` on every parameter of ``module``; returns it."""
    for parameter in module.parameters():
        parameter.requires_grad_(flag)
    return module
