"""Do the preference tokens carry the user's taste? The default variant with each user's own tokens
against the same prompts with another evaluation user's tokens (the words stay the user's own).

Usage:
    uv run --frozen python benchmarks/token_shuffle.py --run runs/default --users 200
    uv run --frozen python benchmarks/token_shuffle.py --check-file saved.log   # a saved output against TARGETS (none)

Users: the data stage's evaluation users with tokens (at most ``--users``). ``own``: the run's
prompts through the reward stage's adapters, as ``pmg evaluate``'s ``tokens_reward``. ``shuffled``:
the same, but the tokens of text and image are those of another user of the set (a seeded
derangement). If the tokens carry nothing of the user beyond a prompt format the adapters know,
the two are equal; the paired difference own − shuffled (95% bootstrap interval) is what the
user's own tokens add. Per taste: the image shows (judge) / the text names first the user's value.

No target is stated for it (``TARGETS`` is empty): it measures what the tokens carry.

The LAST line is one JSON object: ``{"run", "n_users", "own": {...}, "shuffled": {...},
"own_minus_shuffled": {"image_personalization", "image_personalization_ci", "text_personalization", ...}}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pmg.benchmark_targets import Targets, parse_args_with_check, print_result
from pmg.evaluate.generation import VariantGenerators
from pmg.evaluate.intervals import bootstrap_interval
from pmg.evaluate.stage import evaluation_users, load_generation_inputs
from pmg.generator.evaluation import named_value, taste_attributes
from pmg.generator.prompts import joined_fragment, user_prompts
from pmg.reward import load_reward_generators
from pmg.runs import RunDirectory, RunError

TARGETS: Targets = {}


def _derangement(count: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(count) with no fixed point (count >= 2)."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(count)
        if not np.any(order == np.arange(count)):
            return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"))
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args_with_check(parser, TARGETS)

    run = RunDirectory(args.run)
    inputs = load_generation_inputs(run, tastes_for="benchmarks/token_shuffle.py")
    data, split, zoo, tokens, generator = inputs.data, inputs.split, inputs.zoo, inputs.tokens, inputs.generator
    text, image = load_reward_generators(run, zoo)
    if text is None or image is None:
        raise RunError(f"{run.root}: this benchmark needs both the text and the image generator")
    users = evaluation_users(run, data, tokens, args.users)
    if len(users) < 2:
        raise RunError(f"{run.root}: needs at least 2 evaluation users with tokens")
    prompts = user_prompts(data, generator, tokens, split.train)
    other = dict(zip(users, [users[k] for k in _derangement(len(users), args.seed)], strict=True))
    shuffled_text = list(prompts.text)
    shuffled_image = list(prompts.image)
    for user in users:
        shuffled_text[user] = joined_fragment(prompts.text_words[user], prompts.text_tokens[other[user]])
        shuffled_image[user] = prompts.image[other[user]]
    variants = {
        "own": VariantGenerators(text, image, split.train, prompts.text, prompts.image, prompts.subject_words),
        "shuffled": VariantGenerators(text, image, split.train, shuffled_text, shuffled_image, prompts.subject_words),
    }
    judge = zoo.load_judge()
    visual, textual = taste_attributes(data, "visual"), taste_attributes(data, "textual")
    per_user: dict[str, dict[str, np.ndarray]] = {}
    result: dict[str, object] = {"run": str(run.root), "n_users": len(users)}
    for name, variant in variants.items():
        with torch.no_grad():
            made = variant.generate_many(data, generator, users)
        seen = judge.predict_values([g.image for g in made])
        hits = {f"image_{t}": np.array([r[t] == data.user_tastes[t][u] for r, u in zip(seen, users, strict=True)], float) for t in visual}
        hits |= {f"text_{t}": np.array([named_value(g.text, values) == data.user_tastes[t][u] for g, u in zip(made, users, strict=True)],
                                       float) for t, values in textual.items()}
        hits["image_personalization"] = np.mean([hits[f"image_{t}"] for t in visual], axis=0)
        hits["text_personalization"] = np.mean([hits[f"text_{t}"] for t in textual], axis=0)
        per_user[name] = hits
        result[name] = {k: round(float(v.mean()), 4) for k, v in hits.items()}
        print(f"[{name}] " + ", ".join(f"{k} {v}" for k, v in result[name].items()), flush=True)  # type: ignore[union-attr]
    difference: dict[str, object] = {}
    for metric in per_user["own"]:
        delta = per_user["own"][metric] - per_user["shuffled"][metric]
        difference[metric] = round(float(delta.mean()), 4)
        difference[f"{metric}_ci"] = [round(v, 4) for v in bootstrap_interval(delta)]
    result["own_minus_shuffled"] = difference
    print_result(result, TARGETS, args.check)


if __name__ == "__main__":
    main()
