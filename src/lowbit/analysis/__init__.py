"""Analysis of a model before choosing how to quantize it: per-layer sensitivity, bit
allocation under a size or latency budget, and plots."""

from lowbit.analysis.allocate import Allocation, allocate
from lowbit.analysis.report import LayerInfo, LayerSensitivity, SensitivityReport
from lowbit.analysis.sensitivity import DEFAULT_CANDIDATES, analyze

__all__ = [
    "analyze",
    "allocate",
    "Allocation",
    "SensitivityReport",
    "LayerSensitivity",
    "LayerInfo",
    "DEFAULT_CANDIDATES",
]
