"""LightningModules of the generator stage: SFT of the text adapter, diffusion loss of the image adapter.

Both take batches of ``pmg.data.modules.GenerationDataModule`` (``user`` [B], ``item`` [B],
``text``/``review`` lists, ``image`` [B, 3, S, S] in [-1, 1]) and build prompts from each
user's preference-token fragment (precomputed per data user index; ``None`` for a user
without tokens, who gets the no-token prompt). For the soft-prompt baseline the fragment is the
adapter's placeholder tokens and a ``SoftPromptBaseline`` maps the users' preference vectors
to the vectors that fill them. Their checkpoints hold what trains (the adapter's LoRA and token
rows, the projector) with the losses and the modules' own random generators, never the frozen
models (``pmg.training.TrainableOnlyCheckpoint``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch

from pmg.data.format import InteractionData
from pmg.generator.config import ImageGeneratorConfig, TextGeneratorConfig
from pmg.generator.prompts import (
    ItemWords,
    item_image_prompt,
    joined_fragment,
    prompt_templates,
    text_named_values,
)
from pmg.generator.soft_prompt import SoftPromptBaseline
from pmg.training import (
    OptimizerConfig,
    TrainableOnlyCheckpoint,
    build_optimizer,
    python_rng_state,
    restore_python_rng,
)
from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter, build_text_prompt

__all__ = ["GeneratorModule", "TextGeneratorModule", "ImageGeneratorModule", "text_target"]


def text_target(data: InteractionData, item: int, review: str, target: str) -> str:
    """The SFT continuation for ``target`` (title/description/review), with a leading space; ""
    when the item lacks it.

    The space makes the first word take its mid-text form (" I" → ``ĠI``), a token the LM has
    learnt to emit. Written as a text start ("I"), the first word would be a token the LM only
    ever saw as the first token of a text, i.e. never as a prediction (its output row is untrained:
    the zoo LM has no BOS token), and greedy decoding skips it or ends at once.
    """
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


class GeneratorModule(TrainableOnlyCheckpoint, L.LightningModule):
    """What both generators share: an adapter, the users' prompt fragments (with token dropout),
    the optional soft-prompt baseline, loss bookkeeping, the optimizer and what a checkpoint keeps.

    ``fragments[u]`` is data user ``u``'s fragment (or None). With ``words``
    (``generator.prompt=keywords_and_tokens``) each example's prompt also carries some of the
    liked item's own words (:class:`pmg.generator.prompts.ItemWords`). With ``soft_prompt``,
    ``preferences`` [U, k] are the users' preference vectors it maps to soft-prompt vectors.
    The optimizer sees the adapter's trainable parameters (LoRA + new token rows) and the
    baseline's projectors. ``losses`` [2] (first, last training loss; NaN before any step) is
    a buffer, so it comes back from ``ddp_spawn`` workers with the weights.

    A checkpoint keeps the adapter's trainable parameters (a text encoder's embedding matrix by
    its token rows) and the projectors, under ``"trainable"``, and under ``"generator"`` the
    losses and the states of the token dropout's and the item words' random generators, which
    draw in ``training_step``: a fit resumed from it draws what the uninterrupted one drew.
    """

    kind = ""  # "text" / "image": the name of the logged loss

    def __init__(self, adapter: TextPreferenceAdapter | ImagePreferenceAdapter, data: InteractionData,
                 fragments: Sequence[str | None], config: TextGeneratorConfig | ImageGeneratorConfig,
                 optimizer: OptimizerConfig, seed: int = 0, soft_prompt: SoftPromptBaseline | None = None,
                 preferences: torch.Tensor | None = None, words: ItemWords | None = None) -> None:
        super().__init__()
        self.words = words
        if (soft_prompt is None) != (preferences is None):
            raise ValueError("the soft-prompt baseline needs both its projectors and the users' preference vectors")
        if preferences is not None and len(preferences) != data.num_users:
            raise ValueError(f"preference vectors for {len(preferences)} users, the dataset has {data.num_users}")
        self.adapter, self.data, self.fragments = adapter, data, list(fragments)
        self.config, self.optimizer_config = config, optimizer
        # The dataset's prompt templates with this generator's override of its words.
        self.templates = (prompt_templates(data, audience=config.audience) if isinstance(config, TextGeneratorConfig)
                          else prompt_templates(data, subject=config.default_subject, form=config.prompt_form))
        self.dropout = _TokenDropout(config.no_token_fraction, seed)
        self.soft_prompt = soft_prompt
        self.register_buffer("preferences", preferences.float() if preferences is not None else None, persistent=False)
        self.register_buffer("losses", torch.full((2,), float("nan")))

    @property
    def first_loss(self) -> float:
        return float(self.losses[0])

    @property
    def last_loss(self) -> float:
        return float(self.losses[1])

    def fragment(self, user: int) -> str | None:
        """User ``user``'s fragment for one training example (None with the dropout's probability)."""
        return self.dropout(self.fragments[user])

    def soft_vectors(self, users: Sequence[int]) -> list[torch.Tensor] | None:
        """One [B, S, d_e] per embedding space for the users of B prompts; None without the baseline."""
        if self.soft_prompt is None:
            return None
        return self.soft_prompt(self.preferences[torch.tensor(list(users), device=self.preferences.device)])

    def record(self, loss: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Log ``loss`` and keep the first and last value; returns it."""
        self.log(f"train/{self.kind}_loss", loss, prog_bar=True, batch_size=batch_size)
        with torch.no_grad():
            if torch.isnan(self.losses[0]):
                self.losses[0] = loss.detach()
            self.losses[1] = loss.detach()
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.adapter.trainable_parameters())
        if self.soft_prompt is not None:
            params += list(self.soft_prompt.parameters())
        return build_optimizer(params, self.optimizer_config)

    def checkpointed_parameters(self) -> dict[str, tuple[torch.nn.Parameter, torch.Tensor | None]]:
        parts = self.adapter.trainable_rows()
        if self.soft_prompt is not None:
            parts += [(p, None) for p in self.soft_prompt.parameters()]
        names = {id(p): name for name, p in self.named_parameters()}
        return {names[id(p)]: (p, rows) for p, rows in parts}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["generator"] = {"losses": self.losses.detach().cpu().clone(), "dropout_rng": python_rng_state(self.dropout.rng),
                                   "words_rng": python_rng_state(self.words.rng) if self.words is not None else None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint["generator"]
        with torch.no_grad():
            self.losses.copy_(saved["losses"])
        restore_python_rng(self.dropout.rng, saved["dropout_rng"])
        if self.words is not None:
            restore_python_rng(self.words.rng, saved["words_rng"])


class TextGeneratorModule(GeneratorModule):
    """SFT: ``build_text_prompt(user's tokens [with item words], context)`` → a text of an item the
    user liked, in the dataset's templates (:func:`pmg.generator.prompts.prompt_templates`).

    Only the adapter's LoRA weights and new token rows (and the soft-prompt projector) train.
    """

    kind = "text"
    adapter: TextPreferenceAdapter
    config: TextGeneratorConfig

    def pairs(self, batch: dict) -> tuple[list[str], list[str], list[int]]:
        """(prompts, targets, users) of a batch: one pair per example and non-empty target text."""
        prompts: list[str] = []
        targets: list[str] = []
        users: list[int] = []
        for user, item, review in zip(batch["user"].tolist(), batch["item"].tolist(), batch["review"], strict=True):
            fragment = self.fragment(user)
            if self.words is not None:
                fragment = joined_fragment(self.words.text(item), fragment)
            for target in self.config.targets:
                continuation = text_target(self.data, item, review, target)
                if continuation:
                    prompts.append(build_text_prompt(fragment, self.config.context_of(target), self.templates))
                    targets.append(continuation)
                    users.append(user)
        return prompts, targets, users

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """LoRA at ``lr``; the token rows, and the soft-prompt projector that stands in for them in
        the baseline, at ``token_lr``."""
        groups = self.adapter.trainable_parameter_groups()
        rows = groups["tokens"] + (list(self.soft_prompt.parameters()) if self.soft_prompt is not None else [])
        params = [{"params": ps, "lr": lr} for ps, lr in ((groups["lora"], self.config.lr), (rows, self.config.token_lr)) if ps]
        return build_optimizer(params, self.optimizer_config)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        prompts, targets, users = self.pairs(batch)
        if not prompts:
            return None  # a batch of items without any target text: nothing to learn
        inputs = self.adapter.tokenize_for_sft(prompts, targets, max_length=self.config.max_length)
        vectors = self.soft_vectors(users)
        with self.adapter.soft_prompt(vectors[0] if vectors is not None else None):
            loss = self.adapter(**{k: v.to(self.device) for k, v in inputs.items()}).loss
        return self.record(loss, len(prompts))


class ImageGeneratorModule(GeneratorModule):
    """Diffusion loss on liked items' images with :func:`pmg.generator.prompts.item_image_prompt`
    (the item's subject and caption words, the user's tokens, the dataset's templates).

    The subject is the item's, with the values of ``described`` attributes ({name: values},
    ``ImageGeneratorConfig.subject_from_text``) that the item's own text and review name, and
    with ``words`` some of the item's own values of the image attributes: at
    generation time the image prompt carries what the generated text names, so the adapter
    must learn to follow those words next to the tokens, not to let the tokens override them.
    The optimizer sees the text encoders' embedding matrices + UNet LoRA (+ the soft-prompt
    projectors); ``protect_frozen_rows`` puts every row but the new tokens' back after each step.
    """

    kind = "image"
    adapter: ImagePreferenceAdapter
    config: ImageGeneratorConfig

    def __init__(self, adapter: ImagePreferenceAdapter, data: InteractionData, fragments: Sequence[str | None],
                 config: ImageGeneratorConfig, optimizer: OptimizerConfig, seed: int = 0,
                 soft_prompt: SoftPromptBaseline | None = None, preferences: torch.Tensor | None = None,
                 described: Mapping[str, Sequence[str]] | None = None, words: ItemWords | None = None) -> None:
        super().__init__(adapter, data, fragments, config, optimizer, seed, soft_prompt, preferences, words)
        self.described = dict(described or {})

    def prompts(self, batch: dict) -> list[str]:
        prompts = []
        for user, item, text, review in zip(batch["user"].tolist(), batch["item"].tolist(), batch["text"], batch["review"], strict=True):
            values = text_named_values(f"{text} {review}", self.described)
            if self.words is not None:
                values.update(self.words.values(item))
            prompts.append(item_image_prompt(self.data, item, values, self.fragment(user), self.templates, self.config.default_subject))
        return prompts

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        keep = batch["has_image"].bool()
        if not keep.any():
            return None  # only items without images: their zero placeholders must not be learned
        images = batch["image"][keep].to(self.device)  # [B', 3, S, S] in [-1, 1]
        prompts = [p for p, k in zip(self.prompts(batch), keep.tolist(), strict=True) if k]
        loss = self.adapter.diffusion_loss(images, prompts, soft_prompt=self.soft_vectors(batch["user"][keep].tolist()))
        return self.record(loss, len(prompts))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = super().configure_optimizers()
        # The optimizer hook of protect_frozen_rows, kept alive with the module.
        self._row_guard = self.adapter.protect_frozen_rows(optimizer)
        return optimizer
