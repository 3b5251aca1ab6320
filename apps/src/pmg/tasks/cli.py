"""Handlers of ``pmg recommend``, ``pmg search``, ``pmg rate`` and ``pmg explain`` (parsers in ``pmg.cli``).

    pmg recommend --run DIR --user U [-k 10]
    pmg search    --run DIR --user U --query TEXT [-k 10] [--config FILE] [key=value ...]
    pmg rate      --run DIR (--user U --item I | --eval) [--config FILE] [key=value ...]
    pmg explain   --run DIR --user U --item I [--config FILE] [key=value ...]

Each handler returns the exit status; errors (unknown ids, missing stages) are raised for
``pmg.cli.main`` to report with exit status 2.
"""

from __future__ import annotations

import argparse

from pmg.config import config_to_yaml, load_config
from pmg.runs import RunDirectory, RunError
from pmg.tasks.config import TasksConfig

__all__ = ["tasks_command"]


def _recommend(args: argparse.Namespace, run: RunDirectory, config: TasksConfig) -> int:
    from pmg.tasks.ranking import recommend
    from pmg.tasks.state import load_preference_state

    result = recommend(load_preference_state(run), args.user, args.k)
    note = " (cold start: no training interaction, preference inferred)" if result.cold_start else ""
    print(f"top {len(result.items)} unseen items for {result.user_id}{note}:")
    for rank, item in enumerate(result.items, 1):
        print(f"{rank:3d}. {item.item_id}  {item.score:8.4f}  {item.title}")
    return 0


def _search(args: argparse.Namespace, run: RunDirectory, config: TasksConfig) -> int:
    from pmg.tasks.ranking import search
    from pmg.tasks.state import load_preference_state

    result = search(load_preference_state(run), args.user, args.query, config.search, args.k)
    print(f"{result.query!r} for {result.user_id} (search.query_weight {result.query_weight}):")
    print(f"{'':5}{'item':12}{'score':>8}{'query':>8}{'user':>8}  title")
    for rank, hit in enumerate(result.items, 1):
        print(f"{rank:3d}. {hit.item_id:12}{hit.score:8.3f}{hit.relevance:8.3f}{hit.preference:8.3f}  {hit.title}")
    return 0


def _rate(args: argparse.Namespace, run: RunDirectory, config: TasksConfig) -> int:
    from pmg.data.dataset_stage import load_prepared
    from pmg.tasks.rating import RATING_DIR, evaluate_rating, predict_rating, rating_model

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
    from pmg.tasks.generation import explain

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
