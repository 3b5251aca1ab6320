"""Generation section of the evaluation table: four variants of the generators on the same users.

Variants (the same sampling settings, ``generator.sample``: greedy text, seeded diffusion; every
user's image with the same seed, so variants differ only by their conditioning):

- ``no_tokens``: the generator stage's adapters with the no-token prompt (what the tokens add);
- ``soft_prompt``: the continuous baseline (``<run>/generator/soft_prompt``), each user's preference
  vectors projected into the placeholders (no quantization);
- ``tokens_sft``: the generator stage's adapters with the user's discrete tokens;
- ``tokens_reward``: the reward stage's adapters with the user's discrete tokens.

Metrics per variant (``pmg.generator.evaluation`` for the ground-truth checks):

- personalization accuracy: the judge reads the user's true value of each visual taste in the
  image; the text names the user's true value of each textual taste first; and their means;
- cross-modal consistency: the text names first the ``consistency_attribute`` value (colour)
  the judge reads in the image;
- CLIP score: cosine of the zoo CLIP's embeddings of the image and of the text, in [-1, 1];
- user-preference score: the generated content against the user's held-out future items (the
  split's validation + test items): for each user, the share of the other evaluated users whose
  future items are less similar to the content than the user's own (mean CLIP cosine; ties
  count half); 0.5 is chance. Image against item images, text against item texts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pmg.evaluate.table import Cell, Section
from pmg.generator.evaluation import (
    consistency_hits,
    judge_attribute_hits,
    taste_attributes,
    text_attribute_hits,
)

if TYPE_CHECKING:
    from PIL.Image import Image

    from pmg.data.format import InteractionData
    from pmg.data.split import Split
    from pmg.generator.config import GeneratorConfig
    from pmg.generator.stage import SoftPromptGenerators, UserGeneration
    from pmg.quantize.stage import UserTokens
    from pmg.zoo.judge import AttributeJudge
    from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter
    from prefreward._clip import ClipEmbedder

__all__ = ["VARIANTS", "VARIANT_LABELS", "GenerationJudges", "VariantGenerators", "future_items", "generation_record",
           "generation_section", "image_tensor",
           "no_token_variant", "soft_prompt_variant", "token_variant"]

VARIANTS = ("no_tokens", "soft_prompt", "tokens_sft", "tokens_reward")
VARIANT_LABELS = {"no_tokens": "no tokens", "soft_prompt": "soft prompt", "tokens_sft": "tokens (SFT)",
                  "tokens_reward": "tokens (reward)"}


@dataclass
class VariantGenerators:
    """One variant: its text/image adapters and how a user is put in the prompt.

    ``text_fragments`` / ``image_fragments``: per data user, the token fragment (None entries
    or lists: the no-token prompt). With ``soft`` the prompts carry the baseline's placeholders,
    filled from ``preferences`` ({modality: [U, d]}).
    """

    text: TextPreferenceAdapter | None
    image: ImagePreferenceAdapter | None
    text_fragments: Sequence[str | None] | None = None
    image_fragments: Sequence[str | None] | None = None
    soft: SoftPromptGenerators | None = None
    preferences: Mapping[str, torch.Tensor] | None = None

    def generate(self, data: InteractionData, config: GeneratorConfig, user: int) -> UserGeneration:
        """Texts (one per ``config.text.targets``) and an image for data user ``user``."""
        return self.generate_many(data, config, [user])[0]

    def generate_many(self, data: InteractionData, config: GeneratorConfig, users: Sequence[int]) -> list[UserGeneration]:
        """:meth:`generate` for each of ``users``, batched (each user's image and texts as alone)."""
        from pmg.generator.stage import generate_for_users

        if self.soft is not None:
            assert self.preferences is not None
            text_vectors, image_vectors = self.soft.vectors(self.preferences, users)
            return generate_for_users(data, config, users=list(users), text_fragments=[self.soft.fragment(self.text)] * len(users),
                                      image_fragments=[self.soft.fragment(self.image)] * len(users), text_adapter=self.text,
                                      image_adapter=self.image, text_soft_prompt=text_vectors, image_soft_prompt=image_vectors)
        return generate_for_users(
            data, config, users=list(users),
            text_fragments=[self.text_fragments[u] if self.text_fragments is not None else None for u in users],
            image_fragments=[self.image_fragments[u] if self.image_fragments is not None else None for u in users],
            text_adapter=self.text, image_adapter=self.image,
        )


def token_variant(text: TextPreferenceAdapter | None, image: ImagePreferenceAdapter | None, data: InteractionData,
                  tokens: UserTokens, config: GeneratorConfig) -> VariantGenerators:
    """Adapters prompted with each user's discrete tokens (the generator config's modalities)."""
    from pmg.generator.stage import user_fragments

    return VariantGenerators(text, image,
                             user_fragments(data, tokens, [m for m in config.text.modalities if m in tokens.codes]),
                             user_fragments(data, tokens, [m for m in config.image.modalities if m in tokens.codes]))


def no_token_variant(text: TextPreferenceAdapter | None, image: ImagePreferenceAdapter | None) -> VariantGenerators:
    """The same adapters with the no-token (cold-start) prompt."""
    return VariantGenerators(text, image)


def soft_prompt_variant(soft: SoftPromptGenerators, preferences: Mapping[str, torch.Tensor]) -> VariantGenerators:
    """The continuous soft-prompt baseline, each user's preference vectors in its placeholders."""
    return VariantGenerators(soft.text, soft.image, soft=soft, preferences=preferences)


def image_tensor(image: Image) -> torch.Tensor:
    """A PIL image as float32 [3, H, W] in [-1, 1] (what the CLIP embedder and the judge take)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def future_items(data: InteractionData, split: Split, users: Sequence[int]) -> list[np.ndarray]:
    """Per user of ``users``, the items it interacts with after the training period (the split's
    validation + test rows), sorted without repeats: int64 [F_u] each."""
    rows = np.concatenate([split.val, split.test])
    return [np.unique(data.item[rows[data.user[rows] == u]]) for u in users]


def _preference_score(content: torch.Tensor, future: list[torch.Tensor]) -> float:
    """``content`` [N, d] unit vectors, ``future[v]`` [F_v, d] unit vectors of user v's future items.

    s(u, v) = mean cosine of content u with user v's items = content[u] · mean(future[v]); the
    score is the mean over users u of the share of other users v with s(u, v) < s(u, u) (ties half).
    """
    centres = torch.stack([items.mean(dim=0) for items in future])  # [N, d]
    similarity = content @ centres.T  # [N, N]
    own = similarity.diagonal().unsqueeze(1)
    wins = (own > similarity).float() + 0.5 * (own == similarity).float()
    others = ~torch.eye(len(content), dtype=torch.bool)
    return float((wins * others).sum(dim=1).div(others.sum(dim=1)).mean())


@dataclass
class GenerationJudges:
    """What judges the generations: the zoo's attribute judge (None: ``judge_missing`` says why)
    and its CLIP (unit embeddings of images and texts)."""

    judge: AttributeJudge | None
    judge_missing: str
    embedder: ClipEmbedder


def _item_embeddings(data: InteractionData, items: np.ndarray, embedder: ClipEmbedder, modality: str) -> dict[int, torch.Tensor]:
    """Unit CLIP embeddings {item: [d]} of the ``items`` that have the modality (image or text)."""
    from pmg.data.modules import load_image_tensor

    if modality == "image":
        kept = [int(i) for i in items if data.items[i].image is not None]
        embed = lambda chunk: embedder.embed_images(  # noqa: E731
            torch.stack([load_image_tensor(str(data.items[i].image), embedder.image_size) for i in chunk]))
    else:
        kept = [int(i) for i in items if data.items[i].text]
        embed = lambda chunk: embedder.embed_texts([data.items[i].text for i in chunk])  # noqa: E731
    out: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(kept), 64):
            chunk = kept[start : start + 64]
            out.update(zip(chunk, embed(chunk), strict=True))
    return out


def _user_preference(content: torch.Tensor, future: list[np.ndarray], items: dict[int, torch.Tensor], what: str) -> Cell:
    """The user-preference score over the users with at least one future item that has ``what``."""
    kept = [(n, [items[int(i)] for i in f if int(i) in items]) for n, f in enumerate(future)]
    kept = [(n, vectors) for n, vectors in kept if vectors]
    if len(kept) < 2:
        return Cell.absent(f"fewer than 2 evaluated users have a held-out future item with {what}")
    rows = torch.tensor([n for n, _ in kept])
    return Cell.of(_preference_score(content[rows], [torch.stack(vectors) for _, vectors in kept]))


def generation_section(data: InteractionData, split: Split, users: list[int],
                       generations: Mapping[str, list[UserGeneration] | str], judges: GenerationJudges,
                       consistency_attribute: str) -> tuple[Section, dict[str, list[dict[str, str]] | None]]:
    """The generation rows for every variant, and the judge's reading of each variant's images.

    ``generations[variant]``: one ``UserGeneration`` per user of ``users`` (same order), or the
    reason the variant is missing. Returns the section and, per variant, the judge's values per
    user (None without images or judge).
    """
    section = Section("generation", "Generation", list(VARIANTS))
    visual = taste_attributes(data, "visual")
    textual = taste_attributes(data, "textual")
    no_tastes = "the dataset has no ground-truth user tastes (users.jsonl)"
    future = future_items(data, split, users)
    needed = np.unique(np.concatenate(future)) if future else np.zeros(0, dtype=np.int64)
    item_vectors = {kind: _item_embeddings(data, needed, judges.embedder, kind) for kind in ("image", "text")}
    columns: dict[str, dict[str, Cell]] = {}
    readings: dict[str, list[dict[str, str]] | None] = {}
    for variant in VARIANTS:
        generated = generations[variant]
        if isinstance(generated, str):
            readings[variant] = None
            continue
        cells, readings[variant] = _variant_cells(data, users, generated, judges, visual, textual, consistency_attribute,
                                                  future, item_vectors)
        columns[variant] = cells
    rows = [(f"image_{a}_accuracy", f"image shows the user's {a}", (0.0, 1.0)) for a in visual]
    rows.append(("image_personalization", "image personalization (mean of the above)" if visual else "image personalization",
                 (0.0, 1.0)))
    rows += [(f"text_{a}_accuracy", f"text names the user's {a}", (0.0, 1.0)) for a in textual]
    rows.append(("text_personalization", "text personalization (mean of the above)" if textual else "text personalization",
                 (0.0, 1.0)))
    rows += [("consistency", f"image–text consistency ({consistency_attribute})", (0.0, 1.0)),
             ("clip_score", "CLIP image–text score (cosine)", (-1.0, 1.0)),
             ("user_preference_image", "user preference: image vs future items (0.5 = chance)", (0.0, 1.0)),
             ("user_preference_text", "user preference: text vs future items (0.5 = chance)", (0.0, 1.0))]
    for metric, label, value_range in rows:
        cells = {}
        for variant in VARIANTS:
            generated = generations[variant]
            if isinstance(generated, str):
                cells[variant] = Cell.absent(generated)
            else:
                cells[variant] = columns[variant].get(metric, Cell.absent(no_tastes))
        section.add(metric, label, value_range, cells)
    return section, readings


def _variant_cells(data: InteractionData, users: list[int], generated: list[UserGeneration], judges: GenerationJudges,
                   visual: Mapping[str, Sequence[str]], textual: Mapping[str, Sequence[str]], consistency_attribute: str,
                   future: list[np.ndarray], item_vectors: Mapping[str, dict[int, torch.Tensor]],
                   ) -> tuple[dict[str, Cell], list[dict[str, str]] | None]:
    """Every metric of one variant ({metric: cell}) and the judge's values per user (or None)."""
    cells: dict[str, Cell] = {}
    images = [g.image for g in generated]
    texts = [g.text for g in generated]
    has_images = bool(generated) and all(image is not None for image in images)
    has_texts = bool(generated) and all(g.texts for g in generated)
    no_image = "the run has no image generator (generator.image.enabled=false)"
    no_text = "the run has no text generator (generator.text.enabled=false)"
    readings: list[dict[str, str]] | None = None
    if has_images and judges.judge is not None:
        readings = judges.judge.predict_values(images)
    # Image personalization: the judge reads the user's true value of each visual taste.
    hits: list[float] = []
    for attribute in visual:
        key = f"image_{attribute}_accuracy"
        if not has_images:
            cells[key] = Cell.absent(no_image)
        elif judges.judge is None:
            cells[key] = Cell.absent(judges.judge_missing)
        elif attribute not in judges.judge.attributes:
            cells[key] = Cell.absent(f"the zoo's judge does not read {attribute}")
        else:
            truth = [data.user_tastes[attribute][u] for u in users]  # type: ignore[index]
            value = float(judge_attribute_hits(images, truth, judges.judge, attribute).float().mean())
            cells[key] = Cell.of(value)
            hits.append(value)
    if visual:
        reason = no_image if not has_images else judges.judge_missing if judges.judge is None else "the judge reads no visual taste"
        cells["image_personalization"] = Cell.of(sum(hits) / len(hits)) if hits else Cell.absent(reason)
    # Text personalization: the first value of each textual taste the text names is the user's.
    named: list[float] = []
    for attribute, values in textual.items():
        if not has_texts:
            cells[f"text_{attribute}_accuracy"] = Cell.absent(no_text)
            continue
        truth = [data.user_tastes[attribute][u] for u in users]  # type: ignore[index]
        value = float(text_attribute_hits(texts, truth, values).float().mean())
        cells[f"text_{attribute}_accuracy"] = Cell.of(value)
        named.append(value)
    if textual:
        cells["text_personalization"] = Cell.of(sum(named) / len(named)) if named else Cell.absent(no_text)
    # Consistency: the text names the value the judge reads in the image.
    attribute = consistency_attribute
    if not (has_images and has_texts):
        cells["consistency"] = Cell.absent("needs both an image and a text generator")
    elif judges.judge is None:
        cells["consistency"] = Cell.absent(judges.judge_missing)
    elif attribute not in judges.judge.attributes or attribute not in data.attributes:
        cells["consistency"] = Cell.absent(f"the dataset or the zoo's judge has no attribute {attribute!r} "
                                           "(evaluate.generation.consistency_attribute)")
    else:
        assert readings is not None
        seen = [reading[attribute] for reading in readings]
        cells["consistency"] = Cell.of(float(consistency_hits(texts, seen, data.attributes[attribute].values).float().mean()))
    # CLIP score and the user-preference scores.
    embedder = judges.embedder
    image_vectors = text_vectors = None
    with torch.no_grad():
        if has_images:
            image_vectors = embedder.embed_images(torch.stack([image_tensor(image) for image in images]))
        if has_texts:
            text_vectors = embedder.embed_texts(texts)
    if image_vectors is not None and text_vectors is not None:
        cells["clip_score"] = Cell.of(float((image_vectors * text_vectors).sum(dim=-1).mean()))
    else:
        cells["clip_score"] = Cell.absent("needs both an image and a text generator")
    cells["user_preference_image"] = (_user_preference(image_vectors, future, item_vectors["image"], "an image")
                                      if image_vectors is not None else Cell.absent(no_image))
    cells["user_preference_text"] = (_user_preference(text_vectors, future, item_vectors["text"], "a text")
                                     if text_vectors is not None else Cell.absent(no_text))
    return cells, readings


def generation_record(generation: UserGeneration, reading: dict[str, str] | None, image_path: str | None) -> dict[str, Any]:
    """What ``generations.json`` keeps of one user's generation in one variant."""
    return {"text_prompt": generation.text_prompt, "texts": generation.texts, "image_prompt": generation.image_prompt,
            "image": image_path, "judge": reading}
