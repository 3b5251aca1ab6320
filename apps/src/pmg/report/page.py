"""The report's HTML: one self-contained page (inline CSS, every image a base64 data URI, no script,
no external reference), so it opens from a file, a mail attachment or an offline browser alike."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pmg.evaluate.table import EvaluationTable, Section

__all__ = ["HistoryItem", "UserCard", "data_uri", "render_page"]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table.metrics { border-collapse: collapse; margin: 8px 0 4px; font-size: 0.9em; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: 3px 8px; }
table.metrics td.value { text-align: right; font-variant-numeric: tabular-nums; }
table.metrics td.missing { text-align: center; color: #999; }
.notes, .reasons { font-size: 0.85em; color: #555; margin: 2px 0; }
.user { border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; margin: 14px 0; }
.history img, .generation img { image-rendering: pixelated; border: 1px solid #ccc; margin: 2px; background: #fff; }
.tokens { font-family: ui-monospace, monospace; font-size: 0.85em; }
table.variants { border-collapse: collapse; margin-top: 8px; }
table.variants td, table.variants th { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; font-size: 0.85em; }
table.variants th.highlight { background: #eef5ff; }
.hit { color: #1a7f37; } .miss { color: #cf222e; }
.text { max-width: 240px; white-space: pre-wrap; }
img.plot { max-width: min(100%, 900px); border: 1px solid #eee; margin: 6px 0; }
"""


def data_uri(path: Path) -> str:
    """``path`` (an image file) as a ``data:`` URI; ``ValueError`` for a type a browser cannot show."""
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: not an image type the report can inline ({sorted(_MIME)})")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


@dataclass
class HistoryItem:
    item_id: str
    title: str
    image: Path | None


@dataclass
class UserCard:
    """What one user's card shows: ``record`` is the user's entry of ``generations.json``'s ``users``,
    ``generations`` {variant: its entry for the user, None for a missing variant}."""

    record: dict[str, Any]
    history: list[HistoryItem]
    generations: dict[str, dict[str, Any] | None]


def _e(text: object) -> str:
    return html.escape(str(text))


def _table(section: Section, labels: Mapping[str, str]) -> str:
    head = "".join(f"<th>{_e(labels.get(c, c))}</th>" for c in section.columns)
    marked, reasons = section.numbered_cells()
    body = []
    for row, cells in zip(section.rows, marked, strict=True):
        shown = [f'<td class="value">{_e(cell.shown())}</td>' if number is None else
                 f'<td class="missing" title="{_e(cell.missing)}">— ({number})</td>' for cell, number in cells]
        body.append(f"<tr><th>{_e(row.label)}</th>{''.join(shown)}</tr>")
    notes = "".join(f'<p class="notes">{_e(n)}</p>' for n in section.notes)
    why = "".join(f'<p class="reasons">({n}) {_e(r)}</p>' for n, r in enumerate(reasons, 1))
    return (f"<h3>{_e(section.title)}</h3>{notes}<table class=\"metrics\"><tr><th>metric</th>{head}</tr>"
            f"{''.join(body)}</table>{why}")


def _image(path: Path | None, alt: str, width: int) -> str:
    if path is None or not path.is_file():
        return f'<span class="notes">({_e(alt)}: no image)</span>'
    return f'<img src="{data_uri(path)}" alt="{_e(alt)}" title="{_e(alt)}" width="{width}" height="{width}">'


def _verdict(reading: Mapping[str, str] | None, tastes: Mapping[str, str] | None) -> str:
    """The judge's reading of an image, each value marked against the user's true one where known."""
    if reading is None:
        return '<span class="notes">no judge reading</span>'
    parts = []
    for attribute, value in reading.items():
        truth = (tastes or {}).get(attribute)
        mark = "" if truth is None else (' <span class="hit">✓</span>' if value == truth else
                                         f' <span class="miss">✗ (user: {_e(truth)})</span>')
        parts.append(f"{_e(attribute)}: {_e(value)}{mark}")
    return "<br>".join(parts)


def _card(card: UserCard, folder: Path, labels: Mapping[str, str], width: int) -> str:
    record = card.record
    tastes = record.get("tastes")
    taste_text = ", ".join(f"{k}: {v}" for k, v in tastes.items()) if tastes else "no ground-truth tastes"
    tokens = "<br>".join(f"{_e(m)}: {_e(t)}" for m, t in record["tokens"].items())
    history = "".join(_image(item.image, f"{item.item_id} {item.title}", width // 2 + 16) for item in card.history)
    heads, images, texts, verdicts = [], [], [], []
    for variant, generation in card.generations.items():
        highlight = ' class="highlight"' if variant in ("tokens_sft", "tokens_reward") else ""
        heads.append(f"<th{highlight}>{_e(labels.get(variant, variant))}</th>")
        if generation is None:
            images.append('<td class="notes">not evaluated</td>')
            texts.append("<td></td>")
            verdicts.append("<td></td>")
            continue
        image = folder / generation["image"] if generation.get("image") else None
        images.append(f'<td class="generation">{_image(image, variant, width)}</td>')
        written = "<br>".join(f"<b>{_e(t)}</b>: {_e(v) or '<i>(empty)</i>'}" for t, v in generation["texts"].items())
        texts.append(f'<td class="text">{written or "<i>no text generator</i>"}</td>')
        verdicts.append(f"<td>{_verdict(generation.get('judge'), tastes)}</td>")
    return (f'<div class="user"><h3>{_e(record["user_id"])}</h3><p>{_e(taste_text)}</p>'
            f'<p class="tokens">{tokens}</p><div class="history"><b>history</b> (most recent training items)<br>{history}</div>'
            f'<table class="variants"><tr><th></th>{"".join(heads)}</tr><tr><th>image</th>{"".join(images)}</tr>'
            f'<tr><th>text</th>{"".join(texts)}</tr><tr><th>judge</th>{"".join(verdicts)}</tr></table></div>')


def render_page(title: str, summary: Sequence[str], table: EvaluationTable, labels: Mapping[str, str],
                plots: Sequence[tuple[str, Path]], cards: Sequence[UserCard], evaluate_folder: Path, width: int) -> str:
    """The whole page: summary lines, evaluation tables, plots (PNG files, inlined), then the user cards.

    ``plots``: (caption, PNG path); ``evaluate_folder`` resolves the generations' image paths.
    """
    sections = "".join(_table(section, labels) for section in table.sections)
    figures = "".join(f'<figure><img class="plot" src="{data_uri(path)}" alt="{_e(caption)}">'
                      f"<figcaption>{_e(caption)} ({_e(path.name)})</figcaption></figure>" for caption, path in plots)
    users = "".join(_card(card, evaluate_folder, labels, width) for card in cards)
    facts = "".join(f"<li>{_e(line)}</li>" for line in summary)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1><ul>{facts}</ul>"
            f"<h2>Evaluation</h2>{sections}<h2>Plots</h2>{figures or '<p>no plots</p>'}"
            f"<h2>Users</h2><p class=\"notes\">The generation users of the evaluation; each variant's image and texts, "
            f"and what the zoo's attribute judge reads in the image (✓: the user's true value).</p>{users}</body></html>")
