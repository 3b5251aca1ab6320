"""Several zoo builds side by side: ``benchmarks/zoo.py`` once per (profile, variant), in parallel
processes, each from scratch in a run of its own; one JSON object of their figures.

    uv run python benchmarks/zoo_sweep.py --variant base --variant ema=sdxl.unet.ema_decay=0.995 \
        --variant steps2400=sdxl.unet.trainer.max_steps=2400 --profiles default sparse --parallel 4

A variant is ``NAME[=key=value,key=value...]`` (``ZooConfig`` overrides as ``benchmarks/zoo.py`` takes
them, e.g. ``sdxl.unet.ema_decay=0.995``, comma-separated). Every build
has the same seeds, so two variants that differ in one setting differ in nothing else on the CPU (on
a GPU, non-deterministic kernels make even two builds of the same settings differ); images are
judged on the same held-out combinations with the same sampling noise (``--images-per-combo``
each). A build's log is ``<out>/<profile>-<name>.log``; a build that fails or passes ``--timeout``
is reported with its log's tail and does not stop the others. Meant for a machine with many cores
or a GPU (``accelerator: auto``); on the 2-core development machine run one at a time
(``--parallel 1``), about 10 minutes a build.

The last line printed is one JSON object: ``{"builds": {"<profile>/<name>": {"overrides", "status",
<benchmarks/zoo.py's figures>}}, "threads_per_build", ...}``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pmg.benchmark_targets import Targets, last_json_line, parse_args_with_check, print_result
from pmg.data.catalog import CATALOG_PROFILES

REPO = Path(__file__).resolve().parents[1]
# No target: a sweep compares settings with each other (benchmarks/zoo.py holds the zoo's targets).
TARGETS: Targets = {}
# Progress bars would fill the logs; each fit still logs to TensorBoard.
QUIET = tuple(f"{model}.trainer.enable_progress_bar=false" for model in ("clip", "sdxl.vae", "sdxl.unet", "lm", "judge"))
# What the summary lines show of each build (all of zoo.py's figures go into the JSON).
SHOWN = ("t2i_colour_acc", "t2i_pattern_acc", "t2i_category_acc", "vae_colour_acc", "clip_top1", "judge_acc", "minutes")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"name=key=value,key=value"`` → ``("name", ["key=value", "key=value"])``; ``"name"`` → no overrides."""
    name, _, overrides = text.partition("=")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"a variant is NAME[=key=value,...] with NAME in letters, digits, - and _; got {text!r}")
    pairs = [pair for pair in overrides.split(",") if pair]
    bad = [pair for pair in pairs if "=" not in pair]
    if bad:
        raise argparse.ArgumentTypeError(f"variant {name!r}: {bad} are not key=value overrides")
    return name, pairs


def _build(profile: str, name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    log = args.out / f"{profile}-{name}.log"
    command = [sys.executable, str(REPO / "benchmarks" / "zoo.py"), "--profile", profile, "--run", str(args.out / f"{profile}-{name}"),
               "--images-per-combo", str(args.images_per_combo), *QUIET, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    print(f"[{profile}/{name}] started: {' '.join(overrides) or 'defaults'}", flush=True)
    with log.open("w") as out:
        try:
            status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
    text = log.read_text(errors="replace")
    try:
        figures = last_json_line(text)
    except ValueError:
        figures = {"tail": text[-2000:]}
    result = {"overrides": overrides, "status": status, "wall_minutes": round((time.perf_counter() - started) / 60, 2), **figures}
    shown = " ".join(f"{key} {result[key]}" for key in SHOWN if key in result)
    print(f"[{profile}/{name}] status {status}: {shown}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="NAME[=key=value,...]",
                        help="a build to make (one or more)")
    parser.add_argument("--profiles", nargs="+", choices=CATALOG_PROFILES, default=["default"])
    parser.add_argument("--parallel", type=int, default=1, help="builds at a time")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per build (OMP_NUM_THREADS)")
    parser.add_argument("--images-per-combo", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=None, help="seconds a build may take before it is stopped")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "zoo-sweep")
    args = parse_args_with_check(parser, TARGETS)
    if not args.variant:
        parser.error("name at least one --variant NAME[=key=value,...]")
    names = [name for name, _ in args.variant]
    if len(set(names)) != len(names):
        parser.error(f"variant names must differ: {names}")
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(profile, name, overrides) for profile in args.profiles for name, overrides in args.variant]
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        results = list(pool.map(lambda job: _build(*job, args), jobs))
    builds = {f"{profile}/{name}": result for (profile, name, _), result in zip(jobs, results, strict=True)}
    print_result({"builds": builds, "threads_per_build": args.threads, "parallel": args.parallel,
                  "images_per_combo": args.images_per_combo}, TARGETS, args.check)


if __name__ == "__main__":
    main()
