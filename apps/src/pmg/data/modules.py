"""LightningDataModules over ``InteractionData``: BPR triples for the recommender, and
(user, item, text, image) examples for the generation stages."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pmg.data.format import InteractionData
from pmg.data.images import load_image_tensor
from pmg.data.split import Split
from pmg.training import ResumableLoader
from prefgraph import InteractionGraph, sample_negatives

__all__ = ["RowIndices", "UserItemSets", "BPRDataModule", "GenerationDataModule"]


@dataclass
class UserItemSets:
    """Each user's item set as CSR: items of user ``u`` are ``indices[indptr[u]:indptr[u+1]]``.

    ``indptr`` int64 [U + 1], ``indices`` int64 [nnz], items sorted within each user.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    num_items: int

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> UserItemSets:
        keys = np.unique(np.asarray(users, dtype=np.int64) * num_items + np.asarray(items, dtype=np.int64))
        rows, cols = keys // num_items, keys % num_items
        indptr = np.zeros(num_users + 1, dtype=np.int64)
        np.add.at(indptr, rows + 1, 1)
        return cls(torch.from_numpy(np.cumsum(indptr)), torch.from_numpy(cols), num_items)

    @property
    def num_users(self) -> int:
        return len(self.indptr) - 1

    def items_of(self, user: int) -> torch.Tensor:
        return self.indices[self.indptr[user]:self.indptr[user + 1]]

    def counts(self) -> torch.Tensor:
        """Int64 [U]: how many items each user has."""
        return self.indptr[1:] - self.indptr[:-1]


class RowIndices(Dataset):
    """The integers ``0 .. count-1`` as a map-style dataset: batches of row indices that a
    collate function or a training step turns into tensors."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        return int(index)


class _BPRCollate:
    """Turns a batch of training-row indices into (users, positives, negatives).

    Negatives come from prefgraph's ``sample_negatives`` on the training graph (uniform over
    items the user has not interacted with in training, rejection-sampled); it draws from
    torch's global generator, so ``lightning.seed_everything`` makes epochs reproducible.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, graph: InteractionGraph, num_negatives: int) -> None:
        self.users, self.items = torch.from_numpy(users), torch.from_numpy(items)
        self.graph, self.num_negatives = graph, num_negatives

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(rows, dtype=torch.long)
        users = self.users[index]
        negatives = sample_negatives(self.graph, users, self.num_negatives).reshape(len(index), self.num_negatives)
        return {"users": users, "positives": self.items[index], "negatives": negatives}


class BPRDataModule(L.LightningDataModule):
    """Training batches of BPR triples; validation/test batches of user indices.

    Train batches are dicts: ``users`` [B], ``positives`` [B], ``negatives`` [B, num_negatives].
    Validation and test batches are ``users`` [B] whose held-out items are in
    ``val_targets`` / ``test_targets``; ``train_graph`` (prefgraph's ``InteractionGraph`` of the
    training edges, without item features) is what negatives are sampled against and what
    masks training items in full ranking. ``validation_users`` (data user indices): only their
    validation items are ranked for model selection (None: every user's).
    """

    def __init__(
        self,
        data: InteractionData,
        split: Split,
        *,
        batch_size: int = 2048,
        eval_batch_size: int = 256,
        num_negatives: int = 1,
        num_workers: int = 0,
        validation_users: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if num_negatives < 1:
            raise ValueError("num_negatives must be >= 1")
        if data.num_items < 2:
            raise ValueError("BPR needs at least two items")
        self.data, self.split = data, split
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_negatives, self.num_workers = num_negatives, num_workers
        u, i = data.user, data.item
        if len(split.train) == 0:
            raise ValueError(
                f"dataset {data.name!r}: the split has no training interactions "
                f"(train 0, validation {len(split.val)}, test {len(split.test)} rows); BPR needs some"
            )
        self.train_graph = InteractionGraph(
            torch.from_numpy(u[split.train]), torch.from_numpy(i[split.train]), data.num_users, data.num_items
        )
        # Model selection may rank only some users' validation items (never the evaluation users').
        val = split.val if validation_users is None else split.val[np.isin(u[split.val], validation_users)]
        self.val_targets = UserItemSets.from_pairs(u[val], i[val], data.num_users, data.num_items)
        self.test_targets = UserItemSets.from_pairs(u[split.test], i[split.test], data.num_users, data.num_items)

    def train_dataloader(self) -> DataLoader:
        collate = _BPRCollate(self.data.user[self.split.train], self.data.item[self.split.train], self.train_graph, self.num_negatives)
        # The same batches as a DataLoader; a fit killed within an epoch resumes them exactly.
        return ResumableLoader(
            RowIndices(len(self.split.train)), batch_size=self.batch_size, shuffle=True, collate_fn=collate,
            num_workers=self.num_workers, drop_last=False,
        )

    def _eval_loader(self, targets: UserItemSets) -> DataLoader:
        users = torch.nonzero(targets.counts() > 0).flatten()
        return DataLoader(users, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_targets)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_targets)


class _GenerationSet(Dataset):
    def __init__(self, data: InteractionData, rows: np.ndarray, image_size: int, with_images: bool) -> None:
        self.data, self.rows, self.image_size, self.with_images = data, rows, image_size, with_images

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = int(self.rows[index])
        item = self.data.items[int(self.data.item[row])]
        example = {
            "user": int(self.data.user[row]),
            "item": int(self.data.item[row]),
            "text": item.text,
            "review": self.data.review[row],
            "has_image": item.image is not None,
        }
        if self.with_images:
            example["image"] = (
                load_image_tensor(item.image, self.image_size, self.data.image_read_fit)
                if item.image is not None
                else torch.zeros(3, self.image_size, self.image_size)
            )
        return example


class GenerationDataModule(L.LightningDataModule):
    """Examples for the generation stages: a user and an item the user liked, with its text and image.

    ``target="history"`` trains on the liked training interactions (rating >= ``min_rating``
    when ratings are known); ``target="next_item"`` uses each user's held-out next items
    (validation rows) as targets: the "generate, not recommend" setting.
    Batches are dicts: ``user`` [B], ``item`` [B], ``text`` list[str], ``review`` list[str],
    ``has_image`` [B] bool and, with images, ``image`` [B, 3, S, S] in [-1, 1].
    """

    def __init__(
        self,
        data: InteractionData,
        split: Split,
        *,
        target: str = "history",
        min_rating: float = 4.0,
        image_size: int = 64,
        with_images: bool = True,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if target not in ("history", "next_item"):
            raise ValueError(f"target must be 'history' or 'next_item', not {target!r}")
        self.data, self.split, self.target = data, split, target
        self.min_rating, self.image_size, self.with_images = min_rating, image_size, with_images
        self.batch_size, self.num_workers = batch_size, num_workers

    def _liked(self, rows: np.ndarray) -> np.ndarray:
        ratings = self.data.rating[rows]
        known = ~np.isnan(ratings)
        return rows[~known | (ratings >= self.min_rating)]

    def train_rows(self) -> np.ndarray:
        if self.target == "next_item":
            return self.split.val
        return self._liked(self.split.train)

    def train_dataloader(self) -> DataLoader:
        rows = self.train_rows()
        if len(rows) == 0:
            raise ValueError(f"no training examples for target {self.target!r} (min_rating {self.min_rating})")
        # The same batches as a DataLoader; a fit killed within an epoch resumes them exactly.
        return ResumableLoader(
            _GenerationSet(self.data, rows, self.image_size, self.with_images),
            batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        rows = self.split.test if self.target == "next_item" else self._liked(self.split.val)
        return DataLoader(
            _GenerationSet(self.data, rows, self.image_size, self.with_images),
            batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
        )
