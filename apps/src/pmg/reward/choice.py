"""Best of several images per user, chosen by the reward stage's visual personalization term.

The reward stage fine-tunes the image adapter towards ``consistency + personalization``; at
generation the same personalization term (the zoo CLIP's image embedding mapped into the
preference stage's item space, cosine with the user's visual preference) picks, among
``reward.image.candidates`` images drawn from different noise, the one closest to the user.
No ground truth is read: the term is what the stage trained towards, fitted on the catalog's items.

    choice = image_choice(run, zoo)            # None when reward.image.candidates is 1
    generate_for_users(..., image_choice=choice)

The map is saved by the reward stage (``<run>/reward/personalization_map.safetensors``), so that a
generation scores with the map the stage trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pmg.atomic import atomic_file
from pmg.config import load_config
from pmg.data.images import image_tensor
from pmg.generator.generate import ImageChoice
from pmg.preference.stage import load_preferences
from pmg.reward.config import RewardConfig
from pmg.runs import RunDirectory, RunError
from pmg.zoo.manifest import Zoo
from prefreward import ClipEmbedder, ConsistencyReward, PersonalizationReward

__all__ = ["PERSONALIZATION_MAP", "PersonalizationScorer", "image_choice", "save_personalization_map"]

PERSONALIZATION_MAP = "personalization_map.safetensors"


class PersonalizationScorer:
    """Scores generated images for data users by the reward's visual personalization term.

    ``visual_map`` [d, d_c] (the reward stage's ridge map from the zoo CLIP's image embedding to the
    preference item space), ``preferences`` [U, d] the users' visual preferences. Called with B PIL
    images and their B users: float [B] in [0, 1]; a cold-start user (None) has no preference and
    scores 0 for every image, so the first candidate stays.
    """

    def __init__(self, embedder: ClipEmbedder, visual_map: torch.Tensor, preferences: torch.Tensor) -> None:
        if visual_map.shape[0] != preferences.shape[1]:
            raise ValueError(f"the map's preference dimension {visual_map.shape[0]} is not the preferences' {preferences.shape[1]}")
        self.embedder = embedder.eval().requires_grad_(False)
        self.term = PersonalizationReward(visual_map.shape[1], visual_map.shape[0], weight=visual_map, unit_interval=True).requires_grad_(False)
        self.preferences = preferences.float()

    def __call__(self, images: Sequence[Any], users: Sequence[int | None]) -> torch.Tensor:
        if len(images) != len(users):
            raise ValueError(f"{len(images)} images for {len(users)} users")
        known = [n for n, u in enumerate(users) if u is not None]
        scores = torch.zeros(len(images))
        if known:
            with torch.no_grad():
                content = self.embedder.embed_images(torch.stack([image_tensor(images[n], images[n].size[0]) for n in known]))
                scores[known] = self.term(content, self.preferences[[users[n] for n in known]]).float()
        return scores


def save_personalization_map(folder: Path, visual_map: torch.Tensor) -> None:
    """Write the reward stage's visual map [d, d_c] as ``folder / PERSONALIZATION_MAP`` (atomic)."""
    with atomic_file(folder / PERSONALIZATION_MAP) as tmp:
        save_file({"visual": visual_map.contiguous().float()}, str(tmp))


def image_choice(run: RunDirectory, zoo: Zoo) -> ImageChoice | None:
    """How ``run``'s reward-stage image adapter picks a user's image: the best of
    ``reward.image.candidates`` by :class:`PersonalizationScorer` (None: one draw, when the
    setting is 1). ``RunError`` when the reward stage has not run, or ran without saving its map."""
    run.require("reward")
    folder = run.stage_dir("reward")
    config = load_config(RewardConfig, folder / "config.yaml")
    if config.image.candidates == 1:
        return None
    path = folder / PERSONALIZATION_MAP
    if not path.is_file():
        raise RunError(f"{path} is missing (reward.image.candidates={config.image.candidates} needs the reward stage's "
                       f"personalization map); rerun `pmg pipeline --run {run.root} --force reward`")
    try:
        visual_map = load_file(str(path))["visual"]
    except (SafetensorError, OSError, KeyError) as err:
        raise RunError(f"{path} is damaged ({err!r}); rerun `pmg pipeline --run {run.root} --force reward`") from err
    preferences = load_preferences(run).user_preferences.get("visual")
    if preferences is None:
        raise RunError(f"reward.image.candidates={config.image.candidates} needs the preference stage's visual preferences; "
                       "set reward.image.candidates=1 or add the visual modality to the preference stage")
    clip, processor = zoo.load_clip()
    return ImageChoice(config.image.candidates, PersonalizationScorer(ConsistencyReward.from_model(clip, processor).embedder,
                                                                      visual_map, preferences))
