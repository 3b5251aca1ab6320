"""PyG LightGCN's own best shot (``pmg.preference.baselines``): 3 layers by default, early stopping
honours its patience, and the grid point is chosen on the validation split, never the test split."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pmg.config import ConfigError, load_config
from pmg.data.catalog import CatalogConfig, generate_catalog
from pmg.data.format import InteractionData
from pmg.data.split import Split, temporal_split
from pmg.evaluate import EvaluateConfig
from pmg.preference.baselines import (
    LightGCNConfig,
    fit_lightgcn,
    held_out_ranking,
    lightgcn_adjacency,
    split_graph,
    tune_lightgcn,
)
from pmg.preference.stage import PreferenceConfig
from prefgraph import evaluate_ranking

PREFERENCE = load_config(PreferenceConfig, None, ["model.embedding_dim=8", "batch_size=256"])


@pytest.fixture(scope="module")
def catalog() -> tuple[InteractionData, Split]:
    """A tiny catalog [60 users, 80 items] and its leave-last-out split."""
    data, _ = generate_catalog(CatalogConfig(num_users=60, num_items=80, interactions_per_user=10, image_size=16))
    return data, temporal_split(data, "leave_last_out")


def _poisoned(split: Split) -> Split:
    """``split`` whose test rows point past the data: any read of them raises IndexError."""
    return Split(split.train, split.val, np.array([10**9, -(10**9)], dtype=np.int64), split.scheme)


def test_defaults_are_the_papers_three_layers_and_a_long_budget() -> None:
    config = LightGCNConfig()
    assert config.num_layers == 3 and config.embedding_dim == -1
    assert config.max_epochs >= 100 and config.early_stopping_patience > 0
    assert len(config.grid()) == len(config.lrs) * len(config.l2_weights) >= 3
    evaluate = load_config(EvaluateConfig).recommendation.lightgcn
    assert evaluate.num_layers == 3 and evaluate.max_epochs == config.max_epochs


def test_fit_has_three_layers_and_the_stage_embedding_size(catalog: tuple[InteractionData, Split]) -> None:
    data, split = catalog
    fit = fit_lightgcn(replace(LightGCNConfig(), max_epochs=1), PREFERENCE, data, split, lr=5e-3, l2_weight=1e-4)
    assert fit.model.num_layers == 3 and len(fit.model.convs) == 3
    assert fit.model.embedding.weight.shape == (data.num_users + data.num_items, 8)


def test_csr_adjacency_gives_the_edge_index_embeddings(catalog: tuple[InteractionData, Split]) -> None:
    data, split = catalog
    graph = split_graph(data, split.train)
    fit = fit_lightgcn(replace(LightGCNConfig(), max_epochs=1), PREFERENCE, data, split, lr=5e-3, l2_weight=1e-4)
    with torch.no_grad():
        sparse = fit.model.get_embedding(lightgcn_adjacency(graph))
        dense = fit.model.get_embedding(graph.bipartite_edge_index())
    torch.testing.assert_close(sparse, dense)


def test_early_stopping_honours_the_patience(catalog: tuple[InteractionData, Split]) -> None:
    data, split = catalog
    # A learning rate far too high: validation NDCG peaks early and stalls, so patience ends the run.
    config = LightGCNConfig(max_epochs=200, early_stopping_patience=3)
    fit = fit_lightgcn(config, PREFERENCE, data, split, lr=0.5, l2_weight=1e-4)
    assert fit.epochs < config.max_epochs
    assert len(fit.val_ndcg) == fit.epochs
    assert fit.epochs == fit.best_epoch + 1 + config.early_stopping_patience  # stopped exactly `patience` epochs after the best
    assert fit.best_val_ndcg == max(fit.val_ndcg) == fit.val_ndcg[fit.best_epoch]
    assert all(v <= fit.best_val_ndcg for v in fit.val_ndcg[fit.best_epoch + 1 :])
    # The best state is the one kept: its validation NDCG is the recorded best.
    val = (torch.from_numpy(data.user[split.val]), torch.from_numpy(data.item[split.val]))
    again = evaluate_ranking(fit.scorer(data, split), split_graph(data, split.train), val, [20])["ndcg@20"]
    assert again == pytest.approx(fit.best_val_ndcg)


def test_patience_zero_trains_the_whole_budget(catalog: tuple[InteractionData, Split]) -> None:
    data, split = catalog
    fit = fit_lightgcn(LightGCNConfig(max_epochs=4, early_stopping_patience=0), PREFERENCE, data, split, lr=0.5, l2_weight=1e-4)
    assert fit.epochs == 4


def test_grid_is_chosen_on_validation_without_reading_the_test_split(catalog: tuple[InteractionData, Split]) -> None:
    data, split = catalog
    config = LightGCNConfig(lrs=[1e-3, 5e-2], l2_weights=[1e-4, 1e-2], max_epochs=6, early_stopping_patience=2)
    # The test rows are garbage: tuning only succeeds if it never reads them.
    tuning = tune_lightgcn(config, PREFERENCE, data, _poisoned(split))
    assert [(p.lr, p.l2_weight) for p in tuning.grid] == config.grid()
    best = max(tuning.grid, key=lambda p: p.best_val_ndcg)  # first maximum, as the tuning's tie rule
    assert (tuning.best.lr, tuning.best.l2_weight) == (best.lr, best.l2_weight)
    assert tuning.best.best_val_ndcg == best.best_val_ndcg and tuning.metric == "ndcg@20"
    assert "chosen on validation" in tuning.describe()
    # The same seed and point refit on the real split: the test split has no say in the model.
    refit = fit_lightgcn(config, PREFERENCE, data, split, lr=best.lr, l2_weight=best.l2_weight)
    assert refit.val_ndcg[: refit.best_epoch + 1][-1] == pytest.approx(best.best_val_ndcg)
    for name, value in refit.model.state_dict().items():
        torch.testing.assert_close(value, tuning.best.model.state_dict()[name])
    assert held_out_ranking(tuning.best.scorer(data, split), data, split, [20])["num_users"] > 0


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="lightgcn.lrs"):
        load_config(EvaluateConfig, overrides=["recommendation.lightgcn.lrs=[]"])
    with pytest.raises(ConfigError, match="lightgcn.max_epochs"):
        load_config(EvaluateConfig, overrides=["recommendation.lightgcn.max_epochs=0"])
    with pytest.raises(ConfigError, match="lightgcn_epochs"):  # the old key is gone, not silently ignored
        load_config(EvaluateConfig, overrides=["recommendation.lightgcn_epochs=5"])


def test_validation_users_restrict_the_rows_early_stopping_reads(catalog: tuple[InteractionData, Split]) -> None:
    data, split = catalog
    users = np.arange(0, data.num_users, 2)
    config = LightGCNConfig(max_epochs=4, early_stopping_patience=0)
    fit = fit_lightgcn(config, PREFERENCE, data, split, lr=5e-2, l2_weight=1e-4, validation_users=users)
    rows = split.val[np.isin(data.user[split.val], users)]
    reference = fit_lightgcn(config, PREFERENCE, data, Split(split.train, rows, split.test, split.scheme), lr=5e-2, l2_weight=1e-4)
    everyone = fit_lightgcn(config, PREFERENCE, data, split, lr=5e-2, l2_weight=1e-4)
    assert fit.val_ndcg == reference.val_ndcg != everyone.val_ndcg
