"""Range solvers: turn collected statistics into a clipping range ``(min_val, max_val)``.

Observers (:mod:`lowbit.observers`) collect statistics; the pure functions here solve for a range.
A histogram is ``counts[k]`` over ``[edges[k], edges[k+1]]``, with its mass assumed uniform inside
each bin (so its CDF is piecewise linear). Solvers return two 0-d float32 tensors; scale and zero
point then come from :func:`lowbit.primitives.choose_qparams`. Symmetric solvers work on the |x|
distribution and return ``(-t, t)``.

>>> x = torch.randn(100_000, dtype=torch.float64)
>>> edges = torch.linspace(x.min().item(), x.max().item(), 2049, dtype=torch.float64)
>>> counts = torch.histc(x, 2048, x.min().item(), x.max().item())
>>> lo, hi = percentile_range(counts, edges, 99.0, symmetric=True)    # about (-2.58, 2.58)
"""

from __future__ import annotations

import math
from enum import Enum

import torch

from lowbit.errors import CalibrationError, ConfigError
from lowbit.formats import IntFormat
from lowbit.primitives import choose_qparams

__all__ = [
    "RangeMethod",
    "histogram_cdf",
    "rebin_histogram",
    "abs_histogram",
    "percentile_range",
    "mse_range",
    "entropy_range",
    "finalize_range",
]

_F64 = torch.float64
_TINY = 1e-300  # guards divisions by empty bins / empty levels in float64
_EPS32 = torch.finfo(torch.float32).eps


class RangeMethod(str, Enum):  # noqa: UP042 - same str-enum style as GranularityKind
    """How an activation clipping range is chosen from calibration statistics."""

    MINMAX = "minmax"
    MOVING_AVERAGE = "moving_average"
    PERCENTILE = "percentile"
    MSE = "mse"
    ENTROPY = "entropy"

    @classmethod
    def parse(cls, value: str | RangeMethod) -> RangeMethod:
        """Parse ``"minmax"``, ``"percentile"``, ... (case-insensitive) into a member."""
        try:
            return cls(value.strip().lower() if isinstance(value, str) else value)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ConfigError(f"unknown range method {value!r}; use one of {choices}") from None


def _checked(counts: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    counts, edges = torch.as_tensor(counts, dtype=_F64), torch.as_tensor(edges, dtype=_F64)
    if counts.dim() != 1 or edges.shape != (counts.numel() + 1,):
        raise ConfigError(
            f"a histogram needs 1-D counts[n] and edges[n+1], got {list(counts.shape)} and "
            f"{list(edges.shape)}"
        )
    if not (torch.isfinite(counts).all() and torch.isfinite(edges).all()):
        raise CalibrationError("histogram counts or edges contain NaN/Inf")
    if (counts < 0).any() or (edges.diff() < 0).any():
        raise ConfigError("histogram counts must be >= 0 and edges non-decreasing")
    if counts.sum() <= 0:
        raise CalibrationError("histogram is empty (total count 0); feed calibration data first")
    return counts, edges


def _int_format(fmt: object) -> IntFormat:
    if not isinstance(fmt, IntFormat):
        raise ConfigError(f"range solvers need an integer format such as int8, got {fmt!r}")
    return fmt


def histogram_cdf(counts: torch.Tensor, edges: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mass at or below ``x``, linear inside bins (0 below the range, the total above it)."""
    cum = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    idx = torch.searchsorted(edges, x, right=True).clamp(1, edges.numel() - 1)
    x0, x1 = edges[idx - 1], edges[idx]
    frac = ((x - x0) / (x1 - x0).clamp_min(_TINY)).clamp(0.0, 1.0)
    return cum[idx - 1] + frac * (cum[idx] - cum[idx - 1])


def rebin_histogram(
    counts: torch.Tensor, edges: torch.Tensor, new_edges: torch.Tensor
) -> torch.Tensor:
    """Move counts onto ``new_edges``: each old bin's mass is split over the new bins it overlaps
    in proportion to the overlap. Mass outside ``new_edges`` is dropped; none is created.

    >>> old_edges, new_edges = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5, 2.0])
    >>> rebin_histogram(torch.tensor([4.0]), old_edges, new_edges)
    tensor([2., 2.])
    """
    return histogram_cdf(counts, edges, new_edges).diff().clamp_min(0.0)


def abs_histogram(
    counts: torch.Tensor, edges: torch.Tensor, bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram of |x| on ``bins`` equal bins over ``[0, max|x|]``.

    Mass of |x| <= t is ``F(t) - F(-t)`` with F the histogram CDF, so the fold is exact up to the
    within-bin uniformity assumption.
    """
    amax = max(abs(edges[0].item()), abs(edges[-1].item()))
    new_edges = torch.linspace(0.0, amax, bins + 1, dtype=_F64)
    mass = histogram_cdf(counts, edges, new_edges) - histogram_cdf(counts, edges, -new_edges)
    return mass.diff().clamp_min(0.0), new_edges


def _inverse_cdf(counts: torch.Tensor, edges: torch.Tensor, q: float) -> float:
    """Smallest x with ``F(x) >= q`` (linear inside the bin that crosses q)."""
    cum = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    target = torch.tensor([q], dtype=_F64)
    k = torch.searchsorted(cum, target).clamp(1, counts.numel()).item()
    frac = (q - cum[k - 1].item()) / max(cum[k].item() - cum[k - 1].item(), _TINY)
    return edges[k - 1].item() + min(max(frac, 0.0), 1.0) * (edges[k] - edges[k - 1]).item()


def percentile_range(
    counts: torch.Tensor, edges: torch.Tensor, percentile: float = 99.99, *, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipping range that keeps ``percentile`` % of the mass.

    Symmetric: ``t = F_|x|^-1(p/100)``, range ``(-t, t)``. Asymmetric: each tail loses
    ``(100 - p)/2`` %: ``(F^-1((100-p)/200), F^-1(1 - (100-p)/200))``.

    >>> percentile_range(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0, 2.0]), 50.0,
    ...                  symmetric=False)
    (tensor(0.5000), tensor(1.5000))
    """
    if not 0.0 < percentile <= 100.0:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    counts, edges = _checked(counts, edges)
    total = counts.sum().item()
    if symmetric:
        a_counts, a_edges = abs_histogram(counts, edges, counts.numel())
        t = _inverse_cdf(a_counts, a_edges, total * percentile / 100.0)
        return finalize_range(-t, t)
    tail = total * (100.0 - percentile) / 200.0
    lo, hi = _inverse_cdf(counts, edges, tail), _inverse_cdf(counts, edges, total - tail)
    return finalize_range(lo, hi)


def _expected_sq_error(
    counts: torch.Tensor,
    edges: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    fmt: IntFormat,
    symmetric: bool,
) -> torch.Tensor:
    """Mean squared quantize-dequantize error of the histogram for each candidate ``[lo, hi]``.

    Per bin (centre c, width w) and candidate scale s: ``e = (c - deq(q(c)))^2 + w^2/12``; inside
    the grid it is capped at ``s^2/12``, the uniform rounding-noise error, so that a wide bin whose
    centre happens to sit on a grid point is not counted as error-free.
    """
    scale, zero_point = choose_qparams(lo.float(), hi.float(), fmt, symmetric)
    s, z = scale.to(_F64)[:, None], zero_point.to(_F64)[:, None]
    centres, widths = ((edges[:-1] + edges[1:]) / 2)[None], edges.diff()[None]
    code = torch.round(centres / s) + z
    inside = (code >= fmt.qmin) & (code <= fmt.qmax)
    deq = (code.clamp(fmt.qmin, fmt.qmax) - z) * s
    err = (centres - deq) ** 2 + widths**2 / 12
    err = torch.where(inside, torch.minimum(err, s**2 / 12), err)
    return (err * counts[None]).sum(1) / counts.sum()


def mse_range(
    counts: torch.Tensor, edges: torch.Tensor, fmt: IntFormat, symmetric: bool, steps: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Range minimising the expected quantization MSE over the histogram.

    Candidates shrink the zero-including full range ``[lo, hi]`` by ``a in {1/steps, ..., 1}``.
    Symmetric: ``(-a*m, a*m)`` with ``m = max(|lo|, |hi|)``. Asymmetric: ``(a*lo, a*hi)``,
    ``(lo, a*hi)`` and ``(a*lo, hi)``, then two rounds of coordinate descent that rescan one end
    with the other fixed at the best so far (skewed optima that no single family contains).
    Each family is scored in one vectorised call of :func:`_expected_sq_error`.

    >>> x = torch.randn(100_000, dtype=torch.float64)
    >>> edges = torch.linspace(x.min().item(), x.max().item(), 2049, dtype=torch.float64)
    >>> counts = torch.histc(x, 2048, x.min().item(), x.max().item())
    >>> lo, hi = mse_range(counts, edges, get_format("int4"), symmetric=True)
    >>> 2.0 < float(hi) < 3.5                            # clips N(0, 1) well inside its max
    True
    """
    counts, edges, fmt = *_checked(counts, edges), _int_format(fmt)
    lo, hi = min(edges[0].item(), 0.0), max(edges[-1].item(), 0.0)
    alphas = torch.linspace(1.0 / steps, 1.0, steps, dtype=_F64)

    def best_of(cand_lo: torch.Tensor, cand_hi: torch.Tensor) -> tuple[float, float, float]:
        err = _expected_sq_error(counts, edges, cand_lo, cand_hi, fmt, symmetric)
        k = int(err.argmin())
        return err[k].item(), cand_lo[k].item(), cand_hi[k].item()

    if symmetric:
        amax = max(-lo, hi)
        _, best_lo, best_hi = best_of(-alphas * amax, alphas * amax)
        return finalize_range(best_lo, best_hi)
    full_lo, full_hi = torch.full_like(alphas, lo), torch.full_like(alphas, hi)
    best = best_of(
        torch.cat([alphas * lo, full_lo, alphas * lo]),
        torch.cat([alphas * hi, alphas * hi, full_hi]),
    )
    for _ in range(2):
        lo_scan = best_of(alphas * lo, torch.full_like(alphas, best[2]))
        best = min(best, lo_scan)
        hi_scan = best_of(torch.full_like(alphas, best[1]), alphas * hi)
        best = min(best, hi_scan)
    return finalize_range(best[1], best[2])


def _kl_per_threshold(hist: torch.Tensor, cands: torch.Tensor, levels: int) -> torch.Tensor:
    """KL(P || Q) for each candidate bin count i (TensorRT entropy calibration, Migacz 2017).

    P = hist[:i] with the outlier mass sum(hist[i:]) added to bin i-1. Q = hist[:i] (without the
    outliers) merged into ``levels`` groups of ``i // levels`` bins (the last group takes the
    remainder), each group's mass spread evenly over the bins where P is non-zero.
    """
    n, c = hist.numel(), cands.numel()
    k = torch.arange(n)[None]
    clipped = torch.where(k < cands[:, None], hist[None], 0.0)  # [c, n]
    p = clipped.clone()
    p[torch.arange(c), cands - 1] += hist.sum() - clipped.sum(1)
    group = torch.minimum(k // (cands // levels)[:, None], torch.tensor(levels - 1))
    nonzero = (p > 0).to(_F64)
    mass = torch.zeros(c, levels, dtype=_F64).scatter_add_(1, group, clipped)
    support = torch.zeros(c, levels, dtype=_F64).scatter_add_(1, group, nonzero)
    q = nonzero * (mass / support.clamp_min(1.0)).gather(1, group)
    p = p / p.sum(1, keepdim=True)
    q = q / q.sum(1, keepdim=True).clamp_min(_TINY)
    # Q == 0 where P > 0 (a group with only outlier mass) is an infinite divergence in theory;
    # a 1e-12 floor keeps it finite but makes that threshold strongly penalised.
    log_ratio = torch.log(p.clamp_min(_TINY)) - torch.log(q.clamp_min(1e-12))
    return torch.where(p > 0, p * log_ratio, 0.0).sum(1)


def entropy_range(
    counts: torch.Tensor, edges: torch.Tensor, fmt: IntFormat, symmetric: bool, stride: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold t minimising KL(P || Q) on the |x| histogram (TensorRT-style calibration).

    ``levels = (qmax - qmin + 1) / 2`` per side (128 for int8); for asymmetric one-sided data
    (min >= 0 or max <= 0) all ``qmax - qmin + 1`` levels. Candidates i run from ``levels`` to
    ``n`` bins every ``stride`` bins (default ``max(1, n // 128)``, 16 for 2048 bins; n is always
    tried) and ``t`` is the upper edge of bin i-1. Simplification for asymmetric: the threshold is
    still solved on |x| and the range is ``(max(min, -t), min(max, t))``.

    >>> x = torch.randn(100_000, dtype=torch.float64)
    >>> edges = torch.linspace(x.min().item(), x.max().item(), 2049, dtype=torch.float64)
    >>> counts = torch.histc(x, 2048, x.min().item(), x.max().item())
    >>> lo, hi = entropy_range(counts, edges, get_format("int8"), symmetric=True)
    >>> 0.0 < float(hi) <= x.abs().max().item()
    True
    """
    counts, edges, fmt = *_checked(counts, edges), _int_format(fmt)
    lo, hi = edges[0].item(), edges[-1].item()
    n, width = counts.numel(), fmt.qmax - fmt.qmin + 1
    levels = width if not symmetric and (lo >= 0 or hi <= 0) else width // 2
    if n < levels:
        raise ConfigError(
            f"entropy calibration of {fmt.name} needs at least {levels} histogram bins, got {n}; "
            f"raise bins or use the percentile/mse method"
        )
    a_counts, a_edges = abs_histogram(counts, edges, n)
    cands = torch.arange(levels, n + 1, stride if stride > 0 else max(1, n // 128))
    if cands[-1] != n:
        cands = torch.cat([cands, torch.tensor([n])])
    best = cands[_kl_per_threshold(a_counts, cands, levels).argmin()]
    t = a_edges[best].item()
    if symmetric:
        return finalize_range(-t, t)
    lo_t, hi_t = max(lo, -t), min(hi, t)
    if lo_t > hi_t:  # one-sided data lying wholly beyond t: clip all of it to +-t
        lo_t = hi_t = t if lo >= 0 else -t
    return finalize_range(lo_t, hi_t)


def finalize_range(
    min_val: float | torch.Tensor, max_val: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 range that contains ``[min_val, max_val]`` and is at least a few ulps wide.

    A range narrower than ``4 * eps32 * max(1, |min|, |max|)`` is widened to it about its centre,
    and the float32 rounding goes outwards, so the solver's pick is always inside the result.
    """
    lo, hi = torch.as_tensor(min_val, dtype=_F64), torch.as_tensor(max_val, dtype=_F64)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise CalibrationError(f"range solver produced a non-finite range ({lo}, {hi})")
    if (lo > hi).any():
        raise CalibrationError(f"range solver produced an inverted range ({lo}, {hi})")
    span = 4 * _EPS32 * torch.maximum(lo.abs().maximum(hi.abs()), torch.ones_like(lo))
    deficit = (span - (hi - lo)).clamp_min(0.0) / 2  # widen about the centre: keeps (-t, t) even
    lo, hi = lo - deficit, hi + deficit
    lo32, hi32 = lo.float(), hi.float()
    lo32 = torch.where(lo32.double() > lo, torch.nextafter(lo32, lo32 - math.inf), lo32)
    hi32 = torch.where(hi32.double() < hi, torch.nextafter(hi32, hi32 + math.inf), hi32)
    return lo32, hi32
