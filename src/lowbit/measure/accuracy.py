"""Task metrics: top-1 accuracy, cosine similarity of embeddings, SQNR of any output.

>>> top1_accuracy(model, images, labels)          # fraction in [0, 1]  # doctest: +SKIP
>>> cosine_similarity(emb_quant, emb_float).mean()  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["top1_accuracy", "cosine_similarity", "sqnr_db"]


def top1_accuracy(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> float:
    """Fraction of ``inputs`` whose arg-max logit equals the label."""
    if len(inputs) != len(labels) or len(inputs) == 0:
        raise ValueError(f"need as many labels as inputs (>0), got {len(inputs)} and {len(labels)}")
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(inputs), batch_size):
            logits = model(inputs[i : i + batch_size])
            correct += int((logits.argmax(dim=-1) == labels[i : i + batch_size]).sum())
    return correct / len(inputs)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two ``[n, d]`` embedding matrices (float64 for stability)."""
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in shape: {list(a.shape)} vs {list(b.shape)}")
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(|y|^2 / |y - y_q|^2)``.

    >>> sqnr_db(torch.ones(4), torch.ones(4) * 1.01)     # 1 % error everywhere -> 40 dB
    40.0...
    """
    if reference.shape != approx.shape:
        raise ValueError(f"shapes differ: {list(reference.shape)} vs {list(approx.shape)}")
    y, yq = reference.detach().double(), approx.detach().double()
    noise = (y - yq).pow(2).sum().clamp_min(1e-30)
    return float(10 * torch.log10(y.pow(2).sum() / noise))
