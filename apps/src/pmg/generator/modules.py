"""LightningModules of the generator stage: SFT of the text adapter, diffusion loss of the image adapter.

Both take batches of ``pmg.data.modules.GenerationDataModule`` (``user`` [B], ``item`` [B],
``text``/``review`` lists, ``image`` [B, 3, S, S] in [-1, 1]) and build prompts from each
user's preference-token fragment (precomputed per data user index; ``None`` for a user
without tokens, who gets the no-token prompt).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import lightning as L
import torch

from pmg.data.format import InteractionData
from pmg.generator.config import ImageGeneratorConfig, TextGeneratorConfig
from pmg.training import OptimizerConfig, build_optimizer
from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter, build_image_prompt, build_text_prompt

__all__ = ["TextGeneratorModule", "ImageGeneratorModule", "item_subject", "text_target"]


def item_subject(data: InteractionData, item: int, default: str) -> str:
    """The image subject of an item: ``"a <category>"`` when the item has one, else ``default``."""
    category = data.items[item].attributes.get("category", "")
    return f"a {category}" if category else default


def text_target(data: InteractionData, item: int, review: str, target: str) -> str:
    """The SFT continuation for ``target`` (title/description/review), with a leading space
    (byte-level BPE attaches spaces to the following word); "" when the item lacks it."""
    record = data.items[item]
    text = {"title": record.title, "description": record.description, "review": review}[target].strip()
    return f" {text}" if text else ""


class _TokenDropout:
    """Replaces a user's fragment by ``None`` with probability ``fraction`` (seeded), so the
    no-token prompt is trained too and cold-start users get sensible output."""

    def __init__(self, fraction: float, seed: int) -> None:
        self.fraction, self.rng = fraction, random.Random(seed)

    def __call__(self, fragment: str | None) -> str | None:
        return None if fragment is None or self.rng.random() < self.fraction else fragment


class TextGeneratorModule(L.LightningModule):
    """SFT: ``build_text_prompt(user's tokens, context)`` → a text of an item the user liked.

    ``fragments[u]`` is data user ``u``'s token fragment for ``config.modalities`` (or None).
    Only the adapter's LoRA weights and new token rows are optimised.
    """

    def __init__(self, adapter: TextPreferenceAdapter, data: InteractionData, fragments: Sequence[str | None],
                 config: TextGeneratorConfig, optimizer: OptimizerConfig, seed: int = 0) -> None:
        super().__init__()
        self.adapter, self.data, self.fragments = adapter, data, list(fragments)
        self.config, self.optimizer_config = config, optimizer
        self.dropout = _TokenDropout(config.no_token_fraction, seed)
        self.first_loss: float | None = None
        self.last_loss: float | None = None

    def pairs(self, batch: dict) -> tuple[list[str], list[str]]:
        """(prompts, targets) of a batch: one pair per example and non-empty target text."""
        prompts: list[str] = []
        targets: list[str] = []
        for user, item, review in zip(batch["user"].tolist(), batch["item"].tolist(), batch["review"], strict=True):
            fragment = self.dropout(self.fragments[user])
            for target in self.config.targets:
                continuation = text_target(self.data, item, review, target)
                if continuation:
                    prompts.append(build_text_prompt(fragment, self.config.context_of(target)))
                    targets.append(continuation)
        return prompts, targets

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        prompts, targets = self.pairs(batch)
        if not prompts:
            return None  # a batch of items without any target text: nothing to learn
        inputs = self.adapter.tokenize_for_sft(prompts, targets, max_length=self.config.max_length)
        loss = self.adapter(**{k: v.to(self.device) for k, v in inputs.items()}).loss
        self.log("train/text_loss", loss, prog_bar=True, batch_size=len(prompts))
        value = float(loss.detach())
        self.first_loss = value if self.first_loss is None else self.first_loss
        self.last_loss = value
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.adapter.trainable_parameters(), self.optimizer_config)


class ImageGeneratorModule(L.LightningModule):
    """Diffusion loss on liked items' images with ``build_image_prompt(subject, user's tokens)``.

    ``fragments[u]`` is data user ``u``'s visual token fragment (or None). The optimizer sees
    the adapter's trainable parameters (the text encoders' embedding matrices + UNet LoRA);
    ``protect_frozen_rows`` puts every row but the new tokens' back after each step.
    """

    def __init__(self, adapter: ImagePreferenceAdapter, data: InteractionData, fragments: Sequence[str | None],
                 config: ImageGeneratorConfig, optimizer: OptimizerConfig, seed: int = 0) -> None:
        super().__init__()
        self.adapter, self.data, self.fragments = adapter, data, list(fragments)
        self.config, self.optimizer_config = config, optimizer
        self.dropout = _TokenDropout(config.no_token_fraction, seed)
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self._row_guard = None  # the optimizer hook of protect_frozen_rows, kept alive with the module

    def prompts(self, batch: dict) -> list[str]:
        return [
            build_image_prompt(item_subject(self.data, item, self.config.default_subject), self.dropout(self.fragments[user]))
            for user, item in zip(batch["user"].tolist(), batch["item"].tolist(), strict=True)
        ]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        keep = batch["has_image"].bool()
        if not keep.any():
            return None  # only items without images: their zero placeholders must not be learned
        images = batch["image"][keep].to(self.device)  # [B', 3, S, S] in [-1, 1]
        prompts = [p for p, k in zip(self.prompts(batch), keep.tolist(), strict=True) if k]
        loss = self.adapter.diffusion_loss(images, prompts)
        self.log("train/image_loss", loss, prog_bar=True, batch_size=len(prompts))
        value = float(loss.detach())
        self.first_loss = value if self.first_loss is None else self.first_loss
        self.last_loss = value
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = build_optimizer(self.adapter.trainable_parameters(), self.optimizer_config)
        self._row_guard = self.adapter.protect_frozen_rows(optimizer)
        return optimizer
