"""Quality checks of the zoo on held-out data: judge accuracy, CLIP retrieval, the VAE's
round trip (what any image the pipeline draws can show at best), text-to-image attribute
accuracy on attribute combinations no model trained on, and, on any dataset, CLIP scores of
images drawn for held-out items' captions (against a shuffled pairing) and the LM's held-out
perplexity (against a unigram's). A figure that cannot be measured is None, never NaN."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image, ImageDraw
from torch.nn import functional as F
from transformers import CLIPModel, CLIPProcessor, PreTrainedModel, PreTrainedTokenizerBase

from pmg.atomic import atomic_file
from pmg.zoo.clip_features import image_embeddings, text_embeddings
from pmg.zoo.clip_recipe import clip_pixel_values
from pmg.zoo.corpus import ZooCorpus, attribute_caption
from pmg.zoo.judge import AttributeJudge
from pmg.zoo.judge_recipe import judge_label_sets
from pmg.zoo.lm_recipe import lm_token_batch
from pmg.zoo.sdxl_recipe import pipeline_images

__all__ = [
    "judge_accuracy",
    "LabelSetScores",
    "judge_label_set_scores",
    "vae_round_trip_accuracy",
    "clip_retrieval_top1",
    "text_to_image_accuracy",
    "generate_images",
    "own_and_shuffled_cosines",
    "HeldoutGeneration",
    "heldout_generation",
    "write_heldout_samples",
    "unigram_log_probs",
    "LMPerplexity",
    "lm_heldout_perplexity",
    "write_contact_sheet",
]


@torch.no_grad()
def judge_accuracy(judge: AttributeJudge, corpus: ZooCorpus, items: np.ndarray) -> dict[str, float | None]:
    """Per-attribute accuracy of ``judge``'s single-label heads on ``items`` (those with an image
    and known labels); None for an attribute no such item knows. Multi-label heads:
    :func:`judge_label_set_scores`."""
    items = corpus.image_items(items)
    labels = {name: corpus.data.item_labels(name)[items] for name in judge.attributes if name not in judge.multi_label}
    found = judge.predict(corpus.images[torch.from_numpy(items)])
    result = {}
    for name, truth in labels.items():
        known = truth >= 0
        hits = found[name].numpy()[known] == truth[known]
        result[name] = float(hits.mean()) if known.any() else None
    return result


@dataclass(frozen=True)
class LabelSetScores:
    """How well a multi-label head reads held-out items' value sets (MovieLens genres), over the
    ``items`` held-out items with an image and at least one of the head's values.

    ``top1_hit``: share of items whose most likely value (:meth:`AttributeJudge.predict`) is one of
    theirs; ``top1_chance``: the same when the training items' most frequent value is always
    guessed; ``micro_f1``: F1 over every (item, value) pair, a value read as present at sigmoid > 0.5.
    """

    items: int
    top1_hit: float | None
    top1_chance: float | None
    micro_f1: float | None


def _micro_f1(predicted: np.ndarray, truth: np.ndarray) -> float | None:
    """F1 of 0/1 arrays of one shape (every entry a decision); None when neither has a 1."""
    true_positive = float((predicted * truth).sum())
    denominator = float(predicted.sum() + truth.sum())
    return 2 * true_positive / denominator if denominator else None


@torch.no_grad()
def judge_label_set_scores(judge: AttributeJudge, corpus: ZooCorpus, items: np.ndarray) -> dict[str, LabelSetScores]:
    """:class:`LabelSetScores` of each of ``judge``'s multi-label heads on ``items``."""
    items = corpus.image_items(items)
    probabilities = judge.probabilities(corpus.images[torch.from_numpy(items)]) if len(items) else {}
    seen = corpus.image_items(corpus.train_items)
    result = {}
    for name in sorted(judge.multi_label):
        sets = judge_label_sets(corpus.data, name, judge.attributes[name])  # [I, V]
        truth = sets[items]
        known = truth.sum(axis=1) > 0
        if not known.any():
            result[name] = LabelSetScores(0, None, None, None)
            continue
        truth, read = truth[known], probabilities[name].numpy()[known]
        most_frequent = int(sets[seen].sum(axis=0).argmax())
        result[name] = LabelSetScores(
            items=int(known.sum()),
            top1_hit=float(truth[np.arange(len(truth)), read.argmax(axis=1)].mean()),
            top1_chance=float(truth[:, most_frequent].mean()),
            micro_f1=_micro_f1((read > 0.5).astype(np.float32), truth),
        )
    return result


@torch.no_grad()
def vae_round_trip_accuracy(pipe: StableDiffusionXLPipeline, judge: AttributeJudge, corpus: ZooCorpus, items: np.ndarray,
                            batch: int = 64) -> dict[str, float | None]:
    """Per-attribute accuracy of ``judge`` on ``items``' images encoded and decoded by the
    pipeline's VAE (posterior mean): every generated image passes through this decoder, so an
    attribute it loses here no prompt or token can bring back (for a multi-label attribute: the
    share whose most likely value is one of the item's). None for an attribute no item with an
    image knows; empty when none has an image."""
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
        if name in judge.multi_label:
            sets = judge_label_sets(corpus.data, name, judge.attributes[name])[items]  # [N, V]
            known = sets.sum(axis=1) > 0
            hits = sets[np.arange(len(items)), found[name].numpy()][known]
        else:
            truth = corpus.data.item_labels(name)[items]
            known = truth >= 0
            hits = found[name].numpy()[known] == truth[known]
        result[name] = float(hits.mean()) if known.any() else None
    return result


def _distinct_caption_items(corpus: ZooCorpus, items: np.ndarray, limit: int, seed: int) -> tuple[list[int], list[str]]:
    """Up to ``limit`` of ``items`` with an image, in a ``seed``ed random order, whose captions
    (``ZooCorpus.caption``) differ; with those captions."""
    rng = np.random.default_rng(seed)
    chosen, captions, seen = [], [], set()
    for item in rng.permutation(corpus.image_items(items)):
        caption = corpus.caption(int(item))
        if not caption or caption in seen:
            continue
        seen.add(caption)
        chosen.append(int(item))
        captions.append(caption)
        if len(chosen) == limit:
            break
    return chosen, captions


def _clip_text_embeddings(model: CLIPModel, processor: CLIPProcessor, texts: Sequence[str]) -> torch.Tensor:
    """[N, projection_dim] unit vectors for ``texts`` (truncated to the tokenizer's length)."""
    tokens = processor.tokenizer(list(texts), padding="longest", truncation=True, return_tensors="pt")
    return text_embeddings(model, tokens["input_ids"], tokens["attention_mask"])


@torch.no_grad()
def clip_retrieval_top1(model: CLIPModel, processor: CLIPProcessor, corpus: ZooCorpus, items: np.ndarray, *,
                        candidates: int = 100, seed: int = 0) -> tuple[float | None, int]:
    """Image→text top-1 accuracy among up to ``candidates`` distinct captions of held-out items
    (one item each): the attribute caption, or for an item without one its title and attribute
    values (``ZooCorpus.caption``). Returns (accuracy, candidate set size); accuracy is None
    with fewer than two candidates. Chance is 1 / candidate set size."""
    chosen, captions = _distinct_caption_items(corpus, items, candidates, seed)
    if len(chosen) < 2:
        return None, len(chosen)
    model.eval()
    pixels = clip_pixel_values(processor, [corpus.data.items[i].image for i in chosen], corpus.data.image_read_fit)
    images = image_embeddings(model, pixels)
    texts = _clip_text_embeddings(model, processor, captions)
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
        # Under each image the judge's readings of what its prompt names, upper-cased and red where they miss.
        labels = [[(value if value == want[name] else value.upper(), value == want[name])
                   for name, value in readings.items() if name in want] for readings, want in zip(found, wanted, strict=True)]
        write_contact_sheet(images, prompts, labels, images_per_combo, sheet)
    result = {"images": float(len(prompts))}
    # Only what the prompts name: the judge may read more (a hidden shade no prompt asks for).
    for name in judge.attributes:
        hits = [f[name] == w[name] for f, w in zip(found, wanted, strict=True) if name in w]
        if hits:
            result[name] = float(np.mean(hits))
    return result


def own_and_shuffled_cosines(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines [N] of unit vectors ``first`` [N, D] with ``second`` [N, D] row by row, and with
    a fixed derangement of ``second`` (row i against row i + 1, the last against the first): the
    baseline any pairing scores. N >= 2."""
    if len(first) < 2 or first.shape != second.shape:
        raise ValueError(f"need two or more pairs of equal shape, got {tuple(first.shape)} and {tuple(second.shape)}")
    return (first * second).sum(-1), (first * second.roll(-1, dims=0)).sum(-1)


def _pil_images(images: torch.Tensor) -> list[Image.Image]:
    """RGB images for ``images`` [N, 3, R, R] in [-1, 1]."""
    return [Image.fromarray(array) for array in _uint8_pixels(images)]


def _uint8_pixels(images: torch.Tensor) -> np.ndarray:
    """uint8 [N, R, R, 3] for ``images`` [N, 3, R, R] in [-1, 1]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@dataclass(frozen=True)
class HeldoutGeneration:
    """One image generated per held-out item from its caption, scored by the zoo CLIP.

    ``items`` [K] item indices; ``prompts`` [K] their captions; ``images`` [K, 3, R, R] in
    [-1, 1] at the pipeline's resolution. Cosines [K] of each generated image with its own
    prompt (``prompt_cosine``) and its item's real image (``real_cosine``), and the same
    against the next item's (``*_shuffled``, ``own_and_shuffled_cosines``)."""

    items: list[int]
    prompts: list[str]
    images: torch.Tensor
    prompt_cosine: torch.Tensor
    prompt_cosine_shuffled: torch.Tensor
    real_cosine: torch.Tensor
    real_cosine_shuffled: torch.Tensor


@torch.no_grad()
def heldout_generation(pipe: StableDiffusionXLPipeline, model: CLIPModel, processor: CLIPProcessor, corpus: ZooCorpus,
                       items: np.ndarray, *, count: int, steps: int, guidance_scale: float, seed: int = 0) -> HeldoutGeneration | None:
    """Draw one image for each of up to ``count`` of ``items`` (with an image, distinct
    captions, chosen with ``seed``) from its caption (``ZooCorpus.caption``), with the
    generation settings of :func:`text_to_image_accuracy`, and score it with ``model``
    (CLIP-T against the prompt, CLIP-I against the real image). None with fewer than two such items."""
    chosen, prompts = _distinct_caption_items(corpus, items, count, seed)
    if len(chosen) < 2:
        return None
    images = generate_images(pipe, prompts, steps=steps, guidance_scale=guidance_scale, seed=seed)
    model.eval()
    generated = image_embeddings(model, clip_pixel_values(processor, _pil_images(images), corpus.data.image_read_fit))
    real = image_embeddings(model, clip_pixel_values(processor, [corpus.data.items[i].image for i in chosen], corpus.data.image_read_fit))
    prompt_cosine, prompt_shuffled = own_and_shuffled_cosines(generated, _clip_text_embeddings(model, processor, prompts))
    real_cosine, real_shuffled = own_and_shuffled_cosines(generated, real)
    return HeldoutGeneration(chosen, prompts, images, prompt_cosine, prompt_shuffled, real_cosine, real_shuffled)


def write_heldout_samples(generation: HeldoutGeneration, pipe: StableDiffusionXLPipeline, corpus: ZooCorpus, path: Path) -> Path:
    """A PNG with one row per generated held-out item: its prompt, the generated image (under
    it its CLIP cosine with the prompt) and the item's real image (under it its cosine with the
    generated one)."""
    real = pipeline_images(pipe, corpus.images[torch.tensor(generation.items)])
    tiles = torch.stack([generation.images.clamp(-1, 1), real], dim=1).flatten(0, 1)
    labels = []
    for prompt_cos, real_cos in zip(generation.prompt_cosine.tolist(), generation.real_cosine.tolist(), strict=True):
        labels += [[(f"cos prompt {prompt_cos:.2f}", True)], [(f"cos gen {real_cos:.2f}", True)]]
    return write_contact_sheet(tiles, [p for p in generation.prompts for _ in range(2)], labels, 2, path)


def unigram_log_probs(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Log-probabilities [vocab_size] of the unigram model fitted on ``tokens`` (int64 [N], ids
    below ``vocab_size``) with add-one smoothing: (count + 1) / (N + vocab_size)."""
    counts = torch.bincount(tokens, minlength=vocab_size).double()
    return torch.log((counts + 1) / (len(tokens) + vocab_size))


@dataclass(frozen=True)
class LMPerplexity:
    """The LM's perplexity on held-out tokens and a unigram model's on the same ``tokens``
    (predicted positions of ``texts`` texts)."""

    lm: float
    unigram: float
    tokens: int
    texts: int


def _token_rows(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[torch.Tensor]:
    """Each text's ids as the LM trains on it (``lm_token_batch``), padding left out."""
    rows = []
    for start in range(0, len(texts), 64):
        batch = lm_token_batch(tokenizer, texts[start:start + 64], max_length)
        rows += [ids[mask.bool()] for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    return rows


@torch.no_grad()
def lm_heldout_perplexity(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train_texts: list[str],
                          heldout_texts: list[str], *, max_length: int, batch: int = 16) -> LMPerplexity | None:
    """Perplexity of ``lm`` on ``heldout_texts``, each tokenized as in training (end of text
    appended, ``max_length`` tokens at most), over the positions it predicts (every token after
    a text's first); and of the add-one unigram over ``tokenizer``'s ids fitted on every token of
    ``train_texts`` (``unigram_log_probs``), on the same tokens. None when no token is predicted."""
    unigram = unigram_log_probs(torch.cat(_token_rows(tokenizer, train_texts, max_length) or [torch.zeros(0, dtype=torch.long)]),
                                len(tokenizer))
    lm.eval()
    lm_nll = unigram_nll = 0.0
    count = 0
    for start in range(0, len(heldout_texts), batch):
        tokens = lm_token_batch(tokenizer, heldout_texts[start:start + batch], max_length)
        logits = lm(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).logits[:, :-1]
        targets, predicted = tokens["input_ids"][:, 1:], tokens["attention_mask"][:, 1:].bool()
        # Per token in the logits' precision (a base LM's vocabulary makes a float64 copy large), summed in float64.
        nll = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
        lm_nll += float(nll[predicted].double().sum())
        unigram_nll -= float(unigram[targets[predicted]].sum())
        count += int(predicted.sum())
    if count == 0:
        return None
    return LMPerplexity(lm=math.exp(lm_nll / count), unigram=math.exp(unigram_nll / count), tokens=count,
                        texts=len(heldout_texts))


def write_contact_sheet(images: torch.Tensor, prompts: Sequence[str], labels: Sequence[Sequence[tuple[str, bool]]],
                        per_row: int, path: Path, scale: int = 2) -> Path:
    """A PNG of ``images`` [N, 3, R, R] in [-1, 1], ``per_row`` to a row headed by its first
    image's prompt (``prompts`` [N]); under each image its ``labels`` lines, (text, fine), black
    where fine and red where not. Columns are as wide as the widest label, rows as the longest prompt."""
    side = images.shape[-1] * scale
    label_height, header = 12 * max((len(lines) for lines in labels), default=0) + 4, 14
    rows = (len(images) + per_row - 1) // per_row
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    column_width = max([side] + [int(measure.textlength(text)) + 6 for lines in labels for text, _ in lines])
    width = max(per_row * column_width, 240, *(int(measure.textlength(p)) + 4 for p in prompts[::per_row]))
    sheet = Image.new("RGB", (width, rows * (header + side + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, array in enumerate(_uint8_pixels(images)):
        row, column = divmod(index, per_row)
        top, left = row * (header + side + label_height), column * column_width
        if column == 0:
            draw.text((2, top + 1), prompts[index], fill="black")
        tile = Image.fromarray(array).resize((side, side), Image.Resampling.NEAREST)
        sheet.paste(tile, (left, top + header))
        for line, (text, fine) in enumerate(labels[index]):
            draw.text((left + 2, top + header + side + 1 + 12 * line), text, fill="black" if fine else "red")
    with atomic_file(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
