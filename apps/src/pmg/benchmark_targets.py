"""The targets a benchmark states for its figures, and the one check behind every benchmark's ``--check``.

Each script in ``benchmarks/`` prints one JSON object as its last line and declares, in one mapping
``TARGETS``, the bound each checked figure must meet. A key is the figure's path into that object:
keys joined by dots, list positions as numbers (``profiles.sparse.default_vs_keywords.image_personalization``,
``default_vs_keywords.image_personalization_ci.1`` for an interval's upper end). ``--check`` compares
the benchmark's fresh result with them, ``--check-file PATH`` the last JSON line of a saved output;
both print every target missed and exit 1 if any is. A figure the result lacks is a miss: what
was not measured was not shown to be met. docs/results.md lists every benchmark's targets, and
tests/test_benchmark_targets.py checks that list and the README's statements against the code.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from pmg.cli import quiet_third_party_output

__all__ = ["Comparison", "Target", "Targets", "at_least", "at_most", "check_targets", "figure", "last_json_line",
           "parse_args_with_check", "print_result", "report_check", "rounded"]


class Comparison(StrEnum):
    AT_LEAST = ">="
    AT_MOST = "<="

    @property
    def symbol(self) -> str:
        """The sign as the README and docs/results.md write it."""
        return "≥" if self is Comparison.AT_LEAST else "≤"


@dataclass(frozen=True)
class Target:
    """A figure must be at least / at most ``bound``."""

    comparison: Comparison
    bound: float

    def met_by(self, value: float) -> bool:
        return value >= self.bound if self.comparison is Comparison.AT_LEAST else value <= self.bound

    def __str__(self) -> str:
        return f"{self.comparison} {self.bound:g}"


# Figure path into the benchmark's JSON line -> its target.
Targets = Mapping[str, Target]


def at_least(bound: float) -> Target:
    return Target(Comparison.AT_LEAST, bound)


def at_most(bound: float) -> Target:
    return Target(Comparison.AT_MOST, bound)


def figure(result: Mapping[str, Any], path: str) -> float | None:
    """The number at ``path`` in ``result``; None where the path leads nowhere or to something else."""
    node: object = result
    for key in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(key)
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    # JSON has no booleans among figures; a flag that happens to sit at the path is not one.
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None
    return float(node)


def check_targets(result: Mapping[str, Any], targets: Targets) -> list[str]:
    """One line per target of ``targets`` that ``result`` misses, in the order of ``targets``."""
    misses = []
    for path, target in targets.items():
        value = figure(result, path)
        if value is None:
            misses.append(f"{path} {target}: not measured")
        elif math.isnan(value) or not target.met_by(value):
            misses.append(f"{path} {target}: got {value:g}")
    return misses


def report_check(result: Mapping[str, Any], targets: Targets) -> int:
    """Print each missed target and the count met; the exit status (1 if any is missed)."""
    if not targets:
        print("no targets are stated for this benchmark: --check has nothing to compare", flush=True)
        return 0
    misses = check_targets(result, targets)
    for line in misses:
        print(f"target missed: {line}", flush=True)
    print(f"{len(targets) - len(misses)} of {len(targets)} targets met", flush=True)
    return 1 if misses else 0


def last_json_line(text: str) -> dict[str, Any]:
    """The JSON object on the last non-blank line of a benchmark's output."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("the output is empty")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as err:
        raise ValueError(f"its last line is not JSON ({err})") from None
    if not isinstance(result, dict):
        raise ValueError("its last line is not a JSON object")
    return result


def parse_args_with_check(parser: argparse.ArgumentParser, targets: Targets,
                          argv: list[str] | None = None) -> argparse.Namespace:
    """``parser``'s arguments plus ``--check``, ``--check-file`` and ``--verbose``; with ``--check-file``
    the saved output is checked and the process exits here, without running the benchmark. Unless
    ``--verbose``, third-party boilerplate is quietened as the ``pmg`` command does, so that the
    output is the benchmark's progress lines and its JSON."""
    parser.add_argument("--verbose", action="store_true", help="keep Lightning's and the libraries' own log lines")
    parser.add_argument("--check", action="store_true",
                        help="after the run, compare the figures with the benchmark's TARGETS; exit 1 if any is missed")
    parser.add_argument("--check-file", type=Path, metavar="PATH",
                        help="do not run: compare the last JSON line of a saved output with TARGETS")
    args = parser.parse_args(argv)
    if args.check_file is not None:
        try:
            result = last_json_line(args.check_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            parser.error(f"--check-file {args.check_file}: {err}")
        raise SystemExit(report_check(result, targets))
    if not args.verbose:
        quiet_third_party_output("benchmark")
    return args


def rounded(value: Any, digits: int = 5, *, significant: bool = False) -> Any:
    """``value`` with every finite float rounded to ``digits`` decimals (``significant``: significant
    digits), through lists and dicts: what a benchmark's JSON line carries."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return value
        return float(f"{value:.{digits}g}") if significant else round(value, digits)
    if isinstance(value, list):
        return [rounded(v, digits, significant=significant) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v, digits, significant=significant) for k, v in value.items()}
    return value


def print_result(result: Mapping[str, Any], targets: Targets, check: bool, *, sort_keys: bool = False) -> NoReturn:
    """Print the check (with ``check``) and then ``result`` as the last line, one JSON object; exit
    with the check's status."""
    status = report_check(result, targets) if check else 0
    print(json.dumps(result, sort_keys=sort_keys), flush=True)
    raise SystemExit(status)
