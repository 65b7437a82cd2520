"""Fixed non-uniform grids: the levels a weight may take, as multiples of its block's scale.

A grid is a sorted tuple of levels in ``[-1, 1]``; a weight block with scale ``s`` takes values
``s * level``. Codes are indices into the sorted levels (``0..len(levels)-1``).

* **normal float** (NF-k, Dettmers et al. 2023, QLoRA): levels at quantiles of N(0, 1), so each
  level is equally likely for normally distributed weights; exact 0, ``2^(k-1)`` positive and
  ``2^(k-1) - 1`` negative levels, normalised to ``[-1, 1]``.
* **power of two** (log grid, Miyashita et al. 2016): ``{0, ±2^-j}`` for ``j = 0..2^(k-1)-2``, so a
  multiplication by a level is a shift.
* **binary** ``{-1, +1}`` (XNOR-Net) and **ternary** ``{-1, 0, +1}`` (TWN): how their scales are
  chosen is a solver's business (``lowbit.weight_quant``), not the grid's.

>>> [round(v, 4) for v in normal_float_levels(2)]
[-1.0, 0.0, 0.3379, 1.0]
>>> power_of_two_levels(3)
(-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "normal_float_levels",
    "power_of_two_levels",
    "BINARY_LEVELS",
    "TERNARY_LEVELS",
    "nearest_level",
]

BINARY_LEVELS = (-1.0, 1.0)
TERNARY_LEVELS = (-1.0, 0.0, 1.0)

# bitsandbytes' NF4 offset: the outermost quantile kept, (1 - 1/(2*15) + 1 - 1/(2*16)) / 2.
# Used for every width, so NF4 is exactly QLoRA's grid and the other widths are the same
# construction with NF4's tail cut (their levels are equiprobable only approximately).
_NF_OFFSET = 0.9677083


@functools.cache
def normal_float_levels(bits: int) -> tuple[float, ...]:
    """The ``2^bits`` normal-float levels (NF4 for ``bits=4``), sorted, in ``[-1, 1]``.

    Positive half: ``Φ⁻¹(linspace(δ, 1/2, 2^(k-1)+1))`` without its last point (the median);
    negative half: ``-Φ⁻¹(linspace(δ, 1/2, 2^(k-1)))`` without its last point; then 0, and
    everything divided by the largest magnitude.
    """
    n = 1 << (bits - 1)
    q = torch.special.ndtri
    pos = q(torch.linspace(_NF_OFFSET, 0.5, n + 1, dtype=torch.float64)[:-1])
    neg = -q(torch.linspace(_NF_OFFSET, 0.5, n, dtype=torch.float64)[:-1])
    levels = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    return tuple((levels / levels.abs().max()).tolist())


@functools.cache
def power_of_two_levels(bits: int) -> tuple[float, ...]:
    """``{0} ∪ {±2^-j : j = 0 .. 2^(bits-1) - 2}``: ``2^bits - 1`` levels (one code unused)."""
    mags = [2.0**-j for j in range((1 << (bits - 1)) - 1)]
    return tuple(sorted([-m for m in mags] + [0.0] + mags))


def nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted ``levels`` for every element of ``x`` (ties go up).

    Uses the midpoints between neighbours as bucket edges: O(n log L) and no [n, L] distance
    matrix, so it scales to large layers and to k-means codebooks of 256 entries. ``levels`` is
    1-D (shared) or ``[G, L]`` with ``x`` of shape ``[G, n]`` (one sorted grid per row).
    """
    mids = (levels[..., 1:] + levels[..., :-1]) / 2
    if levels.dim() == 1:
        return torch.bucketize(x, mids, right=True)
    return torch.searchsorted(mids.contiguous(), x.contiguous(), right=True)
