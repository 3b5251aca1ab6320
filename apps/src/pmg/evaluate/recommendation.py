"""Recommendation and quantizer sections of the evaluation table.

Recommendation: popularity, PyG LightGCN (``pmg.preference.baselines``, trained here on the
run's split with its own settings, ``evaluate.recommendation.lightgcn``: 3 layers, its own budget
to early stopping and its learning rate chosen on the validation split) and the preference stage's
``ModalSpecificGNN`` ("ours"), all ranked with the stage's test protocol on the same test users.

Quantizer: per modality, the share of codes used at each level and the NMI of the first-level
code with each ground-truth taste (visual tokens ↔ colour/pattern, textual ↔ material/style;
the cross-modal pairs show how modal-specific the tokens are), beside random codes (chance).
"""

from __future__ import annotations

import numpy as np
import torch

from pmg.config import load_config
from pmg.data.dataset_stage import load_user_roles
from pmg.data.format import InteractionData
from pmg.data.split import Split
from pmg.evaluate.config import EvaluateConfig
from pmg.evaluate.table import Cell, Section
from pmg.preference.baselines import held_out_ranking, split_graph, tune_lightgcn
from pmg.preference.stage import PreferenceConfig
from pmg.quantize.stage import UserTokens
from pmg.runs import RunDirectory, RunError
from pmg.tasks.state import load_preference_state
from prefgraph import popularity_scorer
from prefquant import code_usage, normalized_mutual_information

__all__ = ["RECOMMENDERS", "QUANTIZER_REFERENCE", "quantizer_section", "recommendation_section"]

RECOMMENDERS = ("popularity", "lightgcn", "ours")
QUANTIZER_REFERENCE = "random"  # the chance column of the quantizer section


def _test_users(data: InteractionData, split: Split, max_users: int, seed: int) -> np.ndarray:
    """Sorted data user indices [T] with a test interaction (a seeded sample of ``max_users`` if > 0)."""
    users = np.unique(data.user[split.test])
    if 0 < max_users < len(users):
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    return users


def recommendation_section(run: RunDirectory, data: InteractionData, split: Split, config: EvaluateConfig) -> Section:
    """Recall@k and NDCG@k of popularity, LightGCN and ours on the same test users."""
    k = config.recommendation.k
    section = Section("recommendation", "Recommendation", list(RECOMMENDERS))
    users = _test_users(data, split, config.recommendation.max_users, config.seed)
    if len(users) == 0:
        for metric in ("recall", "ndcg"):
            section.add(f"{metric}@{k}", f"{metric.capitalize()}@{k}", (0.0, 1.0),
                        dict.fromkeys(RECOMMENDERS, Cell.absent("the split has no test interactions")))
        return section
    if k > data.num_items:
        raise RunError(f"evaluate.recommendation.k={k} exceeds the {data.num_items} items of the dataset")
    preference = load_config(PreferenceConfig, run.stage_dir("preference") / "config.yaml")
    threads = torch.get_num_threads()
    if preference.num_threads:
        torch.set_num_threads(preference.num_threads)  # the stage's own thread setting, for the same speed
    try:
        roles = load_user_roles(run, data)
        # Selected on the validation items of the users the preference stage selects on (never the
        # evaluation users'), so both recommenders are chosen on the same rows.
        tuning = tune_lightgcn(config.recommendation.lightgcn, preference, data, split,
                               validation_users=np.concatenate([roles.training, roles.selection]))
        state = load_preference_state(run)
        scorers = {
            "popularity": popularity_scorer(split_graph(data, split.train)),
            "lightgcn": tuning.best.scorer(data, split),
            "ours": state.model.scorer(state.graph, state.embeddings, cold_start_history=state.cold_start_history),
        }
        results = {name: held_out_ranking(scorer, data, split, [k], users) for name, scorer in scorers.items()}
    finally:
        torch.set_num_threads(threads)
    for metric in ("recall", "ndcg"):
        section.add(f"{metric}@{k}", f"{'Recall' if metric == 'recall' else 'NDCG'}@{k}", (0.0, 1.0),
                    {name: Cell.of(results[name][f"{metric}@{k}"]) for name in RECOMMENDERS})
    lightgcn = config.recommendation.lightgcn
    dim = preference.model.embedding_dim if lightgcn.embedding_dim == -1 else lightgcn.embedding_dim
    patience = (f"early stopping after {lightgcn.early_stopping_patience} epochs without a better validation NDCG"
                if lightgcn.early_stopping_patience else "no early stopping")
    section.notes += [
        f"{len(users)} test users, the same for every column; every item outside a user's train + validation history "
        f"ranked (split {split.scheme})",
        f"LightGCN (PyG): {dim}-d, {lightgcn.num_layers} layers, a budget of {lightgcn.max_epochs} epochs ({patience}); "
        f"{tuning.describe()}; the preference stage's batches and optimizer",
    ]
    return section


# Which ground-truth tastes each modality's tokens are meant to carry (the others are cross-modal).
_OWN_TASTES = {"visual": ("colour", "pattern"), "textual": ("material", "style")}
_MODALITY_ORDER = ("visual", "textual", "id")


def quantizer_section(data: InteractionData, tokens: UserTokens, seed: int) -> Section:
    """Code usage per level and NMI of first-level codes with each ground-truth taste, per modality."""
    # Modal-specific tokens first, in a fixed order (the safetensors file lists them alphabetically).
    modalities = sorted(tokens.codes, key=lambda m: (_MODALITY_ORDER.index(m) if m in _MODALITY_ORDER else len(_MODALITY_ORDER), m))
    section = Section("quantizer", "Quantizer (preference tokens)", [*modalities, QUANTIZER_REFERENCE])
    section.notes.append(f"{len(tokens.user_ids)} users (every user with tokens); NMI of the first-level code, "
                         f"'{QUANTIZER_REFERENCE}': uniformly random codes of the same codebook size (chance level)")
    levels = max(codes.shape[1] for codes in tokens.codes.values())
    not_nmi = Cell.absent("the random-code reference applies to NMI rows only")
    for level in range(levels):
        cells = {}
        for modality in modalities:
            codes = tokens.codes[modality]
            sizes = tokens.tokenizer.spec(modality).codebook_sizes
            cells[modality] = (Cell.of(float(code_usage(codes[:, level : level + 1], sizes[level])[0])) if level < codes.shape[1]
                               else Cell.absent(f"the {modality} quantizer has {codes.shape[1]} levels"))
        section.add(f"usage_level{level}", f"code usage, level {level}", (0.0, 1.0), {**cells, QUANTIZER_REFERENCE: not_nmi})
    tastes = [name for names in _OWN_TASTES.values() for name in names if name in data.attributes]
    if data.user_tastes is None or not tastes:
        reason = "the dataset has no ground-truth user tastes (users.jsonl)"
        section.add("nmi", "NMI with ground-truth tastes", (0.0, 1.0), dict.fromkeys(section.columns, Cell.absent(reason)))
        return section
    # Tokens are per data user in the quantize stage's order; tastes follow the data's order.
    position = data.user_index()
    order = torch.tensor([position[u] for u in tokens.user_ids])
    generator = torch.Generator().manual_seed(seed)
    for taste in tastes:
        if taste not in data.user_tastes:
            continue
        labels = torch.from_numpy(data.taste_labels(taste))[order]
        cells = {m: Cell.of(normalized_mutual_information(tokens.codes[m][:, 0], labels)) for m in modalities}
        size = tokens.tokenizer.spec(modalities[0]).codebook_sizes[0]
        random_codes = torch.randint(0, size, labels.shape, generator=generator)
        cells[QUANTIZER_REFERENCE] = Cell.of(normalized_mutual_information(random_codes, labels))
        owner = next(m for m, names in _OWN_TASTES.items() if taste in names)
        section.add(f"nmi_{taste}", f"NMI with true {taste} ({owner} taste)", (0.0, 1.0), cells)
    return section
