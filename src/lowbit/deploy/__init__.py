"""Deployment checks: float vs quantized speed in lowbit's runtime and in ONNX Runtime."""

from lowbit.deploy.bench import DEFAULT_SCHEMES, BenchResult, SlowdownWarning, bench

__all__ = ["bench", "BenchResult", "SlowdownWarning", "DEFAULT_SCHEMES"]
