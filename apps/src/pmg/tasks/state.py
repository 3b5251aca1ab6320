"""One user state for every task: the run's data and its trained preference model, reloaded.

Ids given on the command line are checked here (``lookup_user`` / ``lookup_item``): an unknown id
is a ``RunError`` naming it and where the valid ids are listed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file

from pmg.config import load_config
from pmg.data.dataset_stage import load_prepared
from pmg.data.format import InteractionData
from pmg.data.split import Split
from pmg.preference.stage import PreferenceConfig, interaction_pairs, preference_graph
from pmg.runs import RunDirectory, RunError
from prefgraph import InteractionGraph, ModalEmbeddings, ModalSpecificGNN

__all__ = ["PreferenceState", "load_preference_state", "lookup_user", "lookup_item", "history_items"]


def _lookup(ids: list[str], wanted: str, what: str, hint: str) -> int:
    try:
        return ids.index(wanted)
    except ValueError:
        examples = ", ".join(ids[:5])
        raise RunError(f"unknown {what} {wanted!r}: {hint} (e.g. {examples}{', …' if len(ids) > 5 else ''})") from None


def lookup_user(run: RunDirectory, data: InteractionData, user_id: str) -> int:
    """The data index of ``user_id``; ``RunError`` naming it and where user ids are listed."""
    return _lookup(data.user_ids, user_id, "user",
                   f"user ids are the \"user_id\" fields of {run.root / 'quantize' / 'user_tokens.jsonl'}")


def lookup_item(run: RunDirectory, data: InteractionData, item_id: str) -> int:
    """The data index of ``item_id``; ``RunError`` naming it and where item ids are listed."""
    return _lookup([item.item_id for item in data.items], item_id, "item",
                   f"item ids are the \"item_id\" fields of {run.root / 'data' / 'dataset' / 'items.jsonl'}")


def history_items(data: InteractionData, user: int) -> np.ndarray:
    """Every item ``user`` interacted with in the dataset (any split), sorted, without repeats: int64 [H]."""
    return np.unique(data.item[data.user == user])


@dataclass
class PreferenceState:
    """The preference stage's model on its training graph, as the stage evaluated it.

    ``embeddings`` is the propagation over ``graph`` (the training interactions with the saved
    item features); ``cold_start_history`` ``(users [P], items [P])`` are the validation pairs the
    stage folded cold-start users in from, so scores match the saved user preferences.
    """

    run: RunDirectory
    data: InteractionData
    split: Split
    model: ModalSpecificGNN
    graph: InteractionGraph
    embeddings: ModalEmbeddings
    cold_start_history: tuple[torch.Tensor, torch.Tensor]

    @torch.no_grad()
    def scores(self, user: int) -> torch.Tensor:
        """The model's full-ranking scores of data user ``user``: float32 [I] (``ModalSpecificGNN.scorer``)."""
        scorer = self.model.scorer(self.graph, self.embeddings, cold_start_history=self.cold_start_history)
        return scorer(torch.tensor([user]))[0]

    def is_cold_start(self, user: int) -> bool:
        """Whether ``user`` had no training interaction (its preference is inferred)."""
        return bool(self.graph.cold_start_users[user])


@torch.no_grad()
def load_preference_state(run: RunDirectory) -> PreferenceState:
    """The run's data and its ``ModalSpecificGNN`` rebuilt from ``model_config.json`` + ``model.safetensors``
    and propagated over the training graph (``RunError`` saying what to run if missing or damaged)."""
    run.require("preference")
    data, split = load_prepared(run)
    out = run.stage_dir("preference")
    try:
        model = ModalSpecificGNN(**json.loads((out / "model_config.json").read_text()))
        model.load_state_dict(load_file(out / "model.safetensors"))
        stored = load_file(out / "item_features.safetensors")
    except Exception as err:  # safetensors, json and load_state_dict raise several types
        raise RunError(f"preference model in {out} is damaged ({err}); rerun with --force preference") from err
    model.eval()
    features = {m: stored[m] for m in model.feature_dims}
    masks = {m: stored[f"{m}_mask"].bool() for m in model.feature_dims}
    config = load_config(PreferenceConfig, out / "config.yaml")
    graph = preference_graph(config, data, split.train, features, masks)
    return PreferenceState(run, data, split, model, graph, model(graph), interaction_pairs(data, split.val))
