"""Bit-packing: exact round-trips for every width and odd shapes, exact sizes, clear errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import ConfigError
from lowbit.packing import pack, packed_nbytes, unpack


@settings(max_examples=80, deadline=None)
@given(bits=st.integers(1, 8), numel=st.integers(0, 300), seed=st.integers(0, 2**31 - 1))
def test_round_trip_is_exact_for_every_width_and_length(bits, numel, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (numel,), generator=g, dtype=torch.int64).to(torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(numel, bits) == -(-numel // 8) * bits
    assert torch.equal(unpack(packed, bits, numel), codes)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", [(1,), (7, 3), (5, 1, 13), (64, 33)])
def test_odd_shapes_round_trip(bits, shape):
    codes = torch.randint(0, 1 << bits, shape).to(torch.uint8)
    packed = pack(codes, bits)
    assert torch.equal(unpack(packed, bits, codes.numel()).reshape(shape), codes)


def test_known_layout_is_little_endian_within_groups():
    # 4-bit: code i sits in bits [4i, 4i+4): codes (1, 2) -> byte 0x21
    assert pack(torch.tensor([1, 2], dtype=torch.uint8), 4).tolist()[0] == 0x21
    # 1-bit: eight codes make one byte, first code in the lowest bit
    assert pack(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1], dtype=torch.uint8), 1).tolist() == [0x81]


def test_extreme_codes_survive():
    for bits in range(1, 9):
        codes = torch.tensor([0, (1 << bits) - 1] * 9, dtype=torch.uint8)
        assert torch.equal(unpack(pack(codes, bits), bits, codes.numel()), codes)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="1..8 bits"):
        pack(torch.zeros(3, dtype=torch.uint8), 9)
    with pytest.raises(ConfigError, match=r"\[0, 15\]"):
        pack(torch.tensor([16]), 4)
    with pytest.raises(ConfigError, match="shift signed codes"):
        pack(torch.tensor([-1], dtype=torch.int8), 4)
    with pytest.raises(ConfigError, match="integer codes"):
        pack(torch.zeros(3), 4)
    with pytest.raises(ConfigError, match="pack into 3 bytes"):
        unpack(torch.zeros(2, dtype=torch.uint8), 3, 5)
    with pytest.raises(ConfigError, match="flat uint8"):
        unpack(torch.zeros(3, dtype=torch.int8), 3, 5)
