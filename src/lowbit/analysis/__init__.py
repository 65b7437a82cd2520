"""Analysis of a model before choosing how to quantize it (groundwork of the mixed-precision issue)."""

from lowbit.analysis.sensitivity import LayerSensitivity, layer_sensitivity

__all__ = ["LayerSensitivity", "layer_sensitivity"]
