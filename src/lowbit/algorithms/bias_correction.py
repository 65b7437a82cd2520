"""Empirical bias correction (Nagel et al. 2019, §4.2; the "empirical" variant of §4.2.2).

Quantizing a layer's weights (and its input) shifts the mean of its output:
``E[ỹ] - E[y] = E[W̃ x̃] - E[W x] ≠ 0``, and the next layers see that shift as a systematic
error. With the expectations estimated on calibration data, add the shift back into the bias:

    b' = b + E[y] - E[ỹ]        (per output channel)

Because the layer is linear, ``E[W x] = W E[x]``: a running mean of the inputs (per input
position for convolutions, so padding at the borders stays exact) is all the data it needs.

>>> bias_correction(torch.zeros(2), torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0])).tolist()
[-0.5, 1.0]
"""

from __future__ import annotations

import torch

__all__ = ["bias_correction"]


def bias_correction(
    bias: torch.Tensor, mean_float: torch.Tensor, mean_quant: torch.Tensor
) -> torch.Tensor:
    """``b + E[y] - E[ỹ]``: the corrected bias, from the float and quantized output means."""
    return bias + (mean_float - mean_quant).to(bias.dtype)
