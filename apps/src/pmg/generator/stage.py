"""The generator stage: users' preference tokens taught to the zoo's causal LM and SDXL pipeline.

Text first (SFT of ``TextPreferenceAdapter``: new rows for the textual tokens + LoRA), then
image (``ImagePreferenceAdapter``: textual inversion of the visual tokens in both CLIP text
encoders, optional UNet LoRA). With ``generator.prompt=keywords_and_tokens`` (the default) the
training prompts also carry some of each liked item's own words, and generation prompts the
user's history keywords beside the tokens (``pmg.generator.prompts``). Artifacts in ``<run>/generator/``:

    text_adapter/        prefgen text adapter (peft folder + tokenizer + JSON); reload onto the zoo LM
    image_adapter/       prefgen image adapter (textual-inversion files per encoder [+ unet_lora/])
    soft_prompt/         the continuous baseline (``generator.baselines.soft_prompt``): text_adapter/ and
                         image_adapter/ with placeholder tokens, text_projector.safetensors and
                         image_projector.safetensors (``pmg.generator.soft_prompt.SoftPromptBaseline``)
    samples/             <n>_<user_id>.png + samples.json (prompts and generated texts), one cold start
    metrics.json         first and final training losses and training examples of each generator
    config.yaml          the stage's config (``pmg generate`` reads prompts and sampling settings from it)
    tb/                  TensorBoard logs
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pmg.atomic import atomic_directory, atomic_file
from pmg.generator.config import GeneratorConfig, PromptMode
from pmg.generator.prompts import (
    ItemWords,
    described_subject,
    item_subject,
    prompt_attributes,
    user_fragments,
    user_prompts,
)
from pmg.runs import RunDirectory, RunError, stage_fingerprint
from pmg.stages import Stage, StageResult, write_stage_record

if TYPE_CHECKING:
    import torch
    from lightning.pytorch.callbacks import Callback

    from pmg.data.format import InteractionData
    from pmg.data.split import Split
    from pmg.generator.modules import GeneratorModule
    from pmg.generator.soft_prompt import SoftPromptBaseline
    from pmg.quantize.stage import UserTokens
    from pmg.zoo.manifest import Zoo
    from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter

__all__ = ["GENERATOR_STAGE", "SoftPromptGenerators", "UserGeneration", "generate_for_user", "generate_for_users", "joined_text", "liked_subject",
           "load_generators", "load_soft_prompt_generators",
           "run_generator_stage", "subject_attributes", "train_image_generator", "train_text_generator", "training_split", "user_image_prompt", "write_samples"]

TEXT_ADAPTER = "text_adapter"
IMAGE_ADAPTER = "image_adapter"
SOFT_PROMPT = "soft_prompt"  # the baseline's folder: the same adapter folders + <kind>_projector.safetensors


def _available(modalities: list[str], tokens: UserTokens, what: str) -> list[str]:
    present = [m for m in modalities if m in tokens.codes]
    if not present:
        raise RunError(f"generator.{what}.modalities {modalities}: the quantize stage has only {sorted(tokens.codes)}")
    return present


def training_split(data: InteractionData, split: Split, users: np.ndarray) -> Split:
    """``split`` restricted to the interactions of ``users`` (data user indices [T])."""
    from dataclasses import replace

    keep = np.isin(data.user, users)
    return replace(split, train=split.train[keep[split.train]], val=split.val[keep[split.val]], test=split.test[keep[split.test]])


def _datamodule(config: GeneratorConfig, data: InteractionData, split: Split, *, batch_size: int, image_size: int, with_images: bool):
    from pmg.data.modules import GenerationDataModule

    return GenerationDataModule(data, split, target=config.target, min_rating=config.min_rating, image_size=image_size,
                                with_images=with_images, batch_size=batch_size, num_workers=config.num_workers)


def _fit(module: GeneratorModule, config: GeneratorConfig, datamodule, steps: int, epochs: int, out: Path,
         callbacks: Sequence[Callback]) -> dict[str, float]:
    """Fit one generator module; its first/final loss and number of training examples."""
    from pmg.training import build_trainer

    loader = datamodule.train_dataloader()
    trainer = build_trainer(config.trainer_for(steps, epochs), out, checkpointing=False, callbacks=callbacks)
    trainer.fit(module, train_dataloaders=loader)
    return {"first_loss": module.first_loss, "final_loss": module.last_loss, "examples": float(len(loader.dataset))}


def _soft_prompt_baseline(config: GeneratorConfig, preferences: torch.Tensor | None,
                          spaces: Sequence[tuple[torch.Tensor, float]], modalities: list[str]) -> SoftPromptBaseline | None:
    from pmg.generator.soft_prompt import SoftPromptBaseline

    if preferences is None:
        return None
    return SoftPromptBaseline.for_users(modalities, preferences, config.baselines.soft_prompt_slots, spaces)


def _item_words(data: InteractionData, config: GeneratorConfig, kind: str) -> ItemWords | None:
    """The training prompts' item words of the ``kind`` ("text"/"image") generator; None with ``prompt=tokens``."""
    if config.prompt is PromptMode.tokens:
        return None
    text_attributes, image_attributes = prompt_attributes(data, config)
    return ItemWords(data, text_attributes if kind == "text" else image_attributes, config.item_word_keep, config.trainer.seed)


def train_text_generator(config: GeneratorConfig, data: InteractionData, split: Split, zoo: Zoo, tokens: UserTokens,
                         out: Path, *, preferences: Mapping[str, torch.Tensor] | None = None,
                         callbacks: Sequence[Callback] = ()) -> tuple[TextPreferenceAdapter, SoftPromptBaseline | None, dict[str, float]]:
    """Fit the text adapter on (prompt with the user's textual tokens → liked item's texts).

    With ``preferences`` ({modality: [U, d]}), the soft-prompt baseline instead: the same
    adapter (tokens added, never prompted) with placeholders filled by a projector of the
    users' preference vectors of ``config.text.modalities``, trained with the same budget.
    Returns the adapter (CPU, eval), the baseline's projector (None for tokens) and metrics
    (``first_loss``, ``final_loss``, ``examples``).
    """
    import lightning as L

    from pmg.generator.modules import TextGeneratorModule
    from pmg.generator.soft_prompt import preference_inputs
    from prefgen import LoraOptions, TextPreferenceAdapter, TokenInit

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
                                 soft_prompt=baseline, preferences=inputs, words=None if baseline else _item_words(data, config, "text"))
    datamodule = _datamodule(config, data, split, batch_size=text.batch_size, image_size=8, with_images=False)
    metrics = _fit(module, config, datamodule, text.max_steps, text.max_epochs, out, callbacks)
    return module.adapter.cpu().eval(), baseline.cpu().eval() if baseline else None, metrics


def train_image_generator(config: GeneratorConfig, data: InteractionData, split: Split, zoo: Zoo, tokens: UserTokens,
                          out: Path, *, preferences: Mapping[str, torch.Tensor] | None = None,
                          callbacks: Sequence[Callback] = ()) -> tuple[ImagePreferenceAdapter, SoftPromptBaseline | None, dict[str, float]]:
    """Fit the image adapter on liked items' images with prompts carrying the user's visual tokens
    and the values of ``config.image.subject_from_text`` the item's text names.

    ``preferences`` as in :func:`train_text_generator`: the soft-prompt baseline, with one
    projector per CLIP text encoder.
    """
    import lightning as L

    from pmg.generator.modules import ImageGeneratorModule
    from pmg.generator.soft_prompt import preference_inputs
    from pmg.zoo.sdxl_recipe import pipeline_resolution
    from prefgen import ImagePreferenceAdapter, UNetLoraOptions

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
                                  words=None if baseline else _item_words(data, config, "image"))
    datamodule = _datamodule(config, data, split, batch_size=image.batch_size, image_size=pipeline_resolution(pipe),
                             with_images=True)
    metrics = _fit(module, config, datamodule, image.max_steps, image.max_epochs, out, callbacks)
    return module.adapter.cpu().eval(), baseline.cpu().eval() if baseline else None, metrics


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

    @property
    def text(self) -> str:
        """Every generated text as one (:func:`joined_text`)."""
        return joined_text(self.texts)


def joined_text(texts: Mapping[str, str]) -> str:
    """A generation's texts (target → text) read as one, in target order: what the image subject
    takes its words from and what the consistency and personalization checks read."""
    return " ".join(texts.values())


def liked_subject(data: InteractionData, history: np.ndarray, user: int | None, default: str) -> str:
    """The subject a user most often liked in ``history`` (interaction rows: the split's training
    rows, so that no later item leaks into a prompt), ``"a <category>"``, or ``default``."""
    from collections import Counter

    owners = data.user[history]
    # A cold-start user (None) gets the catalog's most liked subject.
    items = (data.item[history] if user is None else data.item[history[owners == user]]).tolist()
    counts = Counter(item_subject(data, int(i), default) for i in items)
    return counts.most_common(1)[0][0] if counts else default


def subject_attributes(data: InteractionData, config: GeneratorConfig) -> dict[str, Sequence[str]]:
    """{attribute: its values} for ``config.image.subject_from_text``; a clear error for one the dataset lacks."""
    unknown = [a for a in config.image.subject_from_text if a not in data.attributes]
    if unknown:
        raise RunError(f"generator.image.subject_from_text names {unknown}, which the dataset does not have (its attributes: "
                       f"{sorted(data.attributes)}); name some of those or set generator.image.subject_from_text=[]")
    return {a: tuple(data.attributes[a].values) for a in config.image.subject_from_text}


def user_image_prompt(data: InteractionData, config: GeneratorConfig, user: int | None, text: str, fragment: str | None,
                      described: Mapping[str, Sequence[str]], history: np.ndarray, subject: str | None = None,
                      keywords: Mapping[str, str] | None = None) -> str:
    """The image prompt for ``user``: ``subject`` (None: the user's most liked one in ``history``)
    described by the values of ``described`` attributes that ``text`` names and by ``keywords``
    ({attribute: value} from the user's history; where both give a value of one attribute the
    keyword's wins: it is the user's evidence, the text a generated guess prompted with the same
    words), then the user's tokens ``fragment``."""
    from pmg.generator.modules import text_named_values
    from prefgen import build_image_prompt

    subject = subject or liked_subject(data, history, user, config.image.default_subject)
    chosen = text_named_values(text, described)
    chosen.update(keywords or {})
    return build_image_prompt(described_subject(data, subject, chosen), fragment)


def generate_for_users(
    data: InteractionData,
    config: GeneratorConfig,
    *,
    users: Sequence[int | None],
    text_fragments: Sequence[str | None],
    image_fragments: Sequence[str | None],
    text_adapter: TextPreferenceAdapter | None,
    image_adapter: ImagePreferenceAdapter | None,
    history: np.ndarray,
    subjects: Sequence[str | None] | None = None,
    keywords: Sequence[Mapping[str, str] | None] | None = None,
    text_soft_prompt: torch.Tensor | None = None,
    image_soft_prompt: Sequence[torch.Tensor] | None = None,
    batch_size: int = 16,
) -> list[UserGeneration]:
    """:func:`generate_for_user` for several users at once (no reference item), ``batch_size`` users
    per generator call. Every user's image starts from its own noise seeded with ``config.sample.seed``,
    so it is the image that user gets alone; greedy texts are batched with left padding.

    ``users[b]``, ``text_fragments[b]``, ``image_fragments[b]``, ``subjects[b]`` (None: the
    user's most liked subject in ``history``, the split's training rows) and ``keywords[b]``
    (words for the image subject, {attribute: value}) describe user ``b``; soft-prompt vectors are stacked per user:
    ``text_soft_prompt`` [B, S, d], ``image_soft_prompt`` one [B, S, d_e] per text encoder.
    Texts come first: the values of ``config.image.subject_from_text`` they name go into the
    image subject (:func:`user_image_prompt`).
    """
    from pmg.zoo.sdxl_recipe import pipeline_resolution
    from prefgen import build_text_prompt

    if not len(users) == len(text_fragments) == len(image_fragments) or any(
            extra is not None and len(extra) != len(users) for extra in (subjects, keywords)):
        raise ValueError(f"{len(users)} users need as many fragments, subjects and keywords")
    sample, targets = config.sample, config.text.targets
    described = subject_attributes(data, config) if text_adapter is not None and image_adapter is not None else {}
    results: list[UserGeneration] = []
    for start in range(0, len(users), batch_size):
        chunk = range(start, min(start + batch_size, len(users)))
        texts: list[dict[str, str]] = [{} for _ in chunk]
        if text_adapter is not None:
            prompts = [build_text_prompt(text_fragments[b], config.text.context_of(t)) for b in chunk for t in targets]
            vectors = (text_soft_prompt[chunk.start : chunk.stop].repeat_interleave(len(targets), dim=0)
                       if text_soft_prompt is not None else None)
            outputs = text_adapter.generate(prompts, max_new_tokens=sample.max_new_tokens, min_new_tokens=sample.min_new_tokens,
                                            seed=sample.seed, soft_prompt=vectors)
            texts = [{t: outputs[n * len(targets) + k].strip() for k, t in enumerate(targets)} for n in range(len(chunk))]
        image_prompts = [user_image_prompt(data, config, users[b], joined_text(texts[n]), image_fragments[b], described, history,
                                           subjects[b] if subjects is not None else None,
                                           keywords[b] if keywords is not None else None)
                         for n, b in enumerate(chunk)]
        pictures: list[Any] = [None] * len(chunk)
        if image_adapter is not None:
            size = pipeline_resolution(image_adapter.pipeline)
            soft = [v[chunk.start : chunk.stop] for v in image_soft_prompt] if image_soft_prompt is not None else None
            pictures = image_adapter.generate(image_prompts, seed=[sample.seed] * len(chunk), num_inference_steps=sample.num_inference_steps,
                                              guidance_scale=sample.guidance_scale, soft_prompt=soft, height=size, width=size)
        for n, b in enumerate(chunk):
            user = users[b]
            results.append(UserGeneration(data.user_ids[user] if user is not None else "(cold start)",
                                          text_fragments[b] is None and image_fragments[b] is None,
                                          build_text_prompt(text_fragments[b], config.text.context_of(targets[0])),
                                          texts[n], image_prompts[n], pictures[n]))
    return results


def generate_for_user(
    data: InteractionData,
    config: GeneratorConfig,
    *,
    user: int | None,
    text_fragment: str | None,
    image_fragment: str | None,
    text_adapter: TextPreferenceAdapter | None,
    image_adapter: ImagePreferenceAdapter | None,
    history: np.ndarray,
    subject: str | None = None,
    keywords: Mapping[str, str] | None = None,
    reference_item: int | None = None,
    strength: float = 0.6,
    text_soft_prompt: torch.Tensor | None = None,
    image_soft_prompt: Sequence[torch.Tensor] | None = None,
) -> UserGeneration:
    """Texts (one per ``config.text.targets``) and an image for data user ``user`` (None: an
    unknown/cold-start user) from the given fragments (None: the no-token prompt).

    ``subject`` defaults to the reference item's subject, else the user's most liked one in
    ``history`` (interaction rows: the split's training rows); ``keywords`` ({attribute: value},
    :attr:`pmg.generator.prompts.UserPrompts.subject_words`) describe it.
    With ``reference_item`` the image is an img2img edit of that item's image.
    Soft-prompt baseline: the fragments are the adapters' placeholder tokens and
    ``text_soft_prompt`` [1, S, d] / ``image_soft_prompt`` (one [1, S, d_e] per text encoder)
    the user's vectors (:meth:`SoftPromptGenerators.vectors`).
    """
    from pmg.data.modules import load_image_tensor
    from pmg.zoo.sdxl_recipe import pipeline_resolution

    reference = data.items[reference_item].image if reference_item is not None else None
    if subject is None and reference_item is not None:
        subject = item_subject(data, reference_item, config.image.default_subject)
    result = generate_for_users(data, config, users=[user], text_fragments=[text_fragment], image_fragments=[image_fragment],
                                text_adapter=text_adapter, image_adapter=image_adapter if reference is None else None,
                                history=history, subjects=[subject], keywords=[keywords], text_soft_prompt=text_soft_prompt, image_soft_prompt=image_soft_prompt)[0]
    if image_adapter is not None and reference is not None:
        sample = config.sample
        size = pipeline_resolution(image_adapter.pipeline)
        pixels = (load_image_tensor(str(reference), size).unsqueeze(0) + 1) / 2  # [1, 3, S, S] in [0, 1]
        result.image = image_adapter.generate([result.image_prompt], reference_images=pixels, strength=strength, seed=sample.seed,
                                              num_inference_steps=sample.num_inference_steps, guidance_scale=sample.guidance_scale,
                                              soft_prompt=image_soft_prompt)[0]
    return result


def write_samples(folder: Path, data: InteractionData, split: Split, config: GeneratorConfig, tokens: UserTokens,
                   text_adapter: TextPreferenceAdapter | None, image_adapter: ImagePreferenceAdapter | None) -> list[dict]:
    """A few users' generations (evenly spaced users) and one cold-start generation."""
    count = min(config.sample.num_users, data.num_users)
    users: list[int | None] = [round(k * (data.num_users - 1) / max(count - 1, 1)) for k in range(count)] + [None]
    prompts = user_prompts(data, config, tokens, split.train).of(users)
    results = generate_for_users(data, config, users=users, text_fragments=prompts.text, image_fragments=prompts.image,
                                 keywords=prompts.subject_words, text_adapter=text_adapter, image_adapter=image_adapter,
                                 history=split.train)
    records = []
    for n, (user, result) in enumerate(zip(users, results, strict=True)):
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
    run.require("generator")
    return _load_adapters(run.stage_dir("generator"), zoo)


def _load_adapters(folder: Path, zoo: Zoo) -> tuple[TextPreferenceAdapter | None, ImagePreferenceAdapter | None]:
    """Both adapters for inference: the text adapter is merged into its LM (no LoRA cost per decoding step)."""
    from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter

    text = image = None
    if (folder / TEXT_ADAPTER).is_dir():
        text = TextPreferenceAdapter.load(folder / TEXT_ADAPTER, zoo.lm.path, local_files_only=zoo.local_files_only,
                                          trust_remote_code=zoo.trust_remote_code).merge_for_inference().eval()
    if (folder / IMAGE_ADAPTER).is_dir():
        image = ImagePreferenceAdapter.load(folder / IMAGE_ADAPTER, zoo.load_sdxl()).eval()
    return text, image


@dataclass
class SoftPromptGenerators:
    """The soft-prompt baseline of a run: adapters with placeholders and the projectors filling them."""

    text: TextPreferenceAdapter | None
    text_baseline: SoftPromptBaseline | None
    image: ImagePreferenceAdapter | None
    image_baseline: SoftPromptBaseline | None

    def fragment(self, adapter: TextPreferenceAdapter | ImagePreferenceAdapter | None) -> str | None:
        """The prompt fragment of the baseline: the adapter's placeholder tokens (None without adapter)."""
        return "".join(adapter.soft_prompt_tokens) if adapter is not None else None

    def vectors(self, preferences: Mapping[str, torch.Tensor], users: int | Sequence[int]) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
        """The soft prompts of data user(s) ``users`` (B of them; one int: B = 1) from the preference
        stage's vectors ({modality: [U, d]}): text [B, S, d] and image (one [B, S, d_e] per text
        encoder); None where not trained."""
        import torch

        from pmg.generator.soft_prompt import preference_inputs

        index = [users] if isinstance(users, int) else list(users)

        def one(baseline: SoftPromptBaseline | None) -> list[torch.Tensor] | None:
            if baseline is None:
                return None
            with torch.no_grad():
                return baseline(preference_inputs(preferences, baseline.modalities)[index])

        text = one(self.text_baseline)
        return (text[0] if text else None), one(self.image_baseline)


def load_soft_prompt_generators(run: RunDirectory, zoo: Zoo) -> SoftPromptGenerators | None:
    """The soft-prompt baseline of ``run`` reloaded onto the zoo's models (None if not trained)."""
    from pmg.generator.soft_prompt import SoftPromptBaseline

    run.require("generator")
    folder = run.stage_dir("generator") / SOFT_PROMPT
    if not folder.is_dir():
        return None
    text, image = _load_adapters(folder, zoo)
    projector = {kind: SoftPromptBaseline.load(folder / f"{kind}_projector.safetensors").eval() if adapter else None
                 for kind, adapter in (("text", text), ("image", image))}
    return SoftPromptGenerators(text, projector["text"], image, projector["image"])


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
    if not force and run.is_current("generator", stage_fp):
        return StageResult(stage_fp, run.require("generator")["summary"], reused=True)
    run.invalidate("generator")
    config.validate()
    from pmg.data.dataset_stage import load_prepared, load_user_roles
    from pmg.quantize.stage import load_user_tokens
    from pmg.zoo.manifest import load_zoo

    tokens = load_user_tokens(run)
    data, split = load_prepared(run)
    if config.text.enabled and config.image.enabled:
        subject_attributes(data, config)  # before any training: a wrong name fails at once
    zoo = load_zoo(run)
    out = run.stage_dir("generator")
    import shutil

    for stale in (TEXT_ADAPTER, IMAGE_ADAPTER, SOFT_PROMPT):
        # A generator this config does not train must not be reloaded from an earlier run of the stage.
        shutil.rmtree(out / stale, ignore_errors=True)
    roles = load_user_roles(run, data)
    train_split = training_split(data, split, roles.training)
    variants: list[tuple[str, Mapping[str, torch.Tensor] | None]] = [("", None)]
    if config.baselines.soft_prompt:
        from pmg.preference.stage import load_preferences

        variants.append((f"{SOFT_PROMPT}/", load_preferences(run).user_preferences))
    metrics: dict[str, float] = {}
    text_adapter = image_adapter = None
    for prefix, preferences in variants:
        text = image = None
        if config.text.enabled:
            *text, text_metrics = train_text_generator(config, data, train_split, zoo, tokens, out, preferences=preferences)
            metrics.update({f"{prefix}text/{k}": v for k, v in text_metrics.items()})
        if config.image.enabled:
            *image, image_metrics = train_image_generator(config, data, train_split, zoo, tokens, out, preferences=preferences)
            metrics.update({f"{prefix}image/{k}": v for k, v in image_metrics.items()})
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
    run.mark_complete("generator", stage_fp, {"summary": summary, "metrics": metrics})
    return StageResult(stage_fp, summary)


GENERATOR_STAGE = Stage("generator", "generator", GeneratorConfig, run_generator_stage,
                        "teach the zoo's LM and SDXL pipeline the users' preference tokens")
