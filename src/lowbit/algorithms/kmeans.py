"""1-D k-means for weight sharing (Han et al. 2016, "Deep Compression"): a codebook of ``k``
shared values per group of weights and a ``log2(k)``-bit index per weight.

For each group (row of ``x``) find centroids ``c_1 < ... < c_k`` minimising
``Σ_i min_j (x_i - c_j)^2``:

1. **k-means++ seeding** (Arthur & Vassilvitskii 2007): first centroid uniformly at random, each
   next one drawn with probability ∝ ``D(x)^2``, the squared distance to the nearest chosen one.
2. **Lloyd iterations**: assign each ``x_i`` to its nearest centroid (in 1-D: bucketize by the
   midpoints of the sorted centroids), move each centroid to the mean of its members; a centroid
   that loses all members stays where it is. Stop after ``iters`` rounds or when no centroid moves
   more than ``tol`` times the data's spread.

Large groups are fitted on a random subsample of ``max_points`` values (the centroids of a
million samples match those of the full set to well below the quantization step); the final
assignment always covers every value.

>>> x = torch.tensor([[0.0, 0.1, 0.9, 1.0, 5.0, 5.2]])
>>> c, idx = kmeans_1d(x, k=3)
>>> [round(v, 2) for v in c[0].tolist()], idx[0].tolist()
([0.05, 0.95, 5.1], [0, 0, 1, 1, 2, 2])
"""

from __future__ import annotations

import torch

from lowbit.grids import nearest_level

__all__ = ["kmeans_1d", "kmeans_plus_plus"]


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``[G, k]`` seeds for the rows of ``x`` (``[G, n]``) by D²-weighted sampling."""
    g, n = x.shape
    rows = torch.arange(g)
    first = torch.randint(n, (g,), generator=generator)
    centroids = [x[rows, first]]
    d2 = (x - centroids[0][:, None]) ** 2
    for _ in range(1, k):
        # Rows whose points all coincide with a centroid have D = 0 everywhere: sample uniformly.
        weights = torch.where(d2.sum(dim=1, keepdim=True) > 0, d2, torch.ones_like(d2))
        pick = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        centroids.append(x[rows, pick])
        d2 = torch.minimum(d2, (x - centroids[-1][:, None]) ** 2)
    return torch.stack(centroids, dim=1)


def _lloyd_step(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """One assignment + update round; returns the new sorted centroids."""
    idx = nearest_level(x, c)
    sums = torch.zeros_like(c, dtype=torch.float64).scatter_add_(1, idx, x.double())
    counts = torch.zeros_like(sums).scatter_add_(1, idx, torch.ones_like(x, dtype=torch.float64))
    new = torch.where(counts > 0, sums / counts.clamp(min=1), c.double()).to(c.dtype)
    return new.sort(dim=1).values


def kmeans_1d(
    x: torch.Tensor,
    k: int,
    *,
    iters: int = 30,
    tol: float = 1e-5,
    max_points: int = 1 << 20,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster every row of ``x`` (``[G, n]``) into ``k`` values.

    Returns ``(centroids, codes)``: ``[G, k]`` sorted centroids and ``[G, n]`` int64 indices of
    each value's nearest centroid, so ``centroids.gather(1, codes)`` is the clustered ``x``.
    """
    if x.dim() != 2 or x.numel() == 0:
        raise ValueError(
            f"kmeans_1d takes a non-empty [groups, values] tensor, got {list(x.shape)}"
        )
    if not 2 <= k:
        raise ValueError(f"k-means needs k >= 2 clusters, got {k}")
    x = x.detach().float()
    gen = torch.Generator().manual_seed(seed)
    fit = x
    if x.shape[1] > max_points:
        fit = x[:, torch.randperm(x.shape[1], generator=gen)[:max_points]]
    seed_pool = fit[:, torch.randperm(fit.shape[1], generator=gen)[: 1 << 16]]
    c = kmeans_plus_plus(seed_pool, k, gen).sort(dim=1).values
    spread = (fit.amax(dim=1) - fit.amin(dim=1)).clamp(min=1e-12)
    for _ in range(iters):
        new = _lloyd_step(fit, c)
        moved = ((new - c).abs().amax(dim=1) / spread).max()
        c = new
        if moved <= tol:
            break
    return c, nearest_level(x, c)
