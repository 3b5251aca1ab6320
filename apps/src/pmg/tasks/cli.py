"""Handlers of the commands that use a completed run (parsers in ``pmg.cli``).

    pmg recommend --run DIR --user U [-k 10]
    pmg search    --run DIR --user U --query TEXT [-k 10] [--config FILE] [key=value ...]
    pmg rate      --run DIR (--user U --item I | --eval) [--config FILE] [key=value ...]
    pmg explain   --run DIR --user U --item I [--config FILE] [key=value ...]
    pmg generate  --run DIR --user ID [--category C] [--reference ITEM [--tasks-config FILE]] [--no-tokens] [--sft] [--out FILE]

``pmg generate`` writes ``FILE`` (PNG; default ``<run>/generator/generated/<user>.png``) and
``FILE`` with ``.json`` (the prompts and generated texts). A user in the dataset without tokens
(added after the quantize stage), or ``--no-tokens``, gets the no-token (cold-start) prompt.
When the reward stage has completed its adapters are used, unless ``--sft``.

Each handler returns the exit status; errors (unknown ids, missing stages) are raised for
``pmg.cli.main`` to report with exit status 2.
"""

from __future__ import annotations

import argparse
import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from pmg.config import config_to_yaml, load_config
from pmg.data.dataset_stage import load_prepared
from pmg.generator.config import GeneratorConfig
from pmg.generator.generate import generate_for_user
from pmg.generator.prompts import joined_fragment, user_prompts
from pmg.quantize.stage import load_user_tokens
from pmg.runs import RunDirectory, RunError
from pmg.tasks.batch import generate_batch
from pmg.tasks.config import TasksConfig
from pmg.tasks.generation import (
    explain,
    reference_tokens,
    resolve_reference,
    run_generators,
    run_image_choice,
)
from pmg.tasks.ranking import recommend, search
from pmg.tasks.rating import RATING_DIR, evaluate_rating, predict_rating, rating_model
from pmg.tasks.state import load_preference_state, lookup_user

__all__ = ["generate_command", "tasks_command"]


def _recommend(args: argparse.Namespace, run: RunDirectory, config: TasksConfig) -> int:
    result = recommend(load_preference_state(run), args.user, args.k)
    note = " (cold start: no training interaction, preference inferred)" if result.cold_start else ""
    print(f"top {len(result.items)} unseen items for {result.user_id}{note}:")
    for rank, item in enumerate(result.items, 1):
        print(f"{rank:3d}. {item.item_id}  {item.score:8.4f}  {item.title}")
    return 0


def _search(args: argparse.Namespace, run: RunDirectory, config: TasksConfig) -> int:
    result = search(load_preference_state(run), args.user, args.query, config.search, args.k)
    print(f"{result.query!r} for {result.user_id} (search.query_weight {result.query_weight}):")
    print(f"{'':5}{'item':12}{'score':>8}{'query':>8}{'user':>8}  title")
    for rank, hit in enumerate(result.items, 1):
        print(f"{rank:3d}. {hit.item_id:12}{hit.score:8.3f}{hit.relevance:8.3f}{hit.preference:8.3f}  {hit.title}")
    return 0


def _rate(args: argparse.Namespace, run: RunDirectory, config: TasksConfig) -> int:
    if not args.eval and (args.user is None or args.item is None):
        raise RunError("give --user ID and --item ID (or --eval for the test RMSE)")
    model = rating_model(run, config.rating, command=args.command_line)
    if args.user is not None or args.item is not None:
        if args.user is None or args.item is None:
            raise RunError("give both --user ID and --item ID")
        data, _ = load_prepared(run)
        p = predict_rating(run, data, model, args.user, args.item)
        observed = f"; the user's own rating {p.observed:g}" if p.observed is not None else ""
        print(f"{p.user_id} → {p.item_id} ({p.title}): predicted rating {p.predicted:.2f} "
              f"(training mean {p.global_mean:.2f}{observed})")
    if args.eval:
        e = evaluate_rating(model)
        print(f"test RMSE on {e.test_rows} rated interactions: head {e.rmse:.4f}, "
              f"training-mean baseline {e.rmse_global_mean:.4f} (metrics in {run.root / RATING_DIR / 'metrics.json'})")
    return 0


def _explain(args: argparse.Namespace, run: RunDirectory, config: TasksConfig) -> int:
    result = explain(run, args.user, args.item, config.explain)
    print(f"prompt: {result.prompt}")
    print(f"{result.user_id} on {result.item_id} ({result.title}): {result.text}")
    return 0


_HANDLERS = {"recommend": _recommend, "search": _search, "rate": _rate, "explain": _explain}


def tasks_command(args: argparse.Namespace) -> int:
    """Handler of the four task commands (``args.command`` picks one); returns the exit status."""
    config = load_config(TasksConfig, args.config, args.overrides)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    if not args.run.is_dir():
        raise RunError(f"run directory {args.run} does not exist; run `pmg pipeline --run {args.run}` first")
    return _HANDLERS[args.command](args, RunDirectory(args.run), config)


def generate_command(args: argparse.Namespace) -> int:
    """Handler of ``pmg generate``; returns the exit status.

    Holds the run's lock when the output goes into the run directory (the default)."""
    run = RunDirectory(args.run)
    if args.users is not None:
        return _generate_batch(args, run)
    name = args.user if args.user is not None else "cold_start"
    out = Path(args.out) if args.out else run.root / "generator" / "generated" / f"{name}.png"
    with _locked_if_inside(run, out, args.command_line):
        return _generate(args, run, out)


def _locked_if_inside(run: RunDirectory, out: Path, command: str) -> AbstractContextManager[None]:
    """The run's lock when ``out`` is inside the run directory; nothing when it is elsewhere (the run is only read)."""
    return run.lock(command) if out.resolve().is_relative_to(run.root.resolve()) else nullcontext()


def _generate_batch(args: argparse.Namespace, run: RunDirectory) -> int:
    """``pmg generate --users all|FILE``: shards and a manifest (``pmg.tasks.batch``); the run's lock
    when they go into the run directory (the default)."""
    single = [flag for flag, given in (("--reference", args.reference), ("--category", args.category),
                                       ("--no-tokens", args.no_tokens), ("--tasks-config", args.tasks_config)) if given]
    if single:
        raise RunError(f"{', '.join(single)} apply to one user (--user); --users generates every user with their own tokens")
    out = Path(args.out) if args.out else run.root / "generator" / "generated" / "batch"
    with _locked_if_inside(run, out, args.command_line):
        trainer = {name: value for name, value in (("devices", args.devices), ("strategy", args.strategy),
                                                   ("num_nodes", args.num_nodes)) if value is not None}
        summary = generate_batch(run, out, args.users, shard_size=args.shard_size, batch_size=args.batch_size, sft=args.sft,
                                 trainer=trainer)
    if summary.global_rank == 0:
        print(summary.line())
    return 0


def _generate(args: argparse.Namespace, run: RunDirectory, out: Path) -> int:
    run.require("generator")
    config = load_config(GeneratorConfig, run.stage_dir("generator") / "config.yaml")
    if args.user is None and not args.no_tokens:
        raise RunError("give --user ID (ids are listed in <run>/quantize/user_tokens.jsonl), or --no-tokens for a cold start")
    data, split = load_prepared(run)
    # The one lookup of the id: from here on the user is its data index.
    user = lookup_user(run, data, args.user) if args.user is not None else None
    reference = resolve_reference(run, data, args.reference) if args.reference is not None else None
    if not 0.0 < args.strength <= 1.0:
        raise RunError(f"--strength must be in (0, 1], got {args.strength}")
    text_fragment = image_fragment = text_words = subject_words = None
    if user is not None and not args.no_tokens:
        prompts = user_prompts(data, config, load_user_tokens(run), split.train, users=[user])
        text_fragment, image_fragment, text_words, subject_words = prompts.text[0], prompts.image[0], prompts.text_words[0], prompts.subject_words[0]
    conditioned = None
    if reference is not None and text_fragment is not None:
        # RAGAR: the tokens are re-read from the history weighted by similarity to the reference.
        tasks = load_config(TasksConfig, args.tasks_config)
        conditioned = reference_tokens(run, data, user, reference, tasks.reference)
    if conditioned is not None:
        text_fragment = joined_fragment(text_words, conditioned.fragment(config.text.modalities))
        image_fragment = conditioned.fragment(config.image.modalities)
    stage, text_adapter, image_adapter = run_generators(run, sft=args.sft)
    result = generate_for_user(
        data, config, user=user, text_fragment=text_fragment, image_fragment=image_fragment,
        text_adapter=text_adapter, image_adapter=image_adapter, history=split.train,
        subject=f"a {args.category}" if args.category else None, keywords=subject_words, reference_item=reference, strength=args.strength,
        # The no-token prompt (--no-tokens, a cold start) stays one draw: no preference to choose by.
        image_choice=run_image_choice(run, stage) if image_adapter is not None and image_fragment is not None else None,
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
