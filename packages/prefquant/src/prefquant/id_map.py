"""A persistent map between items and their semantic IDs, kept with the quantizer that made them.

Generative retrieval trains a model to emit an item's semantic ID (its L codes plus a
disambiguation suffix), so the IDs must stay fixed once handed out: a new item may not
take an ID an old one had, and the model's output must map back to an item. This module
keeps the items [M] and their IDs [M, L + 1] next to the frozen quantizer and saves both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

import torch
from torch import Tensor

from ._arrays import TensorOrArray, to_tensor
from .metrics import SemanticIdQuality, semantic_id_quality
from .quantizer import ResidualQuantizer, VectorQuantizer
from .safetensors_io import CheckpointError, load_safetensors, read_safetensors_metadata, save_safetensors
from .semantic_ids import append_disambiguation
from .serialization import load_quantizer, save_quantizer
from .training import fit_quantizer

__all__ = ["IDS_NAME", "SemanticIdMap"]

IDS_NAME = "semantic_ids.safetensors"
_FORMAT = "prefquant.semantic_id_map"
# Bump when the meaning of the saved tensors changes; loaders refuse versions they do not know.
_FORMAT_VERSION = "1"

Quantizer = VectorQuantizer | ResidualQuantizer


def _check_items(items: TensorOrArray, what: str = "items") -> Tensor:
    items = to_tensor(items, what)
    if items.dim() != 1:
        raise ValueError(f"{what} must have shape [N], got {list(items.shape)}")
    if items.is_floating_point() or items.is_complex() or items.dtype == torch.bool:
        raise TypeError(f"{what} must be an integer tensor (your item keys), got {items.dtype}")
    return items.long().cpu()


def _first_duplicate(values: Tensor) -> int | None:
    """One value occurring twice in values [N], or None."""
    unique, counts = torch.unique(values, return_counts=True)
    repeated = unique[counts > 1]
    return int(repeated[0]) if repeated.numel() else None


def _rows_in(table: Tensor, query: Tensor) -> Tensor:
    """For each row of query [B, C], the index of the equal row of table [M, C] (unique rows), or -1."""
    if table.shape[0] == 0 or query.shape[0] == 0:
        return torch.full((query.shape[0],), -1, dtype=torch.long)
    _, groups = torch.unique(torch.cat([table, query]), dim=0, return_inverse=True)
    position = torch.full((int(groups.max()) + 1,), -1, dtype=torch.long)
    position[groups[: table.shape[0]]] = torch.arange(table.shape[0])
    return position[groups[table.shape[0] :]]


class SemanticIdMap:
    """Items (integer keys) ↔ unique semantic IDs [L + 1], with the quantizer that made them.

    ``fit`` trains the quantizer on a catalog and gives every item an ID (its L codes plus
    a suffix 0, 1, 2, ... among items sharing those codes). ``encode`` gives new items IDs
    from the frozen codebooks, with suffixes after every suffix in use, so no ID is ever
    reused; items already in the map keep the ID they have. ``lookup`` and ``ids_of`` go
    from IDs to items and back, batched. ``save_pretrained`` writes the quantizer and the
    map into one folder; ``from_pretrained`` reads them back, so another machine gets the
    same IDs (they are stored, not recomputed).

    Args:
        quantizer: a :class:`ResidualQuantizer` (or :class:`VectorQuantizer`), trained
            already or to be trained by :meth:`fit`.
    """

    def __init__(self, quantizer: Quantizer) -> None:
        if not isinstance(quantizer, VectorQuantizer | ResidualQuantizer):
            raise TypeError(
                f"quantizer must be a ResidualQuantizer or VectorQuantizer, got {type(quantizer).__name__}"
            )
        self.quantizer = quantizer
        self._items = torch.empty(0, dtype=torch.long)
        self._ids = torch.empty(0, quantizer.num_levels + 1, dtype=torch.long)
        self._item_order = torch.empty(0, dtype=torch.long)

    # ----------------------------------------------------------------- state
    @property
    def items(self) -> Tensor:
        """[M] long, the item keys in the order they were added."""
        return self._items.clone()

    @property
    def ids(self) -> Tensor:
        """[M, L + 1] long, the ID of each item of :attr:`items` (every row unique)."""
        return self._ids.clone()

    @property
    def id_length(self) -> int:
        """L + 1: the quantizer's levels plus the disambiguation suffix."""
        return self.quantizer.num_levels + 1

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Values each ID position takes: K per code level, then 1 + the largest suffix in use.

        Pass it as ``codebook_sizes`` of a :class:`ModalitySpec` to get one token per value.
        """
        suffix = int(self._ids[:, -1].max()) + 1 if len(self) else 1
        return (self.quantizer.codebook_size,) * self.quantizer.num_levels + (suffix,)

    def __len__(self) -> int:
        return int(self._items.numel())

    def __repr__(self) -> str:
        return f"SemanticIdMap(items={len(self)}, level_sizes={self.level_sizes})"

    def _register(self, items: Tensor, ids: Tensor) -> None:
        self._items = torch.cat([self._items, items])
        self._ids = torch.cat([self._ids, ids])
        self._item_order = torch.argsort(self._items)

    def _rows_of_items(self, items: Tensor) -> Tensor:
        """Row of each item [B] in the map, or -1 for items not in it."""
        if len(self) == 0:
            return torch.full_like(items, -1)
        sorted_items = self._items[self._item_order]
        slot = torch.searchsorted(sorted_items, items).clamp_max(len(self) - 1)
        found = sorted_items[slot] == items
        return torch.where(found, self._item_order[slot], torch.full_like(items, -1))

    # ----------------------------------------------------------------- building
    def fit(
        self,
        embeddings: TensorOrArray,
        items: TensorOrArray | None = None,
        *,
        epochs: int = 20,
        batch_size: int = 256,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> Tensor:
        """Train the quantizer on a catalog's embeddings [N, d] and give each item its ID.

        Args:
            embeddings: [N, d] the catalog (tensor or numpy array).
            items: [N] integer item keys; ``None`` means 0 .. N - 1.
            epochs, batch_size, lr, seed: passed to :func:`fit_quantizer`.

        Returns:
            [N, L + 1] long IDs, one unique row per item, in the order of ``embeddings``.

        Raises:
            ValueError: the map already holds items (retraining would move the codes under
                IDs already handed out; start a new map), or items repeat.
        """
        if len(self):
            raise ValueError(
                f"this map already gave IDs to {len(self)} items; fit() would retrain the codebooks under "
                "them. Use encode() to add items, or start a new SemanticIdMap"
            )
        embeddings = to_tensor(embeddings, "embeddings")
        fit_quantizer(self.quantizer, embeddings, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        return self.encode(embeddings, items)

    def encode(self, embeddings: TensorOrArray, items: TensorOrArray | None = None) -> Tensor:
        """IDs [N, L + 1] for embeddings [N, d]: stored IDs for known items, fresh ones for new items.

        New items are encoded with the frozen codebooks and their suffixes continue after
        the largest suffix in use for their codes, so no ID is ever given twice. The map
        records them; the codebooks never change.

        Args:
            embeddings: [N, d] (tensor or numpy array).
            items: [N] integer item keys, distinct; ``None`` gives new keys after the
                largest key in the map (0 .. N - 1 for an empty map).

        Returns:
            [N, L + 1] long, on the device of ``embeddings``.
        """
        embeddings = to_tensor(embeddings, "embeddings")
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must have shape [N, d], got {list(embeddings.shape)}")
        count = embeddings.shape[0]
        if items is None:
            start = int(self._items.max()) + 1 if len(self) else 0
            items = torch.arange(start, start + count)
        items = _check_items(items)
        if items.numel() != count:
            raise ValueError(f"items must have one key per embedding row: {items.numel()} keys, {count} rows")
        repeated = _first_duplicate(items)
        if repeated is not None:
            raise ValueError(f"items must be distinct, but item {repeated} occurs more than once")
        rows = self._rows_of_items(items)
        new = rows < 0
        if bool(new.any()):
            codes = self.quantizer.encode(embeddings[new.to(embeddings.device)]).cpu()
            fresh = append_disambiguation(codes, existing=self._ids)
            self._register(items[new], fresh)
            rows[new] = torch.arange(len(self) - fresh.shape[0], len(self))
        return self._ids[rows].to(embeddings.device)

    # ----------------------------------------------------------------- lookups
    def lookup(self, ids: TensorOrArray, default: int | None = None) -> Tensor:
        """Items [B] for IDs [B, L + 1] (for example the outputs of a generative recommender).

        Args:
            ids: [B, L + 1] integer IDs.
            default: the item returned for an ID no item has; ``None`` raises instead.

        Raises:
            KeyError: an ID belongs to no item and ``default`` is None (the first is named).
        """
        ids = to_tensor(ids, "ids")
        if ids.dim() != 2 or ids.shape[1] != self.id_length:
            raise ValueError(f"ids must have shape [B, {self.id_length}], got {list(ids.shape)}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
        rows = _rows_in(self._ids, ids.long().cpu())
        missing = rows < 0
        if bool(missing.any()) and default is None:
            first = ids[int(missing.nonzero()[0, 0])].tolist()
            raise KeyError(f"{int(missing.sum())} of {rows.numel()} IDs belong to no item, e.g. {first}")
        fill = torch.full_like(rows, default if default is not None else -1)
        return torch.where(missing, fill, self._items[rows.clamp_min(0)]).to(ids.device)

    def ids_of(self, items: TensorOrArray) -> Tensor:
        """IDs [B, L + 1] of items [B] already in the map.

        Raises:
            KeyError: an item is not in the map (the first is named).
        """
        tensor = to_tensor(items, "items")
        keys = _check_items(tensor)
        rows = self._rows_of_items(keys)
        if bool((rows < 0).any()):
            raise KeyError(
                f"{int((rows < 0).sum())} items are not in the map, e.g. item {int(keys[rows < 0][0])}"
            )
        return self._ids[rows].to(tensor.device)

    def quality(self) -> SemanticIdQuality:
        """:func:`semantic_id_quality` of the IDs' code levels (before the suffix) over all items."""
        if len(self) == 0:
            raise ValueError("the map holds no items yet: fit() or encode() some first")
        return semantic_id_quality(self._ids[:, :-1], self.quantizer.codebook_size)

    # ----------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write the quantizer (config.json, model.safetensors) and the map (semantic_ids.safetensors).

        Each file is written atomically, the quantizer first, so a saved map never refers
        to codebooks that were not written.
        """
        directory = Path(directory)
        save_quantizer(self.quantizer, directory)
        save_safetensors(
            {"items": self._items.contiguous(), "ids": self._ids.contiguous()},
            directory / IDS_NAME,
            metadata={"format": _FORMAT, "format_version": _FORMAT_VERSION},
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], map_location: str | torch.device = "cpu"
    ) -> Self:
        """Read a map written by :meth:`save_pretrained`, validating the quantizer and the IDs.

        Raises:
            FileNotFoundError: a file is missing.
            CheckpointError: anything else is wrong; the message names the file and the problem.
        """
        directory = Path(directory)
        # The quantizer's own loader validates its config and tensors.
        quantizer = load_quantizer(directory, map_location=map_location)
        path = directory / IDS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such semantic-ID map")
        metadata = read_safetensors_metadata(path)
        if metadata.get("format") != _FORMAT:
            raise CheckpointError(f"{path}: not a prefquant semantic-ID map (expected format {_FORMAT!r})")
        if metadata.get("format_version") != _FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: unsupported format_version {metadata.get('format_version')!r}; "
                f"this prefquant reads {_FORMAT_VERSION}"
            )
        tensors = load_safetensors(path)
        if set(tensors) != {"items", "ids"}:
            raise CheckpointError(f"{path}: expected tensors ['ids', 'items'], got {sorted(tensors)}")
        items, ids = tensors["items"], tensors["ids"]
        length = quantizer.num_levels + 1
        if items.dtype != torch.long or ids.dtype != torch.long:
            raise CheckpointError(f"{path}: items and ids must be int64, got {items.dtype} and {ids.dtype}")
        if items.dim() != 1 or ids.dim() != 2 or ids.shape != (items.numel(), length):
            raise CheckpointError(
                f"{path}: expected items [M] and ids [M, {length}], got {list(items.shape)} and {list(ids.shape)}"
            )
        if ids.numel() and (
            int(ids[:, :-1].min()) < 0
            or int(ids[:, :-1].max()) >= quantizer.codebook_size
            or int(ids[:, -1].min()) < 0
        ):
            raise CheckpointError(
                f"{path}: ids hold codes outside [0, {quantizer.codebook_size}) or negative suffixes"
            )
        if _first_duplicate(items) is not None:
            raise CheckpointError(f"{path}: item {_first_duplicate(items)} appears twice")
        if ids.shape[0] and torch.unique(ids, dim=0).shape[0] != ids.shape[0]:
            raise CheckpointError(f"{path}: two items share one ID")
        loaded = cls(quantizer)
        loaded._register(items, ids)
        return loaded
