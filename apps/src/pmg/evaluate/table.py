"""The evaluation table: sections of metric rows × columns, each cell a value or the reason it is missing.

Written as ``evaluation.json`` (what the report and the tests read back) and ``evaluation.md``.

    {"format": 1, "run": ..., "dataset": ...,
     "sections": [{"name": "recommendation", "title": ..., "columns": ["popularity", ...], "notes": [...],
                   "rows": [{"metric": "recall@20", "label": "Recall@20", "range": [0, 1],
                             "cells": {"popularity": {"value": 0.01, "interval": [0.005, 0.02], "n": 200},
                                       "ours": {"value": null, "missing": "why"}}}]}]}

``interval`` (a 95% confidence interval) and ``n`` (how many users the value rests on) are
present where they were computed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pmg.evaluate.intervals import bootstrap_interval

__all__ = ["Cell", "EvaluationTable", "Row", "Section", "TABLE_FORMAT"]

TABLE_FORMAT = 1


@dataclass
class Cell:
    """One figure: ``value``, or None with ``missing`` saying why it could not be computed;
    ``interval`` its 95% confidence interval and ``n`` the number of users behind it, where known;
    ``per_user`` the per-user values behind it (float [n]; in memory only, for paired comparisons)."""

    value: float | None
    missing: str | None = None
    interval: tuple[float, float] | None = None
    n: int | None = None
    per_user: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def absent(cls, reason: str) -> Cell:
        return cls(None, reason)

    @classmethod
    def of(cls, value: float, interval: tuple[float, float] | None = None, n: int | None = None) -> Cell:
        """A computed figure; NaN (nothing to average over) becomes a missing cell."""
        return cls.absent("no users to average over") if math.isnan(value) else cls(float(value), None, interval, n)

    @classmethod
    def of_users(cls, values: Any) -> Cell:
        """The mean of per-user ``values`` (float [N]) with its bootstrap interval and N."""
        array = np.asarray(values, dtype=np.float64)
        if len(array) == 0:
            return cls.absent("no users to average over")
        cell = cls.of(float(array.mean()), bootstrap_interval(array), len(array))
        cell.per_user = array
        return cell

    def to_json(self) -> dict[str, Any]:
        if self.missing is not None:
            return {"value": None, "missing": self.missing}
        out: dict[str, Any] = {"value": self.value}
        if self.interval is not None:
            out["interval"] = [self.interval[0], self.interval[1]]
        if self.n is not None:
            out["n"] = self.n
        return out

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Cell:
        interval = record.get("interval")
        return cls(record["value"], record.get("missing"), (float(interval[0]), float(interval[1])) if interval else None,
                   record.get("n"))

    def shown(self) -> str:
        """The value with its interval, as the Markdown table and the report print it."""
        if self.value is None:
            return "—"
        return f"{self.value:.3f}" + (f" [{self.interval[0]:.2f}, {self.interval[1]:.2f}]" if self.interval is not None else "")


@dataclass
class Row:
    """A metric across the section's columns; ``range`` (low, high) bounds every value."""

    metric: str
    label: str
    range: tuple[float, float]
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Section:
    name: str
    title: str
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, metric: str, label: str, value_range: tuple[float, float], cells: dict[str, Cell]) -> None:
        """A row; a column without a cell is recorded as missing (so every column has one)."""
        full = {c: cells.get(c, Cell.absent("not computed for this column")) for c in self.columns}
        self.rows.append(Row(metric, label, value_range, full))

    def numbered_cells(self) -> tuple[list[list[tuple[Cell, int | None]]], list[str]]:
        """Per row, per column: (cell, the number of its missing reason or None), and the distinct
        reasons in order of first use (numbered from 1), for tables that footnote missing cells."""
        reasons: list[str] = []
        rows = []
        for row in self.rows:
            marked: list[tuple[Cell, int | None]] = []
            for column in self.columns:
                cell = row.cells[column]
                if cell.missing is not None and cell.missing not in reasons:
                    reasons.append(cell.missing)
                marked.append((cell, None if cell.missing is None else reasons.index(cell.missing) + 1))
            rows.append(marked)
        return rows, reasons

    def row(self, metric: str) -> Row:
        for row in self.rows:
            if row.metric == metric:
                return row
        raise KeyError(f"section {self.name!r} has no metric {metric!r} (has {[r.metric for r in self.rows]})")


@dataclass
class EvaluationTable:
    run: str
    dataset: str
    sections: list[Section] = field(default_factory=list)

    def section(self, name: str) -> Section:
        for section in self.sections:
            if section.name == name:
                return section
        raise KeyError(f"the evaluation has no section {name!r}")

    def flat_metrics(self) -> dict[str, float]:
        """``section/metric/column`` → value, for the stage's metrics.json (computed cells only)."""
        return {f"{s.name}/{r.metric}/{c}": cell.value for s in self.sections for r in s.rows
                for c, cell in r.cells.items() if cell.value is not None}

    def to_json(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "run": self.run, "dataset": self.dataset, "sections": [
            {"name": s.name, "title": s.title, "columns": s.columns, "notes": s.notes,
             "rows": [{"metric": r.metric, "label": r.label, "range": list(r.range),
                       "cells": {c: cell.to_json() for c, cell in r.cells.items()}} for r in s.rows]}
            for s in self.sections]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvaluationTable:
        if data.get("format") != TABLE_FORMAT:
            raise ValueError(f"evaluation table format {data.get('format')!r}, this pmg reads {TABLE_FORMAT}")
        sections = [Section(s["name"], s["title"], list(s["columns"]), notes=list(s["notes"]), rows=[
            Row(r["metric"], r["label"], (float(r["range"][0]), float(r["range"][1])),
                {c: Cell.from_json(cell) for c, cell in r["cells"].items()}) for r in s["rows"]])
            for s in data["sections"]]
        return cls(data["run"], data["dataset"], sections)

    @classmethod
    def read(cls, path: Path) -> EvaluationTable:
        return cls.from_json(json.loads(path.read_text()))

    def to_markdown(self, column_labels: dict[str, str] | None = None) -> str:
        """One Markdown table per section; a missing cell is "—" with a numbered reason below."""
        labels = column_labels or {}
        lines = [f"# Evaluation of {self.run}", "", f"Dataset: {self.dataset}.", ""]
        for section in self.sections:
            lines += [f"## {section.title}", ""]
            lines += [f"- {note}" for note in section.notes]
            if section.notes:
                lines.append("")
            lines.append("| metric | " + " | ".join(labels.get(c, c) for c in section.columns) + " |")
            lines.append("|---|" + "---:|" * len(section.columns))
            marked, reasons = section.numbered_cells()
            for row, cells in zip(section.rows, marked, strict=True):
                shown = [cell.shown() if number is None else f"— ({number})" for cell, number in cells]
                lines.append(f"| {row.label} | " + " | ".join(shown) + " |")
            if reasons:
                lines.append("")
                lines += [f"- ({n}) {reason}" for n, reason in enumerate(reasons, 1)]
            lines.append("")
        return "\n".join(lines)
