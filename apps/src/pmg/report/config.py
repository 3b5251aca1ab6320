"""Configuration of the report stage."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ReportConfig", "default_curves", "default_headline"]


def default_curves() -> dict[str, list[str]]:
    """Per stage, the TensorBoard scalar tags plotted as training curves (shell-style patterns)."""
    return {
        "preference": ["train/loss", "val/ndcg@20"],
        "quantize": ["train/loss"],
        "generator": ["train/*_loss"],
        "reward": ["val/reward", "val/consistency", "val/personalization"],
    }


def default_headline() -> list[str]:
    """The evaluation rows of the headline chart: how personal the images and texts are, and the joint rate."""
    return ["generation/image_personalization", "generation/text_personalization", "generation/joint"]


@dataclass
class ReportConfig:
    """Stage "report": a self-contained HTML page of a run (images inlined as data URIs) with PNG plots beside it.

    ``num_users``: how many of the evaluation's generation users get a card (history, tokens, the
    generations of every variant and the judge's verdicts). ``history_thumbnails``: the most recent
    training-history items shown per user. ``thumbnail_px``: the width images are shown at.
    ``curves``: stage → TensorBoard tags to plot (``fnmatch`` patterns; one panel per tag).
    ``dpi``: resolution of the PNG plots. ``headline``: the rows (``section/metric`` of the evaluation
    table) of ``evaluation_headline.png``, a short chart of every variant on the figures a reader
    looks at first (the section charts hold every row; empty: no headline chart).
    """

    num_users: int = 6
    history_thumbnails: int = 8
    thumbnail_px: int = 96
    curves: dict[str, list[str]] = field(default_factory=default_curves)
    dpi: int = 100
    headline: list[str] = field(default_factory=default_headline)

    def validate(self) -> None:
        if self.num_users < 1 or self.history_thumbnails < 0:
            raise ValueError("report.num_users must be >= 1 and report.history_thumbnails >= 0")
        if self.thumbnail_px < 16 or self.dpi < 30:
            raise ValueError("report.thumbnail_px must be >= 16 and report.dpi >= 30")
        malformed = [name for name in self.headline if name.count("/") != 1 or not all(name.split("/"))]
        if malformed:
            raise ValueError(f"report.headline entries are section/metric (e.g. generation/joint), got {malformed}")
