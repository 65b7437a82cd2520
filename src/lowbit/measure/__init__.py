"""Measurement: latency, accuracy and fidelity, and plain-text tables of the results."""

from lowbit.measure.accuracy import cosine_similarity, sqnr_db, top1_accuracy
from lowbit.measure.latency import LatencyResult, compare_latency, measure_latency
from lowbit.measure.size import bits_per_weight, layer_weight_bytes
from lowbit.measure.table import format_table

__all__ = [
    "LatencyResult",
    "measure_latency",
    "compare_latency",
    "top1_accuracy",
    "cosine_similarity",
    "sqnr_db",
    "format_table",
    "bits_per_weight",
    "layer_weight_bytes",
]
