"""Weight quantizers: a float weight becomes codes plus what it takes to read them back.

Three kinds, one per format kind (the weight is viewed as 2-D ``[out, in * kernel...]``):

* **uniform** (``int4``, ``uint4``...): ``w ≈ (q - z) * s`` with ``s, z`` per block from min/max;
* **grid** (``nf4``, ``pot4``, ``binary``, ``ternary``): ``w ≈ s * levels[q]`` with ``s`` per block:
  absmax for NF/power-of-two grids, ``α = mean|w|`` for binary (XNOR-Net, Rastegari et al. 2016),
  and for ternary the TWN rule (Li et al. 2016): threshold ``Δ = 0.7 * mean|w|``, codes
  ``sign(w) * [|w| > Δ]``, ``α = mean of |w| over |w| > Δ``;
* **codebook** (``kmeansK``): ``w ≈ C[g, q]`` with a k-means codebook per layer (per_tensor) or
  per output channel (per_channel); with per_group:N, ``w ≈ s * C[q]``: one codebook per layer
  fitted to the weights divided by their group's absmax ``s`` (a learned NF4-like grid).

Below 8 bits, scales are kept in bf16 and zero points in int8 (they cost ~0.2 bit per weight at
group 128 instead of ~0.5), codebooks in fp16; codes are always computed *against the rounded
parameters*, so saving and loading lose nothing.

>>> qw = quantize_weight(torch.randn(8, 64), TensorQuantSpec("nf4", "per_group:32"), "w")
>>> qw.qdata.dtype, tuple(qw.scale.shape), qw.zero_point is None
(torch.uint8, (8, 2), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.algorithms.kmeans import kmeans_1d
from lowbit.config import TensorQuantSpec
from lowbit.errors import InvalidModelError
from lowbit.formats import CodebookFormat, GridFormat, IntFormat
from lowbit.granularity import GranularityKind
from lowbit.grids import nearest_level
from lowbit.primitives import block_minmax, block_view, choose_qparams, expand_params, quantize
from lowbit.primitives import dequantize as _dequantize_uniform

__all__ = [
    "QuantizedWeight",
    "quantize_weight",
    "dequantize_weight",
    "placeholder_weight",
    "encode_weight",
    "codebook_groups",
    "check_finite",
]

_TWN_DELTA = 0.7  # Li et al. 2016: Δ* ≈ 0.7 E|w| for uniform/normal weights
_FP16_MAX = 65504.0


@dataclass
class QuantizedWeight:
    """Codes shaped like the weight plus per-block ``scale``/``zero_point`` or a ``codebook``."""

    qdata: torch.Tensor
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    codebook: torch.Tensor | None = None


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise :class:`InvalidModelError` naming ``what`` if ``t`` holds NaN or Inf."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise InvalidModelError(
            f"{what} contains {n_bad} NaN/Inf value(s); lowbit cannot choose a range for it. "
            "Fix or re-train the model, or exclude this layer with exclude=[...]."
        )


def quantize_weight(weight: torch.Tensor, spec: TensorQuantSpec, what: str) -> QuantizedWeight:
    """Quantize ``weight`` (any shape, dim 0 = output channels) as ``spec`` says."""
    check_finite(weight, what)
    w2d = weight.detach().float().reshape(weight.shape[0], -1)
    fmt = spec.number_format
    if isinstance(fmt, CodebookFormat):
        qw = _codebook(w2d, fmt, spec)
    else:
        block = spec.granularity_value.block_size(tuple(w2d.shape))
        qw = (
            _grid(w2d, fmt, block)
            if isinstance(fmt, GridFormat)
            else _uniform(w2d, fmt, spec, block)
        )
    qw.qdata = qw.qdata.reshape(weight.shape)
    return qw


def _uniform(w2d: torch.Tensor, fmt: IntFormat, spec: TensorQuantSpec, block) -> QuantizedWeight:
    lo, hi = block_minmax(w2d, block)
    scale, zp = choose_qparams(lo, hi, fmt, spec.symmetric)
    if fmt.bits < 8:
        scale = _bf16_at_least(scale)
        if not spec.symmetric:  # re-fit the zero point to the rounded scale
            zp = torch.clamp(
                fmt.qmin - torch.round(lo.clamp(max=0) / scale.float()), fmt.qmin, fmt.qmax
            )
        zp = zp.to(torch.int8)
    q = quantize(w2d, scale.float(), zp, fmt, block)
    return QuantizedWeight(q, scale, zp)


def _bf16_at_least(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` in bf16, rounded up where rounding to nearest would go down: a smaller step
    would shrink the grid below the block's range and clip its extreme weight by more than half
    a step (uint3 on [-4, 4]: 0.51 steps).

    >>> float(_bf16_at_least(torch.tensor([1.0 / 3.0]))[0]) >= 1.0 / 3.0
    True
    """
    s16 = scale.to(torch.bfloat16)
    low = s16.float() < scale
    # positive bf16 values order like their bit patterns: +1 is the next value up
    return torch.where(low, (s16.view(torch.int16) + 1).view(torch.bfloat16), s16)


def _grid(w2d: torch.Tensor, fmt: GridFormat, block: tuple[int, ...]) -> QuantizedWeight:
    v = block_view(w2d, block)
    dims = tuple(range(1, v.dim(), 2))
    a = v.abs()
    if fmt.name == "binary":
        scale = a.mean(dim=dims)
    elif fmt.name == "ternary":
        delta = _TWN_DELTA * a.mean(dim=dims, keepdim=True)
        kept = a > delta
        scale = (a * kept).sum(dim=dims) / kept.sum(dim=dims).clamp(min=1)
    else:
        scale = a.amax(dim=dims)
    scale = scale.clamp(min=1e-12).to(torch.bfloat16)
    s = expand_params(scale.float(), block)
    if fmt.name == "ternary":  # TWN assigns by the threshold Δ, not by the nearest level
        q = torch.where(kept, torch.where(v > 0, 2, 0), 1)
    else:
        q = nearest_level(v / s, torch.tensor(fmt.levels, dtype=torch.float32))
    return QuantizedWeight(q.reshape(w2d.shape).to(torch.uint8), scale)


def codebook_groups(
    w2d: torch.Tensor, spec: TensorQuantSpec
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(values, scale)``: the ``[G, n]`` values a codebook format clusters, row by codebook,
    and the bf16 per-group scales they were divided by (None unless ``per_group``)."""
    gran = spec.granularity_value
    if gran.kind is GranularityKind.PER_CHANNEL:
        return w2d, None  # one codebook per output channel
    if gran.kind is GranularityKind.PER_GROUP:
        # one codebook per layer, fitted to the weights divided by their group's absmax
        block = gran.block_size(tuple(w2d.shape))
        v = block_view(w2d, block)
        scale = v.detach().abs().amax(dim=(1, 3)).clamp(min=1e-12).to(torch.bfloat16)
        return (v / expand_params(scale.float(), block)).reshape(1, -1), scale
    return w2d.reshape(1, -1), None  # one codebook per layer


def _codebook(w2d: torch.Tensor, fmt: CodebookFormat, spec: TensorQuantSpec) -> QuantizedWeight:
    groups, scale = codebook_groups(w2d, spec)
    if bool((groups.abs() > _FP16_MAX).any()):
        raise InvalidModelError(
            f"{fmt.name} stores its codebook in fp16, but this weight has values beyond ±65504; "
            "use a grid format (nf4, int4...) or exclude the layer"
        )
    centroids, _ = kmeans_1d(groups, fmt.k)
    book = centroids.to(torch.float16)
    codes = nearest_level(groups, book.float())  # against the stored (fp16) codebook
    return QuantizedWeight(codes.reshape(w2d.shape).to(torch.uint8), scale, codebook=book)


def encode_weight(
    weight: torch.Tensor, spec: TensorQuantSpec, params: QuantizedWeight
) -> QuantizedWeight:
    """Codes for ``weight`` against fixed ``params`` (their scale, zero point or codebook).

    Rounds to the nearest code, also for ternary (GPTQ and AdaRound choose values on the grid
    themselves; re-encoding such values gives back exactly their codes).

    >>> spec = TensorQuantSpec("int4", "per_channel")
    >>> qw = quantize_weight(torch.randn(4, 16), spec, "w")
    >>> w = dequantize_weight(qw, spec)
    >>> bool(torch.equal(encode_weight(w, spec, qw).qdata, qw.qdata))
    True
    """
    w2d = weight.detach().float().reshape(weight.shape[0], -1)
    fmt = spec.number_format
    block = spec.granularity_value.block_size(tuple(w2d.shape))
    if isinstance(fmt, CodebookFormat):
        book = params.codebook.float()
        v = w2d
        if params.scale is not None:
            v = (block_view(w2d, block) / expand_params(params.scale.float(), block)).reshape(
                v.shape
            )
        codes = nearest_level(v.reshape(1, -1) if book.shape[0] == 1 else v, book)
        q = codes.reshape(w2d.shape).to(torch.uint8)
    elif isinstance(fmt, GridFormat):
        v = block_view(w2d, block) / expand_params(params.scale.float(), block)
        levels = torch.tensor(fmt.levels, dtype=torch.float32)
        q = nearest_level(v, levels).reshape(w2d.shape).to(torch.uint8)
    else:
        q = quantize(w2d, params.scale.float(), params.zero_point, fmt, block)
    return QuantizedWeight(
        q.reshape(weight.shape), params.scale, params.zero_point, params.codebook
    )


def placeholder_weight(shape: tuple[int, ...], spec: TensorQuantSpec) -> QuantizedWeight:
    """Correctly shaped and typed stand-ins for an empty layer that ``load_state_dict`` fills.

    Codebook formats skip k-means here (fitting zeros would cost seconds per layer at load);
    the other kinds quantize a zero weight, which is cheap.
    """
    fmt = spec.number_format
    if not isinstance(fmt, CodebookFormat):
        return quantize_weight(torch.zeros(shape), spec, "placeholder")
    rows, cols = shape[0], math.prod(shape[1:])
    gran = spec.granularity_value
    scale = None
    if gran.kind is GranularityKind.PER_GROUP:
        n_groups = cols // gran.block_size((rows, cols))[1]
        scale = torch.ones(rows, n_groups, dtype=torch.bfloat16)
    books = rows if gran.kind is GranularityKind.PER_CHANNEL else 1
    return QuantizedWeight(
        torch.zeros(shape, dtype=torch.uint8),
        scale,
        codebook=torch.zeros(books, fmt.k, dtype=torch.float16),
    )


def dequantize_weight(qw: QuantizedWeight, spec: TensorQuantSpec) -> torch.Tensor:
    """The float32 weight that ``qw``'s codes stand for, shaped like ``qw.qdata``."""
    fmt = spec.number_format
    q2d = qw.qdata.flatten(1)  # [out, -1], also for zero rows (an empty lookup)
    if isinstance(fmt, CodebookFormat):
        book, idx = qw.codebook.float(), q2d.long()
        w = book[0][idx] if book.shape[0] == 1 else book.gather(1, idx)
        if qw.scale is not None:  # per-group scales over a shared codebook
            block = spec.granularity_value.block_size(tuple(q2d.shape))
            w = block_view(w, block) * expand_params(qw.scale.float(), block)
        return w.reshape(qw.qdata.shape)
    block = spec.granularity_value.block_size(tuple(q2d.shape))
    if isinstance(fmt, GridFormat):
        levels = torch.tensor(fmt.levels, dtype=torch.float32)
        v = block_view(levels[q2d.long()], block)
        w = v * expand_params(qw.scale.float(), block)
    else:
        w = _dequantize_uniform(q2d, qw.scale.float(), qw.zero_point, block)
    return w.reshape(qw.qdata.shape)
