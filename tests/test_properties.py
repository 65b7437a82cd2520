"""Numerical invariants of every number format, as hypothesis properties (issue 10).

Through the public weight path (``quantize_weight`` / ``encode_weight`` / ``dequantize_weight``)
at per-tensor, per-channel and per-group granularity, for weights of magnitude 1e-6 .. 1e4 with
all-zero, constant and tie-heavy rows, for every format (int2..int16 and uint2..uint16, symmetric
and asymmetric; nf2..nf8, pot2..pot6, binary, ternary; kmeans2/3/4/16/256; fp16/bf16 casts):

(i)   uniform: ``|x - deq(q(x))| <= scale / 2`` inside the grid's range, and the fitted grid
      covers the weight's [min, max]; grids and codebooks: ``deq(q(x))`` is the nearest
      representable value (ternary: TWN's threshold rule instead, by design);
(ii)  monotone: within one block (one scale / codebook), ``x1 <= x2`` implies
      ``deq(q(x1)) <= deq(q(x2))``, also for values far outside the range (clamping);
(iii) scales finite and > 0, zero points in ``[qmin, qmax]``, codes in ``[qmin, qmax]`` or below
      the number of levels;
(iv)  requantizing the dequantized weight is a fixed point.

Hypothesis runs derandomized (``conftest.py``), so every run draws the same examples. Known
failures (in ``weight_quant``, not here: the asymmetric and per-group-codebook refit of (iv)) are
left out of the property they break and pinned by ``test_regression_*`` examples, one failing
weight per format, marked ``xfail(strict=True)``: fix the code and those turn into failures that
ask for the marks to go.

Packing round trips for 1..8 bits and odd lengths are in ``tests/test_packing.py``; the affine
primitives' own properties in ``tests/test_primitives.py``. ``LOWBIT_PROPERTY_EXAMPLES=200``
searches deeper by hand.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.config import TensorQuantSpec
from lowbit.formats import CodebookFormat, GridFormat, IntFormat, get_format
from lowbit.nn.cast import CastLayer
from lowbit.presets import get_preset
from lowbit.primitives import block_view, expand_params
from lowbit.weight_quant import QuantizedWeight, dequantize_weight, encode_weight, quantize_weight

INT_FORMATS = [f"{u}int{b}" for b in range(2, 17) for u in ("", "u")]
GRID_FORMATS = [f"nf{b}" for b in range(2, 9)] + [f"pot{b}" for b in range(2, 7)]
GRID_FORMATS += ["binary", "ternary"]
CODEBOOK_FORMATS = ["kmeans2", "kmeans3", "kmeans4", "kmeans16", "kmeans256"]
ALL_FORMATS = INT_FORMATS + GRID_FORMATS + CODEBOOK_FORMATS

PROPS = settings(max_examples=int(os.environ.get("LOWBIT_PROPERTY_EXAMPLES", "6")), deadline=None)
MAGNITUDES = [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4]
ROW_KINDS = ["normal", "uniform", "positive", "negative", "zeros", "constant", "halves", "outlier"]
KINDS = ("per_tensor", "per_channel", "per_group")
REL = 2e-6  # float32 rounding of x / scale and of (q - z) * scale


def _row(kind: str, n: int, mag: float, gen: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(n, generator=gen) * mag
    if kind == "uniform":
        return (torch.rand(n, generator=gen) * 2 - 1) * mag
    if kind in ("positive", "negative"):
        r = torch.rand(n, generator=gen) * mag
        return r if kind == "positive" else -r
    if kind == "zeros":
        return torch.zeros(n)
    if kind == "constant":
        return torch.full((n,), mag * (1 if torch.rand(1, generator=gen) < 0.5 else -1))
    if kind == "halves":  # many exact ties between neighbouring codes
        return torch.randint(-8, 9, (n,), generator=gen).float() / 2 * mag
    r = torch.randn(n, generator=gen) * mag / 10  # "outlier": one value far out
    r[int(torch.randint(n, (1,), generator=gen))] = 5 * mag
    return r


@st.composite
def weights(
    draw, fmt: str, symmetric: bool | None = None, kinds: tuple[str, ...] = KINDS
) -> tuple[torch.Tensor, TensorQuantSpec]:
    """A [rows, cols] weight and a spec of ``fmt`` at a granularity (of ``kinds``) that tiles it."""
    rows = draw(st.integers(1, 4))
    gran = draw(st.sampled_from(kinds))
    if gran == "per_group":
        group = draw(st.sampled_from([1, 2, 3, 4, 8, 16]))
        cols = group * draw(st.integers(1, 4))
        gran = f"per_group:{group}"
    else:
        cols = draw(st.integers(1, 24))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kinds = draw(st.lists(st.sampled_from(ROW_KINDS), min_size=rows, max_size=rows))
    mags = draw(st.lists(st.sampled_from(MAGNITUDES), min_size=rows, max_size=rows))
    w = torch.stack([_row(k, cols, m, gen) for k, m in zip(kinds, mags, strict=True)])
    if symmetric is None:
        symmetric = draw(st.booleans()) if isinstance(get_format(fmt), IntFormat) else True
    return w, TensorQuantSpec(fmt, gran, symmetric=symmetric)


def _per_element(p: torch.Tensor, w: torch.Tensor, spec: TensorQuantSpec) -> torch.Tensor:
    """A per-block parameter broadcast to one value per element of the 2-D ``w``."""
    block = spec.granularity_value.block_size(tuple(w.shape))
    full = expand_params(p.float(), block).expand(block_view(w, block).shape)
    return full.reshape(w.shape)


def _by_block(t: torch.Tensor, spec: TensorQuantSpec) -> torch.Tensor:
    """``[n_blocks, block_elements]``: the elements of each block (one scale) in a row."""
    block = spec.granularity_value.block_size(tuple(t.shape))
    v = block_view(t, block)
    return v.permute(0, 2, 1, 3).reshape(-1, math.prod(block))


def _candidates(qw: QuantizedWeight, w: torch.Tensor, spec: TensorQuantSpec) -> torch.Tensor:
    """``[rows, cols, L]``: every value each element of a grid/codebook weight could take."""
    fmt = spec.number_format
    if isinstance(fmt, GridFormat):
        levels = torch.tensor(fmt.levels)
        return _per_element(qw.scale, w, spec)[..., None] * levels
    book = qw.codebook.float()  # [1 or rows, k]
    book = book.expand(w.shape[0], -1)[:, None, :].expand(*w.shape, -1)
    if qw.scale is not None:  # per_group: a shared codebook times each group's scale
        book = book * _per_element(qw.scale, w, spec)[..., None]
    return book


def _quantize(w: torch.Tensor, spec: TensorQuantSpec) -> tuple[QuantizedWeight, torch.Tensor]:
    qw = quantize_weight(w, spec, "w")
    return qw, dequantize_weight(qw, spec)


# -- (i) round-trip error -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "symmetric"), [(f, sym) for f in INT_FORMATS for sym in (True, False)]
)
@PROPS
@given(data=st.data())
def test_uniform_error_is_at_most_half_a_step_inside_the_grid(fmt, symmetric, data) -> None:
    w, spec = data.draw(weights(fmt, symmetric))
    qw, w_hat = _quantize(w, spec)
    step = _per_element(qw.scale, w, spec)
    zp = _per_element(qw.zero_point, w, spec)
    number_format = spec.int_format
    lo = (number_format.qmin - zp) * step - step / 2
    hi = (number_format.qmax - zp) * step + step / 2
    inside = (w >= lo) & (w <= hi)
    excess = ((w - w_hat).abs() - (step / 2 * (1 + REL) + REL * w.abs()))[inside]
    assert bool((excess <= 0).all()), f"{spec}: error exceeds scale/2 by {excess.max()}"


@pytest.mark.parametrize(
    ("fmt", "symmetric"), [(f, sym) for f in INT_FORMATS for sym in (True, False)]
)
@PROPS
@given(data=st.data())
def test_uniform_grid_covers_the_weight_range(fmt, symmetric, data) -> None:
    """The fitted grid reaches every weight: ``|w - deq(q(w))| <= scale / 2`` everywhere."""
    w, spec = data.draw(weights(fmt, symmetric))
    qw, w_hat = _quantize(w, spec)
    step = _per_element(qw.scale, w, spec)
    excess = (w - w_hat).abs() - (step / 2 * (1 + REL) + REL * w.abs())
    assert bool((excess <= 0).all()), f"{spec}: error exceeds scale/2 by {excess.max()}"


def test_regression_uint3_asymmetric_grid_reaches_its_maximum() -> None:
    """The fp32 scale 8/7 = 1.1429 used to round *down* to bf16 1.1406, clipping 4.0 by 0.578 >
    half a step; bf16 scales are now rounded up where nearest would go down."""
    w = torch.tensor([[-4.0, 4.0]])
    spec = TensorQuantSpec("uint3", "per_tensor", symmetric=False)
    qw, w_hat = _quantize(w, spec)
    assert float((w - w_hat).abs().max()) <= float(qw.scale) / 2


@pytest.mark.parametrize("fmt", [f for f in GRID_FORMATS if f != "ternary"] + CODEBOOK_FORMATS)
@PROPS
@given(data=st.data())
def test_grid_and_codebook_values_are_the_nearest_level(fmt: str, data) -> None:
    w, spec = data.draw(weights(fmt))
    qw, w_hat = _quantize(w, spec)
    nearest = (w[..., None] - _candidates(qw, w, spec)).abs().amin(dim=-1)
    excess = (w - w_hat).abs() - nearest - REL * (w.abs() + w_hat.abs())
    assert bool((excess <= 0).all()), f"{spec}: not the nearest level by {excess.max()}"


@PROPS
@given(data=st.data())
def test_ternary_follows_the_twn_rule(data) -> None:
    """TWN (Li et al. 2016): ``sign(w)`` where ``|w| > 0.7 mean|w|`` (per block), else 0."""
    w, spec = data.draw(weights("ternary"))
    _, w_hat = _quantize(w, spec)
    v = block_view(w, spec.granularity_value.block_size(tuple(w.shape)))
    kept = v.abs() > 0.7 * v.abs().mean(dim=(1, 3), keepdim=True)
    expected = torch.where(kept, torch.sign(v), 0.0).reshape(w.shape)
    assert torch.equal(torch.sign(w_hat), expected)


@PROPS
@given(data=st.data())
def test_ternary_re_encoding_picks_the_nearest_level(data) -> None:
    w, spec = data.draw(weights("ternary"))
    qw = quantize_weight(w, spec, "w")
    w_hat = dequantize_weight(encode_weight(w, spec, qw), spec)
    nearest = (w[..., None] - _candidates(qw, w, spec)).abs().amin(dim=-1)
    assert bool(((w - w_hat).abs() <= nearest + REL * (w.abs() + w_hat.abs())).all())


# -- (ii) monotonicity ----------------------------------------------------------------------------
def _assert_monotone_within_blocks(x: torch.Tensor, x_hat: torch.Tensor, spec) -> None:
    xs, order = _by_block(x, spec).sort(dim=1, stable=True)
    ys = _by_block(x_hat, spec).gather(1, order)
    ties = xs[:, 1:] == xs[:, :-1]  # equal inputs must give equal outputs
    diff = ys[:, 1:] - ys[:, :-1]
    assert bool((diff >= 0).all()), f"{spec}: dequantized values decrease within a block"
    assert bool((diff[ties] == 0).all()), f"{spec}: equal inputs dequantize differently"


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@PROPS
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_quantization_is_monotone_within_a_block(fmt: str, data, seed: int) -> None:
    w, spec = data.draw(weights(fmt))
    qw, w_hat = _quantize(w, spec)
    _assert_monotone_within_blocks(w, w_hat, spec)
    # values across and far beyond the fitted range, encoded against the same parameters
    reach = 3 * w.abs().max().clamp(min=1e-6)
    y = (torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * reach
    y_hat = dequantize_weight(encode_weight(y, spec, qw), spec)
    _assert_monotone_within_blocks(y, y_hat, spec)


# -- (iii) parameters and codes --------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ALL_FORMATS)
@PROPS
@given(data=st.data())
def test_scales_zero_points_and_codes_are_in_range(fmt: str, data) -> None:
    w, spec = data.draw(weights(fmt))
    number_format = get_format(fmt)
    qw = quantize_weight(w, spec, "w")
    q = qw.qdata.to(torch.int64)
    assert qw.qdata.shape == w.shape
    if qw.scale is not None:
        assert bool((qw.scale.float() > 0).all()) and bool(qw.scale.float().isfinite().all())
    if isinstance(number_format, IntFormat):
        assert qw.qdata.dtype == number_format.storage_dtype
        lo, hi = number_format.qmin, number_format.qmax
        zp = qw.zero_point.to(torch.int64)
        assert bool(((zp >= lo) & (zp <= hi)).all()), f"{spec}: zero point off the grid"
        assert int(q.min()) >= lo and int(q.max()) <= hi
    elif isinstance(number_format, GridFormat):
        assert qw.zero_point is None and qw.codebook is None
        assert int(q.min()) >= 0 and int(q.max()) < len(number_format.levels)
        assert int(q.max()) < 1 << number_format.bits  # what packing stores
    else:
        assert isinstance(number_format, CodebookFormat)
        assert qw.codebook.shape[-1] == number_format.k
        assert bool(qw.codebook.float().isfinite().all())
        assert int(q.min()) >= 0 and int(q.max()) < number_format.k


# -- (iv) fixed point -----------------------------------------------------------------------------
# Requantizing the dequantized weight with *its own* parameters gives it back exactly, for every
# case. Re-fitting the parameters to it (quantize_weight again) is a fixed point too, except for
# asymmetric uniform formats (two causes) and per-group codebooks, pinned below by one failing
# weight per format (strict xfail: fix the code, the example passes, the format leaves
# REFIT_MOVES):
BF16_REFIT = (
    "asymmetric min/max refit below 8 bits is not idempotent: the bf16 scale is rounded up, so "
    "the dequantized weight spans fewer than qmax - qmin steps and refits to a smaller scale"
)
TIE_REFIT = (
    "asymmetric min/max refit at 8+ bits (fp32 scale) is not idempotent on rounding ties: where "
    "min / scale is k + 1/2 (any block spanning [-a, a]), float error rounds min up and max "
    "down, the maximum lands one code short of qmax, and the refit shrinks the scale"
)
BOOK_REFIT = (
    "per-group codebook refit is not idempotent: a dequantized group's absmax is "
    "|centroid| * scale for the centroid its extreme fell into, so groups are re-normalized "
    "differently (and rounded to fp16 / bf16 again) and k-means re-clusters"
)
_ONE_SIDE_SHORT = [-1.0, 0.3, 1.0]  # uint4: bf16 scale 0.1338, zero point 7, codes 0, 9, 14
# format -> (reason, weight, granularity); a weight whose refit moves, found by search
REFIT_MOVES: dict[str, tuple[str, list[list[float]] | tuple[int, int, int], str]] = {
    **{f"{u}int{b}": (BF16_REFIT, [_ONE_SIDE_SHORT], "per_tensor")
       for u in ("", "u") for b in range(2, 8)},
    **{f"{u}int{b}": (TIE_REFIT, [values], "per_tensor") for u in ("", "u") for b, values in (
        (8, _ONE_SIDE_SHORT), (9, [-300.0, 300.0]), (10, [-400.0, 400.0]), (11, [-7.0, 7.0]),
        (12, _ONE_SIDE_SHORT), (13, [-4.81, 4.81]), (14, [-5.0, 1.0]), (15, [-1e4, 1e4]))},
    # (int16 / uint16: a tie moves the weight by < 1e-5 of its range, inside the tolerance)
    "kmeans2": (BOOK_REFIT, [[0.4, -0.2, -0.3, -1.2]], "per_group:2"),  # -0.233 -> -0.345
    # randn(rows, cols) from torch.Generator().manual_seed(seed): (rows, cols, seed)
    "kmeans3": (BOOK_REFIT, (1, 8, 0), "per_group:4"),
    "kmeans4": (BOOK_REFIT, (1, 8, 1), "per_group:4"),
    "kmeans16": (BOOK_REFIT, (2, 32, 0), "per_group:16"),
    "kmeans256": (BOOK_REFIT, (3, 24, 10), "per_group:8"),
}  # fmt: skip


def _refit_moves(name: str, symmetric: bool, kinds: tuple[str, ...]) -> bool:
    """Whether ``REFIT_MOVES`` excuses this case from the refit fixed point."""
    if name not in REFIT_MOVES:
        return False
    if isinstance(get_format(name), CodebookFormat):
        return "per_group" in kinds
    return not symmetric


def _fixed_point_params() -> list:
    """``(fmt, symmetric, granularity kinds)`` for every format: symmetric at every granularity,
    asymmetric too for the uniform formats, codebooks per_group apart from the others."""
    params = []
    for name in ALL_FORMATS:
        fmt = get_format(name)
        cases = [(True, KINDS)]
        if isinstance(fmt, IntFormat):
            cases.append((False, KINDS))
        if isinstance(fmt, CodebookFormat):
            cases = [(True, KINDS[:2]), (True, KINDS[2:])]
        for symmetric, kinds in cases:
            case_id = f"{name}-{'sym' if symmetric else 'asym'}-{'/'.join(kinds)}"
            params.append(pytest.param(name, symmetric, kinds, id=case_id))
    return params


def _assert_unmoved(w1: torch.Tensor, w2: torch.Tensor, spec: TensorQuantSpec) -> None:
    tol = 1e-5 * (w1.abs() + w1.abs().amax()) + 1e-30
    assert bool(((w1 - w2).abs() <= tol).all()), f"{spec}: moved by {(w1 - w2).abs().max()}"


@pytest.mark.parametrize(("fmt", "symmetric", "kinds"), _fixed_point_params())
@PROPS
@given(data=st.data())
def test_requantizing_the_dequantized_weight_is_a_fixed_point(fmt, symmetric, kinds, data) -> None:
    w, spec = data.draw(weights(fmt, symmetric, kinds))
    qw, w1 = _quantize(w, spec)
    again = dequantize_weight(encode_weight(w1, spec, qw), spec)
    assert torch.equal(again, w1), f"{spec}: re-encoding against its own parameters moved it"
    if not _refit_moves(fmt, symmetric, kinds):  # else pinned by the regression below
        _, w2 = _quantize(w1, spec)
        _assert_unmoved(w1, w2, spec)


def _refit_regressions() -> list:
    params = []
    for name, (reason, weight, granularity) in REFIT_MOVES.items():
        mark = pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)
        params.append(pytest.param(name, weight, granularity, marks=mark, id=name))
    return params


@pytest.mark.parametrize(("fmt", "weight", "granularity"), _refit_regressions())
def test_regression_refit_of_the_dequantized_weight_moves(fmt, weight, granularity) -> None:
    if isinstance(weight, tuple):
        rows, cols, seed = weight
        w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    else:
        w = torch.tensor(weight)
    symmetric = not isinstance(get_format(fmt), IntFormat)
    spec = TensorQuantSpec(fmt, granularity, symmetric=symmetric)
    _, w1 = _quantize(w, spec)
    _, w2 = _quantize(w1, spec)
    _assert_unmoved(w1, w2, spec)


# -- fp16 / bf16 casts ----------------------------------------------------------------------------
@pytest.mark.parametrize(("preset", "dtype", "mantissa"), [("FP16", torch.float16, 10),
                                                          ("BF16", torch.bfloat16, 7)])  # fmt: skip
@PROPS
@given(data=st.data())
def test_cast_layers_round_to_the_nearest_float(preset: str, dtype, mantissa: int, data) -> None:
    w, _ = data.draw(weights("int8"))
    lin = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
    w_hat = CastLayer.from_float(lin, get_preset(preset)).dequantized_weight()
    assert torch.equal(w_hat, w.to(dtype).float())
    tiny = torch.finfo(dtype).tiny  # below it, subnormal steps are absolute
    half_ulp = torch.clamp(w.abs(), min=tiny) * 2.0 ** -(mantissa + 1)
    assert bool(((w - w_hat).abs() <= half_ulp).all())
    _assert_monotone_within_blocks(w, w_hat, TensorQuantSpec("int8", "per_tensor"))
