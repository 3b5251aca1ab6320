"""Write docs/results.md and the README's Results section from the benchmarks' saved outputs.

Usage:
    uv run python benchmarks/write_results.py            # rewrite both from docs/results/*.json
    uv run python benchmarks/write_results.py --record generation --command "uv run python benchmarks/generation.py --check" out.log
        # save the last JSON line of a benchmark's output as docs/results/generation.json, then rewrite both

Every benchmark prints one JSON object as its last line. ``--record NAME`` keeps that line as
``docs/results/NAME.json``, one record::

    {"benchmark": "generation", "command": "...", "date": "2026-12-02T13:22:46+00:00", "machine": "...",
     "commit": "...", "result": {the JSON line}}

``benchmark`` is the script's name (null for a record that gathers several commands' figures, each
naming its own command); ``commit`` is the code that ran. ``"ablation": true`` marks a run with
settings other than the defaults (``--ablation``): its figures are reported, never taken as the
latest figures of the benchmark's targets. A record carrying ``source`` was
transcribed from earlier docs, not saved from a run: its ``date`` is that of the commit that first
reported the figures, and ``source`` names the docs and the command.

The prose lives in two templates, ``docs/results/results.md.in`` (all of docs/results.md) and
``docs/results/readme-results.md.in`` (the README's Results section, between its two markers);
every figure in them is a placeholder that this script fills from the records:

    {{NAME:PATH}}, {{NAME:PATH|SPEC}}   the figure at PATH (keys joined by dots, list positions as
                                        numbers, as in ``pmg.benchmark_targets.figure``) of record
                                        NAME, formatted with SPEC (a format spec such as ``.3f`` or
                                        ``+.2f``; ``ci.2f``: an interval [lo, hi]; ``dict.3f``: an
                                        object as "key value, ..."); default ``g``
    {{NAME@FIELD}}                      the record's command, date (the day), machine or commit
    {{check:NAME}}                      "N of its M targets met" for record NAME, the misses named
    {{check-latest:BENCHMARK}}          the same over each target's latest figure (the Targets table's)
    {{table:KIND ARGS}}                 a table: targets; variants NAME PROFILE; headline NAME;
                                        token_shuffle NAME ...; taste_probe NAME

A placeholder whose figure the record lacks is an error, so a template cannot quote what no run
measured. tests/test_results_docs.py checks that docs/results.md and the README's section are
what this script writes from the committed records.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from pmg.benchmark_targets import Target, Targets, check_targets, figure, last_json_line

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
RECORDS = REPO / "docs" / "results"
RESULTS_TEMPLATE = RECORDS / "results.md.in"
README_TEMPLATE = RECORDS / "readme-results.md.in"
RESULTS_MD = REPO / "docs" / "results.md"
README = REPO / "README.md"
# The README's Results section sits between these lines; the rest of the README is written by hand.
README_START = "<!-- Results: written by benchmarks/write_results.py from docs/results/*.json; edit the template, not this -->"
README_END = "<!-- end of the results -->"
RECORD_FIELDS = ("benchmark", "command", "date", "machine", "result")

PLACEHOLDER = re.compile(r"\{\{(.+?)\}\}")
FIGURE = re.compile(r"([\w-]+):([\w./-]+)(?:\|(.+))?")
FIELD = re.compile(r"([\w-]+)@(command|date|machine|commit)")


def benchmark_names() -> list[str]:
    """Every benchmark script in benchmarks/ (this writer is not one)."""
    return sorted(path.stem for path in BENCHMARKS.glob("*.py") if path.stem != Path(__file__).stem)


def benchmark_targets(name: str) -> Targets:
    """``TARGETS`` of ``benchmarks/<name>.py``, loaded from its path under the module name the test
    suite's ``benchmark_module`` fixture uses, so a session executes each script once."""
    module_name = f"pmg_benchmark_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None, name
        module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[module_name].TARGETS


@dataclass(frozen=True)
class Record:
    name: str
    benchmark: str | None
    command: str | None
    date: str
    machine: str
    commit: str | None
    source: str | None
    ablation: bool
    result: dict[str, Any]


def read_records(folder: Path = RECORDS) -> dict[str, Record]:
    """Every ``<name>.json`` record in ``folder`` by name (a malformed one is an error naming it)."""
    records = {}
    for path in sorted(folder.glob("*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        missing = [key for key in RECORD_FIELDS if key not in raw]
        if missing or not isinstance(raw["result"], dict):
            raise ValueError(f"{path}: a record needs {list(RECORD_FIELDS)} with an object as result; missing {missing}")
        records[path.stem] = Record(path.stem, raw["benchmark"], raw["command"], raw["date"], raw["machine"],
                                    raw.get("commit"), raw.get("source"), bool(raw.get("ablation")), raw["result"])
    return records


def number(value: float, spec: str = "g") -> str:
    """``value`` formatted with ``spec``, a minus written as the minus sign."""
    text = format(value, spec)
    return "−" + text[1:] if text.startswith("-") else text


def _value(records: Mapping[str, Record], name: str, path: str) -> Any:
    """What lies at ``path`` in record ``name``'s result (an error naming both where nothing does)."""
    if name not in records:
        raise KeyError(f"no record docs/results/{name}.json")
    node: Any = records[name].result
    for key in path.split("."):
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise KeyError(f"docs/results/{name}.json has nothing at {path}")
    return node


def format_figure(value: Any, spec: str) -> str:
    """A figure, an interval (``ci`` + spec) or an object of figures (``dict`` + spec) as text; a
    string as it is (with no spec)."""
    if spec.startswith("ci"):
        low, high = value
        return f"[{number(low, spec[2:] or 'g')}, {number(high, spec[2:] or 'g')}]"
    if spec.startswith("dict"):
        return ", ".join(f"{key} {number(v, spec[4:] or 'g')}" for key, v in value.items())
    if isinstance(value, str) and spec == "g":
        return value  # a command or a commit that a record names beside its figures
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return number(value, spec)


# ------------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Recorded:
    """One saved figure of a target: its value, whether it meets the target, and the record."""

    value: float
    met: bool
    record: Record


def latest_figures(records: Mapping[str, Record], benchmark: str, path: str, target: Target) -> list[Recorded]:
    """The figure at ``path`` in the newest records of ``benchmark`` that hold it, ablations left out
    (several when they share a date: runs recorded together)."""
    holding = [(record, figure(record.result, path)) for record in records.values()
               if record.benchmark == benchmark and not record.ablation]
    holding = [(record, value) for record, value in holding if value is not None]
    if not holding:
        return []
    newest = max(datetime.fromisoformat(record.date) for record, _ in holding)
    return [Recorded(value, target.met_by(value), record) for record, value in holding
            if datetime.fromisoformat(record.date) == newest]


def _record_link(record: Record, base: str) -> str:
    return f"[{record.name}]({base}{record.name}.json), {record.date[:10]}"


def targets_table(records: Mapping[str, Record], base: str) -> str:
    """The Targets table: every benchmark's ``TARGETS`` with each figure's latest recorded value."""
    lines = ["| benchmark | figure | target | last recorded |", "|---|---|---|---|"]
    for name in benchmark_names():
        targets = benchmark_targets(name)
        if not targets:
            lines.append(f"| `benchmarks/{name}.py` | — | none: it states no target | |")
        for path, target in targets.items():
            recorded = latest_figures(records, name, path, target)
            cell = "; ".join(f"{number(r.value)}: {'met' if r.met else 'missed'} ({_record_link(r.record, base)})"
                             for r in recorded) or "not recorded"
            lines.append(f"| `benchmarks/{name}.py` | `{path}` | {target.comparison.symbol} {target.bound:g} | {cell} |")
    return "\n".join(lines)


def _check_sentence(targets: Targets, misses: Sequence[tuple[str, Target, str]]) -> str:
    """"N of its M targets met", then each miss as ``figure`` ≥ bound (what was recorded)."""
    sentence = f"{len(targets) - len(misses)} of its {len(targets)} targets met"
    if misses:
        sentence += "; missed: " + ", ".join(f"`{path}` {target.comparison.symbol} {target.bound:g} ({got})"
                                             for path, target, got in misses)
    return sentence


def check_record(records: Mapping[str, Record], name: str) -> str:
    """The check of one record against its benchmark's targets, in words."""
    record = records[name]
    assert record.benchmark is not None, f"{name} is not one benchmark's output"
    targets = benchmark_targets(record.benchmark)
    misses = []
    for path, target in targets.items():
        if check_targets(record.result, {path: target}):
            value = figure(record.result, path)
            misses.append((path, target, "not measured" if value is None else number(value)))
    return _check_sentence(targets, misses)


def check_latest(records: Mapping[str, Record], benchmark: str) -> str:
    """The check of each target's latest recorded figure (a miss where any of them misses), in words."""
    targets = benchmark_targets(benchmark)
    misses = []
    for path, target in targets.items():
        recorded = latest_figures(records, benchmark, path, target)
        if not recorded:
            misses.append((path, target, "not recorded"))
        elif not all(r.met for r in recorded):
            misses.append((path, target, ", ".join(number(r.value) for r in recorded)))
    return _check_sentence(targets, misses)


# ------------------------------------------------------------------------------------------ tables

VARIANT_COLUMNS = ("consistency", "user_preference_image", "user_preference_text")


def _attribute_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The per-attribute figures present in any row: image ones, then text ones, each in the
    attributes' usual order."""
    order = ("colour", "pattern", "shade", "category", "material", "style", "brand")
    present = {key for row in rows for key in row}
    columns = []
    for kind in ("image", "text"):
        names = sorted((key for key in present if key.startswith(f"{kind}_") and key.removeprefix(f"{kind}_") in order),
                       key=lambda key: order.index(key.split("_", 1)[1]))
        columns += names
    return columns


def _cell(row: Mapping[str, Any], key: str, spec: str) -> str:
    return format_figure(row[key], spec) if key in row else "—"


def variants_table(records: Mapping[str, Record], name: str, profile: str) -> str:
    """Per variant: each attribute's rate, consistency and the user-preference scores (3 decimals)."""
    variants = _value(records, name, f"profiles.{profile}.variants")
    columns = [*_attribute_columns(list(variants.values())), *VARIANT_COLUMNS]
    lines = ["| variant | " + " | ".join(column.replace("_", " ") for column in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for variant, row in variants.items():
        lines.append(f"| {variant} | " + " | ".join(_cell(row, column, ".3f") for column in columns) + " |")
    return "\n".join(lines)


HEADLINE_ROWS = {
    "no_tokens": "no tokens",
    "soft_prompt": "soft prompt (preference vectors, no quantization)",
    "keywords": "keywords (history words, the zoo's models)",
    "keywords_tuned": "keywords through our tuned adapters (no tokens)",
    "keywords_best_of": "keywords through our tuned adapters, the image the best of as many as ours by the user's history images (no tokens)",
    "history_latent": "keywords + history latent (no tokens; initial latents from the user's history images)",
    "retrieve": "retrieve (top-1 recommended item)",
    "tokens_sft": "keywords + tokens after SFT",
    "tokens_reward": "**keywords + tokens after reward, the image the best of several by the reward** (the default)",
}
HEADLINE_FIGURES = ("image_personalization", "text_personalization", "joint")


def headline_table(records: Mapping[str, Record], name: str) -> str:
    """Per variant and profile: image, text and joint rates with their 95% intervals (2 decimals)."""
    profiles = _value(records, name, "profiles")
    header = [f"{profile}: {metric.split('_')[0]}" for profile in profiles for metric in HEADLINE_FIGURES]
    lines = ["| variant | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for variant, label in HEADLINE_ROWS.items():
        cells = []
        for profile in profiles.values():
            row = profile["variants"].get(variant, {})
            cells += [f"{_cell(row, metric, '.2f')} {_cell(row, f'{metric}_ci', 'ci.2f')}" if metric in row else "—"
                      for metric in HEADLINE_FIGURES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SHUFFLE_FIGURES = ("image_colour", "image_pattern", "image_shade", "text_material", "text_style",
                   "image_personalization", "text_personalization")


def token_shuffle_table(records: Mapping[str, Record], *names: str) -> str:
    """Own − shuffled tokens per record (run): each figure with its 95% interval."""
    lines = ["| run | " + " | ".join(f.replace("_", " ") for f in SHUFFLE_FIGURES) + " |", "|---|" + "---|" * len(SHUFFLE_FIGURES)]
    for name in names:
        difference = _value(records, name, "own_minus_shuffled")
        cells = [f"{number(difference[f], '+.3f')} {format_figure(difference[f'{f}_ci'], 'ci+.2f')}" if f in difference else "—"
                 for f in SHUFFLE_FIGURES]
        lines.append(f"| `{_value(records, name, 'run')}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PROBE_STEPS = ("history_mean", "preference", "codes")


def taste_probe_table(records: Mapping[str, Record], name: str) -> str:
    """Per run and taste: chance, the history's majority and, per step of the chain, the best
    modality's probe accuracy."""
    lines = ["| run | taste | chance | history majority | history mean features | preference vector | codes (tokens) |",
             "|---|---|---|---|---|---|---|"]
    for run, probed in _value(records, name, "runs").items():
        for taste, row in probed["tastes"].items():
            cells = []
            for step in PROBE_STEPS:
                best = max((key for key in row if key.startswith(f"{step}_") and not key.endswith("_ci")), key=lambda key: row[key])
                cells.append(f"{number(row[best], '.3f')} ({best.removeprefix(f'{step}_')})")
            lines.append(f"| `{run}` | {taste} | {number(row['chance'], '.3f')} | {number(row['history_majority'], '.3f')} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tables(base: str) -> dict[str, Callable[..., str]]:
    return {"targets": lambda records: targets_table(records, base), "variants": variants_table,
            "headline": headline_table, "token_shuffle": token_shuffle_table, "taste_probe": taste_probe_table}


# ------------------------------------------------------------------------------------------ writing


def render(template: str, records: Mapping[str, Record], base: str) -> str:
    """``template`` with every placeholder filled from ``records``; ``base`` is the path from the
    written file to docs/results/ (for links to the records)."""
    tables = _tables(base)

    def fill(match: re.Match[str]) -> str:
        inner = match.group(1).strip()
        try:
            if inner.startswith("table:"):
                kind, *args = inner.removeprefix("table:").split()
                return tables[kind](records, *args)
            if inner.startswith("check-latest:"):
                return check_latest(records, inner.removeprefix("check-latest:"))
            if inner.startswith("check:"):
                return check_record(records, inner.removeprefix("check:"))
            if field := FIELD.fullmatch(inner):
                name, key = field.groups()
                value = getattr(records[name], key)
                return value[:10] if key == "date" else str(value)
            if fig := FIGURE.fullmatch(inner):
                name, path, spec = fig.groups()
                return format_figure(_value(records, name, path), spec or "g")
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"placeholder {match.group(0)}: {err}") from err
        raise ValueError(f"placeholder {match.group(0)} is none of the kinds this script knows")

    return PLACEHOLDER.sub(fill, template)


def written_results(records: Mapping[str, Record], template: Path = RESULTS_TEMPLATE) -> str:
    """docs/results.md as this script writes it."""
    return render(template.read_text(encoding="utf-8"), records, "results/")


def readme_section(readme: str) -> tuple[int, int]:
    """Where the written part of the README lies (between the markers, exclusive)."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start == -1 or end < start:
        raise ValueError(f"README.md needs the lines {README_START!r} and {README_END!r}, in that order")
    return start + len(README_START), end


def written_readme(readme: str, records: Mapping[str, Record], template: Path = README_TEMPLATE) -> str:
    """``readme`` with its Results section written from ``records``."""
    start, end = readme_section(readme)
    return readme[:start] + "\n" + render(template.read_text(encoding="utf-8"), records, "docs/results/") + readme[end:]


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def this_machine() -> str:
    """The machine in words: its CPU model and core count."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = f" ({names[0]})" if names else ""
    return f"{os.cpu_count()}-core CPU{model}"


def save_record(name: str, output: str, command: str, machine: str, *, ablation: bool = False, folder: Path = RECORDS,
                commit: str | None = None) -> Path:
    """The last JSON line of a benchmark's ``output`` saved as record ``name``, dated now, with
    ``commit`` (the code that ran), by default the commit checked out (``+changes`` when tracked
    files differ from it)."""
    benchmark = name.split("-", 1)[0]
    if benchmark not in benchmark_names():
        raise ValueError(f"record {name!r}: its name must start with a benchmark's ({', '.join(benchmark_names())})")
    if commit is None:
        commit = _git("rev-parse", "--short", "HEAD")
        if commit is not None and _git("status", "--porcelain", "--untracked-files=no"):
            commit += "+changes"
    record = {"benchmark": benchmark, "command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": machine, "commit": commit, **({"ablation": True} if ablation else {}), "result": last_json_line(output)}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", metavar="NAME",
                        help="save OUTPUT's last JSON line as docs/results/NAME.json (NAME: the benchmark's name, "
                             "or it followed by -TAG for another run of it) before writing")
    parser.add_argument("--command", help="with --record: the command that printed OUTPUT")
    parser.add_argument("--machine", default=this_machine(), help="with --record: the machine it ran on, in words")
    parser.add_argument("--ablation", action="store_true",
                        help="with --record: the run changed the benchmark's default settings (its figures do not count against TARGETS)")
    parser.add_argument("--commit", help="with --record: the commit the benchmark ran at, when the checkout has moved on since "
                                         "(default: the checkout's)")
    parser.add_argument("output", nargs="?", type=Path, help="with --record: the benchmark's saved output")
    args = parser.parse_args(argv)
    if args.record is not None:
        if args.output is None or not args.command:
            parser.error("--record needs --command and the saved OUTPUT")
        try:
            saved = save_record(args.record, args.output.read_text(encoding="utf-8"), args.command, args.machine,
                                ablation=args.ablation, commit=args.commit)
            print(f"saved {saved.relative_to(REPO)}")
        except (OSError, ValueError) as err:
            parser.error(str(err))
    records = read_records()
    RESULTS_MD.write_text(written_results(records), encoding="utf-8")
    README.write_text(written_readme(README.read_text(encoding="utf-8"), records), encoding="utf-8")
    print(f"wrote {RESULTS_MD.relative_to(REPO)} and the Results section of {README.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
