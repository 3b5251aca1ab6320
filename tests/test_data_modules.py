"""Data modules: BPR negatives, evaluation targets, generation examples."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch

from pmg.data import read_dataset
from pmg.data.modules import BPRDataModule, GenerationDataModule, UserItemSets
from pmg.data.split import temporal_split


def test_user_item_sets() -> None:
    sets = UserItemSets.from_pairs(np.array([0, 0, 2, 0]), np.array([3, 1, 0, 3]), num_users=3, num_items=4)
    assert sets.items_of(0).tolist() == [1, 3] and sets.items_of(1).tolist() == [] and sets.items_of(2).tolist() == [0]
    assert sets.counts().tolist() == [2, 0, 1]


def test_bpr_batches_never_sample_seen_items(small_catalog: Path) -> None:
    data = read_dataset(small_catalog)
    split = temporal_split(data)
    module = BPRDataModule(data, split, batch_size=256, num_negatives=4)
    L.seed_everything(0)
    seen_pairs = set(zip(data.user[split.train].tolist(), data.item[split.train].tolist(), strict=True))
    # Negatives are sampled against prefgraph's training graph: exactly the training pairs.
    graph = module.train_graph
    assert set(zip(graph.user_index.tolist(), graph.item_index.tolist(), strict=True)) == seen_pairs
    total = 0
    for batch in module.train_dataloader():
        users, pos, neg = batch["users"], batch["positives"], batch["negatives"]
        assert neg.shape == (len(users), 4)
        assert all((u, p) in seen_pairs for u, p in zip(users.tolist(), pos.tolist(), strict=True))
        assert not any((u, n) in seen_pairs for u, row in zip(users.tolist(), neg.tolist(), strict=True) for n in row)
        total += len(users)
    assert total == len(split.train)
    # Negatives cover the catalog rather than a few items.
    assert len(torch.unique(batch["negatives"])) > 100
    users = torch.cat(list(module.val_dataloader()))
    assert len(users) == data.num_users
    assert all(len(module.val_targets.items_of(int(u))) == 1 for u in users[:20])


def test_generation_examples(small_catalog: Path) -> None:
    data = read_dataset(small_catalog)
    split = temporal_split(data)
    module = GenerationDataModule(data, split, min_rating=4, image_size=32, batch_size=8)
    rows = module.train_rows()
    assert len(rows) > 0 and np.all(data.rating[rows] >= 4)
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert isinstance(batch["text"][0], str) and batch["text"][0]
    nxt = GenerationDataModule(data, split, target="next_item", with_images=False)
    np.testing.assert_array_equal(nxt.train_rows(), split.val)
