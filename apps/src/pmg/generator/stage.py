"""The generator stage: users' preference tokens taught to the zoo's causal LM and SDXL pipeline.

Text first (SFT of ``TextPreferenceAdapter``: new rows for the textual tokens + LoRA), then
image (``ImagePreferenceAdapter``: textual inversion of the visual tokens in both CLIP text
encoders, optional UNet LoRA). Artifacts in ``<run>/generator/``:

    text_adapter/        prefgen text adapter (peft folder + tokenizer + JSON); reload onto the zoo LM
    image_adapter/       prefgen image adapter (textual-inversion files per encoder [+ unet_lora/])
    samples/             <n>_<user_id>.png + samples.json (prompts and generated texts), one cold start
    metrics.json         first and final training losses of each generator
    config.yaml          the stage's config (``pmg generate`` reads prompts and sampling settings from it)
    tb/                  TensorBoard logs
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pmg.atomic import atomic_directory, atomic_file
from pmg.config import config_to_dict, config_to_yaml
from pmg.generator.config import GeneratorConfig
from pmg.runs import RunDirectory, RunError, fingerprint
from pmg.stages import Stage, StageResult

if TYPE_CHECKING:
    from pmg.data.format import InteractionData
    from pmg.data.split import Split
    from pmg.quantize.stage import UserTokens
    from pmg.zoo.manifest import Zoo
    from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter
    from prefquant import PreferenceTokenizer

__all__ = ["GENERATOR_STAGE", "UserGeneration", "modality_tokens", "user_fragments", "train_text_generator",
           "train_image_generator", "load_generators", "generate_for_user", "run_generator_stage"]

TEXT_ADAPTER = "text_adapter"
IMAGE_ADAPTER = "image_adapter"


def modality_tokens(tokenizer: PreferenceTokenizer, modalities: list[str]) -> list[str]:
    """Every token string of ``modalities`` (level-major, as ``PreferenceTokenizer.all_tokens``)."""
    tokens: list[str] = []
    for modality in modalities:
        spec = tokenizer.spec(modality)
        tokens += [f"<{spec.prefix}_{level}_{code}>" for level, size in enumerate(spec.codebook_sizes) for code in range(size)]
    return tokens


def user_fragments(data: InteractionData, tokens: UserTokens, modalities: list[str]) -> list[str | None]:
    """Per data user index, the token fragment of ``modalities``; None for a user the quantize
    stage has no codes for (cold start)."""
    position = {user_id: index for index, user_id in enumerate(tokens.user_ids)}
    chosen = tuple(modalities)
    return [tokens.prompt_fragment(position[u], chosen) if u in position else None for u in data.user_ids]


def _available(modalities: list[str], tokens: UserTokens, what: str) -> list[str]:
    present = [m for m in modalities if m in tokens.codes]
    if not present:
        raise RunError(f"generator.{what}.modalities {modalities}: the quantize stage has only {sorted(tokens.codes)}")
    return present


def _datamodule(config: GeneratorConfig, data: InteractionData, split: Split, *, batch_size: int, image_size: int, with_images: bool):
    from pmg.data.modules import GenerationDataModule

    return GenerationDataModule(data, split, target=config.target, min_rating=config.min_rating, image_size=image_size,
                                with_images=with_images, batch_size=batch_size, num_workers=config.num_workers)


def train_text_generator(config: GeneratorConfig, data: InteractionData, split: Split, zoo: Zoo, tokens: UserTokens,
                         out: Path) -> tuple[TextPreferenceAdapter, dict[str, float]]:
    """Fit the text adapter on (prompt with the user's textual tokens → liked item's texts)."""
    import lightning as L

    from pmg.generator.modules import TextGeneratorModule
    from pmg.training import build_trainer
    from prefgen import LoraOptions, TextPreferenceAdapter

    text = config.text
    modalities = _available(text.modalities, tokens, "text")
    L.seed_everything(config.trainer.seed, verbose=False)
    lm, lm_tokenizer = zoo.load_lm()
    lora = (LoraOptions(r=text.lora_r, alpha=text.lora_alpha, dropout=text.lora_dropout, target_modules=list(text.lora_target_modules))
            if text.lora_r > 0 else None)
    adapter = TextPreferenceAdapter(lm, lm_tokenizer, modality_tokens(tokens.tokenizer, modalities), lora=lora)
    module = TextGeneratorModule(adapter, data, user_fragments(data, tokens, modalities), text,
                                 config.optimizer_for(text.lr), seed=config.trainer.seed)
    loader = _datamodule(config, data, split, batch_size=text.batch_size, image_size=8, with_images=False).train_dataloader()
    trainer = build_trainer(config.trainer_for(text.max_steps, text.max_epochs), out, checkpointing=False)
    trainer.fit(module, train_dataloaders=loader)
    adapter = module.adapter.cpu().eval()
    return adapter, {"text/first_loss": _number(module.first_loss), "text/final_loss": _number(module.last_loss)}


def train_image_generator(config: GeneratorConfig, data: InteractionData, split: Split, zoo: Zoo, tokens: UserTokens,
                          out: Path) -> tuple[ImagePreferenceAdapter, dict[str, float]]:
    """Fit the image adapter on liked items' images with prompts carrying the user's visual tokens."""
    import lightning as L

    from pmg.generator.modules import ImageGeneratorModule
    from pmg.training import build_trainer
    from pmg.zoo.sdxl_recipe import pipeline_resolution
    from prefgen import ImagePreferenceAdapter, UNetLoraOptions

    image = config.image
    modalities = _available(image.modalities, tokens, "image")
    L.seed_everything(config.trainer.seed, verbose=False)
    pipe = zoo.load_sdxl()
    lora = UNetLoraOptions(r=image.unet_lora_r, alpha=image.unet_lora_alpha or None) if image.unet_lora_r > 0 else None
    adapter = ImagePreferenceAdapter(pipe, modality_tokens(tokens.tokenizer, modalities), unet_lora=lora)
    module = ImageGeneratorModule(adapter, data, user_fragments(data, tokens, modalities), image,
                                  config.optimizer_for(image.lr), seed=config.trainer.seed)
    loader = _datamodule(config, data, split, batch_size=image.batch_size, image_size=pipeline_resolution(pipe),
                         with_images=True).train_dataloader()
    trainer = build_trainer(config.trainer_for(image.max_steps, image.max_epochs), out, checkpointing=False)
    trainer.fit(module, train_dataloaders=loader)
    adapter = module.adapter.cpu().eval()
    return adapter, {"image/first_loss": _number(module.first_loss), "image/final_loss": _number(module.last_loss)}


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


# ----------------------------------------------------------------------------------------------------------------------
# Generation for one user (samples and `pmg generate`)


@dataclass
class UserGeneration:
    """What one user got: the prompts, the generated texts per target, and the image (PIL)."""

    user_id: str
    cold_start: bool
    text_prompt: str
    texts: dict[str, str]
    image_prompt: str
    image: Any


def _liked_subject(data: InteractionData, user: int | None, default: str) -> str:
    """The subject a user most often liked (``"a <category>"``), or ``default``."""
    from collections import Counter

    from pmg.generator.modules import item_subject

    # A cold-start user (None) gets the catalog's most liked subject.
    items = (data.item if user is None else data.item[data.user == user]).tolist()
    counts = Counter(item_subject(data, int(i), default) for i in items)
    return counts.most_common(1)[0][0] if counts else default


def generate_for_user(
    data: InteractionData,
    config: GeneratorConfig,
    *,
    user: int | None,
    text_fragment: str | None,
    image_fragment: str | None,
    text_adapter: TextPreferenceAdapter | None,
    image_adapter: ImagePreferenceAdapter | None,
    subject: str | None = None,
    reference_item: int | None = None,
    strength: float = 0.6,
) -> UserGeneration:
    """Texts (one per ``config.text.targets``) and an image for data user ``user`` (None: an
    unknown/cold-start user) from the given fragments (None: the no-token prompt).

    ``subject`` defaults to the reference item's subject, else the user's most liked one.
    With ``reference_item`` the image is an img2img edit of that item's image.
    """
    from pmg.data.modules import load_image_tensor
    from prefgen import build_image_prompt, build_text_prompt

    sample = config.sample
    user_id = data.user_ids[user] if user is not None else "(cold start)"
    texts: dict[str, str] = {}
    text_prompt = build_text_prompt(text_fragment, config.text.context_of(config.text.targets[0]))
    if text_adapter is not None:
        prompts = [build_text_prompt(text_fragment, config.text.context_of(t)) for t in config.text.targets]
        outputs = text_adapter.generate(prompts, max_new_tokens=sample.max_new_tokens, seed=sample.seed)
        texts = {t: o.strip() for t, o in zip(config.text.targets, outputs, strict=True)}
    if subject is None:
        from pmg.generator.modules import item_subject

        subject = (item_subject(data, reference_item, config.image.default_subject) if reference_item is not None
                   else _liked_subject(data, user, config.image.default_subject))
    image_prompt = build_image_prompt(subject, image_fragment)
    picture = None
    if image_adapter is not None:
        size = int(image_adapter.pipeline.default_sample_size * image_adapter.pipeline.vae_scale_factor)
        options: dict[str, Any] = {"seed": sample.seed, "num_inference_steps": sample.num_inference_steps,
                                   "guidance_scale": sample.guidance_scale}
        reference = data.items[reference_item].image if reference_item is not None else None
        if reference is not None:
            pixels = (load_image_tensor(str(reference), size).unsqueeze(0) + 1) / 2  # [1, 3, S, S] in [0, 1]
            picture = image_adapter.generate([image_prompt], reference_images=pixels, strength=strength, **options)[0]
        else:
            picture = image_adapter.generate([image_prompt], height=size, width=size, **options)[0]
    return UserGeneration(user_id, text_fragment is None and image_fragment is None, text_prompt, texts, image_prompt, picture)


def _write_samples(folder: Path, data: InteractionData, config: GeneratorConfig, tokens: UserTokens,
                   text_adapter: TextPreferenceAdapter | None, image_adapter: ImagePreferenceAdapter | None) -> list[dict]:
    """A few users' generations (evenly spaced users) and one cold-start generation."""
    count = min(config.sample.num_users, data.num_users)
    users: list[int | None] = [round(k * (data.num_users - 1) / max(count - 1, 1)) for k in range(count)] + [None]
    text_fragments = user_fragments(data, tokens, [m for m in config.text.modalities if m in tokens.codes])
    image_fragments = user_fragments(data, tokens, [m for m in config.image.modalities if m in tokens.codes])
    records = []
    for n, user in enumerate(users):
        result = generate_for_user(
            data, config, user=user,
            text_fragment=text_fragments[user] if user is not None else None,
            image_fragment=image_fragments[user] if user is not None else None,
            text_adapter=text_adapter, image_adapter=image_adapter,
        )
        name = f"{n:02d}_{'cold_start' if user is None else _safe(result.user_id)}"
        record = {"user_id": None if user is None else result.user_id, "cold_start": user is None,
                  "text_prompt": result.text_prompt, "texts": result.texts, "image_prompt": result.image_prompt}
        if result.image is not None:
            result.image.save(folder / f"{name}.png")
            record["image"] = f"{name}.png"
        records.append(record)
    (folder / "samples.json").write_text(json.dumps(records, indent=2))
    return records


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40]


def load_generators(run: RunDirectory, zoo: Zoo) -> tuple[TextPreferenceAdapter | None, ImagePreferenceAdapter | None]:
    """The trained adapters of ``run`` reloaded onto the zoo's base models (None where not trained)."""
    from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter

    run.require("generator")
    out = run.stage_dir("generator")
    text = image = None
    if (out / TEXT_ADAPTER).is_dir():
        text = TextPreferenceAdapter.load(out / TEXT_ADAPTER, zoo.lm.path, local_files_only=zoo.local_files_only,
                                          trust_remote_code=zoo.trust_remote_code).eval()
    if (out / IMAGE_ADAPTER).is_dir():
        image = ImagePreferenceAdapter.load(out / IMAGE_ADAPTER, zoo.load_sdxl()).eval()
    return text, image


# ----------------------------------------------------------------------------------------------------------------------
# The stage


def run_generator_stage(config: GeneratorConfig, run: RunDirectory, upstream: str, force: bool) -> StageResult:
    """Train text then image adapter on the run's users' tokens; save both, samples and metrics."""
    stage_fp = fingerprint("generator", config_to_dict(config), upstream)
    if not force and run.is_current("generator", stage_fp):
        return StageResult(stage_fp, run.require("generator")["summary"], reused=True)
    run.invalidate("generator")
    config.validate()
    from pmg.data.dataset_stage import load_prepared
    from pmg.quantize.stage import load_user_tokens
    from pmg.zoo.manifest import load_zoo

    tokens = load_user_tokens(run)
    data, split = load_prepared(run)
    zoo = load_zoo(run)
    out = run.stage_dir("generator")
    metrics: dict[str, float] = {}
    text_adapter = image_adapter = None
    if config.text.enabled:
        text_adapter, text_metrics = train_text_generator(config, data, split, zoo, tokens, out)
        metrics.update(text_metrics)
        with atomic_directory(out / TEXT_ADAPTER) as tmp:
            text_adapter.save(tmp)
    if config.image.enabled:
        image_adapter, image_metrics = train_image_generator(config, data, split, zoo, tokens, out)
        metrics.update(image_metrics)
        with atomic_directory(out / IMAGE_ADAPTER) as tmp:
            image_adapter.save(tmp)
    with atomic_directory(out / "samples") as tmp:
        _write_samples(tmp, data, config, tokens, text_adapter, image_adapter)
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    with atomic_file(out / "config.yaml") as tmp:
        tmp.write_text(config_to_yaml(config))
    summary = "; ".join(
        f"{kind} loss {metrics[f'{kind}/first_loss']:.3f} → {metrics[f'{kind}/final_loss']:.3f}"
        for kind in ("text", "image") if f"{kind}/final_loss" in metrics
    ) + f"; samples in {out / 'samples'}"
    run.mark_complete("generator", stage_fp, {"summary": summary, "metrics": metrics})
    return StageResult(stage_fp, summary)


GENERATOR_STAGE = Stage("generator", "generator", GeneratorConfig, run_generator_stage,
                        "teach the zoo's LM and SDXL pipeline the users' preference tokens")
