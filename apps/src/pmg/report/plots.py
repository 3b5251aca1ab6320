"""The report's PNG plots (matplotlib, Agg backend: no display needed).

- ``evaluation_headline.png``: the same chart for the rows ``ReportConfig.headline`` names (a
  short one, of the figures read first), when the table has any of them;
- ``evaluation_<section>.png``: one bar chart per section of the evaluation table, a group of
  bars per metric, one bar per column (a missing cell is marked "n/a");
- ``training_curves.png``: one panel per (stage, TensorBoard tag) chosen by ``ReportConfig.curves``,
  one line per TensorBoard run of the stage (the reward stage logs its text and image phases apart).
"""

from __future__ import annotations

import fnmatch
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.patches import Patch

from pmg.evaluate.table import EvaluationTable, Section

__all__ = ["Curve", "evaluation_plots", "headline_section", "read_curves", "training_curves_plot"]


def _pyplot():
    # Chosen when plotting, not on import: importing pmg leaves matplotlib's backend to its user.
    matplotlib.use("Agg")  # headless, file output only
    import matplotlib.pyplot as plt  # after use(), so that pyplot starts on that backend

    return plt


@dataclass
class Curve:
    """One logged scalar: ``steps`` [T] and ``values`` [T] of ``tag`` in one TensorBoard run of ``stage``."""

    stage: str
    tag: str
    run: str
    steps: list[int]
    values: list[float]


def read_curves(run_root: Path, patterns: Mapping[str, list[str]]) -> list[Curve]:
    """The scalars of each stage's ``tb/`` event files whose tags match that stage's patterns."""
    # 0.4 s to import; only the report stage reads event files, so CLI start-up does not pay for it.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: list[Curve] = []
    for stage, wanted in patterns.items():
        for events in sorted((run_root / stage / "tb").rglob("events.out.tfevents.*")):
            accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})  # 0: keep every point
            accumulator.Reload()
            tags = accumulator.Tags().get("scalars", [])
            for pattern in wanted:
                for tag in sorted(t for t in tags if fnmatch.fnmatchcase(t, pattern)):
                    points = accumulator.Scalars(tag)
                    curves.append(Curve(stage, tag, events.parent.name, [p.step for p in points], [p.value for p in points]))
    return curves


def training_curves_plot(curves: list[Curve], path: Path, dpi: int) -> bool:
    """Write the training-curve panels to ``path``; False (nothing written) when there are no curves."""
    if not curves:
        return False
    plt = _pyplot()
    panels: dict[tuple[str, str], list[Curve]] = {}
    for curve in curves:
        panels.setdefault((curve.stage, curve.tag), []).append(curve)
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axis, ((stage, tag), lines) in zip(axes.flat, panels.items(), strict=False):
        for line in lines:
            marker = "o" if len(line.steps) < 12 else None  # a few points (validation every N steps) read better as dots
            axis.plot(line.steps, line.values, marker=marker, label=line.run if len(lines) > 1 else None)
        axis.set_title(f"{stage}: {tag}", fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
        if len(lines) > 1:
            axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return True


def _section_plot(section: Section, labels: Mapping[str, str], path: Path, dpi: int) -> None:
    """Horizontal bars (metric labels are long): a group per metric, top to bottom in table order."""
    plt = _pyplot()
    rows, columns = section.rows, section.columns
    height = 0.8 / len(columns)
    figure, axis = plt.subplots(figsize=(10.0, 0.9 + 0.13 * len(rows) * len(columns) + 0.2 * len(rows)))
    handles = []
    for c, column in enumerate(columns):
        ys = [r + (c - (len(columns) - 1) / 2) * height for r in range(len(rows))]
        values = [row.cells[column].value for row in rows]
        # One fixed colour per column, so a column with no value at all keeps its legend entry and colour.
        colour = f"C{c}"
        shown = [(y, row.cells[column]) for y, row in zip(ys, rows, strict=True) if row.cells[column].value is not None]
        # The 95% interval as an error bar where the cell has one (zero-length otherwise).
        errors = [[cell.value - cell.interval[0] if cell.interval else 0.0 for _, cell in shown],
                  [cell.interval[1] - cell.value if cell.interval else 0.0 for _, cell in shown]]
        bars = axis.barh([y for y, _ in shown], [cell.value for _, cell in shown], height=height, color=colour,
                         xerr=errors if any(cell.interval for _, cell in shown) else None,
                         error_kw={"elinewidth": 0.6, "capsize": 1.5, "ecolor": "black"})
        axis.bar_label(bars, fmt="%.2f", fontsize=6, padding=2)
        for y, value in zip(ys, values, strict=True):
            if value is None:
                axis.text(0.0, y, " n/a", ha="left", va="center", fontsize=6, color="grey")
        missing = all(v is None for v in values)
        handles.append(Patch(color=colour, label=labels.get(column, column) + (" (n/a)" if missing else "")))
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels([textwrap.fill(row.label, 48) for row in rows], fontsize=8)
    axis.invert_yaxis()  # the first row on top, as in the table
    # A row with a wide range (the colour FID's is [0, 4]) would squeeze the [0, 1] rows: the axis
    # stops at the largest figure drawn (or 1) when that is below the widest range.
    drawn = [end for row in rows for cell in row.cells.values() if cell.value is not None
             for end in (cell.value, *(cell.interval or ()))]
    high = max(row.range[1] for row in rows)
    # 8% beyond the end leaves room for the value printed after a full bar.
    axis.set_xlim(min(min(row.range[0] for row in rows), 0.0), 1.08 * min(high, max([1.0, *(1.1 * end for end in drawn)])))
    axis.axvline(0.0, color="black", linewidth=0.6)
    axis.set_title(section.title)
    axis.grid(axis="x", alpha=0.3)
    axis.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def headline_section(table: EvaluationTable, names: Sequence[str]) -> Section | None:
    """The rows ``names`` (``section/metric``) of ``table`` as one section, in that order, with the
    columns of the first named section present; None when no named section is in the table (a run
    without that evaluation). ``ValueError`` naming the metrics there are for a metric a present
    section lacks (a misspelt name)."""
    sections = {section.name: section for section in table.sections}
    rows = []
    for name in names:
        section_name, metric = name.split("/", 1)
        if section_name not in sections:
            continue
        found = [row for row in sections[section_name].rows if row.metric == metric]
        if not found:
            known = ", ".join(f"{section_name}/{row.metric}" for row in sections[section_name].rows)
            raise ValueError(f"report.headline names {name!r}, which the evaluation does not have; it has {known}")
        rows.append((sections[section_name], found[0]))
    if not rows:
        return None
    headline = Section("headline", "Headline figures", list(rows[0][0].columns))
    for _, row in rows:
        headline.add(row.metric, row.label, row.range, row.cells)
    return headline


def evaluation_plots(table: EvaluationTable, folder: Path, labels: Mapping[str, str], dpi: int,
                     headline: Section | None = None) -> list[tuple[str, str]]:
    """The chart of ``headline`` (:func:`headline_section`) when given, then one bar chart per section
    with rows, into ``folder``; [(title, file name)] in that order."""
    written = []
    if headline is not None:
        _section_plot(headline, labels, folder / "evaluation_headline.png", dpi)
        written.append((headline.title, "evaluation_headline.png"))
    for section in table.sections:
        if not section.rows:
            continue
        name = f"evaluation_{section.name}.png"
        _section_plot(section, labels, folder / name, dpi)
        written.append((section.title, name))
    return written
