"""Granularity: every kind becomes a block_size that tiles the tensor."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.granularity import Granularity, GranularityKind


@pytest.mark.parametrize(
    ("text", "shape", "block"),
    [
        ("per_tensor", (64, 32), (64, 32)),
        ("per_tensor", (8, 3, 3, 3), (8, 3, 3, 3)),
        ("per_tensor", (), ()),
        ("per_channel", (64, 32), (1, 32)),
        ("per_channel", (8, 3, 3, 3), (1, 3, 3, 3)),
        ("per_channel:0", (64, 32), (1, 32)),
        ("per_channel:1", (64, 32), (64, 1)),
        ("per_channel:1", (4, 6, 5), (4, 1, 5)),
        ("per_channel:-1", (4, 6, 5), (4, 6, 1)),
        ("per_group:16", (64, 32), (1, 16)),
        ("per_group:32", (64, 32), (1, 32)),
        ("per_group:1", (4, 6), (1, 1)),
        ("per_group:4", (2, 3, 8), (1, 1, 4)),
        ("per_token", (4, 7, 32), (1, 1, 32)),
        ("per_token", (5, 32), (1, 32)),
        ("per_token", (32,), (32,)),
    ],
)
def test_block_size(text: str, shape: tuple[int, ...], block: tuple[int, ...]) -> None:
    got = Granularity.parse(text).block_size(shape)
    assert got == block
    assert all(s % b == 0 for s, b in zip(shape, got, strict=True))


def test_block_size_accepts_torch_sizes_and_lists() -> None:
    g = Granularity.parse("per_channel")
    assert g.block_size(torch.Size([3, 4])) == (1, 4)
    assert g.block_size([3, 4]) == (1, 4)


@pytest.mark.parametrize(("size", "last"), [(16, 24), (5, 32), (64, 32)])
def test_per_group_must_divide_the_last_dimension(size: int, last: int) -> None:
    g = Granularity.parse(f"per_group:{size}")
    with pytest.raises(ConfigError, match=f"group_size {size} does not divide"):
        g.block_size((8, last))


@pytest.mark.parametrize(
    "text", ["per_tensor", "per_channel", "per_channel:1", "per_group:128", "per_token"]
)
def test_string_round_trip(text: str) -> None:
    g = Granularity.parse(text)
    assert str(g) == text
    assert Granularity.parse(str(g)) == g


def test_parse_normalizes_and_passes_values_through() -> None:
    assert Granularity.parse(" PER_CHANNEL ") == Granularity(GranularityKind.PER_CHANNEL)
    assert str(Granularity.parse("per_channel:0")) == "per_channel"
    g = Granularity(GranularityKind.PER_GROUP, group_size=8)
    assert Granularity.parse(g) is g
    assert Granularity("per_group", group_size=8) == g  # kind given as its string value


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("per_row", "unknown granularity"),
        ("", "unknown granularity"),
        ("per_group", "needs a size"),
        ("per_group:abc", "needs a size"),
        ("per_group:-4", "needs a size"),
        ("per_group:0", "positive group_size"),
        ("per_channel:x", "axis must be an integer"),
        ("per_tensor:3", "takes no argument"),
        ("per_token:1", "takes no argument"),
    ],
)
def test_bad_strings_raise(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Granularity.parse(text)


def test_group_size_only_for_per_group() -> None:
    with pytest.raises(ConfigError, match="only applies to per_group"):
        Granularity(GranularityKind.PER_TENSOR, group_size=8)
    with pytest.raises(ConfigError, match="positive group_size"):
        Granularity(GranularityKind.PER_GROUP)


@pytest.mark.parametrize(("text", "shape"), [("per_channel:5", (4, 6)), ("per_channel:-3", (4, 6))])
def test_per_channel_axis_out_of_range_raises(text: str, shape) -> None:
    with pytest.raises(ConfigError, match=r"has 2 dims \(axes -2..1\)"):
        Granularity.parse(text).block_size(shape)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Granularity("per_group", group_size=2.5), r"Granularity\.group_size: .*got 2\.5"),
        (lambda: Granularity("per_group", group_size=True), "positive group_size"),
        (lambda: Granularity("per_row"), r"Granularity\.kind: unknown granularity 'per_row'"),
        (lambda: Granularity("per_channel", axis=1.0), r"Granularity\.axis: must be an integer"),
        (lambda: Granularity("per_tensor", axis=1), "only applies to per_channel"),
        (lambda: Granularity.parse(5), "a granularity is a name like 'per_channel'"),
        (lambda: Granularity.parse(None), "got NoneType"),
        (lambda: Granularity.parse("per_group:²"), "needs a size"),
        (lambda: Granularity.parse("per_group:" + "1" * 5000), "needs a size"),
        (lambda: Granularity.parse("per_channel:١"), "axis must be an integer"),
    ],
)
def test_bad_values_raise_config_errors(make, match) -> None:
    with pytest.raises(ConfigError, match=match):
        make()
