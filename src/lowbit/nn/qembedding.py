"""``QuantEmbedding``: an ``nn.Embedding`` table stored as integer codes (or fp16/bf16).

A lookup gathers integer rows and scales them: ``y = q_w[ids] * s[ids]`` with one symmetric scale
per row (per token of the vocabulary). There is no matmul, so activations need no quantization:
every integer scheme stores the table in ``weight`` format, and cast schemes store it in half
precision. Group-wise schemes keep their groups along each row (a row is one token's vector);
grid and codebook formats (NF4, k-means...) gather code rows and dequantize just those. For a transformer, the embedding table is often the largest tensor (all-MiniLM-L6-v2:
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
from lowbit.formats import CodebookFormat, IntFormat, get_format
from lowbit.granularity import GranularityKind
from lowbit.nn import kernel_calls as kc
from lowbit.nn.base import QuantizedWeight, QuantModule, check_finite, quantize_weight
from lowbit.weight_quant import dequantize_weight, placeholder_weight

__all__ = ["QuantEmbedding", "embedding_unsupported_reason"]


def embedding_unsupported_reason(module: nn.Embedding) -> str | None:
    if module.max_norm is not None:
        return "nn.Embedding with max_norm renormalises rows in place at lookup"
    return None


class QuantEmbedding(QuantModule):
    """Embedding lookup from an int8 (per-row scaled) or half-precision table.

    Lookups come out in ``output_dtype`` (float32; ``.half()``/``.to(dtype)`` change it as they
    would a float embedding's, while the stored table keeps its format).
    """

    _derived = ("_row_scale", "_cast_path")

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
        self.output_dtype = torch.float32
        if scheme.mode is QuantMode.CAST:
            self.weight = nn.Parameter(half_weight, requires_grad=False)
            self.kernel = f"{scheme.compute_dtype} gather"
        else:
            self._register_qweight(qweight)
        self._prepare()

    @staticmethod
    def _row_scheme(scheme: QuantScheme, dim: int) -> QuantScheme:
        """Rows are the unit of lookup: per-row (or per-group-within-row) parameters only.

        8-bit-and-wider integer tables use one symmetric scale per row (the fast gather);
        codebooks keep their per-layer or per-row codebook; group-wise schemes keep their groups
        when the group size divides the row; anything else becomes per row.
        """
        if scheme.mode is QuantMode.CAST:
            return scheme
        w = scheme.weight
        fmt, gran = w.number_format, w.granularity_value
        if gran.kind is GranularityKind.PER_GROUP and dim % gran.group_size == 0:
            return scheme
        if isinstance(
            fmt, CodebookFormat
        ):  # per layer or per row; groups that do not fit: per layer
            if gran.kind is GranularityKind.PER_GROUP:
                return dataclasses.replace(
                    scheme, weight=dataclasses.replace(w, granularity="per_tensor")
                )
            return scheme
        wide_int = isinstance(fmt, IntFormat) and fmt.bits >= 8
        weight = dataclasses.replace(
            w, granularity="per_channel", symmetric=True if wide_int else w.symmetric
        )
        return dataclasses.replace(scheme, weight=weight)

    @classmethod
    def from_float(
        cls, emb: nn.Embedding, scheme: QuantScheme, input_qparams=None, name: str = "embedding"
    ) -> QuantEmbedding:
        check_finite(emb.weight, f"{name}.weight")
        scheme = cls._row_scheme(scheme, emb.embedding_dim)
        if scheme.mode is QuantMode.CAST:
            half = emb.weight.detach().to(get_format(scheme.compute_dtype).torch_dtype)
            return cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, scheme, None, half)
        qweight = quantize_weight(emb.weight, scheme.weight, f"{name}.weight")
        return cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, scheme, qweight, None)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], float_module: nn.Embedding) -> QuantEmbedding:
        """An empty shell shaped like ``float_module``, to be filled by ``load_state_dict``."""
        v, d = float_module.num_embeddings, float_module.embedding_dim
        scheme = cls._row_scheme(QuantScheme.from_dict(spec["scheme"]), d)
        if scheme.mode is QuantMode.CAST:
            half = torch.zeros(v, d, dtype=get_format(scheme.compute_dtype).torch_dtype)
            return cls(v, d, float_module.padding_idx, scheme, None, half)
        qweight = placeholder_weight((v, d), scheme.weight)
        return cls(v, d, float_module.padding_idx, scheme, qweight, None)

    def dequantized_weight(self) -> torch.Tensor:
        """The table as float32: dequantized codes, or the stored fp16/bf16 values."""
        if "weight" in self._parameters:
            return self.weight.detach().float()
        return super().dequantized_weight()

    def _prepare(self) -> None:
        if self.scheme.mode is QuantMode.CAST:
            self._cast_path = kc.cast(self.weight.dtype, self.weight.dtype, "gather")
            return
        # The fast gather needs integer codes with one symmetric scale per row.
        self._row_scale = self._per_channel_scale()
        if self._row_scale is not None:
            self._row_scale = self._row_scale.reshape(-1, 1)
            self.kernel = "int8 gather + per-row scale"
        else:
            self.kernel = f"gather {self.scheme.weight.format} code rows + dequantize"

    def _follow_float_dtype(self, dtype: torch.dtype) -> None:
        self.output_dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.is_floating_point():
            raise ValueError(f"QuantEmbedding takes integer ids, got {ids.dtype}")
        if self.scheme.mode is QuantMode.CAST:
            self._ran(self._cast_path, ids.numel())
            y = nn.functional.embedding(ids, self.weight).float()
        elif self._row_scale is not None:
            self._ran(kc.INT8_GATHER, ids.numel())
            rows = nn.functional.embedding(ids, self.qweight)
            scale = nn.functional.embedding(ids, self._row_scale)
            y = rows.to(torch.float32).mul_(scale)
        else:
            self._ran(kc.CODE_GATHER, ids.numel())
            y = self._gather_dequantize(ids)
        return y.to(self.output_dtype)

    def _gather_dequantize(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantize only the looked-up rows: their codes with their rows of parameters."""
        flat = ids.reshape(-1)
        qw = self._quantized_weight()
        book = qw.codebook
        rows = QuantizedWeight(
            qw.qdata[flat],
            None if qw.scale is None else qw.scale[flat],
            None if qw.zero_point is None else qw.zero_point[flat],
            book if book is None or book.shape[0] == 1 else book[flat],
        )
        return dequantize_weight(rows, self.scheme.weight).reshape(*ids.shape, self.embedding_dim)
