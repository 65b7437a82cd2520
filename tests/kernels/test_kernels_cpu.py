"""Every fast CPU kernel against its pure-PyTorch reference.

Integer GEMMs must agree exactly; bf16 and fp32-epilogue kernels within a relative tolerance.
``_weight_int8pack_mm`` is only ever called with K % 16 == 0 (other K crash torch 2.13).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.kernels import cpu, reference
from lowbit.nn import QuantConv
from lowbit.nn.base import static_input_qparams
from lowbit.presets import get_preset

pytestmark = pytest.mark.skipif(not cpu.has_int_mm(), reason="torch._int_mm unavailable")

_NOT_EXACT = "oneDNN int8 conv absent, or saturating on this CPU (no VNNI); layers fall back"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _int8(shape, g, lo=-128, hi=128) -> torch.Tensor:
    return torch.randint(lo, hi, shape, dtype=torch.int8, generator=g)


# -- int8 x int8 -> int32 ---------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 3, 17, 64])
@pytest.mark.parametrize("k", [16, 17, 100])
@pytest.mark.parametrize("n", [5, 8, 33])
def test_int8_matmul_fast_equals_reference_exactly(m: int, k: int, n: int) -> None:
    g = _gen(m * 10_000 + k * 100 + n)
    qx, qw = _int8((m, k), g), _int8((n, k), g)
    fast = cpu.int8_matmul(qx, qw, fast=True)
    slow = cpu.int8_matmul(qx, qw, fast=False)
    assert fast.dtype == slow.dtype == torch.int32
    assert fast.shape == (m, n)
    assert torch.equal(fast, slow)


def test_int8_matmul_extremes_do_not_saturate() -> None:
    k = 256  # 256 * 128 * 128 = 2^22: far from int32 limits, far above int16
    qx = torch.full((2, k), -128, dtype=torch.int8)
    qw = torch.full((3, k), -128, dtype=torch.int8)
    expected = torch.full((2, 3), 128 * 128 * k, dtype=torch.int32)
    assert torch.equal(cpu.int8_matmul(qx, qw), expected)
    assert torch.equal(cpu.int8_matmul(qx, qw, fast=False), expected)


@pytest.mark.parametrize("vnni", [True, False])
@pytest.mark.parametrize("k", [511, 512, 513, 1500, 4100])
def test_both_int8_gemm_paths_are_exact_at_the_worst_case(monkeypatch, vnni: bool, k: int) -> None:
    """The fp32 path (CPUs without VNNI) sums K in chunks of 512: exact even when every product
    is the largest uint8 x int8 one and K spans several chunks."""
    if vnni and not cpu.has_vnni():
        # without VNNI (ONEDNN_MAX_CPU_ISA=AVX2 reproduces it) _int_mm's int16 pair sums
        # saturate too: lowbit never calls it there
        pytest.skip("torch._int_mm is not exact without VNNI")
    monkeypatch.setattr(cpu, "has_vnni", lambda: vnni)
    worst = torch.full((2, k), 255, dtype=torch.uint8).view(torch.uint8)
    qw = torch.full((3, k), -128, dtype=torch.int8)
    expected = torch.full((2, 3), -255 * 128 * k, dtype=torch.int32)
    if vnni:  # _int_mm takes int8 x int8 only
        worst = torch.full((2, k), -128, dtype=torch.int8)
        expected = torch.full((2, 3), 128 * 128 * k, dtype=torch.int32)
    assert torch.equal(cpu.int8_matmul(worst, qw), expected)
    g = _gen(k)
    qx, qw = _int8((7, k), g), _int8((9, k), g)
    assert torch.equal(cpu.int8_matmul(qx, qw), cpu.int8_matmul(qx, qw, fast=False))


def test_int8_matmul_reference_small_example() -> None:
    qx = torch.tensor([[1, -2]], dtype=torch.int8)
    qw = torch.tensor([[3, 4]], dtype=torch.int8)
    assert torch.equal(reference.int8_matmul_ref(qx, qw), torch.tensor([[-5]], dtype=torch.int32))


# -- weight-only bf16 x int8 ------------------------------------------------------------------
@pytest.mark.skipif(not cpu.supports_weight_int8pack(16), reason="_weight_int8pack_mm missing")
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("k", [16, 32, 96])
@pytest.mark.parametrize("n", [5, 8, 33])
def test_weight_int8_matmul_fast_matches_slow(m: int, k: int, n: int) -> None:
    assert k % 16 == 0  # never call the fast path with other K: it segfaults
    g = _gen(m * 10_000 + k * 100 + n)
    x = torch.randn(m, k, generator=g)
    qw = _int8((n, k), g, -127, 128)
    scale = (torch.rand(n, generator=g) * 0.01 + 0.001).to(torch.bfloat16)
    fast = cpu.weight_int8_matmul(x, qw, scale, fast=True)
    slow = cpu.weight_int8_matmul(x, qw, scale, fast=False)
    assert fast.dtype == torch.bfloat16 and slow.dtype == cpu.dequant_dtype()
    assert fast.shape == slow.shape == (m, n)
    oracle = reference.weight_only_linear_ref(x.to(torch.bfloat16).float(), qw, scale, None)
    assert _rel(fast, slow) < 1e-2
    assert _rel(fast, oracle) < 1e-2


@pytest.mark.parametrize(("k", "ok"), [(16, True), (64, True), (17, False), (100, False)])
def test_weight_int8pack_support_needs_k_multiple_of_16(k: int, ok: bool) -> None:
    assert cpu.supports_weight_int8pack(k) is ok or not hasattr(
        torch.ops.aten, "_weight_int8pack_mm"
    )


def test_weight_only_reference_with_bias() -> None:
    x = torch.tensor([[1.0, 2.0]])
    qw = torch.tensor([[1, -1], [2, 3]], dtype=torch.int8)
    scale, bias = torch.tensor([0.5, 0.25]), torch.tensor([1.0, -1.0])
    y = reference.weight_only_linear_ref(x, qw, scale, bias)
    assert torch.equal(y, torch.tensor([[0.5, 1.0]]))


# -- dynamic activation quantization ----------------------------------------------------------
@pytest.mark.parametrize("per_token", [True, False])
def test_quantize_dynamic_int8_codes_and_error_bound(per_token: bool) -> None:
    g = _gen(7)
    x = torch.randn(6, 40, generator=g) * torch.logspace(-3, 2, 6).reshape(-1, 1)
    q, scale = cpu.quantize_dynamic_int8(x, per_token)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert int(q.min()) >= -127 and int(q.max()) <= 127
    assert scale.shape == ((6, 1) if per_token else (1, 1))
    amax = x.abs().amax(dim=-1, keepdim=True) if per_token else x.abs().amax()
    torch.testing.assert_close(scale.expand(6, 1), (amax / 127).expand(6, 1))
    err = (q.float() * scale - x).abs()
    assert bool((err <= scale / 2 * (1 + 1e-5)).all())
    assert int(q.abs().amax()) == 127  # the largest value maps to the grid end


def test_quantize_dynamic_int8_all_zero_rows() -> None:
    x = torch.zeros(3, 16)
    x[1] = torch.linspace(-1, 1, 16)
    q, scale = cpu.quantize_dynamic_int8(x, per_token=True)
    assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    assert bool((q[0] == 0).all()) and bool((q[2] == 0).all())


# -- oneDNN int8 convolution ------------------------------------------------------------------
CONVS = {
    "conv2d": (lambda: nn.Conv2d(4, 8, 3, padding=1), (2, 4, 9, 9)),
    "conv2d_no_bias": (lambda: nn.Conv2d(4, 8, 3, padding=1, bias=False), (2, 4, 9, 9)),
    "grouped": (lambda: nn.Conv2d(4, 8, 3, padding=1, groups=2), (2, 4, 9, 9)),
    "depthwise": (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8), (2, 8, 9, 9)),
    "strided_dilated": (
        lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 3)),
        (2, 4, 11, 10),
    ),
    "conv1d": (lambda: nn.Conv1d(4, 8, 3, padding=1), (2, 4, 13)),
    "conv1d_strided_grouped": (
        lambda: nn.Conv1d(6, 9, 5, stride=2, padding=3, dilation=2, groups=3),
        (3, 6, 20),
    ),
}


@pytest.mark.skipif(not cpu.onednn_qconv_exact(), reason=_NOT_EXACT)
@pytest.mark.parametrize("preset", ["W8A8-dynamic", "W8A8"])
@pytest.mark.parametrize("case", sorted(CONVS))
def test_onednn_int8_conv_matches_reference(case: str, preset: str) -> None:
    torch.manual_seed(sorted(CONVS).index(case))
    make, shape = CONVS[case]
    conv = make()
    x = torch.randn(shape)
    scheme = get_preset(preset)
    qparams = None
    if preset == "W8A8":
        qparams = static_input_qparams(scheme.activation, x.min(), x.max())
    q = QuantConv.from_float(conv, scheme, qparams)
    assert q._fast and q.kernel.startswith("onednn")
    qx, sx, zx = q._quantize_input(x)
    assert qx.dtype == torch.uint8
    y_fast = q(x)
    y_ref = q._conv_reference(qx, sx, zx)
    assert y_fast.shape == y_ref.shape == conv(x).shape
    assert y_fast.is_contiguous()
    assert _rel(y_fast, y_ref) < 1e-5


@pytest.mark.skipif(not cpu.onednn_qconv_exact(), reason=_NOT_EXACT)
def test_int8_conv_kernel_direct_call_matches_integer_reference() -> None:
    g = _gen(3)
    qw = _int8((6, 3, 3, 3), g, -127, 128)
    w_scale = torch.rand(6, generator=g) * 0.01 + 0.001
    qx = torch.randint(0, 256, (2, 3, 7, 7), dtype=torch.uint8, generator=g)
    sx, zx = 0.05, 117
    args = ([1, 1], [1, 1], [1, 1], 1)
    packed = cpu.prepack_int8_conv(qw, w_scale, *args)
    bias = torch.randn(6, generator=g)
    y = cpu.int8_conv(qx, sx, zx, packed, w_scale, bias, *args)
    acc = reference.int8_conv_ref(qx, zx, qw, *args)
    expected = acc * (w_scale.double() * sx).reshape(1, -1, 1, 1) + bias.double().reshape(
        1, -1, 1, 1
    )
    assert y.dtype == torch.float32
    assert _rel(y, expected) < 1e-5


def test_int8_conv_reference_is_exact_integer_arithmetic() -> None:
    qx = torch.tensor([[[3, 5, 7]]], dtype=torch.uint8)  # [N=1, C=1, L=3]
    qw = torch.tensor([[[1, -1]]], dtype=torch.int8)
    acc = reference.int8_conv_ref(qx, 5, qw, (1,), (0,), (1,), 1)
    assert torch.equal(acc, torch.tensor([[[-2.0, -2.0]]], dtype=torch.float64))


@pytest.mark.skipif(not cpu.has_onednn_qconv(), reason="oneDNN int8 conv not in this build")
def test_prepack_placeholder_activation_qparams_do_not_change_results() -> None:
    g = _gen(5)
    qw = _int8((4, 2, 3, 3), g, -127, 128)
    w_scale = torch.rand(4, generator=g) * 0.01 + 0.001
    qx = torch.randint(0, 256, (1, 2, 6, 6), dtype=torch.uint8, generator=g)
    args = ([1, 1], [0, 0], [1, 1], 1)
    outs = []
    for x_scale, x_zp in [(1.0, 0), (0.02, 131)]:
        packed = torch.ops.onednn.qconv_prepack(qw, w_scale, x_scale, x_zp, *args, None)
        outs.append(cpu.int8_conv(qx, 0.05, 100, packed, w_scale, None, *args))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(("cin", "groups", "k"), [(16, 1, 3), (64, 1, 3), (600, 1, 1),
                                                  (32, 32, 3), (1200, 2, 1)])  # fmt: skip
def test_fp32_conv_on_codes_is_exact_where_it_says_so(cin, groups, k):
    """No VNNI: one fp32 conv on the integer codes. Exact when every partial sum stays below
    2^24 (the bound from the weights), and within fp32 rounding of the exact sums otherwise."""
    out = 2 * groups if groups > 1 else 4
    args = ((1, 1), (k // 2, k // 2), (1, 1), groups)
    one = torch.ones(out)
    for x_range, zx in [(255, 0), (128, 127)]:
        g = _gen(cin + x_range)
        qw = _int8((out, cin // groups, k, k), g)
        qx = torch.randint(0, 256, (2, cin, 5, 5), dtype=torch.uint8, generator=g)
        qx = qx.clamp(max=zx + x_range)
        fc = cpu.prepare_fp32_conv(qw, one, x_range)
        bound = x_range * float(qw.float().abs().sum(dim=(1, 2, 3)).max())
        assert fc.exact == (bound < 2**24)
        ref = reference.int8_conv_ref(qx, zx, qw, *args)
        y = cpu.fp32_conv_codes(qx.float() - zx, fc, 1.0, None, *args).double()
        if fc.exact:
            assert torch.equal(y, ref)
        else:
            assert float((y - ref).abs().max()) <= 1e-6 * float(ref.abs().max()) + 1
    worst = torch.full((out, cin // groups, k, k), -128, dtype=torch.int8)
    assert cpu.prepare_fp32_conv(worst, one, 255).exact == (255 * 128 * worst[0].numel() < 2**24)


def test_conv_layers_never_use_a_saturating_int8_conv():
    import lowbit

    conv = torch.nn.Conv2d(16, 8, 3, padding=1)
    q = lowbit.quantize(conv, "W8A8-dynamic")
    if cpu.onednn_qconv_exact():
        assert q.kernel.startswith("onednn")
    else:
        assert q.kernel.startswith("fp32 conv on the int8 codes") and "saturates" in q.kernel
    x = torch.rand(2, 16, 6, 6) * 10
    y = conv(x)
    assert float((q(x) - y).pow(2).sum() / y.pow(2).sum()) < 1e-3


def test_a_compiled_int8_model_has_no_graph_break() -> None:
    """The machine probes (``has_vnni``...) are compile-time constants: torch.compile traced
    ``has_vnni``'s /proc/cpuinfo read on every int8 matmul and broke the graph there."""
    import torch._dynamo

    import lowbit

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
    q = lowbit.quantize(model.eval(), "W8A8-dynamic")
    with torch.no_grad():
        explained = torch._dynamo.explain(q)(torch.randn(3, 64))
    assert explained.graph_break_count == 0, explained.break_reasons
