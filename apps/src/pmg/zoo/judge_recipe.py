"""The attribute judge: build (or load) and train on catalog images and their attributes.

Which kind of head an attribute gets follows from the dataset: an attribute of the dataset's
schema (``dataset.json`` ``attributes``: the catalog's colour, pattern, category) has one value
per item and a single-label (softmax) head over the schema's values; an attribute only the items
carry (MovieLens ``genres``, an Amazon ``main_category``) is read as a set of values
(``|``-separated, :meth:`pmg.data.format.Item.value_set`; a single value is a set of one) and gets
a multi-label (sigmoid) head over the sorted distinct values of the training items the judge
learns from (those with an image). An attribute neither has is not judged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pmg.data.format import InteractionData
from pmg.zoo.config import JudgeTrainingConfig
from pmg.zoo.corpus import ZooCorpus
from pmg.zoo.fitting import FitCheckpoints, fit_steps, seed_init
from pmg.zoo.judge import AttributeJudge
from pmg.zoo.lightning_modules import JudgeModule

__all__ = ["item_attribute_names", "judge_attributes", "judge_labels", "judge_label_sets", "missing_judge_attributes",
           "multi_label_attributes", "train_judge"]


def item_attribute_names(data: InteractionData) -> list[str]:
    """Sorted names of the attributes some item of ``data`` has a non-empty value of."""
    return sorted({name for item in data.items for name, value in item.attributes.items() if value})


def multi_label_attributes(data: InteractionData, names: list[str]) -> list[str]:
    """Those of ``names`` that only the items carry (not in the dataset's schema): judged as sets of values."""
    return [name for name in names if name not in data.attributes]


def missing_judge_attributes(data: InteractionData, names: list[str]) -> list[str]:
    """Those of ``names`` that are neither in the dataset's schema nor on any item: what no judge can read."""
    carried = set(data.attributes) | set(item_attribute_names(data))
    return [name for name in names if name not in carried]


def judge_attributes(config: JudgeTrainingConfig, corpus: ZooCorpus) -> dict[str, tuple[str, ...]]:
    """The configured attributes, then the dataset's hidden visual ones, with their values (a
    multi-label attribute's: the sorted distinct values of the training items with an image);
    ``ValueError`` if the dataset lacks a configured one."""
    data = corpus.data
    missing = missing_judge_attributes(data, config.attributes)
    if missing:
        raise ValueError(f"zoo.judge.attributes {missing} are not attributes of dataset {data.name!r} "
                         f"(its schema has {sorted(data.attributes)}, its items {item_attribute_names(data)})")
    # No text names a hidden attribute (the sparse catalog's shade), so only the judge can score
    # it; a dataset without one keeps exactly the configured judge (and its zoo cache entries).
    hidden = [name for name, spec in data.attributes.items()
              if spec.hidden and spec.modality == "visual" and spec.values and name not in config.attributes]
    found: dict[str, tuple[str, ...]] = {}
    for name in [*config.attributes, *hidden]:
        if name in data.attributes:
            found[name] = data.attributes[name].values
        else:
            seen = corpus.image_items(corpus.train_items)
            found[name] = tuple(sorted({value for i in seen.tolist() for value in data.items[i].value_set(name)}))
            if not found[name]:
                raise ValueError(f"no training item with an image has a value of {name!r}: the judge cannot learn it")
    return found


def judge_labels(corpus: ZooCorpus, attributes: list[str]) -> dict[str, np.ndarray]:
    """``{attribute: int64 [I]}`` value indices per item (-1 when unknown), for single-label attributes."""
    return {name: corpus.data.item_labels(name) for name in attributes}


def judge_label_sets(data: InteractionData, attribute: str, values: tuple[str, ...]) -> np.ndarray:
    """Float32 [I, len(values)]: 1 where item i has value v of the multi-label ``attribute``
    (values outside ``values`` are left out); an all-zero row is an item with none of them."""
    index = {value: k for k, value in enumerate(values)}
    sets = np.zeros((data.num_items, len(values)), dtype=np.float32)
    for i, item in enumerate(data.items):
        for value in item.value_set(attribute):
            if value in index:
                sets[i, index[value]] = 1.0
    return sets


class _Labelled(Dataset):
    def __init__(self, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], **{k: v[index] for k, v in self.labels.items()}}


def train_judge(config: JudgeTrainingConfig, corpus: ZooCorpus, log_dir: Path,
                checkpoints: FitCheckpoints | None = None) -> AttributeJudge:
    """A judge trained on the training items whose image and every judged attribute (for a
    multi-label one: at least one of its values) are known
    (resumable from ``checkpoints``: ``fit_steps``)."""
    attributes = judge_attributes(config, corpus)
    multi_label = multi_label_attributes(corpus.data, list(attributes))
    labels: dict[str, np.ndarray] = judge_labels(corpus, [n for n in attributes if n not in multi_label])
    labels |= {n: judge_label_sets(corpus.data, n, attributes[n]) for n in multi_label}
    items = corpus.image_items(corpus.train_items)
    known = [labels[n][items].sum(axis=1) > 0 if n in multi_label else labels[n][items] >= 0 for n in attributes]
    items = items[np.all(known, axis=0)]
    if len(items) < 2:
        raise ValueError("judge training needs at least two training items with an image and known attributes")
    seed_init(config.trainer.seed)
    judge = AttributeJudge(attributes, config.model.channels, config.model.image_size, multi_label)
    dataset = _Labelled(corpus.images[torch.from_numpy(items)], {n: torch.from_numpy(labels[n][items]) for n in attributes})
    fit_steps(JudgeModule(judge, config.optimizer, augment=config.augment), dataset, trainer_config=config.trainer,
              batch_size=min(config.batch_size, len(items)), log_dir=log_dir, checkpoints=checkpoints)
    return judge.eval()
