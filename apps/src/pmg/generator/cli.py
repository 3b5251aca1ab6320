"""``pmg generate``: an image and texts for one user from a run whose generator stage completed.

    pmg generate --run DIR --user ID [--category C] [--reference ITEM] [--no-tokens] [--sft] [--out FILE]

Writes ``FILE`` (PNG; default ``<run>/generator/generated/<user>.png``) and ``FILE`` with
``.json`` (the prompts and generated texts). A user in the dataset without tokens (added
after the quantize stage), or ``--no-tokens``, gets the no-token (cold-start) prompt.
When the reward stage has completed its adapters are used, unless ``--sft``.
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from pathlib import Path

from pmg.config import load_config
from pmg.generator.config import GeneratorConfig
from pmg.runs import RunDirectory, RunError

__all__ = ["generate_command"]


def generate_command(args: argparse.Namespace) -> int:
    """Handler of ``pmg generate`` (``args`` from ``pmg.cli.build_parser``); returns the exit status.

    Holds the run's lock when the output goes into the run directory (the default)."""
    run = RunDirectory(args.run)
    name = args.user if args.user is not None else "cold_start"
    out = Path(args.out) if args.out else run.root / "generator" / "generated" / f"{name}.png"
    with ExitStack() as stack:
        if out.resolve().is_relative_to(run.root.resolve()):
            stack.enter_context(run.lock(args.command_line))
        return _generate(args, run, out)


def _generate(args: argparse.Namespace, run: RunDirectory, out: Path) -> int:
    from pmg.data.dataset_stage import load_prepared
    from pmg.generator.prompts import joined_fragment, user_prompts
    from pmg.generator.stage import generate_for_user, load_generators
    from pmg.quantize.stage import load_user_tokens
    from pmg.tasks import TasksConfig, lookup_user, reference_tokens, resolve_reference
    from pmg.zoo.manifest import load_zoo

    run.require("generator")
    config = load_config(GeneratorConfig, run.stage_dir("generator") / "config.yaml")
    if args.user is None and not args.no_tokens:
        raise RunError("give --user ID (ids are listed in <run>/quantize/user_tokens.jsonl), or --no-tokens for a cold start")
    data, split = load_prepared(run)
    user = lookup_user(run, data, args.user) if args.user is not None else None
    reference = resolve_reference(run, data, args.reference) if args.reference is not None else None
    if not 0.0 < args.strength <= 1.0:
        raise RunError(f"--strength must be in (0, 1], got {args.strength}")
    text_fragment = image_fragment = text_words = subject_words = None
    if user is not None and not args.no_tokens:
        prompts = user_prompts(data, config, load_user_tokens(run), split.train).of([user])
        text_fragment, image_fragment, text_words, subject_words = prompts.text[0], prompts.image[0], prompts.text_words[0], prompts.subject_words[0]
    conditioned = None
    if reference is not None and text_fragment is not None:
        # RAGAR: the tokens are re-read from the history weighted by similarity to the reference.
        tasks = load_config(TasksConfig, args.tasks_config)
        conditioned = reference_tokens(run, data, user, reference, tasks.reference)
    if conditioned is not None:
        text_fragment = joined_fragment(text_words, conditioned.fragment(config.text.modalities))
        image_fragment = conditioned.fragment(config.image.modalities)
    if run.record("reward") is not None and not args.sft:
        from pmg.reward import load_reward_generators

        text_adapter, image_adapter = load_reward_generators(run, load_zoo(run))  # the reward-tuned adapters
    else:
        text_adapter, image_adapter = load_generators(run, load_zoo(run))
    result = generate_for_user(
        data, config, user=user, text_fragment=text_fragment, image_fragment=image_fragment,
        text_adapter=text_adapter, image_adapter=image_adapter, history=split.train,
        subject=f"a {args.category}" if args.category else None, keywords=subject_words, reference_item=reference, strength=args.strength,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"user_id": args.user, "cold_start": text_fragment is None and image_fragment is None,
              "text_prompt": result.text_prompt, "texts": result.texts, "image_prompt": result.image_prompt}
    if conditioned is not None:
        record["reference"] = {"item_id": conditioned.reference_id,
                               "history_weights": {m: dict(zip(conditioned.history, w.tolist(), strict=True))
                                                   for m, w in conditioned.weights.items()}}
    if result.image is not None:
        result.image.save(out)
        record["image"] = str(out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    if conditioned is not None:
        for modality in conditioned.weights:
            closest = ", ".join(f"{item} {weight:.2f}" for item, weight in conditioned.top_history(modality))
            print(f"history weighted by similarity to {conditioned.reference_id} ({modality}): {closest}")
    print(f"image prompt: {result.image_prompt}")
    for target, text in result.texts.items():
        print(f"{target}: {text}")
    print(f"written: {out if result.image is not None else ''} {out.with_suffix('.json')}")
    return 0
