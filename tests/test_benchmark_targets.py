"""The benchmarks' targets: the one check behind every ``--check`` / ``--check-file``, each benchmark
wired to it, and the README's and docs/results.md's statements of the targets equal to the code's
``TARGETS``."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType

import pytest

from pmg.benchmark_targets import (
    Comparison,
    Target,
    Targets,
    at_least,
    at_most,
    check_targets,
    figure,
    parse_args_with_check,
    print_result,
)

REPO = Path(__file__).resolve().parents[1]
# Every script in benchmarks/ but write_results.py, which writes docs/results.md from their saved outputs.
BENCHMARK_NAMES = sorted(path.stem for path in (REPO / "benchmarks").glob("*.py") if path.stem != "write_results")
# A stated target: a figure in backticks, the sign, a number ("`minutes` ≤ 15 min").
STATED_TARGET = re.compile(r"`([A-Za-z_][\w.]*)` ([≥≤]) ([−+-]?\d+(?:\.\d+)?)")
# "7 of its 10 targets": the second number is how many the benchmark has.
TARGET_COUNT = re.compile(r"\d+ of its (\d+) targets")
BENCHMARK_NAMED = re.compile(r"benchmarks/(\w+)\.py")
SIGNS = {"≥": Comparison.AT_LEAST, "≤": Comparison.AT_MOST}


@pytest.fixture(scope="module")
def all_targets(benchmark_module: Callable[[str], ModuleType]) -> dict[str, Targets]:
    return {name: benchmark_module(name).TARGETS for name in BENCHMARK_NAMES}


def _number(text: str) -> float:
    return float(text.replace("−", "-"))


def _leaf(result: dict, path: str) -> tuple[dict | list, str | int]:
    """The object or list that holds the figure at ``path``, made where missing, and its key there
    (a list only as the figure's own holder: no target's path runs through one)."""
    keys = path.split(".")
    node = result
    for key, following in zip(keys[:-1], keys[1:], strict=True):
        node = node.setdefault(key, [] if following.isdigit() else {})
    if isinstance(node, list):
        node.extend([0.0] * (int(keys[-1]) + 1 - len(node)))
        return node, int(keys[-1])
    return node, keys[-1]


def _meeting(targets: Targets) -> dict:
    """A result shaped by ``targets``' paths with every figure exactly at its bound."""
    result: dict = {}
    for path, target in targets.items():
        holder, key = _leaf(result, path)
        holder[key] = target.bound  # type: ignore[index]
    return result


def _missing_by_one(result: dict, path: str, target: Target) -> dict:
    """A copy of ``result`` with the figure at ``path`` just past its bound."""
    missed = json.loads(json.dumps(result))
    holder, key = _leaf(missed, path)
    holder[key] = target.bound + (-0.01 if target.comparison is Comparison.AT_LEAST else 0.01)  # type: ignore[index]
    return missed


# ------------------------------------------------------------------------------------- the check


def test_figures_are_found_by_path_through_objects_and_lists() -> None:
    result = {"a": {"b": [0.1, 0.4]}, "n": 3, "flag": True, "text": "0.5", "none": None}
    assert figure(result, "a.b.1") == 0.4
    assert figure(result, "n") == 3.0
    for path in ("a.b.2", "a.b.x", "a.c", "n.m", "flag", "text", "none", "missing"):
        assert figure(result, path) is None, path


def test_each_miss_is_named_with_its_figure_and_what_was_not_measured() -> None:
    targets = {"a.b.1": at_least(0.5), "n": at_most(2.0), "gone": at_least(0.0), "nan": at_most(1.0), "ok": at_most(1.0)}
    result = {"a": {"b": [0.9, 0.4]}, "n": 3, "nan": float("nan"), "ok": 1.0}
    assert check_targets(result, targets) == [
        "a.b.1 >= 0.5: got 0.4",
        "n <= 2: got 3",
        "gone >= 0: not measured",
        "nan <= 1: got nan",
    ]
    assert check_targets({"a": {"b": [0, 0.5]}, "n": 2, "gone": 0, "nan": -1, "ok": 1}, targets) == []


@pytest.mark.parametrize(("targets", "result", "status", "last_check_line"), [
    ({"x": at_least(0.5)}, {"x": 0.5}, 0, "1 of 1 targets met"),
    ({"x": at_least(0.5), "y": at_most(1.0)}, {"x": 0.4, "y": 1.0}, 1, "1 of 2 targets met"),
    ({}, {"x": 0.0}, 0, "no targets are stated for this benchmark: --check has nothing to compare"),
])
def test_print_result_prints_the_check_then_the_json_last_and_exits_with_its_status(
        capsys: pytest.CaptureFixture[str], targets: Targets, result: dict, status: int, last_check_line: str) -> None:
    with pytest.raises(SystemExit) as exited:
        print_result(result, targets, check=True)
    lines = capsys.readouterr().out.splitlines()
    assert exited.value.code == status
    assert json.loads(lines[-1]) == result and lines[-2] == last_check_line
    with pytest.raises(SystemExit) as exited:
        print_result(result, targets, check=False)
    assert exited.value.code == 0 and capsys.readouterr().out.splitlines() == [json.dumps(result)]


@pytest.mark.parametrize(("saved", "error"), [
    ("", "the output is empty"), ("progress\nno json here\n", "its last line is not JSON"),
    ("[1, 2]\n", "its last line is not a JSON object"),
])
def test_a_saved_output_without_a_json_object_last_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], saved: str, error: str) -> None:
    path = tmp_path / "out.log"
    path.write_text(saved)
    with pytest.raises(SystemExit) as exited:
        parse_args_with_check(argparse.ArgumentParser(), {"x": at_least(0.0)}, ["--check-file", str(path)])
    assert exited.value.code == 2 and error in capsys.readouterr().err


# ------------------------------------------------------------------------------------- every benchmark


@pytest.fixture
def argv(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], None]:
    def set_argv(args: list[str]) -> None:
        monkeypatch.setattr(sys, "argv", ["benchmark", *args])

    return set_argv


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_check_file_of_every_benchmark_exits_0_when_met_and_1_on_each_miss(
        name: str, benchmark_module: Callable[[str], ModuleType], argv: Callable[[list[str]], None],
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Through the benchmark's own ``main``: ``--check-file`` must stop it before it runs anything."""
    module = benchmark_module(name)
    targets: Targets = module.TARGETS
    saved = tmp_path / "out.log"

    def check(result: dict) -> tuple[int | str | None, str]:
        saved.write_text("a progress line\n" + json.dumps(result) + "\n")
        argv(["--check-file", str(saved)])
        with pytest.raises(SystemExit) as exited:
            module.main()
        return exited.value.code, capsys.readouterr().out

    met = _meeting(targets)
    status, out = check(met)
    assert status == 0, out
    assert out.strip().splitlines()[-1] == (f"{len(targets)} of {len(targets)} targets met" if targets else
                                            "no targets are stated for this benchmark: --check has nothing to compare")
    for path, target in targets.items():
        status, out = check(_missing_by_one(met, path, target))
        assert status == 1 and f"target missed: {path} {target}: got " in out, (path, out)


def test_check_file_exit_status_from_the_command_line(tmp_path: Path) -> None:
    """The script's exit status as a shell sees it (pipeline.py: the one that imports nothing heavy)."""
    saved = tmp_path / "out.log"
    command = [sys.executable, str(REPO / "benchmarks" / "pipeline.py"), "--check-file", str(saved)]
    saved.write_text(json.dumps({"minutes": 9.7, "peak_rss_gb": 1.8, "quick_minutes": 1.4}) + "\n")
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    saved.write_text(json.dumps({"minutes": 16.0, "peak_rss_gb": 1.8}) + "\n")
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stdout.splitlines() == ["target missed: minutes <= 15: got 16", "target missed: quick_minutes <= 3: not measured",
                                       "1 of 3 targets met"]


# ------------------------------------------------------------------------------------- README and docs


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a level-2 heading line) up to the next level-2 heading."""
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _table_targets(section: str) -> dict[str, dict[str, tuple[Comparison, float]]]:
    """``benchmark -> {figure: (comparison, bound)}`` from the rows of the targets table."""
    stated: dict[str, dict[str, tuple[Comparison, float]]] = {}
    for line in section.splitlines():
        row = re.match(r"\| `benchmarks/(\w+)\.py` \| (.+?) \| (.+?) \|", line)
        if row is None:
            continue
        name, figure_cell, target_cell = row.groups()
        figures = stated.setdefault(name, {})
        if figure_cell == "—":
            assert target_cell.startswith("none"), line
            continue
        target = re.fullmatch(r"([≥≤]) ([−+-]?\d+(?:\.\d+)?)", target_cell)
        assert target is not None and figure_cell.startswith("`") and figure_cell.endswith("`"), line
        figures[figure_cell.strip("`")] = (SIGNS[target.group(1)], _number(target.group(2)))
    return stated


def _table_rows(all_targets: Mapping[str, Targets]) -> str:
    """The targets table's first three columns as they should read (shown when the docs differ)."""
    rows = []
    for name, targets in all_targets.items():
        rows += [f"| `benchmarks/{name}.py` | `{path}` | {t.comparison.symbol} {t.bound:g} |" for path, t in targets.items()]
        rows += [f"| `benchmarks/{name}.py` | — | none |"] if not targets else []
    return "\n".join(rows)


def test_the_docs_targets_table_is_every_benchmarks_targets(all_targets: dict[str, Targets]) -> None:
    table = _table_targets(_section((REPO / "docs" / "results.md").read_text(), "## Targets (`--check`)"))
    expected = {name: {path: (t.comparison, t.bound) for path, t in targets.items()} for name, targets in all_targets.items()}
    assert table == expected, "docs/results.md's Targets table should be:\n" + _table_rows(all_targets)


def _stated_targets(text: str) -> Iterator[tuple[str | None, str, str]]:
    """``(benchmark, kind, match)`` for each target statement in ``text``, each belonging to the
    benchmark named last before it; kind is "target" or "count"."""
    marks = [(m.start(), "benchmark", m) for m in BENCHMARK_NAMED.finditer(text)]
    marks += [(m.start(), "target", m) for m in STATED_TARGET.finditer(text)]
    marks += [(m.start(), "count", m) for m in TARGET_COUNT.finditer(text)]
    benchmark: str | None = None
    for _, kind, match in sorted(marks, key=lambda mark: mark[0]):
        if kind == "benchmark":
            benchmark = match.group(1)
        else:
            yield benchmark, kind, match


def _statement_errors(text: str, all_targets: Mapping[str, Targets]) -> tuple[list[str], set[str]]:
    """What the target statements in ``text`` get wrong, and the benchmarks they state targets of."""
    errors, stated = [], set()
    for benchmark, kind, match in _stated_targets(text):
        if benchmark not in all_targets:
            errors.append(f"{match.group(0)!r} follows no benchmark's name")
            continue
        targets = all_targets[benchmark]
        stated.add(benchmark)
        if kind == "count":
            if int(match.group(1)) != len(targets):
                errors.append(f"{match.group(0)!r}: benchmarks/{benchmark}.py has {len(targets)}")
            continue
        key, sign, number = match.groups()
        paths = [path for path in targets if path == key or path.endswith(f".{key}")]
        if len(paths) != 1:
            errors.append(f"{match.group(0)!r}: {len(paths)} targets of benchmarks/{benchmark}.py end with {key!r}")
        elif (targets[paths[0]].comparison, targets[paths[0]].bound) != (SIGNS[sign], _number(number)):
            errors.append(f"{match.group(0)!r}: benchmarks/{benchmark}.py has {paths[0]} {targets[paths[0]]}")
    return errors, stated


def test_every_target_the_readme_results_state_is_the_benchmarks(all_targets: dict[str, Targets]) -> None:
    results = _section((REPO / "README.md").read_text(), "## Results")
    errors, stated = _statement_errors(results, all_targets)
    assert errors == []
    # Each benchmark the section reports on states its targets there, so a reworded sentence
    # cannot quietly drop out of this check.
    reported = {name for name in BENCHMARK_NAMED.findall(results) if all_targets.get(name)}
    assert reported and reported <= stated, f"no target stated for {sorted(reported - stated)}"


def test_every_target_docs_results_states_is_the_benchmarks(all_targets: dict[str, Targets]) -> None:
    errors, stated = _statement_errors((REPO / "docs" / "results.md").read_text(), all_targets)
    assert errors == [] and stated


def test_a_stated_target_that_differs_from_the_code_is_caught(all_targets: dict[str, Targets]) -> None:
    text = ("`benchmarks/pipeline.py`: `minutes` ≤ 20, `peak_rss_gb` ≤ 6, 3 of its 4 targets; `nowhere` ≥ 1. "
            "`benchmarks/generation.py`: `image_colour` ≥ 0.9, `image_personalization_ci.1` ≥ 0.")
    errors, stated = _statement_errors(text, all_targets)
    assert stated == {"pipeline", "generation"}
    assert errors == ["'`minutes` ≤ 20': benchmarks/pipeline.py has minutes <= 15",
                      "'3 of its 4 targets': benchmarks/pipeline.py has 3",
                      "'`nowhere` ≥ 1': 0 targets of benchmarks/pipeline.py end with 'nowhere'"]
    assert _statement_errors("`minutes` ≤ 15 before any benchmark", all_targets)[0] == [
        "'`minutes` ≤ 15' follows no benchmark's name"]
