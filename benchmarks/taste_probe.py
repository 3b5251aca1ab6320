"""Where is a user's taste lost before generation? Linear probes along the chain, per taste.

Usage:
    uv run --frozen python benchmarks/taste_probe.py --runs runs/default runs/sparse
    uv run --frozen python benchmarks/taste_probe.py --check-file saved.log   # a saved output against TARGETS (none)

For each run (built by ``pmg pipeline``) and each ground-truth taste of the catalog, the share of
the data stage's evaluation users whose taste is read right from
- ``history_majority``: the most frequent value among the items of the user's training history
  (what counting the history's attributes gives; the words' ceiling where titles name the value);
- ``history_mean_<modality>``: a linear probe on the mean raw item feature of the history (the
  preference stage's input: what a content-only encoder could hand on);
- ``preference_<modality>``: a linear probe on the preference stage's user vector;
- ``codes_<modality>``: a linear probe on the one-hot of the quantizer's codes (what the tokens say).
Probes are fitted on the training users and scored on the evaluation users, never fitted on them;
each rate has its 95% bootstrap interval over users. Chance is one over the number of values.
Under ``items``, the same for the items' own value of each attribute (a seeded quarter of the
items held out): ``features_<modality>`` on the raw item features, ``vectors_<modality>`` on the
preference stage's item vectors, to see whether the stage kept an attribute its input held.

Under ``hidden_image_gain``, for each hidden visual taste (one no text names: the sparse catalog's
shade), what each reading is worth to an image: how much the image's personalization (the mean, over
the catalog's visual tastes, of the judge reading the user's value) would gain over a prompt of
words if the image drew that taste exactly as the reading says and every named taste as the words
do. Words leave an unnamed taste to the sampler, which draws the user's value at chance, so the gain
is ``(rate - chance) / number of visual tastes``, its interval the rate's, moved the same way. It is
a ceiling on what drawing the hidden taste can add (a perfect drawing); beating the words by more
means drawing a named taste better than the words do.

No target is stated for it (``TARGETS`` is empty): it locates losses, it does not grade them.

The LAST line is one JSON object: ``{"runs": {run: {"n_train", "n_eval", "tastes": {taste:
{"chance", "history_majority", "history_majority_ci", "preference_visual", ...}},
"items": {taste: {"features_visual", "vectors_visual", ...}}, "hidden_image_gain": {taste:
{"visual_tastes", "history_majority", "history_majority_ci", "codes_visual", ...}}}}}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from pmg.benchmark_targets import Targets, parse_args_with_check, print_result
from pmg.data.dataset_stage import load_prepared, load_user_roles
from pmg.data.format import InteractionData
from pmg.evaluate.intervals import bootstrap_interval
from pmg.evaluate.probes import linear_probe_hits, one_hot_codes
from pmg.generator.evaluation import taste_attributes
from pmg.preference.stage import load_preferences
from pmg.runs import RunDirectory, RunError

TARGETS: Targets = {}


def _history_mean(features: torch.Tensor, present: torch.Tensor, users: np.ndarray, items: np.ndarray,
                  num_users: int) -> torch.Tensor:
    """Float [U, d_m]: each user's mean feature over its history items that have the modality (0 if none)."""
    keep = present[torch.from_numpy(items)].numpy()
    u, i = torch.from_numpy(users[keep]), torch.from_numpy(items[keep])
    total = torch.zeros(num_users, features.shape[1]).index_add_(0, u, features[i].float())
    count = torch.bincount(u, minlength=num_users).clamp_min(1).unsqueeze(1)
    return total / count


def probe_run(run: RunDirectory) -> dict[str, object]:
    """The probe table of one run (see the module docstring)."""
    data, split = load_prepared(run)
    if data.user_tastes is None:
        raise RunError(f"{run.root}: no ground-truth tastes; this benchmark needs the catalog")
    roles = load_user_roles(run, data)
    train, test = torch.from_numpy(roles.training), torch.from_numpy(roles.evaluation)
    preferences = load_preferences(run).user_preferences
    run.require("quantize")
    codes = load_file(run.stage_dir("quantize") / "user_codes.safetensors")
    features = load_file(run.stage_dir("preference") / "item_features.safetensors")
    history_users, history_items = data.user[split.train], data.item[split.train]
    vectors: dict[str, torch.Tensor] = {}
    for modality in sorted(m for m in features if not m.endswith("_mask")):
        present = features[f"{modality}_mask"].bool()
        vectors[f"history_mean_{modality}"] = _history_mean(features[modality], present, history_users, history_items, data.num_users)
    vectors |= {f"preference_{m}": v for m, v in sorted(preferences.items())}
    vectors |= {f"codes_{m}": one_hot_codes(c) for m, c in sorted(codes.items())}

    tastes: dict[str, dict[str, object]] = {}
    for taste in sorted(data.user_tastes):
        labels = torch.from_numpy(data.taste_labels(taste))
        item_labels = data.item_labels(taste)
        counts = np.zeros((data.num_users, len(data.attributes[taste].values)))
        known = item_labels[history_items] >= 0
        np.add.at(counts, (history_users[known], item_labels[history_items][known]), 1)
        hits = {"history_majority": (counts.argmax(1) == labels.numpy())[roles.evaluation].astype(float)}
        for name, x in vectors.items():
            hits[name] = linear_probe_hits(x, labels, train, test).numpy().astype(float)
        row: dict[str, object] = {"chance": round(1 / len(data.attributes[taste].values), 4)}
        for name, values in hits.items():
            row[name] = round(float(values.mean()), 4)
            row[f"{name}_ci"] = [round(v, 4) for v in bootstrap_interval(values)]
        tastes[taste] = row
        print(f"[{run.root.name}] {taste}: " + ", ".join(f"{k} {v}" for k, v in row.items() if not k.endswith("_ci")), flush=True)
    hidden_image_gain = _hidden_image_gain(data, tastes)
    for taste, gains in hidden_image_gain.items():
        print(f"[{run.root.name}] drawing the hidden {taste} as read would add to the image, at most: "
              + ", ".join(f"{k} {v:+.3f}" for k, v in gains.items() if not k.endswith("_ci") and k != "visual_tastes"), flush=True)
    item_vectors = load_file(run.stage_dir("preference") / "item_embeddings.safetensors")
    order = torch.randperm(data.num_items, generator=torch.Generator().manual_seed(0))
    seen, held_out = order[: data.num_items * 3 // 4], order[data.num_items * 3 // 4 :]
    items: dict[str, dict[str, float]] = {}
    for taste in sorted(data.user_tastes):
        labels = torch.from_numpy(data.item_labels(taste))
        fit, score = seen[labels[seen] >= 0], held_out[labels[held_out] >= 0]
        row = {f"features_{m}": features[m] for m in features if not m.endswith("_mask")}
        row |= {f"vectors_{m}": v for m, v in item_vectors.items() if f"features_{m}" in row}
        items[taste] = {name: round(float(linear_probe_hits(x, labels, fit, score).float().mean()), 4) for name, x in sorted(row.items())}
        print(f"[{run.root.name}] items' {taste}: " + ", ".join(f"{k} {v}" for k, v in items[taste].items()), flush=True)
    return {"n_train": len(roles.training), "n_eval": len(roles.evaluation), "tastes": tastes, "items": items,
            "hidden_image_gain": hidden_image_gain}


def _hidden_image_gain(data: InteractionData, tastes: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """Per hidden visual taste, each reading's ceiling gain in image personalization over words (module docstring)."""
    visual = taste_attributes(data, "visual")
    out: dict[str, dict[str, object]] = {}
    for taste in visual:
        if not data.attributes[taste].hidden:
            continue
        row, chance = tastes[taste], float(tastes[taste]["chance"])  # type: ignore[arg-type]
        gains: dict[str, object] = {"visual_tastes": len(visual)}
        for name, rate in row.items():
            if name == "chance" or name.endswith("_ci"):
                continue
            gains[name] = round((float(rate) - chance) / len(visual), 4)  # type: ignore[arg-type]
            gains[f"{name}_ci"] = [round((float(v) - chance) / len(visual), 4) for v in row[f"{name}_ci"]]  # type: ignore[union-attr]
        out[taste] = gains
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", default=[Path("runs/default"), Path("runs/sparse")])
    args = parse_args_with_check(parser, TARGETS)
    torch.manual_seed(0)
    result = {"runs": {str(path): probe_run(RunDirectory(path)) for path in args.runs}}
    print_result(result, TARGETS, args.check)


if __name__ == "__main__":
    main()
