"""k-means weight sharing: k-means++ seeding plus Lloyd iterations, per layer or per row."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.kmeans import kmeans_1d, kmeans_plus_plus
from lowbit.measure import sqnr_db


def test_separated_clusters_are_found_exactly() -> None:
    torch.manual_seed(0)
    centres = torch.tensor([-3.0, 0.0, 2.0, 7.0])
    x = (centres[:, None] + 0.01 * torch.randn(4, 50)).reshape(1, -1)
    c, idx = kmeans_1d(x, k=4)
    assert torch.allclose(c[0], centres, atol=0.01)
    assert idx.reshape(4, 50).eq(torch.arange(4)[:, None]).all()


def test_gaussian_16_levels_reach_the_lloyd_max_optimum() -> None:
    # The optimal 16-level quantizer of N(0, 1) has MSE 0.009497 (20.22 dB SQNR).
    x = torch.randn(1, 200_000, generator=torch.Generator().manual_seed(0))
    c, idx = kmeans_1d(x, k=16)
    assert sqnr_db(x, c.gather(1, idx)) > 20.0


def test_rows_get_their_own_codebooks_sorted() -> None:
    x = torch.stack([torch.randn(300), 100 + 5 * torch.randn(300)])
    c, idx = kmeans_1d(x, k=8)
    assert c.shape == (2, 8) and idx.shape == (2, 300)
    assert (c[1] > 50).all() and (c[0] < 50).all()
    assert torch.equal(c, c.sort(dim=1).values)


def test_fewer_distinct_values_than_k_and_constant_rows() -> None:
    x = torch.tensor([[1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 3.0, 3.0]])
    c, idx = kmeans_1d(x, k=4)
    assert torch.equal(c.gather(1, idx), x)


def test_subsampled_fit_still_assigns_every_value() -> None:
    x = torch.randn(1, 5000)
    c, idx = kmeans_1d(x, k=4, max_points=500)
    assert idx.shape == x.shape and sqnr_db(x, c.gather(1, idx)) > 9


def test_same_seed_same_codebook() -> None:
    x = torch.randn(3, 400)
    assert torch.equal(kmeans_1d(x, 16, seed=3)[0], kmeans_1d(x, 16, seed=3)[0])


def test_seeding_picks_data_points() -> None:
    x = torch.randn(2, 100)
    seeds = kmeans_plus_plus(x, 5, torch.Generator().manual_seed(0))
    for row in range(2):
        assert all(bool((x[row] == s).any()) for s in seeds[row])


@pytest.mark.parametrize(("shape", "k"), [((0, 3), 2), ((4,), 2), ((2, 3), 1)])
def test_bad_input_raises(shape, k) -> None:
    with pytest.raises(ValueError):
        kmeans_1d(torch.zeros(shape), k)
