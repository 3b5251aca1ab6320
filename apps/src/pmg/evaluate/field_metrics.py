"""The generation metrics the published systems (Pigeon, GNR, UniMP) report, per variant, in the
generation section beside the judge-based rows.

Each evaluated user's generated content is compared with two references: their **history** (the
items of their training-split interactions) and their **targets** (their held-out future items,
``pmg.evaluate.generation.future_items``). Per-user figures are averaged over the users who have
the reference (its N in the cell) with a 95% bootstrap interval; set-level figures (FID,
distinct-n) are one number per variant with N and no interval (resampling users duplicates
images and texts, which shrinks a set's covariance and its distinct n-grams: a bootstrap
interval of those would be biased, not just wide).

Images:

- CLIP-I: mean cosine of the image and the reference images in the zoo CLIP's image space (the
  reward stage optimises this CLIP, so it favours the reward-tuned variants);
- SSIM: the grayscale Gaussian-window SSIM at the generated image's resolution (reference images
  resized to it), averaged over the reference images;
- pixel features: cosine of model-free features (the ``pixels`` item encoder of
  ``pmg.features``: a 64-bin colour histogram of the foreground plus an 8×8 thumbnail), the
  image embedding that no stage optimises; a colour-and-layout measure, not a semantic one;
- FID (colour histogram): the Fréchet distance between the variant's images and the pooled
  target images of the evaluated users, in the 64-bin colour-histogram space. 64 dimensions, not
  CLIP's or the 256 pixel features: with 50-200 users the covariance estimate needs far more
  images than dimensions. A histogram sums to 1, so the distance is at most 4.

Texts (lower-case word tokens, ``pmg.evaluate.overlap``), against each target item's text (title
and description):

- BLEU-1 and BLEU-4 (sentence BLEU, Chen & Cherry smoothing method 1) and ROUGE-L F1: the best
  match over the user's target items (the text describes one item; the user's targets are several);
- distinct-1 / distinct-2: distinct n-grams over all of the variant's texts (their diversity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from pmg.data.images import fit_square, open_image
from pmg.evaluate.image_similarity import (
    LocalStatistics,
    frechet_distance,
    grayscale_tensor,
    similarity_of_statistics,
)
from pmg.evaluate.overlap import distinct_n, rouge_l_f1, sentence_bleu, word_tokens
from pmg.evaluate.table import Cell
from pmg.features import PIXEL_SIZE, colour_histogram, pixel_features, rgb_array

if TYPE_CHECKING:
    from PIL.Image import Image

    from pmg.data.format import InteractionData

__all__ = ["FIELD_ROWS", "FieldReferences", "field_cells", "pixel_vectors"]

# (metric, label, range) in table order.
FIELD_ROWS: list[tuple[str, str, tuple[float, float]]] = [
    ("clip_i_history", "CLIP-I vs history images (zoo CLIP, which the reward optimises)", (-1.0, 1.0)),
    ("clip_i_target", "CLIP-I vs target images (zoo CLIP)", (-1.0, 1.0)),
    ("ssim_history", "SSIM vs history images (grayscale)", (-1.0, 1.0)),
    ("ssim_target", "SSIM vs target images (grayscale)", (-1.0, 1.0)),
    ("pixel_history", "pixel features vs history images (colour histogram + thumbnail, no model)", (-1.0, 1.0)),
    ("pixel_target", "pixel features vs target images (colour histogram + thumbnail, no model)", (-1.0, 1.0)),
    ("fid_colour_target", "FID vs all target images, colour-histogram space (lower is better)", (0.0, 4.0)),
    ("bleu1_target", "BLEU-1 vs target item texts (best item)", (0.0, 1.0)),
    ("bleu4_target", "BLEU-4, smoothed, vs target item texts (best item)", (0.0, 1.0)),
    ("rouge_l_target", "ROUGE-L F1 vs target item texts (best item)", (0.0, 1.0)),
    ("distinct_1", "distinct-1 of the variant's texts", (0.0, 1.0)),
    ("distinct_2", "distinct-2 of the variant's texts", (0.0, 1.0)),
]


# What a generated image is compared with: the user's training-split items, or their held-out future items.
Reference = Literal["history", "target"]

# Image pairs compared per SSIM call: bounds the memory of the pairs' maps ([chunk, 1, H, W] each).
_SSIM_CHUNK = 512


def pixel_vectors(images: Sequence[Image]) -> torch.Tensor:
    """Unit ``pixels`` features (:func:`pmg.features.pixel_features`) of ``images``: float32 [N, 256]."""
    return torch.nn.functional.normalize(torch.from_numpy(np.stack([pixel_features(rgb_array(image, PIXEL_SIZE)) for image in images])),
                                         dim=-1)


@dataclass
class FieldReferences:
    """What every variant is compared with, per evaluated user (in ``users`` order): their history
    and target items with an image, and their target items' texts as word tokens. Item images are
    read once and kept for every variant (pixel features, and grayscale at each resolution asked)."""

    data: InteractionData
    history_images: list[list[int]]
    target_images: list[list[int]]
    target_texts: list[list[list[str]]]
    clip: dict[int, torch.Tensor]
    _pixels: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _stacks: dict[tuple[Reference, str], torch.Tensor] = field(default_factory=dict, repr=False)
    _windows: dict[tuple[Reference, tuple[int, int]], LocalStatistics] = field(default_factory=dict, repr=False)

    @classmethod
    def of_users(cls, data: InteractionData, history: Sequence[np.ndarray], future: Sequence[np.ndarray],
                 clip: dict[int, torch.Tensor]) -> FieldReferences:
        """From each user's ``history`` and ``future`` items (int [H_u], [F_u]) and the unit zoo-CLIP
        image embeddings {item: [d]} of every such item with an image."""
        def with_image(items: np.ndarray) -> list[int]:
            return [int(i) for i in items if data.items[i].image is not None]

        texts = [[word_tokens(data.items[i].text) for i in items if data.items[i].text] for items in future]
        return cls(data, [with_image(items) for items in history], [with_image(items) for items in future],
                   [[tokens for tokens in user if tokens] for user in texts], clip)

    def image_lists(self, which: Reference) -> list[list[int]]:
        """Per user, the ``which`` ("history" or "target") items with an image."""
        return self.history_images if which == "history" else self.target_images

    def owners(self, which: Reference) -> torch.Tensor:
        """The user position of each (user, reference image) pair, users in order: int64 [P]."""
        return torch.tensor([n for n, items in enumerate(self.image_lists(which)) for _ in items], dtype=torch.long)

    def _open(self, item: int) -> Image:
        image = open_image(self.data.items[item].image)  # type: ignore[arg-type]
        # Square first, as every model reads it (data.image_fit), so SSIM's resize to the generated
        # image's square does not stretch a poster.
        return fit_square(image, max(image.size), self.data.image_read_fit)

    def _pixel_pair(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        if item not in self._pixels:
            rgb = rgb_array(self._open(item), PIXEL_SIZE)
            self._pixels[item] = pixel_features(rgb), colour_histogram(rgb)
        return self._pixels[item]

    def colour_histograms(self, items: Sequence[int]) -> np.ndarray:
        """Colour histograms of ``items``: float32 [k, 64]."""
        return np.stack([self._pixel_pair(i)[1] for i in items])

    def stacked(self, which: Reference, kind: Literal["clip", "pixels"]) -> torch.Tensor:
        """Every (user, reference image) pair's reference, in :meth:`owners` order (built once):
        ``kind`` "clip" (unit zoo-CLIP embeddings [P, d]) or "pixels" (unit pixel features [P, 256])."""
        key = (which, kind)
        if key not in self._stacks:
            items = [i for user in self.image_lists(which) for i in user]
            if kind == "clip":
                self._stacks[key] = torch.stack([self.clip[i] for i in items]).float()
            else:
                self._stacks[key] = torch.nn.functional.normalize(
                    torch.from_numpy(np.stack([self._pixel_pair(i)[0] for i in items])), dim=-1)
        return self._stacks[key]

    def user_similarities(self, which: Reference, kind: Literal["clip", "pixels"], vectors: torch.Tensor) -> torch.Tensor:
        """Per user, the mean cosine between each of their ``which`` images and their row of
        ``vectors`` [N, d] (unit, one per user in order: zoo-CLIP image embeddings for "clip",
        :func:`pixel_vectors` for "pixels"): float64 [N], NaN for a user without such an image. The
        ``clip_i_<which>`` and ``pixel_<which>`` rows are their means over the users with one."""
        owners = self.owners(which)
        if len(owners) == 0:
            return torch.full((len(vectors),), float("nan"), dtype=torch.float64)
        with torch.no_grad():
            pairs = (self.stacked(which, kind) * vectors.float()[owners]).sum(dim=-1)
        return _user_means(pairs, owners, len(vectors))

    def grayscale_windows(self, which: Reference, size: tuple[int, int]) -> LocalStatistics:
        """SSIM's statistics of every pair's reference in grayscale at ``size`` (width, height), in
        :meth:`owners` order (built once per size): images [P, 1, height, width]."""
        if (which, size) not in self._windows:
            items = [i for user in self.image_lists(which) for i in user]
            self._windows[which, size] = LocalStatistics.of(torch.stack([grayscale_tensor(self._open(i), size) for i in items]))
        return self._windows[which, size]


def _user_means(values: torch.Tensor, owners: torch.Tensor, num_users: int) -> torch.Tensor:
    """Per user, the mean of its pairs' ``values`` [P] (``owners`` [P]): float64 [num_users], NaN without a pair."""
    counts = torch.bincount(owners, minlength=num_users)
    sums = torch.zeros(num_users, dtype=torch.float64).index_add_(0, owners, values.double())
    return sums / counts  # 0 / 0: NaN


def _users_cell(means: torch.Tensor) -> Cell:
    """The cell of per-user ``means`` [N] over the users that have a value."""
    return Cell.of_users(means[~torch.isnan(means)].numpy())


def _image_cells(references: FieldReferences, images: Sequence[Image], clip_vectors: torch.Tensor) -> dict[str, Cell]:
    """The image rows of one variant: ``images`` one per user, ``clip_vectors`` [N, d] their unit CLIP embeddings."""
    cells: dict[str, Cell] = {}
    size = images[0].size
    gray = LocalStatistics.of(torch.stack([grayscale_tensor(image, size) for image in images]))  # [N, 1, H, W]
    pixels = pixel_vectors(images)  # [N, 256]
    which: Reference
    for which in ("history", "target"):
        owners = references.owners(which)  # [P]
        if len(owners) == 0:
            cells[f"clip_i_{which}"] = cells[f"ssim_{which}"] = cells[f"pixel_{which}"] = Cell.absent(
                f"no evaluated user has a {which} item with an image")
            continue
        with torch.no_grad():
            reference = references.grayscale_windows(which, size)
            ssim = torch.cat([similarity_of_statistics(gray.select(owners[start : start + _SSIM_CHUNK]),
                                                       reference.select(slice(start, start + _SSIM_CHUNK)))
                              for start in range(0, len(owners), _SSIM_CHUNK)])
        cells[f"clip_i_{which}"] = _users_cell(references.user_similarities(which, "clip", clip_vectors))
        cells[f"ssim_{which}"] = _users_cell(_user_means(ssim, owners, len(images)))
        cells[f"pixel_{which}"] = _users_cell(references.user_similarities(which, "pixels", pixels))
    kept = [n for n, items in enumerate(references.target_images) if items]
    pooled = [i for n in kept for i in references.target_images[n]]
    if len(kept) < 2 or len(pooled) < 2:
        cells["fid_colour_target"] = Cell.absent("fewer than 2 evaluated users have a target item with an image")
    else:
        generated = np.stack([colour_histogram(rgb_array(images[n], PIXEL_SIZE)) for n in kept])
        cells["fid_colour_target"] = Cell.of(frechet_distance(generated, references.colour_histograms(pooled)), n=len(kept))
    return cells


def _text_cells(references: FieldReferences, texts: Sequence[str]) -> dict[str, Cell]:
    """The text rows of one variant: ``texts`` one per user (every target's text joined)."""
    tokens = [word_tokens(text) for text in texts]
    kept = [n for n, targets in enumerate(references.target_texts) if targets]
    cells: dict[str, Cell] = {}
    if not kept:
        cells["bleu1_target"] = cells["bleu4_target"] = cells["rouge_l_target"] = Cell.absent(
            "no evaluated user has a target item with a text")
    else:
        best = {metric: [max(score(tokens[n], target) for target in references.target_texts[n]) for n in kept]
                for metric, score in (("bleu1_target", lambda c, r: sentence_bleu(c, [r], max_order=1)),
                                      ("bleu4_target", lambda c, r: sentence_bleu(c, [r], max_order=4)),
                                      ("rouge_l_target", rouge_l_f1))}
        cells.update({metric: Cell.of_users(values) for metric, values in best.items()})
    for n in (1, 2):
        diversity = distinct_n(tokens, n)
        cells[f"distinct_{n}"] = (Cell.absent(f"the variant's texts have no {n}-gram") if np.isnan(diversity)
                                  else Cell.of(diversity, n=len(tokens)))
    return cells


def field_cells(references: FieldReferences, images: Sequence[Image] | None, clip_vectors: torch.Tensor | None,
                texts: Sequence[str] | None, no_image: str, no_text: str) -> dict[str, Cell]:
    """Every row of :data:`FIELD_ROWS` for one variant: ``images`` (one per user, or None: the
    image rows are missing with ``no_image``), ``clip_vectors`` [N, d] their unit zoo-CLIP
    embeddings, ``texts`` (one per user, or None: ``no_text``)."""
    cells: dict[str, Cell] = {}
    if images is None or clip_vectors is None:
        cells.update({metric: Cell.absent(no_image) for metric in ("clip_i_history", "clip_i_target", "ssim_history",
                                                                   "ssim_target", "pixel_history", "pixel_target",
                                                                   "fid_colour_target")})
    else:
        cells.update(_image_cells(references, images, clip_vectors))
    if texts is None:
        cells.update({metric: Cell.absent(no_text) for metric in ("bleu1_target", "bleu4_target", "rouge_l_target",
                                                                  "distinct_1", "distinct_2")})
    else:
        cells.update(_text_cells(references, texts))
    return cells
