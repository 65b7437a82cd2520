"""Quantization-aware training: fake-quantized training, then conversion to the integer model.

``prepare`` swaps Linear/Conv layers for LSQ fake-quant layers (learned weight and input steps,
straight-through rounding); train with any loop; ``convert`` returns the real integer model.
"""

from lowbit.qat.bn import QATConvBN
from lowbit.qat.convert import convert, prepare
from lowbit.qat.fake_quant import lsq_fake_quantize, round_ste
from lowbit.qat.fit import FitHistory, fit
from lowbit.qat.losses import QATLoss, distillation_loss, quantization_error
from lowbit.qat.modules import QATConv, QATLayer, QATLinear

__all__ = [
    "prepare",
    "convert",
    "fit",
    "FitHistory",
    "QATLoss",
    "distillation_loss",
    "quantization_error",
    "QATLayer",
    "QATLinear",
    "QATConv",
    "QATConvBN",
    "lsq_fake_quantize",
    "round_ste",
]
