"""The ``pmg`` command line.

Conventions follow LightningCLI: ``--config FILE`` (YAML), then ``key=value`` overrides
with dotted keys, and ``--print_config`` to show the merged configuration and exit.

    pmg pipeline [--config FILE] [--run DIR] [--quick] [--force STAGE ...] [--until STAGE] [key=value ...]
    pmg data catalog --out DIR [--seed N] [--config FILE] [key=value ...]
    pmg data convert {movielens,amazon2023,table} --src PATH --out DIR [...]
    pmg data posters --src MOVIELENS_DIR --out DIR [--seed N]
    pmg data info DIR
    pmg <stage> fit [--config FILE] [--run DIR] [key=value ...]   (zoo, preference, quantize, generator, reward)
    pmg evaluate|report [--run DIR] [--config FILE] [key=value ...]  (on a run whose earlier stages completed)
    pmg generate --run DIR --user ID [--category C] [--reference ITEM [--tasks-config FILE]] [--no-tokens] [--out FILE]
    pmg generate --run DIR --users all|FILE [--out DIR] [--shard-size N] [--batch-size N] [--devices N --strategy ddp] [--sft]
    pmg recommend|search|rate|explain --run DIR --user ID [...]   (see pmg.tasks.cli)
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from pmg import __version__
from pmg.config import ConfigError, config_to_yaml, load_config
from pmg.data import CatalogConfig, read_dataset, write_catalog, write_dataset
from pmg.data.dataset_stage import REJECTED_FILE, SKIPPED_IMAGES_FILE, ItemKindConfig
from pmg.data.images import OnBadImages, write_skipped_images
from pmg.data.posters import write_standin_posters
from pmg.data.records import DatasetError, Duplicates, OnBadRows, write_rejected_rows
from pmg.data.sources import TableMapping, load_amazon2023, load_movielens, load_table
from pmg.data.split import kcore
from pmg.data.subjects import image_subject
from pmg.runs import RunDirectory, RunError

# pmg.pipeline and pmg.tasks.cli import every stage, and with them torch_geometric, whose import
# warns: they are imported inside the functions below, after main() has quietened third-party output.

__all__ = ["main", "build_parser"]


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--print_config", action="store_true", help="print the merged config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted keys")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pmg", description="Personalized multimodal generation from discrete preference tokens.")
    parser.add_argument("--version", action="version", version=f"pmg {__version__}")
    # main() reads it anywhere on the line (pmg pipeline --verbose too); here for --help.
    parser.add_argument("--verbose", action="store_true",
                        help="keep every third-party log line, progress bar and warning (Lightning, transformers, diffusers)")
    commands = parser.add_subparsers(dest="command", required=True)

    pipeline = commands.add_parser("pipeline", help="run every stage end to end (default: the embedded catalog)")
    _add_config_args(pipeline)
    pipeline.add_argument("--run", type=Path, help="run directory (overrides run_dir)")
    pipeline.add_argument("--quick", action="store_true",
                          help="the smoke profile's step counts (on its small catalog, or on --config's data in <run_dir>-quick)")
    pipeline.add_argument("--force", nargs="+", default=[], metavar="STAGE", help="redo these stages (or 'all')")
    pipeline.add_argument("--until", metavar="STAGE", help="stop after this stage (e.g. zoo, before a multi-node fit)")

    data = commands.add_parser("data", help="datasets: generate the catalog, convert, inspect")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    catalog = data_commands.add_parser("catalog", help="generate the embedded catalog")
    catalog.add_argument("--out", type=Path, required=True)
    catalog.add_argument("--seed", type=int)
    _add_config_args(catalog)

    convert = data_commands.add_parser("convert", help="convert a public dataset into the pmg format")
    convert.add_argument("kind", choices=("movielens", "amazon2023", "table"))
    convert.add_argument("--src", type=Path, required=True, help="MovieLens folder, reviews JSONL, or interactions table")
    convert.add_argument("--out", type=Path, required=True)
    convert.add_argument("--images", type=Path, help="folder of item images (posters for MovieLens)")
    convert.add_argument("--meta", type=Path, help="amazon2023: item metadata JSONL")
    convert.add_argument("--items", type=Path, help="table: item file (CSV/JSONL)")
    convert.add_argument("--map", nargs="*", default=[], metavar="field=column", help="table: column mapping")
    convert.add_argument("--kcore", nargs=2, type=int, metavar=("USER_K", "ITEM_K"))
    convert.add_argument("--subject", help="what an item's image shows, e.g. 'a listing photo' (default: the source's; a table's: 'a product')")
    convert.add_argument("--subject-attribute", help="the item attribute naming an item's own subject ('' for none; a table's default: category)")
    convert.add_argument("--duplicates", choices=[policy.value for policy in Duplicates], default=Duplicates.error.value,
                         help="an interaction repeating an earlier one's user, item and timestamp: a bad row (error) or dropped (drop)")
    convert.add_argument("--on-bad-rows", choices=[policy.value for policy in OnBadRows], default=OnBadRows.error.value,
                         help="an interaction row that cannot be used: stop at it (error) or set it aside in <out>/rejected.csv (skip)")
    convert.add_argument("--on-bad-images", choices=[policy.value for policy in OnBadImages], default=OnBadImages.error.value,
                         help="an item image that is missing, not an image, truncated or damaged: stop at it (error) or keep the "
                              "item without image, listed in <out>/skipped_images.csv (skip)")

    posters = data_commands.add_parser("posters", help="stand-in posters {movieId}.jpg for a MovieLens folder (tests, demos)")
    posters.add_argument("--src", type=Path, required=True, help="MovieLens folder (latest, 100k or 1m)")
    posters.add_argument("--out", type=Path, required=True, help="the posters folder to write (data.images)")
    posters.add_argument("--seed", type=int, default=0)

    info = data_commands.add_parser("info", help="summarise a dataset folder")
    info.add_argument("path", type=Path)

    generate = commands.add_parser("generate", help="an image and texts for one user, or for many into shards, from a trained run")
    generate.add_argument("--run", type=Path, default=Path("runs/default"), help="run directory (after the generator stage)")
    who = generate.add_mutually_exclusive_group()
    who.add_argument("--user", help="user id (see <run>/quantize/user_tokens.jsonl); omit with --no-tokens")
    who.add_argument("--users", metavar="all|FILE",
                     help="every user ('all') or those of FILE (one id a line), into tar shards and a manifest in --out")
    generate.add_argument("--category", help="image subject category, e.g. 'dress' (default: the user's most liked)")
    generate.add_argument("--reference", help="item id whose image is personalized (image-to-image)")
    generate.add_argument("--strength", type=float, default=0.6, help="with --reference: how far from it, in (0, 1]")
    generate.add_argument("--no-tokens", action="store_true", help="the no-token prompt (cold start / baseline)")
    generate.add_argument("--sft", action="store_true", help="the generator stage's adapters even when the reward stage has run")
    generate.add_argument("--out", type=Path, help="image file (default: <run>/generator/generated/<user>.png); texts beside it as .json; "
                          "with --users a folder (default: <run>/generator/generated/batch)")
    generate.add_argument("--shard-size", type=int, default=256, help="with --users: users per shard")
    generate.add_argument("--batch-size", type=int, default=16, help="with --users: users per generator call")
    generate.add_argument("--devices", help="with --users: Lightning devices (default: the generator stage's trainer.devices)")
    generate.add_argument("--strategy", help="with --users: Lightning strategy, e.g. ddp (default: the generator stage's trainer.strategy)")
    generate.add_argument("--num-nodes", type=int, help="with --users: nodes (default: the generator stage's trainer.num_nodes)")
    generate.add_argument("--tasks-config", type=Path, help="with --reference: YAML of the history weighting (configs/tasks.yaml)")
    _add_task_parsers(commands)

    # Imported after quietening (the note below the module imports).
    from pmg.pipeline import STAGES

    for stage in STAGES[1:]:
        stage_parser = commands.add_parser(stage.name, help=stage.help)
        if stage.name in RUN_STAGES:
            # Nothing to fit: `pmg evaluate --run DIR` computes from the run as it is.
            _add_config_args(stage_parser)
            stage_parser.add_argument("--run", type=Path, default=Path("runs/default"), help="run directory (a completed pipeline run)")
            continue
        actions = stage_parser.add_subparsers(dest="action", required=True)
        fit = actions.add_parser("fit", help=f"run the {stage.name} stage on a run directory")
        _add_config_args(fit)
        fit.add_argument("--run", type=Path, default=Path("runs/default"), help="run directory")
    return parser


# Stages run as `pmg <stage> --run DIR` (they train nothing, so no `fit` action).
RUN_STAGES = ("evaluate", "report")

# The unified tasks on a completed run (handlers in pmg.tasks.cli).
TASK_COMMANDS = ("recommend", "search", "rate", "explain")


def _add_task_parsers(commands) -> None:
    """``pmg recommend/search/rate/explain``: the unified tasks on a completed run (``pmg.tasks``)."""
    run_help = "run directory (a completed pipeline run)"
    user_help = "user id (see <run>/quantize/user_tokens.jsonl)"
    item_help = "item id (see <run>/data/dataset/items.jsonl)"
    helps = ("top-k unseen items for a user", "items for a text query, personalised for a user",
             "a user's predicted rating of an item; --eval: test RMSE", "why a user would like an item, from the text generator")
    recommend, search, rate, explain = (commands.add_parser(name, help=h) for name, h in zip(TASK_COMMANDS, helps, strict=True))
    for task in (recommend, search, rate, explain):
        _add_config_args(task)
        task.add_argument("--run", type=Path, default=Path("runs/default"), help=run_help)
    for task in (recommend, search, explain):
        task.add_argument("--user", required=True, help=user_help)
    for task in (recommend, search):
        task.add_argument("-k", type=int, default=10, help="how many items")
    search.add_argument("--query", required=True, help='e.g. "red silk dress"')
    rate.add_argument("--user", help=user_help)
    rate.add_argument("--item", help=item_help)
    rate.add_argument("--eval", action="store_true", help="print the head's test RMSE against the training-mean baseline")
    explain.add_argument("--item", required=True, help=item_help)


def _stage_fit(args: argparse.Namespace) -> int:
    # Imported after quietening (the note below the module imports).
    from pmg.pipeline import STAGES

    position = [s.name for s in STAGES].index(args.command)
    stage = STAGES[position]
    config = load_config(stage.config_type, args.config, args.overrides)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    if stage.name in RUN_STAGES and not (args.run / "run.json").is_file():
        # RunDirectory would create an empty run here; a typo in --run should say so instead.
        raise RunError(f"{args.run} is not a run directory (no run.json); run `pmg pipeline --run {args.run}` first")
    run = RunDirectory(args.run)
    with run.lock(args.command_line):
        if stage.name in RUN_STAGES:
            for earlier in STAGES[:position]:  # name the first stage missing, not just the last one
                run.require(earlier.name)
        upstream = run.require(STAGES[position - 1].name)["fingerprint"]
        result = stage.run(config, run, upstream, True)
    print(f"[{stage.name}] {result.summary}; artifacts in {run.stage_dir(stage.name)}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    # Imported after quietening (the note below the module imports).
    from pmg.tasks.cli import generate_command

    return generate_command(args)


def _pipeline(args: argparse.Namespace) -> int:
    # Imported after quietening (the note below the module imports).
    from pmg.pipeline import PipelineConfig, quick_profile, run_pipeline

    overrides = list(args.overrides)
    config_path = quick_profile(args.config) if args.quick else args.config
    if args.run is not None:
        overrides.append(f"run_dir={args.run}")
    config = load_config(PipelineConfig, config_path, overrides)
    if args.quick and args.config is not None and args.run is None and not any(o.startswith("run_dir=") for o in overrides):
        # Its own run folder: a smoke run in the config's folder would redo every stage of the full run there.
        config.run_dir = f"{config.run_dir}-quick"
    if args.quick and not args.print_config:
        print("pmg: --quick trains every model for tens of steps and evaluates a handful of users: a check that each "
              "stage runs, not figures of quality (the zoo's held-out figures in zoo.json show how far below the default's)")
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    run_pipeline(config, force=tuple(args.force), until=args.until, command=args.command_line)
    return 0


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "catalog":
        overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
        config = load_config(CatalogConfig, args.config, overrides)
        if args.print_config:
            print(config_to_yaml(config), end="")
            return 0
        out = write_catalog(args.out, config)
        print(f"catalog written to {out}: {read_dataset(out, check_images=False).report.summary()}")
        return 0
    if args.data_command == "convert":
        if args.kind == "movielens":
            data = load_movielens(args.src, posters=args.images, duplicates=args.duplicates, on_bad_rows=args.on_bad_rows,
                                  on_bad_images=args.on_bad_images)
        elif args.kind == "amazon2023":
            if args.meta is None:
                raise ConfigError("amazon2023 needs --meta (the meta_<category>.jsonl file)")
            data = load_amazon2023(args.src, args.meta, images=args.images, duplicates=args.duplicates, on_bad_rows=args.on_bad_rows,
                                   on_bad_images=args.on_bad_images)
        else:
            mapping = load_config(TableMapping, None, args.map)
            data = load_table(args.src, items=args.items, images=args.images, mapping=mapping, duplicates=args.duplicates,
                              on_bad_rows=args.on_bad_rows, on_bad_images=args.on_bad_images)
        if args.kcore:
            data = kcore(data, *args.kcore)
        data.item_kind = ItemKindConfig(subject=args.subject, subject_attribute=args.subject_attribute).applied(data.item_kind)
        write_dataset(data, args.out)
        # After the folder: write_dataset replaced all of it, an earlier list included.
        write_rejected_rows(args.out / REJECTED_FILE, data.report.rejected)
        write_skipped_images(args.out / SKIPPED_IMAGES_FILE, data.report.skipped_images)
        print(f"{args.kind} converted to {args.out}: {data.report.summary()}")
        if data.report.rejected:
            print(f"{len(data.report.rejected)} interaction rows set aside, each with its file, line and reason: {args.out / REJECTED_FILE}")
        if data.report.skipped_images:
            print(f"{len(data.report.skipped_images)} unreadable item images left out, each with its item, file and reason: "
                  f"{args.out / SKIPPED_IMAGES_FILE}")
        return 0
    if args.data_command == "posters":
        data = load_movielens(args.src)
        write_standin_posters(data, args.out, seed=args.seed)
        print(f"{data.num_items} stand-in posters written to {args.out} (run with data.images={args.out})")
        return 0
    data = read_dataset(args.path)
    print(data.report.summary())
    print(f"items: {image_subject(data)}" + (f" (subject attribute: {data.item_kind.subject_attribute})" if data.item_kind.subject_attribute else ""))
    if data.attributes:
        print("attributes: " + ", ".join(f"{k} ({v.modality}, {len(v.values)} values)" for k, v in data.attributes.items()))
    print(f"ground-truth tastes: {'yes' if data.user_tastes else 'no'}")
    return 0


# Third-party warnings a user can do nothing about: deprecations inside our dependencies, a
# fallback that changes nothing here, peft's note on tied embeddings (the text adapter's merged and
# saved weights are tested against the unmerged adapter's logits), and Lightning's notes on what the
# stages do on purpose (frozen base models in eval mode, the quantizer's EMA codebooks without an
# optimizer, tiny epochs in tests and --quick, batch generation's predict loop that returns nothing).
_KNOWN_WARNINGS = tuple((category, re.compile(pattern)) for category, pattern in (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    (FutureWarning, r".*steps_offset"),
    (UserWarning, r"Model has `tie_word_embeddings=True` and a tied layer is part of the adapter"),
    (Warning, r".*does not have many workers"),
    (Warning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    (Warning, r"The number of training batches \(\d+\) is smaller than the logging interval"),
    (Warning, r"Found \d+ module\(s\) in eval mode at the start of training"),
    (Warning, r"`LightningModule\.configure_optimizers` returned `None`"),
    # pmg generate --users: each shard is written in predict_step, and a rerun may find every shard finished.
    (Warning, r"predict returned None if it was on purpose"),
    (Warning, r"Total length of `DataLoader` across ranks is zero"),
))
# Commands that load neither Lightning nor diffusers: they do not pay for importing them (diffusers
# alone took 12 s to import on this 2-core machine under load).
_LIGHT_COMMANDS = frozenset({"data", "recommend", "search"})


def quiet_third_party_output(command: str) -> None:
    """Keep a command's output to its own lines and Lightning's training progress bars: silence
    Lightning's per-trainer boilerplate (accelerator lines, tips, "`Trainer.fit` stopped"),
    transformers', diffusers' and bitsandbytes' info logs and loading/saving bars, and the known
    warnings above. The CLI calls it unless ``--verbose``; library code never does, so importing
    pmg changes nothing.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    shown = warnings.showwarning

    # At display rather than as filters: some imports (torch_geometric's) warn inside their own
    # warning contexts, where filters added here do not apply.
    def show_unless_known(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if not any(issubclass(category, known) and pattern.match(str(message)) for known, pattern in _KNOWN_WARNINGS):
            shown(message, category, filename, lineno, file, line)

    show_unless_known.quietens_known_warnings = True  # type: ignore[attr-defined]
    if not getattr(shown, "quietens_known_warnings", False):  # main() called again in one process: wrap once
        warnings.showwarning = show_unless_known
    if command in _LIGHT_COMMANDS:
        return
    # Lightning sets its loggers to INFO when first imported, and diffusers' progress bars have no
    # environment switch: both must be imported before they can be quietened.
    import diffusers.utils.logging
    import lightning.pytorch  # noqa: F401
    import transformers.utils.logging

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pmg`` console script; returns the exit status.

    ``--verbose`` anywhere on the command line keeps every third-party line and warning
    (:func:`quiet_third_party_output` is skipped).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    if not verbose:
        # Before the parser is built: building it imports the stages, and with them torch_geometric's warnings.
        quiet_third_party_output(next((a for a in argv if not a.startswith("-")), ""))
    args = build_parser().parse_args(argv)
    # What the run's lock names to a second writer.
    args.command_line = shlex.join(["pmg", *argv])
    try:
        if args.command == "pipeline":
            return _pipeline(args)
        if args.command == "data":
            return _data(args)
        if args.command == "generate":
            return _generate(args)
        if args.command in TASK_COMMANDS:
            # Imported after quietening (the note below the module imports).
            from pmg.tasks.cli import tasks_command

            return tasks_command(args)
        return _stage_fit(args)
    except (ConfigError, DatasetError, RunError, ValueError) as err:
        print(f"pmg: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # A full disk, a quota, a lost mount: the message names the file; the atomic writes left
        # the previous version of whatever was being written, and the stage is not marked complete.
        print(f"pmg: error: {err} (atomic writes kept the previous version of the file, not a half-written one; fix the cause and rerun)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
