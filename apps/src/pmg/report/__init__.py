"""Stage "report": a self-contained HTML page of a run (evaluation table, plots, users' generations)."""

from pmg.report.config import ReportConfig
from pmg.report.stage import REPORT_STAGE, report_path, run_report_stage

__all__ = ["REPORT_STAGE", "ReportConfig", "report_path", "run_report_stage"]
