"""Generation with a run's trained generators: users' texts and images, and the adapters reloaded.

The one path from a user to what they get, shared by the generator stage's samples, the reward
stage, ``pmg generate`` and ``pmg evaluate``:

    text, image = load_generators(run, load_zoo(run))
    prompts = user_prompts(data, config, tokens, split.train, users=users)     # pmg.generator.prompts
    results = generate_for_users(data, config, users=users, text_fragments=prompts.text,
                                 image_fragments=prompts.image, keywords=prompts.subject_words,
                                 text_adapter=text, image_adapter=image, history=split.train)

Texts come first (one per ``generator.text.targets``); the image prompt then describes the subject
with the values the texts name (:func:`pmg.generator.prompts.user_image_prompt`).
The folders the generator stage saves the adapters in (``TEXT_ADAPTER``, ``IMAGE_ADAPTER``,
``SOFT_PROMPT``) are named here, beside the loaders that read them.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pmg.data.format import InteractionData
from pmg.data.images import load_image_tensor
from pmg.data.split import Split
from pmg.data.subjects import image_subject, item_subject
from pmg.generator.config import GeneratorConfig
from pmg.generator.prompts import prompt_templates, subject_attributes, user_image_prompt, user_prompts
from pmg.generator.soft_prompt import SoftPromptBaseline, preference_inputs
from pmg.quantize.stage import UserTokens
from pmg.runs import RunDirectory
from pmg.zoo.manifest import Zoo
from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter, build_text_prompt

__all__ = ["IMAGE_ADAPTER", "SOFT_PROMPT", "TEXT_ADAPTER", "ImageChoice", "ImageScorer", "SoftPromptGenerators", "UserGeneration", "generate_for_user",
           "generate_for_users", "joined_text", "load_generators", "load_soft_prompt_generators", "generate_images", "user_seed", "write_samples"]

TEXT_ADAPTER = "text_adapter"
IMAGE_ADAPTER = "image_adapter"
SOFT_PROMPT = "soft_prompt"  # the baseline's folder: the same adapter folders + <kind>_projector.safetensors


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


# (images: B PIL images, users: B data users, None for a cold start) -> scores float [B], higher is better.
ImageScorer = Callable[[Sequence[Any], Sequence["int | None"]], torch.Tensor]


@dataclass(frozen=True)
class ImageChoice:
    """Best of ``candidates`` images per user: each user's image is drawn from ``candidates`` noises
    (``user_seed`` of ``sample.seed`` + 0, 1, ...; the first is the one image drawn without a
    choice) and the one ``scorer`` scores highest is kept. A scorer reads no ground truth: it is a
    model of the user (the reward stage's personalization term, :func:`pmg.reward.image_choice`)
    or of their history."""

    candidates: int
    scorer: ImageScorer

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError(f"an image choice needs at least 1 candidate, got {self.candidates}")

    def draw(self, image_adapter: ImagePreferenceAdapter, prompts: Sequence[str], config: GeneratorConfig,
             data: InteractionData, users: Sequence[int | None], *, soft_prompt: Sequence[torch.Tensor] | None = None,
             latent_offsets: torch.Tensor | None = None) -> list[Any]:
        """One image (PIL) per prompt, user ``users[b]``'s: the best scored of its candidates. A cold-start
        user (None) has nothing to be scored against, so it keeps its first draw and no more are drawn."""
        first = generate_images(image_adapter, prompts, config, [user_seed(config.sample.seed, data, u) for u in users],
                                soft_prompt=soft_prompt, latent_offsets=latent_offsets)
        known = [b for b, u in enumerate(users) if u is not None]
        if self.candidates == 1 or not known:
            return first
        rows = torch.as_tensor(known)
        known_users = [users[b] for b in known]
        drawn = [[first[b] for b in known]] + [
            generate_images(image_adapter, [prompts[b] for b in known], config,
                            [user_seed(config.sample.seed + k, data, u) for u in known_users],
                            soft_prompt=None if soft_prompt is None else [t[rows] for t in soft_prompt],
                            latent_offsets=None if latent_offsets is None else latent_offsets[rows])
            for k in range(1, self.candidates)]
        scores = torch.stack([self.scorer(images, known_users).float() for images in drawn])  # [K, known]
        chosen = list(first)
        for n, k in enumerate(scores.argmax(dim=0).tolist()):  # the first of tied candidates
            chosen[known[n]] = drawn[k][n]
        return chosen


def user_seed(seed: int, data: InteractionData, user: int | None) -> int:
    """The seed of data user ``user``'s image noise: ``seed`` offset by a stable hash of their id
    (``seed`` itself for a cold-start user, None). Users start from different noise, so a figure over
    users averages over as many draws of it rather than resting on one draw shared by all; a user's
    image does not depend on which other users the dataset holds or in what order."""
    return seed if user is None else (seed + zlib.crc32(data.user_ids[user].encode("utf-8"))) % 2**32


def joined_text(texts: Mapping[str, str]) -> str:
    """A generation's texts (target → text) read as one, in target order: what the image subject
    takes its words from and what the consistency and personalization checks read."""
    return " ".join(texts.values())


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
    image_latent_offsets: torch.Tensor | None = None,
    image_choice: ImageChoice | None = None,
    batch_size: int = 16,
) -> list[UserGeneration]:
    """:func:`generate_for_user` for several users at once (no reference item), ``batch_size`` users
    per generator call. Every user's image starts from its own noise, seeded by :func:`user_seed` from
    ``config.sample.seed``, so it is the image that user gets alone; greedy texts are batched with left padding.

    ``users[b]``, ``text_fragments[b]``, ``image_fragments[b]``, ``subjects[b]`` (None: the
    user's most liked subject in ``history``, the split's training rows) and ``keywords[b]``
    (words for the image subject, {attribute: value}) describe user ``b``; soft-prompt vectors are stacked per user:
    ``text_soft_prompt`` [B, S, d], ``image_soft_prompt`` one [B, S, d_e] per text encoder;
    ``image_latent_offsets`` [B, C] shift each user's initial latents (besides the adapter's latent prior);
    ``image_choice``: each user's image is the best of several drawn (None: one draw).
    Texts come first: the values of ``config.image.subject_from_text`` they name go into the
    image subject (:func:`pmg.generator.prompts.user_image_prompt`).
    """
    if not len(users) == len(text_fragments) == len(image_fragments) or any(
            extra is not None and len(extra) != len(users) for extra in (subjects, keywords, image_latent_offsets)):
        raise ValueError(f"{len(users)} users need as many fragments, subjects, keywords and latent offsets")
    sample, targets = config.sample, config.text.targets
    described = subject_attributes(data, config) if text_adapter is not None and image_adapter is not None else {}
    templates = prompt_templates(data, config.image.default_subject, config.text.audience, config.image.prompt_form)
    results: list[UserGeneration] = []
    for start in range(0, len(users), batch_size):
        chunk = range(start, min(start + batch_size, len(users)))
        texts: list[dict[str, str]] = [{} for _ in chunk]
        if text_adapter is not None:
            prompts = [build_text_prompt(text_fragments[b], config.text.context_of(t), templates) for b in chunk for t in targets]
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
            soft = [v[chunk.start : chunk.stop] for v in image_soft_prompt] if image_soft_prompt is not None else None
            offsets = image_latent_offsets[chunk.start : chunk.stop] if image_latent_offsets is not None else None
            choice = image_choice or ImageChoice(1, _unscored)
            pictures = choice.draw(image_adapter, image_prompts, config, data, [users[b] for b in chunk], soft_prompt=soft,
                                   latent_offsets=offsets)
        for n, b in enumerate(chunk):
            user = users[b]
            results.append(UserGeneration(data.user_ids[user] if user is not None else "(cold start)",
                                          text_fragments[b] is None and image_fragments[b] is None,
                                          build_text_prompt(text_fragments[b], config.text.context_of(targets[0]), templates),
                                          texts[n], image_prompts[n], pictures[n]))
    return results


def _unscored(images: Sequence[Any], users: Sequence[int | None]) -> torch.Tensor:
    return torch.zeros(len(images))


def generate_images(image_adapter: ImagePreferenceAdapter, prompts: Sequence[str], config: GeneratorConfig,
                    seeds: Sequence[int], *, soft_prompt: Sequence[torch.Tensor] | None = None,
                    latent_offsets: torch.Tensor | None = None) -> list[Any]:
    """One image (PIL) per prompt, sampled with ``config.sample``'s steps and guidance at the adapter's
    size, prompt ``b`` from its own noise seeded with ``seeds[b]`` (so that an image does not depend on
    the batch it is drawn in). ``soft_prompt`` (one [B, S, d_e] per text encoder) and ``latent_offsets``
    [B, C] as :meth:`prefgen.ImagePreferenceAdapter.generate` takes them."""
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    sample, size = config.sample, image_adapter.image_size
    return image_adapter.generate(list(prompts), seed=[int(s) for s in seeds], num_inference_steps=sample.num_inference_steps,
                                  guidance_scale=sample.guidance_scale, soft_prompt=soft_prompt, height=size, width=size,
                                  latent_offsets=latent_offsets)


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
    image_choice: ImageChoice | None = None,
) -> UserGeneration:
    """Texts (one per ``config.text.targets``) and an image for data user ``user`` (None: an
    unknown/cold-start user) from the given fragments (None: the no-token prompt).

    ``subject`` defaults to the reference item's subject, else the user's most liked one in
    ``history`` (interaction rows: the split's training rows); ``keywords`` ({attribute: value},
    :attr:`pmg.generator.prompts.UserPrompts.subject_words`) describe it.
    With ``reference_item`` the image is an img2img edit of that item's image (one draw: ``image_choice``,
    the best of several images, applies to text-to-image only).
    Soft-prompt baseline: the fragments are the adapters' placeholder tokens and
    ``text_soft_prompt`` [1, S, d] / ``image_soft_prompt`` (one [1, S, d_e] per text encoder)
    the user's vectors (:meth:`SoftPromptGenerators.vectors`).
    """
    reference = data.items[reference_item].image if reference_item is not None else None
    if subject is None and reference_item is not None:
        subject = item_subject(data, reference_item, image_subject(data, config.image.default_subject))
    result = generate_for_users(data, config, users=[user], text_fragments=[text_fragment], image_fragments=[image_fragment],
                                text_adapter=text_adapter, image_adapter=image_adapter if reference is None else None,
                                history=history, subjects=[subject], keywords=[keywords], text_soft_prompt=text_soft_prompt, image_soft_prompt=image_soft_prompt,
                                image_choice=image_choice)[0]
    if image_adapter is not None and reference is not None:
        sample = config.sample
        size = image_adapter.image_size
        pixels = (load_image_tensor(reference, size, data.image_read_fit).unsqueeze(0) + 1) / 2  # [1, 3, S, S] in [0, 1]
        result.image = image_adapter.generate([result.image_prompt], reference_images=pixels, strength=strength,
                                              seed=user_seed(sample.seed, data, user),
                                              num_inference_steps=sample.num_inference_steps, guidance_scale=sample.guidance_scale,
                                              soft_prompt=image_soft_prompt)[0]
    return result


def write_samples(folder: Path, data: InteractionData, split: Split, config: GeneratorConfig, tokens: UserTokens,
                  text_adapter: TextPreferenceAdapter | None, image_adapter: ImagePreferenceAdapter | None,
                  image_choice: ImageChoice | None = None) -> list[dict]:
    """A few users' generations (evenly spaced users) and one cold-start generation."""
    count = min(config.sample.num_users, data.num_users)
    users: list[int | None] = [round(k * (data.num_users - 1) / max(count - 1, 1)) for k in range(count)] + [None]
    prompts = user_prompts(data, config, tokens, split.train, users=users)
    results = generate_for_users(data, config, users=users, text_fragments=prompts.text, image_fragments=prompts.image,
                                 keywords=prompts.subject_words, text_adapter=text_adapter, image_adapter=image_adapter,
                                 history=split.train, image_choice=image_choice)
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
    run.require("generator")
    folder = run.stage_dir("generator") / SOFT_PROMPT
    if not folder.is_dir():
        return None
    text, image = _load_adapters(folder, zoo)
    projector = {kind: SoftPromptBaseline.load(folder / f"{kind}_projector.safetensors").eval() if adapter else None
                 for kind, adapter in (("text", text), ("image", image))}
    return SoftPromptGenerators(text, projector["text"], image, projector["image"])
