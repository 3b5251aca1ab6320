"""Reading delimited and JSON-lines files with errors that name file, line and column.

Every loader reads through these functions, so a malformed file gives the same kind of
message whatever the source: ``ratings.csv, line 12, column 'rating': 'x' is not a number``.
An interaction row a loader cannot use stops the load, or, with ``on_bad_rows: skip``, is set
aside with its file, line and reason (``RowRejections``) and the load goes on.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pmg.atomic import atomic_file

__all__ = ["DatasetError", "Duplicates", "OnBadRows", "RejectedRow", "RowRejections", "write_csv_rows", "write_rejected_rows", "read_text",
           "read_delimited", "read_json_lines", "parse_number"]


class DatasetError(ValueError):
    """A dataset file that cannot be read as it should; the message names file, place and problem."""

    def __init__(self, path: str | Path, problem: str, *, line: int | None = None, column: str | None = None):
        self.path = Path(path)
        self.line = line
        self.column = column
        self.problem = problem
        where = str(self.path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}")


class Duplicates(StrEnum):
    """What a load does with an interaction that repeats an earlier one's user, item and
    timestamp (``data.duplicates``): ``error`` (the default) treats it as a bad row
    (``OnBadRows``), ``drop`` keeps the first and counts the others in the load report."""

    error = "error"
    drop = "drop"


class OnBadRows(StrEnum):
    """What a load does with an interaction row it cannot use (``data.on_bad_rows``): an unknown
    user or item id, a field that is not a number, a wrong number of fields, a line that is not
    a JSON object, a duplicate under ``duplicates: error``.

    ``error`` (the default): stop with the row's file, line and problem. ``skip``: set the row
    aside (the load report counts it; the data stage writes every one to
    ``<run>/data/rejected.csv``) and go on. Problems of a whole file (a missing column, an empty
    file, a wrong encoding) and of the item files stop the load either way.
    """

    error = "error"
    skip = "skip"


@dataclass(frozen=True)
class RejectedRow:
    """One row a load set aside: its file, line (None for a whole-record problem) and why."""

    file: str
    line: int | None
    reason: str


def write_csv_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A CSV of what a load set aside at ``path`` (atomically): ``header``, then ``rows``; with no
    rows, no file (a previous one is deleted, so a clean load leaves none behind)."""
    if not rows:
        path.unlink(missing_ok=True)
        return
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_rejected_rows(path: Path, rows: Sequence[RejectedRow]) -> None:
    """``rejected.csv`` at ``path`` (``write_csv_rows``): one line per row set aside (file, line, reason)."""
    write_csv_rows(path, ("file", "line", "reason"), [(row.file, "" if row.line is None else row.line, row.reason) for row in rows])


class RowRejections:
    """``on_bad_rows`` applied to one load's interaction rows: ``reject`` raises the row's
    ``DatasetError`` under ``error`` and records it under ``skip``; ``row()`` does so for
    whatever a row's parsing raises."""

    def __init__(self, policy: OnBadRows | str = OnBadRows.error) -> None:
        self.policy = OnBadRows(policy)
        self.rows: list[RejectedRow] = []

    def reject(self, err: DatasetError) -> None:
        if self.policy is OnBadRows.error:
            raise err
        reason = err.problem if err.column is None else f"column {err.column!r}: {err.problem}"
        self.rows.append(RejectedRow(str(err.path), err.line, reason))

    @contextmanager
    def row(self) -> Iterator[None]:
        """Parse one row inside this block: a ``DatasetError`` raised in it goes to ``reject``."""
        try:
            yield
        except DatasetError as err:
            self.reject(err)


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole file as text; a missing file, an empty one or bad bytes raise ``DatasetError``."""
    if not path.is_file():
        raise DatasetError(path, "file does not exist")
    raw = path.read_bytes()
    if not raw.strip():
        raise DatasetError(path, "file is empty")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DatasetError(path, f"not valid {encoding} text (byte {err.start}); is the encoding right?", line=line) from err


def read_delimited(
    path: Path,
    *,
    required: Sequence[str],
    delimiter: str = ",",
    fieldnames: Sequence[str] | None = None,
    encoding: str = "utf-8",
    rejections: RowRejections | None = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` for each data row of a delimited file.

    With ``fieldnames`` the file has no header (MovieLens 100k/1m); otherwise the first
    line is the header and must contain every ``required`` column. Multi-character
    delimiters (``::``) are split literally, without quoting. A row with the wrong number of
    fields goes to ``rejections`` (None: it stops the read).
    """
    rejections = rejections or RowRejections()
    text = read_text(path, encoding)
    lines = text.splitlines()
    if len(delimiter) == 1:
        rows: Iterator[list[str]] = csv.reader(lines, delimiter=delimiter)
    else:
        rows = (line.split(delimiter) for line in lines)
    start = 1
    if fieldnames is None:
        header = next(rows, None)
        if header is None:
            raise DatasetError(path, "file is empty")
        header = [h.strip() for h in header]
        start = 2
    else:
        header = list(fieldnames)
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(path, f"missing column(s) {missing}; the header has {header}", line=1)
    for number, row in enumerate(rows, start=start):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            rejections.reject(DatasetError(path, f"expected {len(header)} fields, found {len(row)}", line=number))
            continue
        yield number, dict(zip(header, row, strict=True))


def read_json_lines(path: Path, *, required: Sequence[str], rejections: RowRejections | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for each non-blank line of a JSON-lines file; a line that
    is not a JSON object with the ``required`` fields goes to ``rejections`` (None: it stops the read)."""
    rejections = rejections or RowRejections()
    text = read_text(path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = None
        with rejections.row():
            row = _json_object(path, number, line, required)
        if row is not None:
            yield number, row


def _json_object(path: Path, number: int, line: str, required: Sequence[str]) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DatasetError(path, f"not valid JSON: {err.msg}", line=number) from err
    if not isinstance(row, dict):
        raise DatasetError(path, "expected a JSON object", line=number)
    for key in required:
        if key not in row:
            raise DatasetError(path, "missing required field", line=number, column=key)
    return row


def parse_number(path: Path, line: int, column: str, value: str, kind: type[int] | type[float]) -> int | float:
    """``kind(value)`` or a ``DatasetError`` naming the place."""
    try:
        return kind(value)
    except (TypeError, ValueError) as err:
        raise DatasetError(path, f"{value!r} is not {'an integer' if kind is int else 'a number'}", line=line, column=column) from err
