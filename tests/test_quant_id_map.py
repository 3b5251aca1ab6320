"""SemanticIdMap: unique IDs for a catalog, new items that never reuse an ID, lookups both ways, save/load."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from prefquant import CheckpointError, ResidualQuantizer, SemanticIdMap, save_safetensors

pytestmark = pytest.mark.usefixtures("single_thread")


def catalog(num_items: int = 400, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """Items in a few tight clusters, so that many share their full code tuple."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, dim, generator=gen) * 3
    return centres[torch.arange(num_items) % 6] + 0.01 * torch.randn(num_items, dim, generator=gen)


@pytest.fixture()
def fitted() -> tuple[SemanticIdMap, torch.Tensor, torch.Tensor]:
    x = catalog()
    keys = torch.arange(x.shape[0]) * 7 + 1000  # item keys need not be positions
    id_map = SemanticIdMap(ResidualQuantizer(8, num_levels=2, codebook_size=16))
    ids = id_map.fit(x, keys, epochs=2, batch_size=100)
    assert torch.equal(ids, id_map.ids)
    return id_map, x, keys


def assert_unique(ids: torch.Tensor) -> None:
    assert torch.unique(ids, dim=0).shape[0] == ids.shape[0]


def test_fit_gives_unique_ids_whose_codes_are_the_quantizer_codes(fitted):
    id_map, x, keys = fitted
    ids = id_map.ids
    assert ids.shape == (400, 3) and len(id_map) == 400
    assert_unique(ids)
    assert torch.equal(ids[:, :2], id_map.quantizer.encode(x))
    assert int(ids[:, -1].max()) > 0, "the clustered catalog should collide"
    assert id_map.level_sizes == (16, 16, int(ids[:, -1].max()) + 1)
    assert torch.equal(id_map.items, keys)
    assert id_map.quality().collision_rate > 0


def test_lookup_both_ways_batched(fitted):
    id_map, _, keys = fitted
    order = torch.randperm(400, generator=torch.Generator().manual_seed(1))
    assert torch.equal(id_map.lookup(id_map.ids[order]), keys[order])
    assert torch.equal(id_map.ids_of(keys[order]), id_map.ids[order])
    assert torch.equal(id_map.ids_of(keys[order].numpy()), id_map.ids[order])
    unknown = id_map.ids[:3].clone()
    unknown[1, -1] = 999
    with pytest.raises(KeyError, match=r"1 of 3 IDs belong to no item"):
        id_map.lookup(unknown)
    assert id_map.lookup(unknown, default=-1).tolist() == [int(keys[0]), -1, int(keys[2])]
    with pytest.raises(KeyError, match="item 5"):
        id_map.ids_of(torch.tensor([1000, 5]))
    with pytest.raises(ValueError, match=r"ids must have shape \[B, 3\]"):
        id_map.lookup(torch.zeros(2, 2, dtype=torch.long))


def test_new_items_never_reuse_an_id_and_codebooks_stay_frozen(fitted):
    id_map, x, keys = fitted
    before_ids, books = id_map.ids, id_map.quantizer.codebooks
    # Exact copies of old items have the same codes: only the suffix can tell them apart.
    copies = x[:50]
    new_ids = id_map.encode(copies, torch.arange(50) + 10**6)
    assert torch.equal(new_ids[:, :2], before_ids[:50, :2])
    assert torch.equal(id_map.quantizer.codebooks, books)
    assert_unique(torch.cat([before_ids, new_ids]))
    assert torch.equal(id_map.ids[:400], before_ids), "old IDs never change"
    # A second batch of new items continues after those.
    more = id_map.encode(catalog(30, seed=5))  # keys default to after the largest key
    assert torch.equal(id_map.items[-30:], torch.arange(30) + 10**6 + 50)
    assert_unique(id_map.ids)
    assert len(id_map) == 480 and torch.equal(id_map.lookup(more), id_map.items[-30:])
    # Known items keep their ID whatever embedding comes with them.
    again = id_map.encode(torch.randn(2, 8), keys[:2])
    assert torch.equal(again, before_ids[:2]) and len(id_map) == 480


def test_encode_and_fit_errors(fitted):
    id_map, x, keys = fitted
    with pytest.raises(ValueError, match="already gave IDs to 400 items"):
        id_map.fit(x)
    with pytest.raises(ValueError, match="item 3 occurs more than once"):
        id_map.encode(x[:2], torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="one key per embedding row"):
        id_map.encode(x[:2], torch.tensor([1]))
    with pytest.raises(TypeError, match="integer"):
        id_map.encode(x[:1], torch.tensor([1.5]))
    with pytest.raises(TypeError, match="ResidualQuantizer or VectorQuantizer"):
        SemanticIdMap(torch.nn.Linear(2, 2))


def test_save_load_same_ids_and_same_future_ids(fitted, tmp_path):
    id_map, _, _ = fitted
    id_map.save_pretrained(tmp_path / "map")
    assert sorted(p.name for p in (tmp_path / "map").iterdir()) == [
        "config.json",
        "model.safetensors",
        "semantic_ids.safetensors",
    ]
    loaded = SemanticIdMap.from_pretrained(tmp_path / "map")
    assert torch.equal(loaded.ids, id_map.ids) and torch.equal(loaded.items, id_map.items)
    fresh = catalog(60, seed=9).numpy()
    assert torch.equal(loaded.encode(fresh), id_map.encode(fresh))

    # Another process (another machine) reads the same IDs and maps them back to the same items.
    probe = (
        "import sys, json, torch; from prefquant import SemanticIdMap; "
        "m = SemanticIdMap.from_pretrained(sys.argv[1]); "
        "print(json.dumps({'ids': m.ids.tolist(), 'items': m.lookup(m.ids).tolist()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "map")], capture_output=True, text=True, check=True
    )
    other = json.loads(out.stdout)
    assert other["ids"] == loaded.ids[:400].tolist() and other["items"] == loaded.items[:400].tolist()


def test_load_rejects_damaged_maps(fitted, tmp_path):
    id_map, _, _ = fitted
    folder = tmp_path / "map"
    id_map.save_pretrained(folder)
    ids, items = id_map.ids, id_map.items
    meta = {"format": "prefquant.semantic_id_map", "format_version": "1"}

    def rewrite(tensors, metadata=meta):
        save_safetensors(tensors, folder / "semantic_ids.safetensors", metadata=metadata)

    broken = ids.clone()
    broken[1] = broken[0]
    rewrite({"items": items, "ids": broken})
    with pytest.raises(CheckpointError, match="two items share one ID"):
        SemanticIdMap.from_pretrained(folder)
    rewrite({"items": items, "ids": ids[:, :2]})
    with pytest.raises(CheckpointError, match=r"ids \[M, 3\]"):
        SemanticIdMap.from_pretrained(folder)
    rewrite({"items": torch.zeros_like(items), "ids": ids})
    with pytest.raises(CheckpointError, match="item 0 appears twice"):
        SemanticIdMap.from_pretrained(folder)
    rewrite({"items": items, "ids": ids}, metadata={"format": "other"})
    with pytest.raises(CheckpointError, match="not a prefquant semantic-ID map"):
        SemanticIdMap.from_pretrained(folder)
    too_big = ids.clone()
    too_big[0, 0] = 16
    rewrite({"items": items, "ids": too_big})
    with pytest.raises(CheckpointError, match=r"outside \[0, 16\)"):
        SemanticIdMap.from_pretrained(folder)
    (folder / "semantic_ids.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        SemanticIdMap.from_pretrained(folder)


def test_numpy_catalog_and_default_keys():
    x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    id_map = SemanticIdMap(ResidualQuantizer(4, num_levels=2, codebook_size=4))
    ids = id_map.fit(x, epochs=1, batch_size=100)
    assert torch.equal(id_map.items, torch.arange(200))
    assert torch.equal(id_map.lookup(ids.numpy()), torch.arange(200))
