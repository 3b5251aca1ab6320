"""``pmg generate``: an image and texts for one user from a run whose generator stage completed.

    pmg generate --run DIR --user ID [--category C] [--reference ITEM] [--no-tokens] [--out FILE]

Writes ``FILE`` (PNG; default ``<run>/generator/generated/<user>.png``) and ``FILE`` with
``.json`` (the prompts and generated texts). A user in the dataset without tokens (added
after the quantize stage), or ``--no-tokens``, gets the no-token (cold-start) prompt.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pmg.config import load_config
from pmg.generator.config import GeneratorConfig
from pmg.runs import RunDirectory, RunError

__all__ = ["generate_command"]


def _find(ids: list[str], wanted: str, what: str, hint: str) -> int:
    try:
        return ids.index(wanted)
    except ValueError:
        examples = ", ".join(ids[:5])
        raise RunError(f"unknown {what} {wanted!r}: {hint} (e.g. {examples}{', …' if len(ids) > 5 else ''})") from None


def generate_command(args: argparse.Namespace) -> int:
    """Handler of ``pmg generate`` (``args`` from ``pmg.cli.build_parser``); returns the exit status."""
    from pmg.data.dataset_stage import load_prepared
    from pmg.generator.stage import generate_for_user, load_generators, user_fragments
    from pmg.quantize.stage import load_user_tokens
    from pmg.zoo.manifest import load_zoo

    run = RunDirectory(args.run)
    run.require("generator")
    config = load_config(GeneratorConfig, run.stage_dir("generator") / "config.yaml")
    if args.user is None and not args.no_tokens:
        raise RunError("give --user ID (ids are listed in <run>/quantize/user_tokens.jsonl), or --no-tokens for a cold start")
    data, _ = load_prepared(run)
    user: int | None = None
    if args.user is not None:
        user = _find(data.user_ids, args.user, "user",
                     f"user ids are the \"user_id\" fields of {run.root / 'quantize' / 'user_tokens.jsonl'}")
    reference = None
    if args.reference is not None:
        reference = _find([item.item_id for item in data.items], args.reference, "item",
                          f"item ids are the \"item_id\" fields of {run.root / 'data' / 'dataset'}")
        if data.items[reference].image is None:
            raise RunError(f"item {args.reference!r} has no image to use as a reference")
    if not 0.0 < args.strength <= 1.0:
        raise RunError(f"--strength must be in (0, 1], got {args.strength}")
    text_fragment = image_fragment = None
    if user is not None and not args.no_tokens:
        tokens = load_user_tokens(run)
        text_fragment = user_fragments(data, tokens, [m for m in config.text.modalities if m in tokens.codes])[user]
        image_fragment = user_fragments(data, tokens, [m for m in config.image.modalities if m in tokens.codes])[user]
    text_adapter, image_adapter = load_generators(run, load_zoo(run))
    result = generate_for_user(
        data, config, user=user, text_fragment=text_fragment, image_fragment=image_fragment,
        text_adapter=text_adapter, image_adapter=image_adapter,
        subject=f"a {args.category}" if args.category else None, reference_item=reference, strength=args.strength,
    )
    name = args.user if args.user is not None else "cold_start"
    out = Path(args.out) if args.out else run.stage_dir("generator") / "generated" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"user_id": args.user, "cold_start": text_fragment is None and image_fragment is None,
              "text_prompt": result.text_prompt, "texts": result.texts, "image_prompt": result.image_prompt}
    if result.image is not None:
        result.image.save(out)
        record["image"] = str(out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print(f"image prompt: {result.image_prompt}")
    for target, text in result.texts.items():
        print(f"{target}: {text}")
    print(f"written: {out if result.image is not None else ''} {out.with_suffix('.json')}")
    return 0
