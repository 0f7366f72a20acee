"""Importance criteria."""

from .scoring import MAGNITUDE_CRITERIA, REDUCTIONS, ScorePlan, TaylorAccumulator, magnitude_scores, score_plan

__all__ = ["MAGNITUDE_CRITERIA", "REDUCTIONS", "ScorePlan", "TaylorAccumulator", "magnitude_scores", "score_plan"]
