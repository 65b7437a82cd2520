"""Non-uniform grids: NF levels are normal quantiles, power-of-two levels are shifts."""

from __future__ import annotations

import pytest
import torch

from lowbit.grids import nearest_level, normal_float_levels, power_of_two_levels

# QLoRA's published NF4 table (bitsandbytes), to 4 decimals
NF4 = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0]
NF4 += [0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]


def test_nf4_matches_the_qlora_table() -> None:
    assert normal_float_levels(4) == pytest.approx(NF4, abs=1e-4)


@pytest.mark.parametrize("bits", range(2, 9))
def test_nf_grids_have_exact_zero_and_2_pow_bits_levels(bits: int) -> None:
    levels = normal_float_levels(bits)
    assert len(levels) == 2**bits and 0.0 in levels
    assert levels[0] == -1.0 and levels[-1] == 1.0 and list(levels) == sorted(set(levels))


@pytest.mark.parametrize("bits", range(2, 7))
def test_power_of_two_levels_are_signed_powers_of_two(bits: int) -> None:
    levels = power_of_two_levels(bits)
    assert len(levels) == 2**bits - 1
    for v in levels:
        assert v == 0.0 or torch.log2(torch.tensor(abs(v))).item().is_integer()


def test_nearest_level_shared_and_per_row() -> None:
    levels = torch.tensor([-1.0, 0.0, 0.5, 1.0])
    x = torch.tensor([-0.9, -0.4, 0.2, 0.3, 0.74, 0.76, 5.0, -5.0])
    assert nearest_level(x, levels).tolist() == [0, 1, 1, 2, 2, 3, 3, 0]
    rows = torch.tensor([[0.0, 1.0], [10.0, 20.0]])
    xs = torch.tensor([[0.4, 0.6], [14.0, 16.0]])
    assert nearest_level(xs, rows).tolist() == [[0, 1], [0, 1]]
