"""The preference stage end to end on a tiny catalog: artifacts, reload, best checkpoint, early
stopping, cold start, bad inputs, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pmg.cli import main
from pmg.config import ConfigError, config_to_dict, load_config
from pmg.data import CatalogConfig, read_dataset, write_catalog
from pmg.data.dataset_stage import DatasetConfig, prepare_dataset
from pmg.data.split import Split, temporal_split
from pmg.preference.stage import PREFERENCE_STAGE, PreferenceConfig, load_preferences, train_preferences
from pmg.runs import RunDirectory
from prefgraph import InteractionGraph, ModalSpecificGNN, evaluate_ranking

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path, *overrides: str) -> PreferenceConfig:
    """Model-free encoders and a small model, so a fit takes seconds."""
    return load_config(PreferenceConfig, None, [
        "features.visual=pixels", "features.textual=words", f"features.cache_dir={tmp_path / 'features'}",
        "model.embedding_dim=16", "model.projection_hidden_dim=32", "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false", "batch_size=512", *overrides,
    ])


def _val_ndcg_history(out: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "tb").rglob("events.out.tfevents*")).parent))
    events.Reload()
    return [e.value for e in events.Scalars("val/ndcg@20")]


def test_stage_writes_every_artifact_and_reloads(small_catalog: Path, tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    _, _, data_fp = prepare_dataset(DatasetConfig(kind="pmg", path=str(small_catalog)), run)
    config = tiny_config(tmp_path)
    result = PREFERENCE_STAGE.run(config, run, data_fp, True)
    out = run.stage_dir("preference")
    for name in ("model.safetensors", "model_config.json", "user_preferences.safetensors", "item_embeddings.safetensors",
                 "item_features.safetensors", "user_tastes.json", "metrics.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    assert list((out / "tb").rglob("events.out.tfevents*")), "no TensorBoard log"
    assert "cold-start" in result.summary and "recall@20" in result.summary

    prefs = load_file(out / "user_preferences.safetensors")
    assert set(prefs) == {"id", "visual", "textual", "cold_start", "from_prior"}
    assert prefs["visual"].shape == (150, 16) and prefs["cold_start"].dtype == torch.uint8
    tastes = json.loads((out / "user_tastes.json").read_text())
    assert set(tastes) == {"colour", "pattern", "material", "style"} and len(tastes["colour"]) == 150
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test/recall@20"] <= 1 and metrics["test/num_users"] == 150

    loaded = load_preferences(run)
    assert torch.equal(loaded.user_preferences["textual"], prefs["textual"])
    assert loaded.from_prior is not None and not loaded.cold_start.any()

    # The saved model rebuilds from its config and reproduces the saved item embeddings.
    model = ModalSpecificGNN(**json.loads((out / "model_config.json").read_text()))
    model.load_state_dict(load_file(out / "model.safetensors"))
    data = read_dataset(run.stage_dir("data") / "dataset")
    split = Split.load(run.stage_dir("data") / "split.json")
    features = load_file(out / "item_features.safetensors")
    graph = InteractionGraph(
        torch.from_numpy(data.user[split.train]), torch.from_numpy(data.item[split.train]), data.num_users, data.num_items,
        {m: features[m] for m in ("visual", "textual")}, {m: features[f"{m}_mask"].bool() for m in ("visual", "textual")},
    )
    with torch.no_grad():
        emb = model.eval()(graph)
    torch.testing.assert_close(emb.items["visual"], load_file(out / "item_embeddings.safetensors")["visual"])
    torch.testing.assert_close(emb.users["id"], prefs["id"])

    # The pipeline reuses the stage when nothing changed.
    assert PREFERENCE_STAGE.run(config, run, data_fp, False).reused


def test_best_checkpoint_is_kept_and_early_stopping_stops(small_catalog: Path, tmp_path: Path) -> None:
    data = read_dataset(small_catalog)
    split = temporal_split(data)
    out = tmp_path / "fit"
    # A large learning rate makes validation NDCG move up and down between epochs.
    artifacts = train_preferences(tiny_config(tmp_path, "trainer.max_epochs=6", "optimizer.lr=0.05"), data, split, out)
    history = _val_ndcg_history(out)
    assert len(history) == 6  # one per epoch (Lightning's sanity check logs nothing)
    best = max(history)
    assert artifacts.metrics["best_val_score"] == pytest.approx(best, abs=1e-6)
    # The weights handed on are the best epoch's, not the last epoch's.
    model = ModalSpecificGNN(**json.loads((out / "model_config.json").read_text()))
    model.load_state_dict(load_file(out / "model.safetensors"))
    features = load_file(out / "item_features.safetensors")
    graph = InteractionGraph(
        torch.from_numpy(data.user[split.train]), torch.from_numpy(data.item[split.train]), data.num_users, data.num_items,
        {m: features[m] for m in ("visual", "textual")}, {m: features[f"{m}_mask"].bool() for m in ("visual", "textual")},
    )
    val = (torch.from_numpy(data.user[split.val]), torch.from_numpy(data.item[split.val]))
    assert evaluate_ranking(model.eval(), graph, val, (10, 20))["ndcg@20"] == pytest.approx(best, abs=1e-5)

    # Early stopping on validation NDCG: a learning rate too small to change any ranking never improves it.
    stopped = train_preferences(
        tiny_config(tmp_path, "trainer.max_epochs=30", "trainer.early_stopping_patience=2", "optimizer.name=sgd",
                    "optimizer.lr=1e-12", "model.modality_dropout=0"),
        data, split, tmp_path / "stopped",
    )
    assert stopped.metrics["epochs"] <= 4


def test_cold_start_users_are_flagged_and_get_a_preference(small_catalog: Path, tmp_path: Path) -> None:
    full = read_dataset(small_catalog)
    # User 2 loses every interaction; user 0 keeps only validation rows, user 1 only test rows.
    data = full.subset(full.user != 2)
    split = temporal_split(data)
    moved_val = np.flatnonzero(data.user == 0)
    moved_test = np.flatnonzero(data.user == 1)
    keep = ~np.isin(split.train, np.concatenate([moved_val, moved_test]))
    split = Split(
        train=split.train[keep],
        val=np.union1d(split.val[~np.isin(split.val, moved_test)], moved_val),
        test=np.union1d(split.test[~np.isin(split.test, moved_val)], moved_test),
        scheme="custom",
    )
    with pytest.warns(UserWarning, match="no interactions"):
        artifacts = train_preferences(tiny_config(tmp_path), data, split, tmp_path / "out")
    saved = load_file(tmp_path / "out" / "user_preferences.safetensors")
    cold = saved["cold_start"].bool()
    prior = saved["from_prior"].bool()
    assert torch.nonzero(cold).flatten().tolist() == [0, 1, 2]
    assert torch.nonzero(prior).flatten().tolist() == [1, 2]  # user 1's test rows stay held out
    assert artifacts.metrics["users_without_interactions"] == 1 and artifacts.metrics["users_only_in_val_or_test"] == 2
    items = load_file(tmp_path / "out" / "item_embeddings.safetensors")
    for modality in ("id", "visual", "textual"):
        # User 0 is folded in from its validation items; users 1 and 2 share the population prior.
        expected = items[modality][torch.from_numpy(data.item[moved_val])].mean(0)
        torch.testing.assert_close(saved[modality][0], expected)
        torch.testing.assert_close(saved[modality][1], saved[modality][2])
        warm_mean = saved[modality][~cold].mean(0)
        torch.testing.assert_close(saved[modality][1], warm_mean, rtol=1e-4, atol=1e-5)


def test_content_user_vectors_and_rating_weighted_edges(small_catalog: Path, tmp_path: Path) -> None:
    data = read_dataset(small_catalog)
    split = temporal_split(data)
    gnn = train_preferences(tiny_config(tmp_path, "trainer.max_epochs=1"), data, split, tmp_path / "gnn")
    content = train_preferences(tiny_config(tmp_path, "trainer.max_epochs=1", "user_vector=content"), data, split,
                                tmp_path / "content")
    features = load_file(tmp_path / "content" / "item_features.safetensors")
    ratings = torch.from_numpy(data.rating[split.train]).float()
    weights = (ratings - 2).clamp_min(0)
    for modality in ("visual", "textual"):
        items = content.item_embeddings[modality]
        assert items.shape == (data.num_items, 16)  # the top 16 principal components of the raw features
        # a warm user's vector is the rating-weighted mean of its training items' components
        user = int(data.user[split.train][0])
        rows = data.user[split.train] == user
        w = weights[torch.from_numpy(rows)]
        expected = (items[torch.from_numpy(data.item[split.train][rows])] * w[:, None]).sum(0) / w.sum()
        torch.testing.assert_close(content.user_preferences[modality][user], expected, rtol=1e-4, atol=1e-5)
        assert features[modality].shape[0] == data.num_items
    # the id modality and the recommender are the model's either way (same seed, same fit)
    torch.testing.assert_close(content.user_preferences["id"], gnn.user_preferences["id"])
    assert content.metrics["test/recall@20"] == gnn.metrics["test/recall@20"]
    # rating-weighted propagation changes what the model learns; a dataset without ratings says what to change
    weighted = train_preferences(tiny_config(tmp_path, "trainer.max_epochs=1", "edge_weight=rating"), data, split,
                                 tmp_path / "weighted")
    assert not torch.allclose(weighted.user_preferences["visual"], gnn.user_preferences["visual"])
    unrated = data.subset(np.ones(data.num_interactions, dtype=bool))
    unrated.rating[:] = np.nan
    with pytest.raises(ValueError, match="no ratings"):
        train_preferences(tiny_config(tmp_path, "user_vector=content"), unrated, split, tmp_path / "unrated")


def test_items_without_image_or_text(tmp_path: Path) -> None:
    folder = write_catalog(tmp_path / "catalog", CatalogConfig(
        seed=3, num_users=60, num_items=90, interactions_per_user=12, missing_image_rate=0.3, missing_text_rate=0.2,
    ))
    data = read_dataset(folder)
    with pytest.warns(UserWarning, match="have no visual input"):
        artifacts = train_preferences(tiny_config(tmp_path, "trainer.max_epochs=1"), data, temporal_split(data), tmp_path / "out")
    features = load_file(tmp_path / "out" / "item_features.safetensors")
    assert int((features["visual_mask"] == 0).sum()) == int((~data.has_image).sum()) > 0
    assert int((features["textual_mask"] == 0).sum()) == int((~data.has_text).sum()) > 0
    assert artifacts.metrics["items_without_visual"] == float((~data.has_image).sum())
    assert torch.isfinite(artifacts.user_preferences["visual"]).all()


def test_too_small_or_unusable_inputs_have_clear_messages(small_catalog: Path, tmp_path: Path) -> None:
    data = read_dataset(small_catalog)
    split = temporal_split(data)
    config = tiny_config(tmp_path)
    no_val = Split(split.train, split.val[:0], split.test, "custom")
    with pytest.raises(ValueError, match="no validation interactions"):
        train_preferences(config, data, no_val, tmp_path / "a")
    no_train = Split(split.train[:0], split.val, split.test, "custom")
    with pytest.raises(ValueError, match="too small for its split"):
        train_preferences(config, data, no_train, tmp_path / "b")
    with pytest.raises(ValueError, match="exceeds the 240 items"):
        train_preferences(tiny_config(tmp_path, "ks=[10,500]"), data, split, tmp_path / "c")


def test_config_file_has_every_key_and_typos_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    path = REPO / "configs" / "preference.yaml"

    def keys(tree: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in tree.items():
            out |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
        return out

    assert keys(yaml.safe_load(path.read_text())) == keys(config_to_dict(PreferenceConfig()))
    assert load_config(PreferenceConfig, path) == PreferenceConfig()  # the YAML states the defaults

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  embeding_dim: 32\n")
    with pytest.raises(ConfigError, match="embeding_dim"):
        load_config(PreferenceConfig, bad)
    assert main(["preference", "fit", "--config", str(bad), "--run", str(tmp_path / "run")]) == 2
    assert "embeding_dim" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="optimizer.name"):
        load_config(PreferenceConfig, None, ["optimizer.name=adamw9bit"])
    with pytest.raises(ConfigError, match="visual encoder"):
        load_config(PreferenceConfig, None, ["features.visual=minilm"])
    for key in ("user_vector", "content_weight", "edge_weight"):
        with pytest.raises(ConfigError, match=key):
            load_config(PreferenceConfig, None, [f"{key}=ratting"])
