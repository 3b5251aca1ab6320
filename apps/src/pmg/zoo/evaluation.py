"""Quality checks of the zoo on held-out data: judge accuracy, CLIP retrieval, the VAE's
round trip (what any image the pipeline draws can show at best), and text-to-image attribute
accuracy on attribute combinations no model trained on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image, ImageDraw
from transformers import CLIPModel, CLIPProcessor

from pmg.zoo.clip_features import image_embeddings, text_embeddings
from pmg.zoo.clip_recipe import clip_pixel_values
from pmg.zoo.corpus import ZooCorpus, attribute_caption
from pmg.zoo.judge import AttributeJudge
from pmg.zoo.sdxl_recipe import pipeline_images

__all__ = ["judge_accuracy", "vae_round_trip_accuracy", "clip_retrieval_top1", "text_to_image_accuracy", "generate_images", "write_contact_sheet"]


@torch.no_grad()
def judge_accuracy(judge: AttributeJudge, corpus: ZooCorpus, items: np.ndarray) -> dict[str, float]:
    """Per-attribute accuracy of ``judge`` on ``items`` (those with an image and known labels)."""
    items = corpus.image_items(items)
    labels = {name: corpus.data.item_labels(name)[items] for name in judge.attributes}
    found = judge.predict(corpus.images[torch.from_numpy(items)])
    result = {}
    for name, truth in labels.items():
        known = truth >= 0
        hits = found[name].numpy()[known] == truth[known]
        result[name] = float(hits.mean()) if known.any() else float("nan")
    return result


@torch.no_grad()
def vae_round_trip_accuracy(pipe: StableDiffusionXLPipeline, judge: AttributeJudge, corpus: ZooCorpus, items: np.ndarray,
                            batch: int = 64) -> dict[str, float]:
    """Per-attribute accuracy of ``judge`` on ``items``' images encoded and decoded by the
    pipeline's VAE (posterior mean): every generated image passes through this decoder, so an
    attribute it loses here no prompt or token can bring back."""
    items = corpus.image_items(items)
    if len(items) == 0:
        return {}
    images = pipeline_images(pipe, corpus.images[torch.from_numpy(items)])
    pipe.vae.eval()
    decoded = torch.cat([pipe.vae.decode(pipe.vae.encode(images[start:start + batch]).latent_dist.mean).sample
                         for start in range(0, len(images), batch)]).clamp(-1, 1)
    found = judge.predict(decoded)
    result = {}
    for name in judge.attributes:
        truth = corpus.data.item_labels(name)[items]
        known = truth >= 0
        result[name] = float((found[name].numpy()[known] == truth[known]).mean()) if known.any() else float("nan")
    return result


def _distinct_caption_items(corpus: ZooCorpus, items: np.ndarray, limit: int, seed: int) -> tuple[list[int], list[str]]:
    rng = np.random.default_rng(seed)
    chosen, captions, seen = [], [], set()
    for item in rng.permutation(corpus.image_items(items)):
        caption = attribute_caption(corpus.data.items[int(item)].attributes)
        if caption is None or caption in seen:
            continue
        seen.add(caption)
        chosen.append(int(item))
        captions.append(caption)
        if len(chosen) == limit:
            break
    return chosen, captions


@torch.no_grad()
def clip_retrieval_top1(model: CLIPModel, processor: CLIPProcessor, corpus: ZooCorpus, items: np.ndarray, *,
                        candidates: int = 100, seed: int = 0) -> tuple[float, int]:
    """Image→text top-1 accuracy among ``candidates`` captions of distinct attribute
    combinations (one held-out item each). Returns (accuracy, candidate set size)."""
    chosen, captions = _distinct_caption_items(corpus, items, candidates, seed)
    if len(chosen) < 2:
        return float("nan"), len(chosen)
    model.eval()
    pixels = clip_pixel_values(processor, [corpus.data.items[i].image for i in chosen], corpus.data.image_read_fit)
    tokens = processor.tokenizer(captions, padding="longest", truncation=True, return_tensors="pt")
    images = image_embeddings(model, pixels)
    texts = text_embeddings(model, tokens["input_ids"], tokens["attention_mask"])
    top1 = (images @ texts.t()).argmax(dim=1)
    return float((top1 == torch.arange(len(chosen))).float().mean()), len(chosen)


@torch.no_grad()
def generate_images(pipe: StableDiffusionXLPipeline, prompts: Sequence[str], *, steps: int, guidance_scale: float,
                    seed: int, batch: int = 16) -> torch.Tensor:
    """Images [N, 3, R, R] in [-1, 1] for ``prompts``, generated in batches from one seed."""
    generator = torch.Generator().manual_seed(seed)
    pipe.set_progress_bar_config(disable=True)
    out = []
    for start in range(0, len(prompts), batch):
        images = pipe(list(prompts[start:start + batch]), num_inference_steps=steps, guidance_scale=guidance_scale,
                      generator=generator, output_type="pt").images
        out.append(images * 2 - 1)
    return torch.cat(out)


def text_to_image_accuracy(pipe: StableDiffusionXLPipeline, judge: AttributeJudge, combos: Sequence[dict[str, str]], *,
                           images_per_combo: int, steps: int, guidance_scale: float, seed: int = 0,
                           sheet: Path | None = None, colour_words: tuple[str, ...] = ()) -> dict[str, float]:
    """How often the judge finds each prompted attribute in images generated for ``combos``
    (prompt "a {colour} {pattern} {category}", with the ``colour_words`` attributes before the
    colour). Keys: the judged attributes the combinations name, plus ``images``.
    ``sheet``: also write the images, one row per prompt, with the judge's readings as a PNG."""
    prompts, wanted = [], []
    for combo in combos:
        caption = attribute_caption(combo, 0, colour_words)
        if caption is None:
            continue
        prompts += [caption] * images_per_combo
        wanted += [combo] * images_per_combo
    if not prompts:
        return {"images": 0.0}
    images = generate_images(pipe, prompts, steps=steps, guidance_scale=guidance_scale, seed=seed)
    found = judge.predict_values(images.clamp(-1, 1))
    if sheet is not None:
        write_contact_sheet(images, prompts, found, wanted, images_per_combo, sheet)
    result = {"images": float(len(prompts))}
    # Only what the prompts name: the judge may read more (a hidden shade no prompt asks for).
    for name in judge.attributes:
        hits = [f[name] == w[name] for f, w in zip(found, wanted, strict=True) if name in w]
        if hits:
            result[name] = float(np.mean(hits))
    return result


def write_contact_sheet(images: torch.Tensor, prompts: Sequence[str], found: Sequence[dict[str, str]],
                        wanted: Sequence[dict[str, str]], per_row: int, path: Path, scale: int = 2) -> Path:
    """A PNG of ``images`` [N, 3, R, R] in [-1, 1], ``per_row`` to a row headed by its prompt;
    under each image the judge's readings, upper-cased where they miss the prompted value."""
    side = images.shape[-1] * scale
    label_height, header = 12 * len([k for k in found[0] if k in wanted[0]]) + 4, 14
    rows = (len(images) + per_row - 1) // per_row
    sheet = Image.new("RGB", (max(per_row * side, 240), rows * (header + side + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    for index, array in enumerate(pixels):
        row, column = divmod(index, per_row)
        top = row * (header + side + label_height)
        if column == 0:
            draw.text((2, top + 1), prompts[index], fill="black")
        tile = Image.fromarray(array).resize((side, side), Image.Resampling.NEAREST)
        sheet.paste(tile, (column * side, top + header))
        readings = [(value, value == wanted[index][name]) for name, value in found[index].items() if name in wanted[index]]
        for line, (value, hit) in enumerate(readings):
            draw.text((column * side + 2, top + header + side + 1 + 12 * line), value if hit else value.upper(),
                      fill="black" if hit else "red")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
