"""Number formats: integer grids of 2..16 bits, float passthrough formats, and name parsing."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.formats import (
    FORMAT_NAMES,
    CodebookFormat,
    FloatFormat,
    GridFormat,
    IntFormat,
    get_format,
)

BITS = range(2, 17)


@pytest.mark.parametrize("bits", BITS)
def test_signed_grid_is_twos_complement_range(bits: int) -> None:
    fmt = get_format(f"int{bits}")
    assert isinstance(fmt, IntFormat) and fmt.signed and fmt.bits == bits
    assert (fmt.qmin, fmt.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert fmt.qmax - fmt.qmin + 1 == 2**bits


@pytest.mark.parametrize("bits", BITS)
def test_unsigned_grid_starts_at_zero(bits: int) -> None:
    fmt = get_format(f"uint{bits}")
    assert isinstance(fmt, IntFormat) and not fmt.signed and fmt.bits == bits
    assert (fmt.qmin, fmt.qmax) == (0, 2**bits - 1)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("signed", [True, False])
def test_storage_dtype_holds_every_code(bits: int, signed: bool) -> None:
    fmt = IntFormat(bits, signed)
    info = torch.iinfo(fmt.storage_dtype)
    assert info.min <= fmt.qmin and fmt.qmax <= info.max
    if bits <= 8:
        assert fmt.storage_dtype == (torch.int8 if signed else torch.uint8)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_names_round_trip(name: str) -> None:
    fmt = get_format(name)
    assert fmt.name == name
    assert str(fmt) == name
    assert get_format(fmt.name) == fmt
    assert get_format(fmt) is fmt  # a format value passes through unchanged


def test_format_names_cover_every_width() -> None:
    for bits in BITS:
        assert f"int{bits}" in FORMAT_NAMES and f"uint{bits}" in FORMAT_NAMES
    assert {"fp16", "bf16"} <= set(FORMAT_NAMES)


@pytest.mark.parametrize("text", ["INT8", " int8 ", "Int8"])
def test_parsing_ignores_case_and_spaces(text: str) -> None:
    assert get_format(text) == IntFormat(8, True)


@pytest.mark.parametrize(
    ("name", "dtype", "bits"),
    [("fp16", torch.float16, 16), ("bf16", torch.bfloat16, 16), ("fp32", torch.float32, 32)],
)
def test_float_formats(name: str, dtype: torch.dtype, bits: int) -> None:
    fmt = get_format(name)
    assert isinstance(fmt, FloatFormat) and not fmt.is_integer
    assert fmt.torch_dtype == dtype and fmt.bits == bits


@pytest.mark.parametrize("name", ["int1", "int0", "int17", "uint1", "uint32", "int64"])
def test_out_of_range_widths_raise(name: str) -> None:
    with pytest.raises(ConfigError, match="2..16"):
        get_format(name)


@pytest.mark.parametrize(
    "name", ["float8", "fp8", "int", "int8x", "i8", "", "nf", "nf4x", "k-means16"]
)
def test_unknown_names_raise_with_the_choices(name: str) -> None:
    with pytest.raises(ConfigError, match="int2..int16"):
        get_format(name)


@pytest.mark.parametrize("value", [8, 8.0, None, b"int8", ["int8"]])
def test_non_string_raises(value: object) -> None:
    with pytest.raises(ConfigError, match="name like 'int8'"):
        get_format(value)  # type: ignore[arg-type]


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError):
        IntFormat(bits=1)
    with pytest.raises(ConfigError):
        IntFormat(bits=17, signed=False)
    with pytest.raises(ConfigError, match="unknown float format"):
        FloatFormat("fp8")


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        get_format("int99")


@pytest.mark.parametrize(
    ("name", "bits", "n_levels"),
    [("nf4", 4, 16), ("nf3", 3, 8), ("nf2", 2, 4), ("pot4", 4, 15), ("pot3", 3, 7)]
    + [("binary", 1, 2), ("ternary", 2, 3)],
)
def test_grid_formats(name: str, bits: int, n_levels: int) -> None:
    fmt = get_format(name)
    assert isinstance(fmt, GridFormat) and fmt.name == name and not fmt.is_integer
    assert fmt.bits == bits and len(fmt.levels) == n_levels
    assert list(fmt.levels) == sorted(fmt.levels) and max(map(abs, fmt.levels)) == 1.0


@pytest.mark.parametrize(("k", "bits"), [(2, 1), (3, 2), (4, 2), (16, 4), (17, 5), (256, 8)])
def test_codebook_formats(k: int, bits: int) -> None:
    fmt = get_format(f"kmeans{k}")
    assert isinstance(fmt, CodebookFormat) and fmt.k == k and fmt.bits == bits


@pytest.mark.parametrize(
    ("name", "match"),
    [("nf1", "2..8 bits"), ("nf9", "2..8 bits"), ("pot7", "2..6 bits")]
    + [("kmeans1", "k = 2..256"), ("kmeans300", "k = 2..256")],
)
def test_low_bit_formats_out_of_range_raise(name: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get_format(name)


def test_grid_names_are_canonical() -> None:
    assert get_format("nf04") == get_format("NF4") == GridFormat("nf4")
    assert get_format(" Pot3 ").name == "pot3" and get_format("kmeans016").name == "kmeans16"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: IntFormat(bits=8.5), r"IntFormat\.bits: .*2..16 bits, got 8\.5"),
        (lambda: IntFormat(bits="8"), r"IntFormat\.bits: .*got '8'"),
        (lambda: IntFormat(bits=True), r"IntFormat\.bits"),
        (lambda: IntFormat(bits=8, signed="yes"), r"IntFormat\.signed: must be True or False"),
        (lambda: CodebookFormat(k=2.5), r"CodebookFormat\.k: .*k = 2..256 entries, got 2\.5"),
        (lambda: CodebookFormat(k="16"), r"CodebookFormat\.k"),
        (lambda: GridFormat(5), r"GridFormat\.name: must be a name like 'nf4'"),
        (lambda: GridFormat("nf4\n"), "unknown grid format"),
        (lambda: FloatFormat(["fp16"]), "unknown float format"),
    ],
)
def test_direct_construction_checks_field_types(make, match) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("int9x", "'int9'"), ("nt8", "'int8'"), ("fp8", "'nf8'"), ("kmean16", "'kmeans16'")]
    + [("ternery", "'ternary'"), ("bf61", "'bf16'")],
)
def test_unknown_names_suggest_a_close_match(name: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"did you mean {suggestion}") as info:
        get_format(name)
    assert "int2..int16" in str(info.value)  # and still list the choices


@pytest.mark.parametrize("name", ["e4m3", "int" + "9" * 5000, "int٨", "zzzzzz"])
def test_names_without_a_close_match_or_with_odd_digits_raise(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown number format"):
        get_format(name)
