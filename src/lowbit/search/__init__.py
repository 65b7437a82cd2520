"""Accuracy-driven search: ``lowbit.auto`` and what it returns."""

from lowbit.search.auto import LATENCY_CANDIDATES, OBJECTIVES, auto
from lowbit.search.result import AutoResult, Candidate, pareto_front

__all__ = ["auto", "AutoResult", "Candidate", "pareto_front", "OBJECTIVES", "LATENCY_CANDIDATES"]
