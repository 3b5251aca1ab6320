"""The generator stage: users' preference tokens taught to the zoo's causal LM and SDXL pipeline.

Text first (SFT of ``TextPreferenceAdapter``: new rows for the textual tokens + LoRA), then
image (``ImagePreferenceAdapter``: textual inversion of the visual tokens in both CLIP text
encoders, optional UNet LoRA; an optional latent prior, ``pmg.generator.latent_prior``). With
``generator.prompt=keywords_and_tokens`` (the default) the training prompts also carry some of
each liked item's own words, and generation prompts the user's history keywords beside the tokens
(``pmg.generator.prompts``). Artifacts in ``<run>/generator/``:

    text_adapter/        prefgen text adapter (peft folder + tokenizer + JSON); reload onto the zoo LM
    image_adapter/       prefgen image adapter (textual-inversion files per encoder [+ unet_lora/]
                         [+ latent_prior.safetensors])
    soft_prompt/         the continuous baseline (``generator.baselines.soft_prompt``): text_adapter/ and
                         image_adapter/ with placeholder tokens, text_projector.safetensors and
                         image_projector.safetensors (``pmg.generator.soft_prompt.SoftPromptBaseline``)
    samples/             <n>_<user_id>.png + samples.json (prompts and generated texts), one cold start
    metrics.json         first and final training losses and training examples of each generator
    config.yaml          the stage's config (``pmg generate`` reads prompts and sampling settings from it)
    tb/                  TensorBoard logs
    checkpoints/text/, checkpoints/image/, checkpoints/soft_prompt/{text,image}/
                         what a killed fit resumes from (``pmg.training.Resumable``): the trainable
                         part, optimizer and random states, losses; every
                         ``trainer.checkpoint_every_n_steps`` steps and at each epoch end
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from pmg.atomic import atomic_directory, atomic_file
from pmg.data.dataset_stage import load_prepared, load_user_roles
from pmg.data.format import InteractionData
from pmg.data.modules import GenerationDataModule
from pmg.data.split import Split, training_split
from pmg.generator.config import GeneratorConfig
from pmg.generator.generate import IMAGE_ADAPTER, SOFT_PROMPT, TEXT_ADAPTER, write_samples
from pmg.generator.latent_prior import attach_latent_prior
from pmg.generator.modules import GeneratorModule, ImageGeneratorModule, TextGeneratorModule
from pmg.generator.prompts import subject_attributes, training_item_words, user_fragments
from pmg.generator.soft_prompt import SoftPromptBaseline, preference_inputs
from pmg.preference.stage import load_preferences
from pmg.quantize.stage import UserTokens, load_user_tokens
from pmg.runs import RunDirectory, RunError, stage_fingerprint
from pmg.stages import Stage, StageResult, complete_stage, reuse_or_clear, write_stage_record
from pmg.training import build_trainer, resume_point
from pmg.zoo.manifest import Zoo, load_zoo
from prefgen import ImagePreferenceAdapter, LoraOptions, TextPreferenceAdapter, TokenInit, UNetLoraOptions

__all__ = ["GENERATOR_STAGE", "run_generator_stage", "train_image_generator", "train_text_generator", "training_split"]


def _available(modalities: list[str], tokens: UserTokens, what: str) -> list[str]:
    present = [m for m in modalities if m in tokens.codes]
    if not present:
        raise RunError(f"generator.{what}.modalities {modalities}: the quantize stage has only {sorted(tokens.codes)}")
    return present


def _datamodule(config: GeneratorConfig, data: InteractionData, split: Split, *, batch_size: int, image_size: int,
                with_images: bool) -> GenerationDataModule:
    return GenerationDataModule(data, split, target=config.target, min_rating=config.min_rating, image_size=image_size,
                                with_images=with_images, batch_size=batch_size, num_workers=config.num_workers)


def _fit(module: GeneratorModule, config: GeneratorConfig, datamodule: GenerationDataModule, steps: int, epochs: int, out: Path,
         callbacks: Sequence[Callback], checkpoints: Path | None, resume_key: str | None) -> dict[str, float]:
    """Fit one generator module, resumable with ``checkpoints`` and ``resume_key`` (see
    :func:`train_text_generator`); its first/final loss and number of training examples."""
    loader = datamodule.train_dataloader()
    resumable, start = (resume_point(checkpoints, resume_key, config.trainer.checkpoint_every_n_steps, f"generator ({module.kind})")
                        if checkpoints is not None else (None, None))
    trainer = build_trainer(config.trainer_for(steps, epochs), out, checkpointing=False, callbacks=callbacks, resumable=resumable)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=start, weights_only=True)
    return {"first_loss": module.first_loss, "final_loss": module.last_loss, "examples": float(len(loader.dataset))}


def _soft_prompt_baseline(config: GeneratorConfig, preferences: torch.Tensor | None,
                          spaces: Sequence[tuple[torch.Tensor, float]], modalities: list[str]) -> SoftPromptBaseline | None:
    if preferences is None:
        return None
    return SoftPromptBaseline.for_users(modalities, preferences, config.baselines.soft_prompt_slots, spaces)


def train_text_generator(config: GeneratorConfig, data: InteractionData, split: Split, zoo: Zoo, tokens: UserTokens,
                         out: Path, *, preferences: Mapping[str, torch.Tensor] | None = None, callbacks: Sequence[Callback] = (),
                         checkpoints: Path | None = None, resume_key: str | None = None,
                         ) -> tuple[TextPreferenceAdapter, SoftPromptBaseline | None, dict[str, float]]:
    """Fit the text adapter on (prompt with the user's textual tokens → liked item's texts).

    With ``preferences`` ({modality: [U, d]}), the soft-prompt baseline instead: the same
    adapter (tokens added, never prompted) with placeholders filled by a projector of the
    users' preference vectors of ``config.text.modalities``, trained with the same budget.
    With ``checkpoints`` (a folder) and ``resume_key`` (the fingerprint of the fit's inputs) the
    fit checkpoints there (``pmg.training.Resumable``), and one of the same inputs that was
    killed goes on from its last checkpoint to the result of an uninterrupted fit.
    Returns the adapter (CPU, eval), the baseline's projector (None for tokens) and metrics
    (``first_loss``, ``final_loss``, ``examples``).
    """
    text = config.text
    modalities = _available(text.modalities, tokens, "text")
    L.seed_everything(config.trainer.seed, verbose=False)
    lm, lm_tokenizer = zoo.load_lm()
    lora = (LoraOptions(r=text.lora_r, alpha=text.lora_alpha, dropout=text.lora_dropout, target_modules=list(text.lora_target_modules))
            if text.lora_r > 0 else None)
    slots = config.baselines.soft_prompt_slots if preferences is not None else 0
    adapter = TextPreferenceAdapter(lm, lm_tokenizer, tokens.tokenizer.all_tokens(modalities), lora=lora, soft_prompt_slots=slots,
                                    init=TokenInit(noise=text.token_init_noise, seed=config.trainer.seed))
    inputs = preference_inputs(preferences, modalities) if preferences is not None else None
    baseline = _soft_prompt_baseline(config, inputs, [adapter.embedding_center_and_spread()], modalities)
    fragments = ["".join(adapter.soft_prompt_tokens)] * data.num_users if baseline else user_fragments(data, tokens, modalities)
    module = TextGeneratorModule(adapter, data, fragments, text, config.optimizer_for(text.lr), seed=config.trainer.seed,
                                 soft_prompt=baseline, preferences=inputs, words=None if baseline else training_item_words(data, config, "text"))
    datamodule = _datamodule(config, data, split, batch_size=text.batch_size, image_size=8, with_images=False)
    metrics = _fit(module, config, datamodule, text.max_steps, text.max_epochs, out, callbacks, checkpoints, resume_key)
    return module.adapter.cpu().eval(), baseline.cpu().eval() if baseline else None, metrics


def train_image_generator(config: GeneratorConfig, data: InteractionData, split: Split, zoo: Zoo, tokens: UserTokens,
                          out: Path, *, preferences: Mapping[str, torch.Tensor] | None = None, callbacks: Sequence[Callback] = (),
                          checkpoints: Path | None = None, resume_key: str | None = None,
                          ) -> tuple[ImagePreferenceAdapter, SoftPromptBaseline | None, dict[str, float]]:
    """Fit the image adapter on liked items' images with prompts carrying the user's visual tokens
    and the values of ``config.image.subject_from_text`` the item's text names.

    ``preferences`` as in :func:`train_text_generator`: the soft-prompt baseline, with one
    projector per CLIP text encoder; ``checkpoints`` and ``resume_key`` as there too.
    """
    image = config.image
    modalities = _available(image.modalities, tokens, "image")
    L.seed_everything(config.trainer.seed, verbose=False)
    pipe = zoo.load_sdxl()
    lora = UNetLoraOptions(r=image.unet_lora_r, alpha=image.unet_lora_alpha or None) if image.unet_lora_r > 0 else None
    slots = config.baselines.soft_prompt_slots if preferences is not None else 0
    adapter = ImagePreferenceAdapter(pipe, tokens.tokenizer.all_tokens(modalities), unet_lora=lora, soft_prompt_slots=slots)
    inputs = preference_inputs(preferences, modalities) if preferences is not None else None
    baseline = _soft_prompt_baseline(config, inputs, adapter.embedding_center_and_spread(), modalities)
    fragments = ["".join(adapter.soft_prompt_tokens)] * data.num_users if baseline else user_fragments(data, tokens, modalities)
    module = ImageGeneratorModule(adapter, data, fragments, image, config.optimizer_for(image.lr), seed=config.trainer.seed,
                                  soft_prompt=baseline, preferences=inputs, described=subject_attributes(data, config),
                                  words=None if baseline else training_item_words(data, config, "image"))
    datamodule = _datamodule(config, data, split, batch_size=image.batch_size, image_size=adapter.image_size,
                             with_images=True)
    metrics = _fit(module, config, datamodule, image.max_steps, image.max_epochs, out, callbacks, checkpoints, resume_key)
    return module.adapter.cpu().eval(), baseline.cpu().eval() if baseline else None, metrics


# ----------------------------------------------------------------------------------------------------------------------
# The stage


def _save_generators(folder: Path, text: tuple | None, image: tuple | None) -> None:
    """Save (adapter, soft-prompt baseline or None) pairs of text and image under ``folder``."""
    for kind, trained, name in (("text", text, TEXT_ADAPTER), ("image", image, IMAGE_ADAPTER)):
        if trained is None:
            continue
        adapter, baseline = trained
        with atomic_directory(folder / name) as tmp:
            adapter.save(tmp)
        if baseline is not None:
            with atomic_file(folder / f"{kind}_projector.safetensors") as tmp:
                baseline.save(tmp)


def run_generator_stage(config: GeneratorConfig, run: RunDirectory, upstream: str, force: bool) -> StageResult:
    """Train text then image adapter on the training users' tokens (then the soft-prompt
    baseline, when enabled); save them, the held-out users, samples and metrics."""
    stage_fp = stage_fingerprint("generator", config, upstream)
    if (reused := reuse_or_clear(run, "generator", stage_fp, force, resumable=True)) is not None:
        return reused
    config.validate()
    tokens = load_user_tokens(run)
    data, split = load_prepared(run)
    if config.text.enabled and config.image.enabled:
        subject_attributes(data, config)  # before any training: a wrong name fails at once
    zoo = load_zoo(run)
    out = run.stage_dir("generator")
    for stale in (TEXT_ADAPTER, IMAGE_ADAPTER, SOFT_PROMPT):
        # A generator this config does not train must not be reloaded from an earlier run of the stage.
        shutil.rmtree(out / stale, ignore_errors=True)
    roles = load_user_roles(run, data)
    train_split = training_split(data, split, roles.training)
    variants: list[tuple[str, Mapping[str, torch.Tensor] | None]] = [("", None)]
    if config.baselines.soft_prompt:
        variants.append((f"{SOFT_PROMPT}/", load_preferences(run).user_preferences))
    metrics: dict[str, float] = {}
    text_adapter = image_adapter = None
    for prefix, preferences in variants:
        text = image = None
        # One checkpoint folder per fit: checkpoints/text, checkpoints/soft_prompt/image, ...
        if config.text.enabled:
            *text, text_metrics = train_text_generator(config, data, train_split, zoo, tokens, out, preferences=preferences,
                                                       checkpoints=out / "checkpoints" / f"{prefix}text", resume_key=stage_fp)
            metrics.update({f"{prefix}text/{k}": v for k, v in text_metrics.items()})
        if config.image.enabled:
            *image, image_metrics = train_image_generator(config, data, train_split, zoo, tokens, out, preferences=preferences,
                                                          checkpoints=out / "checkpoints" / f"{prefix}image", resume_key=stage_fp)
            metrics.update({f"{prefix}image/{k}": v for k, v in image_metrics.items()})
            if not prefix and config.image.latent_prior:
                liked = _datamodule(config, data, train_split, batch_size=1, image_size=8, with_images=False).train_rows()
                prior_metrics = attach_latent_prior(config, data, split, tokens, image[0], zoo, training_rows=liked,
                                                    selection_users=roles.selection.tolist())
                metrics.update({f"image/{k}": v for k, v in prior_metrics.items()})
        _save_generators(out / prefix if prefix else out, text, image)
        if not prefix:
            text_adapter, image_adapter = (text[0] if text else None), (image[0] if image else None)
    with atomic_directory(out / "samples") as tmp:
        write_samples(tmp, data, split, config, tokens, text_adapter, image_adapter)
    metrics["training_users"] = float(len(roles.training))
    write_stage_record(out, metrics, config)
    summary = "; ".join(
        f"{kind} loss {metrics[f'{kind}/first_loss']:.3f} → {metrics[f'{kind}/final_loss']:.3f}"
        for kind in ("text", "image", f"{SOFT_PROMPT}/text", f"{SOFT_PROMPT}/image") if f"{kind}/final_loss" in metrics
    ) + f"; trained on {len(roles.training)} users; samples in {out / 'samples'}"
    return complete_stage(run, "generator", stage_fp, summary, metrics=metrics)


GENERATOR_STAGE = Stage("generator", "generator", GeneratorConfig, run_generator_stage,
                        "teach the zoo's LM and SDXL pipeline the users' preference tokens")
