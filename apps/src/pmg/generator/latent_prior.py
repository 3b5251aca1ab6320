"""The image adapter's latent prior, fitted and scaled inside the generator stage.

The text encoders can ask the zoo's UNet only for what its captions named. A visual taste no
caption names (the sparse catalog's hidden shade, a real catalog's unnamed palette) the UNet draws
as the initial noise falls, so textual inversion cannot carry it (docs/results.md, rows S3 and S5).
A :class:`prefgen.LatentPrior` moves the initial latents' channel means by the user's tokens:

1. each training user's target is the mean latent of the images the image adapter trained on
   for them (the VAE's posterior mean, averaged over space and over the user's liked items), or
   with ``generator.image.latent_prior_target=beyond_words`` the mean of what each image's words
   do not explain (its latent less that of the images with the same words);
2. :func:`prefgen.fit_latent_prior` fits one offset per visual token by ridge regression, kept to the
   ``generator.image.latent_prior_rank`` latent directions the fitted offsets vary most along;
3. the scale is chosen on the selection users (never the evaluation users): each candidate of
   ``generator.image.latent_prior_scales`` generates their images from their token prompts (with
   :data:`CALIBRATION_SEEDS` seeds), the zoo's judge reads their visual tastes off them, and the
   best share wins (ties: the smaller scale, so 0, no prior, wins when nothing helps). Without a judge that reads a ground-truth
   visual taste (a dataset without tastes, a zoo without a judge) there is nothing to choose
   by, and the first candidate is used.

Off by default (``generator.image.latent_prior``): on the sparse catalog it drew the hidden shade
more often and colour and pattern less (docs/results.md, rows S9, S10 and G4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from pmg.data.format import InteractionData
from pmg.data.images import load_image_tensor
from pmg.data.modules import GenerationDataModule
from pmg.data.split import Split, training_split
from pmg.generator.config import GeneratorConfig, LatentPriorTarget
from pmg.generator.evaluation import image_taste_hits, visual_taste_judge
from pmg.generator.generate import generate_for_users
from pmg.generator.prompts import ItemWords, prompt_attributes, user_prompts
from pmg.quantize.stage import UserTokens
from pmg.zoo.manifest import Zoo
from prefgen import ImagePreferenceAdapter, LatentPrior, fit_latent_prior

if TYPE_CHECKING:
    from pmg.zoo.judge import AttributeJudge

__all__ = ["CALIBRATION_SEEDS", "attach_latent_prior", "beyond_words", "choose_scale", "history_latent_offsets", "item_latent_means",
           "target_words", "user_latent_targets", "visual_taste_share"]

_ENCODE_BATCH = 64
# Each selection user's image drawn from this many seeds per candidate scale: with ~50 selection
# users one seed leaves the share's standard error near 0.07, about the gap between neighbouring scales.
CALIBRATION_SEEDS = 3


def item_latent_means(data: InteractionData, items: np.ndarray, adapter: ImagePreferenceAdapter) -> dict[int, torch.Tensor]:
    """{item: [C]}, the spatial mean of the VAE posterior mean of each of ``items`` that has an image."""
    kept = [int(i) for i in items if data.items[int(i)].image is not None]
    out: dict[int, torch.Tensor] = {}
    size = adapter.image_size
    for start in range(0, len(kept), _ENCODE_BATCH):
        chunk = kept[start : start + _ENCODE_BATCH]
        images = torch.stack([load_image_tensor(data.items[i].image, size, data.image_read_fit) for i in chunk])
        means = adapter.encode_latents(images, sample=False).float().mean(dim=(2, 3)).cpu()
        out.update(zip(chunk, means, strict=True))
    return out


def beyond_words(latents: Mapping[int, torch.Tensor], words: ItemWords) -> dict[int, torch.Tensor]:
    """{item: [C]}: each item's latent less the mean latent of the items of ``latents`` whose
    ``words`` (all kept) are the same: the part of an image its words do not explain."""
    groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for item in latents:
        groups.setdefault(tuple(sorted(words.values(item).items())), []).append(item)
    out: dict[int, torch.Tensor] = {}
    for members in groups.values():
        centre = torch.stack([latents[i] for i in members]).mean(dim=0)
        out.update((i, latents[i] - centre) for i in members)
    return out


def target_words(data: InteractionData, config: GeneratorConfig) -> ItemWords | None:
    """The image words whose latents :func:`beyond_words` takes out under
    ``generator.image.latent_prior_target=beyond_words``; None under ``liked_images``."""
    if config.image.latent_prior_target is LatentPriorTarget.liked_images:
        return None
    return ItemWords(data, prompt_attributes(data, config)[1], 1.0, config.trainer.seed)


def user_latent_targets(data: InteractionData, rows: np.ndarray, adapter: ImagePreferenceAdapter,
                        words: ItemWords | None = None) -> tuple[list[int], torch.Tensor]:
    """The users of interaction ``rows`` that have an image among them, and per user the mean of
    :func:`item_latent_means` over their items (with ``words``, of :func:`beyond_words` over the
    items of ``rows``): ([U] data user indices, float32 [U, C])."""
    latents = item_latent_means(data, np.unique(data.item[rows]), adapter)
    if words is not None:
        latents = beyond_words(latents, words)
    users: list[int] = []
    targets: list[torch.Tensor] = []
    for user in np.unique(data.user[rows]).tolist():
        found = [latents[i] for i in np.unique(data.item[rows[data.user[rows] == user]]).tolist() if i in latents]
        if found:
            users.append(int(user))
            targets.append(torch.stack(found).mean(dim=0))
    return users, torch.stack(targets) if targets else torch.zeros(0, adapter.latent_channels)


def visual_taste_share(config: GeneratorConfig, data: InteractionData, history: np.ndarray, adapter: ImagePreferenceAdapter,
                       users: Sequence[int], judge: AttributeJudge, image_fragments: Sequence[str | None],
                       subject_words: Sequence[object], latent_offsets: torch.Tensor | None = None) -> float:
    """The mean share of ``users``' visual tastes the judge reads off their images (prompted with
    ``image_fragments`` and ``subject_words``, one each per user, and shifted by ``latent_offsets``
    [B, C]), over :data:`CALIBRATION_SEEDS` seeds from ``config.sample.seed`` on."""
    shares = []
    for offset in range(CALIBRATION_SEEDS):
        seeded = replace(config, sample=replace(config.sample, seed=config.sample.seed + offset))
        generations = generate_for_users(data, seeded, users=list(users), text_fragments=[None] * len(users),
                                         image_fragments=image_fragments, text_adapter=None, image_adapter=adapter,
                                         history=history, keywords=subject_words, image_latent_offsets=latent_offsets)  # type: ignore[arg-type]
        shares.append(float(image_taste_hits([g.image for g in generations], list(users), data, judge).mean()))
    return float(np.mean(shares))


def choose_scale(scales: Sequence[float], share_at: Callable[[float], float], what: str) -> tuple[float, dict[str, float]]:
    """The scale of ``scales`` with the best ``share_at(scale)`` (ties: the smaller), and each share as
    ``share_at_<scale>``; one progress line per scale, naming ``what``."""
    chosen, best, shares = min(scales), -1.0, {}
    for scale in sorted(scales):
        share = shares[f"share_at_{scale:g}"] = share_at(scale)
        print(f"{what} scale {scale:g}: selection users' visual tastes shown {share:.3f}", flush=True)
        if share > best:
            best, chosen = share, scale
    return chosen, shares


def attach_latent_prior(config: GeneratorConfig, data: InteractionData, split: Split, tokens: UserTokens,
                        adapter: ImagePreferenceAdapter, zoo: Zoo, *, training_rows: np.ndarray,
                        selection_users: Sequence[int]) -> dict[str, float]:
    """Fit the prior on ``training_rows`` (what the image adapter trained on), choose its scale on
    ``selection_users`` (their history: ``split.train``), put it into ``adapter``; returns metrics
    (``latent_prior/scale``, ``latent_prior/users``, ``latent_prior/share_at_<scale>`` per candidate).
    A chosen scale of 0 leaves the adapter without a prior."""
    scales = list(config.image.latent_prior_scales)
    users, targets = user_latent_targets(data, training_rows, adapter, target_words(data, config))
    if not users:
        raise ValueError("no training user has an image among the generator's training examples: "
                         "set generator.image.latent_prior=false to train without a latent prior")
    modalities = tuple(config.image.modalities)
    counts = adapter.token_counts([tokens.prompt_fragment(u, modalities) for u in users])
    prior = fit_latent_prior(counts, targets, ridge=config.image.latent_prior_ridge, rank=config.image.latent_prior_rank or None)
    metrics = {"latent_prior/users": float(len(users))}
    judge = visual_taste_judge(data, zoo) if len(scales) > 1 and len(selection_users) else None
    chosen = scales[0]
    if judge is not None:
        prompts = user_prompts(data, config, tokens, split.train, users=list(selection_users))

        def share_at(scale: float) -> float:
            adapter.set_latent_prior(LatentPrior(prior.rows, scale) if scale > 0 else None)
            return visual_taste_share(config, data, split.train, adapter, selection_users, judge, prompts.image, prompts.subject_words)

        chosen, shares = choose_scale(scales, share_at, "generator: latent prior")
        metrics.update({f"latent_prior/{k}": v for k, v in shares.items()})
    adapter.set_latent_prior(LatentPrior(prior.rows, chosen) if chosen > 0 else None)
    metrics["latent_prior/scale"] = float(chosen)
    return metrics


def history_latent_offsets(config: GeneratorConfig, data: InteractionData, split: Split, adapter: ImagePreferenceAdapter,
                           users: Sequence[int], training_users: Sequence[int]) -> torch.Tensor:
    """The words-and-images baseline's offsets [len(users), C]: each user's own mean latent (its part
    beyond the words, as the prior's target is) over the images of their liked history (``split.train`` rows, rating >= ``config.min_rating`` where
    known), less the mean over ``training_users`` of theirs (the centre the prior is fitted
    around), kept to the ``config.image.latent_prior_rank`` directions the training users' vary
    most along, as the prior is; 0 for a user without such an image. No token is involved."""
    rows = GenerationDataModule(data, training_split(data, split, np.asarray(list(users) + list(training_users))),
                                target="history", min_rating=config.min_rating).train_rows()
    found, targets = user_latent_targets(data, rows, adapter, target_words(data, config))
    by_user = dict(zip(found, targets, strict=True))
    trained = [by_user[u] for u in training_users if u in by_user]
    if not trained:
        raise ValueError("no training user has a liked image in their history to centre the history latents on")
    centre = torch.stack(trained).mean(dim=0)
    zero = torch.zeros_like(centre)
    offsets = torch.stack([by_user[u] - centre if u in by_user else zero for u in users])
    rank = config.image.latent_prior_rank
    if 0 < rank < offsets.shape[1]:
        _, _, directions = torch.linalg.svd(torch.stack(trained) - centre, full_matrices=False)
        offsets = offsets @ directions[:rank].T @ directions[:rank]
    return offsets
