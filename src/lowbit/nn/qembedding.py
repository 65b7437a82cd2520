"""``QuantEmbedding``: an ``nn.Embedding`` table stored as int8 rows (or fp16/bf16).

A lookup gathers integer rows and scales them: ``y = q_w[ids] * s[ids]`` with one symmetric scale
per row (per token of the vocabulary). There is no matmul, so activations need no quantization:
every integer scheme stores the table in ``weight`` format, and cast schemes store it in half
precision. For a transformer, the embedding table is often the largest tensor (all-MiniLM-L6-v2:
47 of its 91 MB), so this is where most of the size goes.

>>> emb = QuantEmbedding.from_float(nn.Embedding(100, 16), get_preset("W8A8-dynamic"))
>>> emb.qweight.dtype, emb(torch.tensor([[1, 2]])).shape
(torch.int8, torch.Size([1, 2, 16]))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from lowbit.config import QuantMode, QuantScheme
from lowbit.formats import get_format
from lowbit.nn.base import QuantizedWeight, QuantModule, check_finite, quantize_weight

__all__ = ["QuantEmbedding", "embedding_unsupported_reason"]


def embedding_unsupported_reason(module: nn.Embedding) -> str | None:
    if module.max_norm is not None:
        return "nn.Embedding with max_norm renormalises rows in place at lookup"
    return None


class QuantEmbedding(QuantModule):
    """Embedding lookup from an int8 (per-row scaled) or half-precision table."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None,
        scheme: QuantScheme,
        qweight: QuantizedWeight | None,
        half_weight: torch.Tensor | None,
    ):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.scheme = padding_idx, scheme
        if scheme.mode is QuantMode.CAST:
            self.weight = nn.Parameter(half_weight, requires_grad=False)
            self.kernel = f"{scheme.compute_dtype} gather"
        else:
            self._register_qweight(qweight)
            self.kernel = "int8 gather + per-row scale"
            self._prepare()

    @staticmethod
    def _row_scheme(scheme: QuantScheme) -> QuantScheme:
        """Tables are quantized per row whatever the scheme's weight granularity says."""
        if scheme.mode is QuantMode.CAST:
            return scheme
        weight = dataclasses.replace(scheme.weight, granularity="per_channel", symmetric=True)
        return dataclasses.replace(scheme, weight=weight)

    @classmethod
    def from_float(
        cls, emb: nn.Embedding, scheme: QuantScheme, input_qparams=None, name: str = "embedding"
    ) -> QuantEmbedding:
        check_finite(emb.weight, f"{name}.weight")
        scheme = cls._row_scheme(scheme)
        if scheme.mode is QuantMode.CAST:
            half = emb.weight.detach().to(get_format(scheme.compute_dtype).torch_dtype)
            return cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, scheme, None, half)
        qweight = quantize_weight(emb.weight, scheme.weight, f"{name}.weight")
        return cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, scheme, qweight, None)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], float_module: nn.Embedding) -> QuantEmbedding:
        shell = nn.Embedding(
            float_module.num_embeddings,
            float_module.embedding_dim,
            padding_idx=float_module.padding_idx,
            _weight=torch.zeros(float_module.num_embeddings, float_module.embedding_dim),
        )
        return cls.from_float(shell, QuantScheme.from_dict(spec["scheme"]))

    def _prepare(self) -> None:
        if self.scheme.mode is not QuantMode.CAST:
            self._row_scale = self.weight_scale.reshape(-1, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.is_floating_point():
            raise ValueError(f"QuantEmbedding takes integer ids, got {ids.dtype}")
        if self.scheme.mode is QuantMode.CAST:
            return nn.functional.embedding(ids, self.weight).float()
        rows = nn.functional.embedding(ids, self.qweight)
        scale = nn.functional.embedding(ids, self._row_scale)
        return rows.to(torch.float32).mul_(scale)
