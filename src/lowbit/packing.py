"""Exact bit-packing of 1..8-bit codes into bytes: what makes a low-bit artifact really small.

Codes are unsigned integers in ``[0, 2^bits)`` (shift signed codes by ``-qmin`` first). Every 8
consecutive codes (row-major order of the flattened tensor) form one little-endian group of
``bits`` bytes: code ``i`` of a group occupies bits ``[bits*i, bits*(i+1))`` of the group's
``8*bits``-bit word. So ``n`` codes take exactly ``ceil(n / 8) * bits`` bytes, for every width,
3, 5, 6 and 7 bits included, with no per-byte padding.

>>> codes = torch.tensor([1, 2, 3, 0, 7], dtype=torch.uint8)
>>> packed = pack(codes, bits=3)
>>> packed.numel()                                   # ceil(5 / 8) * 3
3
>>> unpack(packed, bits=3, numel=5)
tensor([1, 2, 3, 0, 7], dtype=torch.uint8)
"""

from __future__ import annotations

import torch

from lowbit.errors import ConfigError

__all__ = ["pack", "unpack", "packed_nbytes"]

_GROUP = 8  # codes per group: 8 codes of b bits fill exactly b bytes


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"bit-packing takes 1..8 bits per code, got {bits!r}")


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes of ``bits`` bits occupy once packed."""
    _check_bits(bits)
    return -(-numel // _GROUP) * bits


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``codes`` (any shape, values < 2^bits) into a flat uint8 tensor."""
    _check_bits(bits)
    if codes.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        raise ConfigError(f"pack takes integer codes, got {codes.dtype}")
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ConfigError(
            f"codes must lie in [0, {(1 << bits) - 1}] for {bits}-bit packing, got "
            f"[{int(flat.min())}, {int(flat.max())}]; shift signed codes by -qmin first"
        )
    pad = -flat.numel() % _GROUP
    groups = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, _GROUP)
    shifts = torch.arange(_GROUP, dtype=torch.int64) * bits
    words = (groups << shifts).sum(dim=1, keepdim=True)  # disjoint bit ranges: sum == OR
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    return ((words >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """The first ``numel`` codes stored in ``packed`` (the inverse of :func:`pack`), as uint8."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ConfigError(
            f"unpack takes a flat uint8 tensor, got {packed.dtype} {list(packed.shape)}"
        )
    expected = packed_nbytes(numel, bits)
    if packed.numel() != expected:
        raise ConfigError(
            f"{numel} codes of {bits} bits pack into {expected} bytes, got {packed.numel()}"
        )
    groups = packed.to(torch.int64).reshape(-1, bits)
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    words = (groups << byte_shifts).sum(dim=1, keepdim=True)
    shifts = torch.arange(_GROUP, dtype=torch.int64) * bits
    codes = (words >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:numel].to(torch.uint8)
