"""LightningModules of the reward stage: GRPO on the text adapter, reward backprop on the image adapter.

Both train on batches of data user indices [B] (users with preference tokens, the
validation users held out), optimise only the adapter's trainable parameters (new token
rows + LoRA), evaluate the mean validation reward every ``eval_every`` steps (and before
the first step; the ``RewardEvaluation`` callback), with the share of the users' tastes their
generations show where a ``taste`` scorer is given, and keep the trainable state with the best
one in memory (``RewardProgress``); ``restore_best`` puts it back after ``fit``. Their
checkpoints hold the trainable part, the optimizer state of its rows and the progress, never
the frozen models (``pmg.training.TrainableOnlyCheckpoint``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from transformers import LogitsProcessorList

from pmg.reward.config import ImageRewardConfig, TextRewardConfig
from pmg.training import OptimizerConfig, TrainableOnlyCheckpoint, build_optimizer, rows_restored, rows_saved
from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter
from prefreward import (
    ClipEmbedder,
    CombinedReward,
    ConsistencyReward,
    PersonalizationReward,
    group_relative_advantages,
    grpo_loss,
    reward_backprop_loss,
    truncated_backprop_loop,
)

__all__ = ["GenerationRewards", "TextRewardModule", "ImageRewardModule", "RewardEvaluation", "RewardProgress", "TasteScore",
           "sample_images"]

# (users [B], their generations: B texts or images [B, 3, S, S] in [-1, 1]) -> float [B], the share
# of each user's ground-truth tastes the generation shows (pmg.generator.evaluation).
TasteScore = Callable[[list[int], Any], torch.Tensor]


class GenerationRewards(nn.Module):
    """The stage's frozen rewards, one ``CombinedReward`` per generated modality, all in [0, 1] per component.

    ``text(texts, images, preference, image_index)`` and ``image(images, texts, preference)`` →
    (total [B], {component: [B]}); images [N, 3, S, S] in [-1, 1] (text ``b``'s is
    ``images[image_index[b]]``; for ``image`` N = B, one text each), ``preference`` [B, d] the
    user's textual (for texts) or visual (for images) preference. Consistency is the zoo
    CLIP's ``ConsistencyReward`` in ``consistency_mode`` (``"contrastive"``: the probability
    that the text picks its image among the batch's; ``"cosine"``: their cosine in [0, 1]);
    personalization the cosine of ``maps[modality] @ content embedding`` with the preference
    (``maps[modality]`` [d, d_c], fitted on the catalog's items).
    """

    def __init__(self, embedder: ClipEmbedder, maps: dict[str, torch.Tensor], weights: dict[str, float],
                 consistency_mode: str = "contrastive") -> None:
        super().__init__()
        self.embedder = embedder.eval().requires_grad_(False)
        consistency = ConsistencyReward(self.embedder, unit_interval=consistency_mode == "cosine", mode=consistency_mode)
        self.personalization = nn.ModuleDict({
            modality: PersonalizationReward(weight.shape[1], weight.shape[0], weight=weight, unit_interval=True)
            for modality, weight in maps.items()
        }).requires_grad_(False)

        def text_personalization(texts: Sequence[str], preference: torch.Tensor) -> torch.Tensor:
            return self.personalization["textual"](self.embedder.embed_texts(texts), preference)

        def image_personalization(images: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
            return self.personalization["visual"](self.embedder.embed_images(images), preference)

        self.for_text = CombinedReward(weights, {"consistency": consistency, "personalization": text_personalization})
        self.for_image = CombinedReward(weights, {"consistency": consistency, "personalization": image_personalization})

    def text(self, texts: Sequence[str], images: torch.Tensor, preference: torch.Tensor,
             image_index: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.for_text(images=images, texts=list(texts), preference=preference, image_index=image_index)

    def image(self, images: torch.Tensor, texts: Sequence[str], preference: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.for_image(images=images, texts=list(texts), preference=preference)


# ----------------------------------------------------------------------------------------------------------------------
# Text: GRPO


class RewardProgress:
    """A reward fit's validation rewards so far (``history``: one ``{"step", "reward",
    <component>..., ["taste"]}`` per evaluation) and its best state (``reward``, ``step`` and
    ``values``, a copy of the trainable parameters then).

    ``keep_taste``: a state whose ``"taste"`` (the share of the users' tastes its generations
    show) is below the first evaluation's is never the best, whatever its reward."""

    def __init__(self, keep_taste: bool = False) -> None:
        self.keep_taste = keep_taste
        self.history: list[dict[str, float]] = []
        self.reward = float("-inf")
        self.step = -1
        self.values: list[torch.Tensor] = []

    def record(self, step: int, result: dict[str, float], params: Sequence[nn.Parameter]) -> None:
        """One evaluation's ``result`` (with ``"reward"``) at ``step``; kept as the best if it is."""
        self.history.append({"step": step, **result})
        if self.keep_taste and "taste" in result and result["taste"] < self.history[0]["taste"]:
            return
        if result["reward"] > self.reward:
            self.reward, self.step = result["reward"], step
            self.values = [p.detach().clone() for p in params]

    def evaluated(self, step: int) -> bool:
        return bool(self.history) and self.history[-1]["step"] == step

    @torch.no_grad()
    def restore(self, params: Sequence[nn.Parameter]) -> None:
        """Put the best state's values into ``params`` (the parameters they were copied from)."""
        for param, value in zip(params, self.values, strict=True):
            param.copy_(value)

    def state_dict(self, trainable: Sequence[tuple[nn.Parameter, torch.Tensor | None]]) -> dict[str, Any]:
        """For a checkpoint: the best values only in the rows that train (the adapter's ``trainable_rows()``)."""
        return {"history": [dict(h) for h in self.history], "reward": self.reward, "step": self.step, "keep_taste": self.keep_taste,
                "values": [rows_saved(v, rows) for v, (_, rows) in zip(self.values, trainable, strict=True)]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], trainable: Sequence[tuple[nn.Parameter, torch.Tensor | None]]) -> RewardProgress:
        """The progress ``state_dict`` saved, its best values completed from the parameters of
        ``trainable`` (rows that do not train are as loaded)."""
        progress = cls(keep_taste=bool(state.get("keep_taste", False)))
        progress.history, progress.reward, progress.step = list(state["history"]), float(state["reward"]), int(state["step"])
        progress.values = [rows_restored(v, p) for v, (p, _) in zip(state["values"], trainable, strict=True)]
        return progress


class _RewardModule(TrainableOnlyCheckpoint, L.LightningModule):
    """Shared loop: validation reward at step 0 and every ``eval_every`` steps (``RewardEvaluation``), best state kept.
    With ``taste``, each evaluation also scores the share of the users' tastes the generations
    show (``"taste"``), and ``keep_taste`` keeps no state that shows less of it than the first."""

    def __init__(self, val_users: Sequence[int], eval_every: int, eval_batch: int, taste: TasteScore | None = None,
                 keep_taste: bool = False) -> None:
        super().__init__()
        self.val_users = list(val_users)
        self.eval_every, self.eval_batch = eval_every, eval_batch
        self.taste = taste
        self.progress = RewardProgress(keep_taste=keep_taste)

    def trainable_rows(self) -> list[tuple[nn.Parameter, torch.Tensor | None]]:
        raise NotImplementedError

    def trainable(self) -> list[nn.Parameter]:
        return [p for p, _ in self.trainable_rows()]

    def validation_rewards(self, users: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean total and per-component reward over the validation users."""
        totals: list[torch.Tensor] = []
        parts: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(self.val_users), self.eval_batch):
            total, components = self.validation_rewards(self.val_users[start : start + self.eval_batch])
            totals.append(total)
            for name, value in components.items():
                parts.setdefault(name, []).append(value)
        result = {"reward": float(torch.cat(totals).mean())}
        result.update({name: float(torch.cat(values).mean()) for name, values in parts.items()})
        return result

    def evaluate_if_due(self) -> None:
        """Evaluate the current state when its step is due (0, every ``eval_every``, the last)
        and not evaluated yet (a fit resumed from a checkpoint was, before the save)."""
        step = self.global_step
        due = step == 0 or step % self.eval_every == 0 or step >= self.trainer.max_steps
        if not due or self.progress.evaluated(step):
            return
        result = self.evaluate()
        self.progress.record(step, result, self.trainable())
        if self.logger is not None:
            self.logger.log_metrics({f"val/{k}": v for k, v in result.items()}, step=step)

    def restore_best(self) -> None:
        self.progress.restore(self.trainable())

    def checkpointed_parameters(self) -> dict[str, tuple[nn.Parameter, torch.Tensor | None]]:
        names = {id(p): name for name, p in self.named_parameters()}
        return {names[id(p)]: (p, rows) for p, rows in self.trainable_rows()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["reward_progress"] = self.progress.state_dict(self.trainable_rows())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.progress = RewardProgress.from_state_dict(checkpoint["reward_progress"], self.trainable_rows())


class RewardEvaluation(Callback):
    """Evaluates a reward module (``evaluate_if_due``) before its first step and after each one.

    A callback rather than the module's own hooks: Lightning calls the callbacks' hooks first,
    and the evaluation must come before ``pmg.training.ResumeCheckpoint`` saves the step (pass
    it first in ``build_trainer``'s ``callbacks``), so that a fit resumed from that checkpoint
    has the step's evaluation, as the uninterrupted fit had."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, _RewardModule)
        pl_module.evaluate_if_due()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        assert isinstance(pl_module, _RewardModule)
        pl_module.evaluate_if_due()


class TextRewardModule(_RewardModule):
    """GRPO on ``policy``: per user, ``group_size`` sampled completions of its prompt, rewarded
    by ``rewards.text`` against the user's image and textual preference; k3 KL to ``reference``.

    ``prompts[u]`` the text prompt of data user ``u``; ``images`` [U, 3, S, S] the users'
    images in [-1, 1] (the consistency partner); ``preferences`` [U, d] textual preferences.
    """

    def __init__(self, policy: TextPreferenceAdapter, reference: TextPreferenceAdapter, rewards: GenerationRewards,
                 prompts: Sequence[str], images: torch.Tensor, preferences: torch.Tensor, config: TextRewardConfig,
                 optimizer: OptimizerConfig, val_users: Sequence[int], eval_every: int, taste: TasteScore | None = None,
                 keep_taste: bool = False) -> None:
        super().__init__(val_users, eval_every, config.users_per_step, taste, keep_taste)
        self.policy, self.reference = policy, reference.eval().requires_grad_(False)
        self.rewards, self.prompts = rewards, list(prompts)
        self.images, self.preferences = images, preferences
        self.config, self.optimizer_config = config, optimizer

    def trainable_rows(self) -> list[tuple[nn.Parameter, torch.Tensor | None]]:
        return self.policy.trainable_rows()

    @torch.no_grad()
    def sample(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, int, list[str]]:
        """``group_size`` completions per prompt → (sequences [B·G, P+C], attention [B·G, P+C],
        prompt length P, completion texts); a completion ends at its first end-of-text token."""
        tok = self.policy.tokenizer
        batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left").to(self.device)
        was_training = self.policy.model.training
        self.policy.model.eval()
        out = self.policy.model.generate(
            **batch, do_sample=True, num_return_sequences=self.config.group_size, max_new_tokens=self.config.max_new_tokens,
            temperature=self.config.temperature, top_p=self.config.top_p, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            logits_processor=LogitsProcessorList([self.policy.prompt_only_filter]),
        )
        self.policy.model.train(was_training)
        prompt_length = batch["input_ids"].shape[1]
        completion = out[:, prompt_length:]
        is_end = completion == tok.eos_token_id
        alive = (is_end.long().cumsum(-1) - is_end.long()) == 0  # up to and including the first end token
        attention = torch.cat([batch["attention_mask"].repeat_interleave(self.config.group_size, 0), alive.long()], dim=1)
        texts = [text.strip() for text in tok.batch_decode(completion.masked_fill(~alive, tok.pad_token_id), skip_special_tokens=True)]
        return out, attention, prompt_length, texts

    def training_step(self, users: torch.Tensor, batch_idx: int) -> torch.Tensor:
        group = self.config.group_size
        user_list = users.tolist()
        sequences, attention, prompt_length, texts = self.sample([self.prompts[u] for u in user_list])
        repeated = users.repeat_interleave(group).cpu()
        with torch.no_grad():
            # Each group's texts share their user's image, and every text is judged against the step's images.
            total, parts = self.rewards.text(texts, self.images[users.cpu()].to(self.device), self.preferences[repeated].to(self.device),
                                             image_index=torch.arange(len(user_list), device=self.device).repeat_interleave(group))
            reference = self.reference.completion_logprobs(sequences, attention, prompt_length, temperature=self.config.temperature)
        logprobs = self.policy.completion_logprobs(sequences, attention, prompt_length, temperature=self.config.temperature)
        shape = (len(user_list), group, -1)
        mask = attention[:, prompt_length:].float().view(shape)
        advantages = group_relative_advantages(total.view(len(user_list), group))
        # One update per sampled batch (on-policy): the sampler's log-probabilities are the current ones.
        loss, stats = grpo_loss(logprobs.view(shape), logprobs.detach().view(shape), reference.view(shape), advantages, mask,
                                clip_eps=self.config.clip_eps, kl_coef=self.config.kl_coef)
        size = len(texts)
        self.log("train/text_reward", total.mean(), prog_bar=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"train/text_{name}", value.mean(), batch_size=size)
        self.log("train/text_kl", stats["kl"], prog_bar=True, batch_size=size)
        self.log("train/text_clip_fraction", stats["clip_fraction"], batch_size=size)
        return loss

    def validation_rewards(self, users: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        texts = [t.strip() for t in self.policy.generate([self.prompts[u] for u in users], max_new_tokens=self.config.max_new_tokens)]
        index = torch.tensor(users)
        total, components = self.rewards.text(texts, self.images[index].to(self.device), self.preferences[index].to(self.device))
        if self.taste is not None:
            components = {**components, "taste": self.taste(users, texts).to(total.device)}
        return total, components

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.trainable(), self.optimizer_config)


# ----------------------------------------------------------------------------------------------------------------------
# Image: reward backprop through the last K sampler steps


def sample_images(adapter: ImagePreferenceAdapter, prompts: Sequence[str], *, num_inference_steps: int,
                  guidance_scale: float, seed: int, backprop_last_k: int = 0) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] for the B ``prompts``: the adapter's sampler steps run by
    prefreward's ``truncated_backprop_loop``, then decoded. With ``backprop_last_k`` > 0
    differentiable w.r.t. the adapter through the last K steps (DRaFT-K), otherwise without a graph."""
    steps, latents = adapter.sampler_steps(prompts, num_inference_steps=num_inference_steps,
                                           guidance_scale=guidance_scale, seed=seed)
    latents = truncated_backprop_loop(steps, latents, backprop_last_k)
    with torch.set_grad_enabled(backprop_last_k > 0 and torch.is_grad_enabled()):
        return adapter.decode_latents(latents)


class ImageRewardModule(_RewardModule):
    """Reward backprop on ``adapter``: images of the users' prompts, sampled with fresh noise
    each step, rewarded by ``rewards.image`` against the user's text and visual preference.

    ``prompts[u]`` the image prompt of data user ``u``; ``texts[u]`` its generated text (the
    consistency partner); ``preferences`` [U, d] visual preferences. Validation images use a
    fixed seed. ``protect_frozen_rows`` keeps every embedding row but the tokens' exact.
    """

    def __init__(self, adapter: ImagePreferenceAdapter, rewards: GenerationRewards, prompts: Sequence[str],
                 texts: Sequence[str], preferences: torch.Tensor, config: ImageRewardConfig, optimizer: OptimizerConfig,
                 val_users: Sequence[int], eval_every: int, seed: int, taste: TasteScore | None = None,
                 keep_taste: bool = False) -> None:
        super().__init__(val_users, eval_every, config.users_per_step, taste, keep_taste)
        self.adapter, self.rewards = adapter, rewards
        self.prompts, self.texts, self.preferences = list(prompts), list(texts), preferences
        self.config, self.optimizer_config, self.seed = config, optimizer, seed
        self._row_guard = None  # the optimizer hook of protect_frozen_rows, kept alive with the module

    def trainable_rows(self) -> list[tuple[nn.Parameter, torch.Tensor | None]]:
        return self.adapter.trainable_rows()

    def _images(self, users: list[int], seed: int, backprop_last_k: int) -> torch.Tensor:
        return sample_images(self.adapter, [self.prompts[u] for u in users], num_inference_steps=self.config.num_inference_steps,
                             guidance_scale=self.config.guidance_scale, seed=seed, backprop_last_k=backprop_last_k)

    def training_step(self, users: torch.Tensor, batch_idx: int) -> torch.Tensor:
        user_list = users.tolist()
        images = self._images(user_list, self.seed + 1 + self.global_step, self.config.backprop_last_k)
        total, parts = self.rewards.image(images, [self.texts[u] for u in user_list], self.preferences[users.cpu()].to(self.device))
        size = len(user_list)
        self.log("train/image_reward", total.mean(), prog_bar=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"train/image_{name}", value.mean(), batch_size=size)
        return reward_backprop_loss(total)

    def validation_rewards(self, users: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = self._images(users, self.seed, 0)
        total, components = self.rewards.image(images, [self.texts[u] for u in users], self.preferences[torch.tensor(users)].to(self.device))
        if self.taste is not None:
            components = {**components, "taste": self.taste(users, images.cpu()).to(total.device)}
        return total, components

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = build_optimizer(self.trainable(), self.optimizer_config)
        self._row_guard = self.adapter.protect_frozen_rows(optimizer)
        return optimizer
