"""The report stage: a self-contained HTML page of a run, with its plots as PNG files beside it.

    pmg report --run DIR [--config configs/report.yaml] [key=value ...]

Reads the evaluate stage's table and generations (no model is loaded) and the stages' TensorBoard
logs. Artifacts in ``<run>/report/`` (the folder is replaced in one rename when complete):

    report.html                 the page: evaluation tables, plots, and per user the history thumbnails,
                                tokens, every variant's image and texts and the judge's verdict
    evaluation_headline.png     a short chart of the rows report.headline names
    evaluation_<section>.png    a bar chart per section of the evaluation table
    training_curves.png         the stages' training curves (``report.curves``)
    config.yaml, metrics.json   the stage's config; counts of users, plots and embedded images
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pmg.atomic import atomic_directory
from pmg.data.dataset_stage import load_prepared
from pmg.data.format import InteractionData
from pmg.data.split import Split
from pmg.evaluate.generation import VARIANT_LABELS, VARIANTS
from pmg.evaluate.stage import UPSTREAM_STAGES, load_evaluation, require_stages
from pmg.report.config import ReportConfig
from pmg.report.page import HistoryItem, UserCard, render_page
from pmg.report.plots import evaluation_plots, headline_section, read_curves, training_curves_plot
from pmg.runs import RunDirectory, stage_fingerprint
from pmg.stages import Stage, StageResult, complete_stage, reuse_or_clear, write_stage_record

__all__ = ["REPORT_HTML", "REPORT_STAGE", "report_path", "run_report_stage"]

REPORT_HTML = "report.html"


def report_path(run: RunDirectory) -> Path | None:
    """The run's report page, or None if the report stage has not completed."""
    return run.root / "report" / REPORT_HTML if run.record("report") is not None else None


def _history(data: InteractionData, split: Split, user: int, count: int) -> list[HistoryItem]:
    """The ``count`` most recent training items of data user ``user``, newest first."""
    rows = split.train[data.user[split.train] == user]
    rows = rows[np.argsort(data.timestamp[rows], kind="stable")[::-1][:count]]
    return [HistoryItem(data.items[i].item_id, data.items[i].title, data.items[i].image) for i in data.item[rows]]


def run_report_stage(config: ReportConfig, run: RunDirectory, upstream: str, force: bool) -> StageResult:
    """Write ``<run>/report/report.html`` and its PNG plots from the evaluation and the training logs."""
    stage_fp = stage_fingerprint("report", config, upstream)
    # Checked before anything is cleared: a bad config or a missing stage loses no earlier report.
    config.validate()
    require_stages(run, (*UPSTREAM_STAGES, "evaluate"))
    table, record = load_evaluation(run)
    headline = headline_section(table, config.headline)  # a misspelt row fails here, before the earlier report is cleared
    if (reused := reuse_or_clear(run, "report", stage_fp, force)) is not None:
        return reused
    data, split = load_prepared(run)
    index = data.user_index()
    cards = []
    for n, user in enumerate(record["users"][: config.num_users]):
        generations = {v: (record["variants"][v][n] if record["variants"].get(v) else None) for v in VARIANTS}
        cards.append(UserCard(user, _history(data, split, index[user["user_id"]], config.history_thumbnails), generations))
    curves = read_curves(run.root, config.curves)
    out = run.root / "report"
    with atomic_directory(out) as tmp:
        plots = [(f"Evaluation: {title}", tmp / name) for title, name in evaluation_plots(table, tmp, VARIANT_LABELS, config.dpi,
                                                                                              headline)]
        if training_curves_plot(curves, tmp / "training_curves.png", config.dpi):
            plots.append(("Training curves (TensorBoard logs of the stages)", tmp / "training_curves.png"))
        summary = [f"run directory: {run.root.resolve()}",
                   f"dataset {data.name}: {data.num_users} users, {data.num_items} items, {data.num_interactions} interactions",
                   f"stages: {', '.join((*UPSTREAM_STAGES, 'evaluate'))}"]
        page = render_page(f"pmg report: {run.root.name}", summary, table, VARIANT_LABELS, plots, cards,
                           run.stage_dir("evaluate"), config.thumbnail_px)
        (tmp / REPORT_HTML).write_text(page, encoding="utf-8")
        metrics = {"users": float(len(cards)), "plots": float(len(plots)), "embedded_images": float(page.count("src=\"data:image/"))}
        write_stage_record(tmp, metrics, config)
    path = out / REPORT_HTML
    summary_line = f"{len(cards)} users, {len(plots)} plots; report: {path.resolve()}"
    return complete_stage(run, "report", stage_fp, summary_line, report=str(path.resolve()))


REPORT_STAGE = Stage("report", "report", ReportConfig, run_report_stage,
                     "a self-contained HTML report of the run: evaluation table, plots, users' generations")
