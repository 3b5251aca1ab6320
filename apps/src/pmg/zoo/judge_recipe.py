"""The attribute judge: build (or load) and train on catalog images and their attributes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pmg.zoo.config import JudgeTrainingConfig
from pmg.zoo.corpus import ZooCorpus
from pmg.zoo.fitting import FitCheckpoints, fit_steps, seed_init
from pmg.zoo.judge import AttributeJudge
from pmg.zoo.lightning_modules import JudgeModule

__all__ = ["judge_attributes", "judge_labels", "train_judge"]


def judge_attributes(config: JudgeTrainingConfig, corpus: ZooCorpus) -> dict[str, tuple[str, ...]]:
    """The configured attributes, then the dataset's hidden visual ones, with their values;
    ``ValueError`` if the dataset lacks a configured one."""
    data = corpus.data
    missing = [name for name in config.attributes if name not in data.attributes]
    if missing:
        raise ValueError(f"zoo.judge.attributes {missing} are not attributes of dataset {data.name!r} "
                         f"(it has {sorted(data.attributes)})")
    # No text names a hidden attribute (the sparse catalog's shade), so only the judge can score
    # it; a dataset without one keeps exactly the configured judge (and its zoo cache entries).
    hidden = [name for name, spec in data.attributes.items()
              if spec.hidden and spec.modality == "visual" and spec.values and name not in config.attributes]
    return {name: data.attributes[name].values for name in [*config.attributes, *hidden]}


def judge_labels(corpus: ZooCorpus, attributes: list[str]) -> dict[str, np.ndarray]:
    """``{attribute: int64 [I]}`` value indices per item (-1 when unknown)."""
    return {name: corpus.data.item_labels(name) for name in attributes}


class _Labelled(Dataset):
    def __init__(self, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], **{k: v[index] for k, v in self.labels.items()}}


def train_judge(config: JudgeTrainingConfig, corpus: ZooCorpus, log_dir: Path,
                checkpoints: FitCheckpoints | None = None) -> AttributeJudge:
    """A judge trained on the training items whose image and every judged attribute are known
    (resumable from ``checkpoints``: ``fit_steps``)."""
    attributes = judge_attributes(config, corpus)
    labels = judge_labels(corpus, list(attributes))
    items = corpus.image_items(corpus.train_items)
    items = items[np.all([labels[n][items] >= 0 for n in attributes], axis=0)]
    if len(items) < 2:
        raise ValueError("judge training needs at least two training items with an image and known attributes")
    seed_init(config.trainer.seed)
    judge = AttributeJudge(attributes, config.model.channels, config.model.image_size)
    dataset = _Labelled(corpus.images[torch.from_numpy(items)], {n: torch.from_numpy(labels[n][items]) for n in attributes})
    fit_steps(JudgeModule(judge, config.optimizer, augment=config.augment), dataset, trainer_config=config.trainer,
              batch_size=min(config.batch_size, len(items)), log_dir=log_dir, checkpoints=checkpoints)
    return judge.eval()
