"""Stage "evaluate": recommendation, quantizer and generation metrics of a run against baselines, in one table."""

from pmg.evaluate.config import EvaluateConfig, GenerationEvaluationConfig, RecommendationEvaluationConfig
from pmg.evaluate.stage import EVALUATE_STAGE, load_evaluation, run_evaluate_stage
from pmg.evaluate.table import Cell, EvaluationTable, Row, Section

__all__ = ["EVALUATE_STAGE", "Cell", "EvaluateConfig", "EvaluationTable", "GenerationEvaluationConfig",
           "RecommendationEvaluationConfig", "Row", "Section", "load_evaluation", "run_evaluate_stage"]
