"""Sweep of the image sampler's classifier-free guidance scale and step count on a run's evaluation users.

Usage:
    uv run --frozen python benchmarks/image_guidance.py --run runs/default --role training --users 200 --scales 2 3 5 --steps 20
    uv run --frozen python benchmarks/image_guidance.py --check-file saved.log   # a saved output against TARGETS (none)

Users: the data stage's selection or training users (``--role``, ``<run>/data/user_roles.json``),
never the evaluation users: a setting chosen here is model selection, and evaluation users are
never selected on. For each (scale, steps), every user's image is generated exactly as ``pmg evaluate`` generates
the run's default variant (the reward stage's adapters, the run's prompts, the same seed), and
the zoo's judge reads it: per visual taste, the share of users whose image shows their true value,
with a 95% bootstrap interval. The texts are not regenerated: the image prompt takes the colour
from the history keywords where there is one, so only users without one would differ. Only the
image sampler changes; use it to pick ``generator.sample.guidance_scale`` / ``num_inference_steps``.
No target is stated for it (``TARGETS`` is empty): it is a sweep for choosing a setting.

The LAST line is one JSON object: ``{"run", "role", "n_users", "settings": [{"guidance_scale",
"num_inference_steps", "<taste>": rate, "<taste>_ci": [lo, hi], "image_personalization", "seconds"}]}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from pmg.benchmark_targets import Targets, parse_args_with_check, print_result
from pmg.evaluate.generation import token_variant
from pmg.evaluate.intervals import bootstrap_interval
from pmg.evaluate.stage import evaluation_users, load_generation_inputs
from pmg.generator.evaluation import taste_attributes
from pmg.reward import load_reward_generators
from pmg.runs import RunDirectory, RunError

TARGETS: Targets = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"))
    parser.add_argument("--role", choices=["selection", "training"], default="training",
                        help="whose images are judged (never the evaluation users)")
    parser.add_argument("--users", type=int, default=200, help="at most this many users of the role (the first, in index order; 0: all)")
    parser.add_argument("--scales", type=float, nargs="+", default=[5.0, 7.5, 10.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20])
    args = parse_args_with_check(parser, TARGETS)

    run = RunDirectory(args.run)
    inputs = load_generation_inputs(run, tastes_for="benchmarks/image_guidance.py")
    data, split, zoo, tokens, generator = inputs.data, inputs.split, inputs.zoo, inputs.tokens, inputs.generator
    _, image = load_reward_generators(run, zoo)
    if image is None:
        raise RunError(f"{run.root}: no image generator")
    users = evaluation_users(run, data, tokens, args.users, args.role)
    variant = token_variant(None, image, data, split.train, tokens, generator)
    judge = zoo.load_judge()
    tastes = taste_attributes(data, "visual")
    settings = []
    for steps in args.steps:
        for scale in args.scales:
            config = dataclasses.replace(generator, sample=dataclasses.replace(generator.sample, guidance_scale=scale,
                                                                               num_inference_steps=steps))
            started = time.perf_counter()
            with torch.no_grad():
                made = variant.generate_many(data, config, users)
            seen = judge.predict_values([g.image for g in made])
            row: dict[str, object] = {"guidance_scale": scale, "num_inference_steps": steps}
            per_user = []
            for taste in tastes:
                hits = np.array([reading[taste] == data.user_tastes[taste][u] for reading, u in zip(seen, users, strict=True)], float)
                per_user.append(hits)
                row[taste], row[f"{taste}_ci"] = round(float(hits.mean()), 4), [round(v, 4) for v in bootstrap_interval(hits)]
            row["image_personalization"] = round(float(np.mean(per_user)), 4)
            row["seconds"] = round(time.perf_counter() - started, 1)
            print(f"scale {scale}, {steps} steps: " + ", ".join(f"{t} {row[t]}" for t in tastes) + f" ({row['seconds']}s)", flush=True)
            settings.append(row)
    print_result({"run": str(run.root), "role": args.role, "n_users": len(users), "settings": settings}, TARGETS, args.check)


if __name__ == "__main__":
    main()
