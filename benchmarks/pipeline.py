"""Benchmark of the main job: wall time and peak memory of `pmg pipeline`, default and --quick.

Usage:
    uv run --frozen python benchmarks/pipeline.py                # --quick, then the default run (11-22 min on 2 CPU cores)
    uv run --frozen python benchmarks/pipeline.py --quick-only   # the smoke profile alone (a few minutes)
    uv run --frozen python benchmarks/pipeline.py --check        # then compare with TARGETS, exit 1 on a miss
    uv run --frozen python benchmarks/pipeline.py --check-file saved.log   # compare a saved output only

Protocol: each profile runs as its own `pmg pipeline` process on a new run directory, with new
zoo and feature caches, so nothing computed earlier is reused (a user's first run). Wall time is
measured around the process; peak memory is the largest resident set of the child processes
(``getrusage(RUSAGE_CHILDREN)``, which covers the pipeline and any worker it starts). The stage
lines the pipeline prints are kept, so the time of each stage shows in the log.

Beside them, the fixed CPU workload of ``benchmarks/reference_workload.py`` runs before and after
(``reference_seconds_before``, ``reference_seconds_after``); ``reference_ratio`` and
``quick_reference_ratio`` are each run's wall time over the mean of the two, the figure to compare
between sessions, since this machine's speed varies by up to 2x from one to the next.

Targets (issue 8): ``TARGETS``, what ``--check`` compares: the default run's wall time and the
peak memory, and the --quick run's wall time. ``report_path`` is the HTML report of the last
profile run (the default's, or the quick one's with --quick-only; ``quick_report_path`` the quick
one's): the report folder is copied out of the temporary run to ``runs/bench-pipeline/<profile>-report/``
(kept in place with --keep).

Progress goes to stdout; the LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pmg.benchmark_targets import Targets, at_most, last_json_line, parse_args_with_check, print_result

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "runs" / "bench-pipeline"  # where reports of temporary runs are copied
# With --quick-only the default run's minutes are not measured, so that target is missed.
TARGETS: Targets = {"minutes": at_most(15.0), "peak_rss_gb": at_most(6.0), "quick_minutes": at_most(3.0)}


def reference_seconds(steps: int | None = None) -> tuple[float, int]:
    """Wall seconds of benchmarks/reference_workload.py, in a process of its own, and the steps it
    ran (``steps``, or the workload's own default when None)."""
    command = [sys.executable, str(REPO / "benchmarks" / "reference_workload.py"),
               *(["--steps", str(steps)] if steps is not None else [])]
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if process.returncode != 0:
        print(process.stdout[-4000:], process.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"the reference workload exited with {process.returncode}")
    printed = last_json_line(process.stdout)
    seconds, ran = float(printed["seconds"]), int(printed["steps"])
    print(f"[reference] {ran} steps in {seconds:.2f}s", flush=True)
    return seconds, ran


def run_profile(name: str, args: list[str], scratch: Path, keep: bool) -> dict[str, object]:
    """One `pmg pipeline` process on fresh run/caches under ``scratch``: minutes, stage seconds and
    the report it printed (copied to ``REPORTS`` unless ``keep``: ``scratch`` is then deleted)."""
    run = scratch / name
    command = [sys.executable, "-m", "pmg.cli", "pipeline", *args, "--run", str(run),
               f"zoo.cache_dir={scratch / f'{name}-zoo-cache'}",
               f"preference.features.cache_dir={scratch / f'{name}-feature-cache'}"]
    print(f"[{name}] {' '.join(command[3:])}", flush=True)
    start = time.perf_counter()
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    minutes = (time.perf_counter() - start) / 60
    stage_seconds: dict[str, float] = {}
    for line in process.stdout.splitlines():
        match = re.match(r"\[(\w+)\] .*\(([\d.]+)s\)$", line)
        if match:
            stage_seconds[match.group(1)] = float(match.group(2))
            print(f"  {line[:160]}", flush=True)
    if process.returncode != 0:
        print(process.stdout[-4000:], process.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"[{name}] pmg pipeline exited with {process.returncode}")
    print(f"[{name}] {minutes:.2f} min", flush=True)
    printed = [line[len("report: "):] for line in process.stdout.splitlines() if line.startswith("report: ")]
    report = Path(printed[-1]) if printed else None
    if report is not None and not keep:
        copy = REPORTS / f"{name}-report"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(report.parent, copy)
        report = copy / report.name
    return {"minutes": minutes, "stage_seconds": stage_seconds, "report_path": str(report) if report else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick-only", action="store_true", help="measure the --quick profile only")
    parser.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--reference-steps", type=int,
                        help="steps of the reference workload run before and after (default: the workload's own)")
    args = parse_args_with_check(parser, TARGETS, argv)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = args.keep or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        before, reference_steps = reference_seconds(args.reference_steps)
        quick = run_profile("quick", ["--quick"], scratch, keep=args.keep is not None)
        result: dict[str, object] = {"quick_minutes": round(float(quick["minutes"]), 3),
                                     "quick_stage_seconds": quick["stage_seconds"], "quick_report_path": quick["report_path"],
                                     "report_path": quick["report_path"]}
        if not args.quick_only:
            default = run_profile("default", [], scratch, keep=args.keep is not None)
            result.update({"minutes": round(float(default["minutes"]), 3), "stage_seconds": default["stage_seconds"],
                           "report_path": default["report_path"]})
        after, _ = reference_seconds(reference_steps)
        reference = (before + after) / 2
        result.update({"reference_seconds_before": round(before, 3), "reference_seconds_after": round(after, 3),
                       "reference_steps": reference_steps,
                       "quick_reference_ratio": round(float(quick["minutes"]) * 60 / reference, 2)})
        if not args.quick_only:
            result["reference_ratio"] = round(float(default["minutes"]) * 60 / reference, 2)
        # ru_maxrss of children is in kilobytes on Linux: the largest single child process.
        result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2, 3)
        result["profiles"] = "quick" if args.quick_only else "quick+default"
    print_result(result, TARGETS, args.check, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
