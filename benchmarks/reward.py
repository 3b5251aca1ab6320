"""Benchmark of the reward stage on the catalog: cross-modal consistency and personalization of
the generated content, before (the generator stage's SFT adapters) and after the reward stage,
with the reward's ablations in one run.

    uv run --frozen python benchmarks/reward.py [--run runs/default] [--users 100]   # a completed default pipeline run
    uv run --frozen python benchmarks/reward.py --quick                              # builds a --quick run itself (minutes)
    uv run --frozen python benchmarks/reward.py --check        # then compare with TARGETS, exit 1 on a miss
    uv run --frozen python benchmarks/reward.py --check-file saved.log   # compare a saved output only

Protocol (same users for every variant: the data stage's evaluation users, never trained on nor
selected on by any stage, at most ``--users``): each user gets what the pipeline generates
(``pmg.generator.generate.generate_for_users``, the generator's config): greedy texts of every
``generator.text.targets`` (the tokens of ``generator.text.modalities`` in the prompt), then one
seeded image (the visual tokens, the most liked category and the colour the texts name,
``generator.image.subject_from_text``). The texts are read joined, as ``pmg evaluate`` reads them.

- consistency: the colour named in the texts (the first catalog colour word; none →
  inconsistent) equals the colour the zoo's attribute judge reads off the image;
- personalization: the mean of "the judge reads the user's true colour in the image" and
  "the text names the user's true material" (ground truth: the dataset's user tastes);
  ``*_image_colour`` / ``*_text_material`` are the two parts.

Variants: ``before`` (SFT), ``after`` (both rewards: the run's own reward stage, with the
weights of its config), ``consistency_only`` and ``personalization_only`` (the reward stage
rerun on a copy of the run with the other weight at 0, everything else the same).
``personalization_change`` is after minus before (both rewards).

Targets: ``TARGETS`` (what ``--check`` compares): consistency after the reward stage, and how far
personalization may fall on the way.

Progress goes to stdout; the LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from pmg.benchmark_targets import Targets, at_least, parse_args_with_check, print_result

# Round 1's goals: the reward stage makes image and text agree without costing much personalization.
TARGETS: Targets = {"consistency_after": at_least(0.80), "personalization_change": at_least(-0.02)}


def evaluate(run, data, split, generator, users: list[int], adapters, judge) -> dict[str, float]:
    """Consistency and personalization of ``adapters`` (text, image) for ``users`` (``pmg.generator.evaluation``)."""
    from pmg.generator.evaluation import consistency_hits, named_value
    from pmg.generator.generate import generate_for_users
    from pmg.generator.prompts import user_prompts
    from pmg.quantize.stage import load_user_tokens

    prompts = user_prompts(data, generator, load_user_tokens(run), split.train, users=users)
    colours, materials = data.attributes["colour"].values, data.attributes["material"].values
    results = generate_for_users(data, generator, users=users, text_fragments=prompts.text, image_fragments=prompts.image,
                                 keywords=prompts.subject_words, text_adapter=adapters[0], image_adapter=adapters[1],
                                 history=split.train)
    seen = [reading["colour"] for reading in judge.predict_values([r.image for r in results])]
    texts = [r.text for r in results]  # every text the generator writes, as `pmg evaluate` reads them
    n = len(users)
    consistent = int(consistency_hits(texts, seen, colours).sum())
    image_colour = sum(colour == data.user_tastes["colour"][u] for colour, u in zip(seen, users, strict=True))
    text_material = sum(named_value(text, materials) == data.user_tastes["material"][u] for text, u in zip(texts, users, strict=True))
    return {"consistency": consistent / n, "personalization": (image_colour + text_material) / (2 * n),
            "image_colour": image_colour / n, "text_material": text_material / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"), help="a run whose pipeline completed (reward stage included)")
    parser.add_argument("--quick", action="store_true", help="build a --quick pipeline run in a temporary folder and use it")
    parser.add_argument("--users", type=int, default=200, help="at most this many of the data stage's evaluation users")
    args = parse_args_with_check(parser, TARGETS)

    from pmg.cli import main as pmg_main
    from pmg.config import load_config
    from pmg.data.dataset_stage import load_prepared, load_user_roles
    from pmg.generator.config import GeneratorConfig
    from pmg.generator.generate import load_generators
    from pmg.reward import RewardConfig, load_reward_generators, run_reward_stage
    from pmg.runs import RunDirectory
    from pmg.zoo.manifest import load_zoo

    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="pmg-bench-reward-"))
    try:
        run_path = args.run
        if args.quick:
            run_path = scratch / "quick"
            print(f"building a --quick run in {run_path}", flush=True)
            if pmg_main(["pipeline", "--quick", "--run", str(run_path)]) != 0:
                raise SystemExit("the --quick pipeline failed")
        run = RunDirectory(run_path)
        run.require("reward")
        data, split = load_prepared(run)
        if data.user_tastes is None or "colour" not in data.user_tastes or "material" not in data.user_tastes:
            raise SystemExit(f"{run_path}: the dataset has no ground-truth colour/material tastes (use the catalog)")
        zoo = load_zoo(run)
        judge = zoo.load_judge()
        generator = load_config(GeneratorConfig, run.stage_dir("generator") / "config.yaml")
        reward = load_config(RewardConfig, run.stage_dir("reward") / "config.yaml")
        users = load_user_roles(run, data).evaluation.tolist()[: args.users]
        print(f"{len(users)} evaluation users; reward weights {reward.weights.as_dict()}", flush=True)

        def measure(name: str, adapters) -> dict[str, float]:
            t = time.perf_counter()
            figures = evaluate(run, data, split, generator, users, adapters, judge)
            print(f"{name}: {figures} ({time.perf_counter() - t:.0f}s)", flush=True)
            return figures

        results = {"before": measure("before (SFT)", load_generators(run, zoo)),
                   "after": measure("after (both rewards)", load_reward_generators(run, zoo))}
        for name, weights in (("consistency_only", {"personalization": 0.0}), ("personalization_only", {"consistency": 0.0})):
            copy = RunDirectory(shutil.copytree(run.root, scratch / name, ignore=shutil.ignore_patterns("tb", "samples")))
            config = dataclasses.replace(reward, weights=dataclasses.replace(reward.weights, **weights))
            t = time.perf_counter()
            result = run_reward_stage(config, copy, run.require("generator")["fingerprint"], True)
            print(f"[reward {name}] {result.summary} ({time.perf_counter() - t:.0f}s)", flush=True)
            results[name] = measure(name, load_reward_generators(copy, zoo))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    figures: dict[str, object] = {"users": len(users), "quick": bool(args.quick)}
    for when in ("before", "after"):
        for key, value in results[when].items():
            figures[f"{key}_{when}"] = round(value, 4)
    for name in ("consistency_only", "personalization_only"):
        for key, value in results[name].items():
            figures[f"{key}_after_{name}"] = round(value, 4)
    for key, value in results["after"].items():
        figures[f"{key}_after_both"] = round(value, 4)
    figures["personalization_change"] = round(results["after"]["personalization"] - results["before"]["personalization"], 4)
    figures["minutes"] = round((time.perf_counter() - started) / 60, 2)
    print_result(figures, TARGETS, args.check)


if __name__ == "__main__":
    main()
