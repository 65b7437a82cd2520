"""Fast integer kernels on the CPU, built on torch's own int8 operators.

Measured on the development machine (AVX-512 VNNI, 2 cores; see benchmarks/RESULTS.md):

* ``torch._int_mm`` (int8 x int8 -> int32, oneDNN/VNNI) is the fastest int8 GEMM for every shape we
  timed. Passing the ``[N, K]`` weight as a transposed view is ~5x faster at batch 1 than a
  contiguous ``[K, N]`` copy and within 25 % of it at large batches, so weights stay ``[N, K]``.
* ``aten._weight_int8pack_mm`` (bf16 activations x int8 weights, per-channel scales) is the
  weight-only kernel: ~7x faster than fp32 at batch 1. It needs ``K % 16 == 0`` (other K crash the
  process, so we never call it there) and bf16 inputs (fp32 inputs hit a slow path).
* ``onednn::qconv_pointwise`` is the int8 convolution (uint8 activations with a zero point, int8
  weights, fp32 output); there is no other non-deprecated int8 conv in torch.

Each fast path has a reference twin in :mod:`lowbit.kernels.reference` and is tested against it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from lowbit.kernels import fused, reference

__all__ = [
    "has_int_mm",
    "has_onednn_qconv",
    "onednn_qconv_exact",
    "supports_weight_int8pack",
    "native_bf16",
    "dequant_dtype",
    "quantize_dynamic_int8",
    "int8_matmul",
    "has_vnni",
    "int8_conv_fp32",
    "dequantize_accumulator",
    "quantize_static",
    "uses_weight_pack",
    "weight_int8_matmul",
    "int4_unsupported_reason",
    "prepack_int4",
    "int4_matmul",
    "prepack_int8_conv",
    "int8_conv",
]


@functools.cache
@torch.compiler.assume_constant_result
def has_int_mm() -> bool:
    """True when ``torch._int_mm`` runs on this CPU build (checked once with a tiny call)."""
    try:
        a = torch.ones(2, 16, dtype=torch.int8)
        return bool((torch._int_mm(a, a.t()) == 16).all())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
@torch.compiler.assume_constant_result
def has_onednn_qconv() -> bool:
    """True when oneDNN's int8 convolution operators are present in this torch build."""
    try:
        ops = torch.ops.onednn
        return hasattr(ops, "qconv_prepack") and hasattr(ops, "qconv_pointwise")
    except (AttributeError, RuntimeError):
        return False


@functools.cache
@torch.compiler.assume_constant_result
def onednn_qconv_exact() -> bool:
    """True when oneDNN's int8 convolution computes exact int32 sums on this CPU.

    Without VNNI (AVX2-only CPUs, measured on an AMD EPYC without AVX-512), oneDNN multiplies
    uint8 x int8 with ``vpmaddubsw``, whose int16 pair sums saturate (255*127*2 > 32767): the
    result is then silently wrong. A worst-case probe (all-255 inputs, all-127 weights) tells.
    """
    if not has_onednn_qconv():
        return False
    qx = torch.full((1, 16, 3, 3), 255, dtype=torch.uint8)
    qw = torch.full((4, 16, 3, 3), 127, dtype=torch.int8)
    scale = torch.ones(4)
    args = ([1, 1], [0, 0], [1, 1], 1)
    try:
        y = int8_conv(qx, 1.0, 0, prepack_int8_conv(qw, scale, *args), scale, None, *args)
    except RuntimeError:
        return False
    return bool((y == 255 * 127 * 16 * 9).all())


@functools.cache
@torch.compiler.assume_constant_result
def native_bf16() -> bool:
    """True when this CPU computes bf16 GEMMs and convs natively (AVX-512 BF16/AMX, or oneDNN's
    fast AVX-512 emulation). Without it (AVX2-only CPUs) a bf16 GEMM is emulated and measured
    ~10x slower than fp32 (AMD EPYC, 1280x384 @ 384x1536: 82 ms vs 8.6 ms)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def dequant_dtype() -> torch.dtype:
    """The dtype weight-only layers dequantize to and compute in for large inputs: bf16 where it
    is native, else fp32 (where bf16 would be emulated and slower than float)."""
    return torch.bfloat16 if native_bf16() else torch.float32


def supports_weight_int8pack(in_features: int) -> bool:
    """``_weight_int8pack_mm`` needs K a multiple of 16 (other K segfault in torch 2.13)."""
    return in_features % 16 == 0 and hasattr(torch.ops.aten, "_weight_int8pack_mm")


def quantize_dynamic_int8(
    x: torch.Tensor, per_token: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of a 2-D ``x`` with scales from the data: ``s = max|x| / 127``, ``q = round(x/s)``.

    ``per_token``: one scale per row (``[M, 1]``), else one for the tensor (``[1, 1]``). No clamp is
    needed: ``|x / s| <= 127`` by construction. All-zero rows get a tiny scale.
    """
    fn = fused.quantize_per_token if per_token else fused.quantize_per_tensor
    return fused.fused(fn, x.shape[0])(x.float())


def quantize_static(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    dtype: torch.dtype = torch.int8,
) -> torch.Tensor:
    """``q = clamp(round(x / s) + z, qmin, qmax)`` in ``dtype``, for ``x`` of any shape."""
    rows = x.numel() // max(x.shape[-1], 1) if x.dim() else 1
    return fused.fused(fused.quantize_static, rows)(x.float(), scale, zero_point, qmin, qmax, dtype)


def dequantize_accumulator(
    acc: torch.Tensor,
    row_scale: torch.Tensor | None,
    col_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``y = acc * row_scale * col_scale + bias`` (float32), written over ``acc``'s memory.

    int32 and float32 have the same size and element i is read before it is written, so no second
    [M, N] buffer is allocated. Large outputs use one fused kernel, small ones eager ops.
    """
    rows = acc.shape[0]
    if rows >= fused.FUSED_MIN_ROWS:
        row = row_scale if row_scale is not None else _ONE
        b = bias if bias is not None else _ZERO
        return fused.fused(fused.dequantize_, rows)(acc, row, col_scale, b)
    y = acc.view(torch.float32)
    if row_scale is not None:
        torch.mul(acc, row_scale, out=y)
    else:
        y.copy_(acc)
    if bias is None:
        return y.mul_(col_scale)
    return torch.addcmul(bias, y, col_scale, out=y)


_ONE = torch.ones(1, 1)
_ZERO = torch.zeros(1)


# Machine probes are constants of the process: torch.compile would otherwise trace their bodies
# (it skips functools.cache) and break the graph at the /proc/cpuinfo read on every call.
@functools.cache
@torch.compiler.assume_constant_result
def has_vnni() -> bool:
    """True when the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX), which
    ``torch._int_mm`` needs to be fast: without them it measured 30x slower than an fp32 GEMM
    (AMD EPYC, AVX2 only: 1280x384 @ 384x1536 in 250 ms vs 8.4 ms). Unknown (no
    /proc/cpuinfo): assumed present."""
    try:
        words = set(Path("/proc/cpuinfo").read_text(encoding="utf-8").split())
    except OSError:
        return True
    return bool(words & {"avx512_vnni", "avx_vnni", "amx_int8"})


# An fp32 GEMM of 8-bit integers is exact while every partial sum stays below 2^24:
# 512 products of at most 255 * 128 sum to 16,711,680 < 16,777,216.
_EXACT_FP32_CHUNK = 512


def int8_matmul(qx: torch.Tensor, qw: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """``acc = qx @ qw.T`` in int32 for int8 (or uint8) ``qx [M, K]`` and int8 ``qw [N, K]``.

    With VNNI: ``torch._int_mm``. Without it: fp32 GEMMs over chunks of K, each exact (see
    ``_EXACT_FP32_CHUNK``), summed in int32; the same integers, ~30x faster there.
    """
    if not fast:
        return reference.int8_matmul_ref(qx, qw)
    if has_vnni():
        return torch._int_mm(qx, qw.t())
    acc = None
    for k in range(0, qx.shape[1], _EXACT_FP32_CHUNK):
        xs, ws = qx[:, k : k + _EXACT_FP32_CHUNK], qw[:, k : k + _EXACT_FP32_CHUNK]
        part = (xs.float() @ ws.float().t()).to(torch.int32)
        acc = part if acc is None else acc.add_(part)
    return acc


def int8_conv_fp32(
    qx: torch.Tensor, x_zero_point: int, qw: torch.Tensor, stride, padding, dilation, groups: int
) -> torch.Tensor:
    """``conv(qx - zx, qw)`` exactly, from fp32 convolutions (float64 result holding integers).

    For CPUs where oneDNN's int8 conv is unusable (no VNNI). Each output sums at most 512
    products of |x - zx| <= 255 and |w| <= 128 per fp32 conv, below 2^24, so every partial sum
    is exact; wider reductions (``groups == 1``) are split over input channels. Grouped convs
    with more than 512 terms per output use the float64 reference.
    """
    conv = reference.CONV_FN[qw.dim() - 2]
    x, w = qx.float() - float(x_zero_point), qw.float()
    if qw[0].numel() <= _EXACT_FP32_CHUNK:
        return conv(x, w, None, stride, padding, dilation, groups).double()
    if groups != 1:
        return reference.int8_conv_ref(qx, x_zero_point, qw, stride, padding, dilation, groups)
    step = max(1, _EXACT_FP32_CHUNK // qw[0, 0].numel())
    acc = None
    for c in range(0, qw.shape[1], step):
        part = conv(x[:, c : c + step], w[:, c : c + step], None, stride, padding, dilation, 1)
        acc = part.double() if acc is None else acc.add_(part.double())
    return acc


WEIGHT_ONLY_DEQUANT_MIN_ROWS = 160


def uses_weight_pack(rows: int) -> bool:
    """Whether weight-only layers run ``rows`` rows on the int8/int4 weight-pack kernels
    (``rows < WEIGHT_ONLY_DEQUANT_MIN_ROWS``) rather than dequantize + float GEMM."""
    return rows < WEIGHT_ONLY_DEQUANT_MIN_ROWS


def weight_int8_matmul(
    x: torch.Tensor, qw: torch.Tensor, scale_bf16: torch.Tensor, fast: bool = True
) -> torch.Tensor:
    """``y = bf16(x) @ (qw * scale).T`` in bf16; ``x [M, K]``, ``qw [N, K]``, ``scale [N]``.

    ``_weight_int8pack_mm`` costs ~linearly in M; from ``WEIGHT_ONLY_DEQUANT_MIN_ROWS`` rows on it
    is cheaper to dequantize the weight once per call and run a GEMM (measured crossovers: 28-150
    rows for 384x1536, 1536x384 and 4096x4096; see benchmarks/RESULTS.md), in bf16 where it is
    native, else in fp32 (:func:`dequant_dtype`).
    """
    if fast and uses_weight_pack(x.shape[0]):
        return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), qw, scale_bf16)
    dt = dequant_dtype()
    w = qw.to(dt) * scale_bf16.to(dt).reshape(-1, 1)
    return torch.nn.functional.linear(x.to(dt), w)


INT4_GROUP_SIZES = (32, 64, 128, 256)


def int4_unsupported_reason(out_features: int, in_features: int, group: int | None) -> str | None:
    """Why ``_weight_int4pack_mm_for_cpu`` cannot run this shape (None when it can)."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return "torch has no _weight_int4pack_mm_for_cpu"
    if group not in INT4_GROUP_SIZES:
        return f"the int4 kernel takes group sizes {INT4_GROUP_SIZES}, got {group}"
    if in_features % group or out_features % 16:
        return f"the int4 kernel needs out_features % 16 == 0 and in_features % {group} == 0"
    return None


def prepack_int4(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, group: int
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Kernel layout of 4-bit group-wise weights (derived data, never saved).

    The kernel computes ``w = (u - 8) * s + z`` from unsigned codes ``u = q - qmin``; lowbit's
    ``w = (q - zp) * s`` gives ``z = (qmin + 8 - zp) * s``. Returns ``(packed, group, sz)`` with
    ``sz`` the bf16 ``[K / group, N, 2]`` scales-and-zeros tensor.
    """
    u = (codes.to(torch.int32) - qmin).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 2)
    s = scale.float()
    z = (qmin + 8 - zero_point.float()) * s
    sz = torch.stack([s.t(), z.t()], dim=-1).to(torch.bfloat16).contiguous()
    return packed, group, sz


def int4_matmul(
    x: torch.Tensor, packed: torch.Tensor, group: int, sz: torch.Tensor
) -> torch.Tensor:
    """``y = bf16(x) @ W^T`` for int4 group-wise ``W`` (bf16 result)."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), packed, group, sz)


def prepack_int8_conv(
    qw: torch.Tensor,
    w_scale: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """oneDNN's blocked layout of an int8 conv weight (derived data, never saved)."""
    # The activation scale/zero point given to prepack do not affect the packed weight (checked in
    # tests: results match for any value), so a placeholder serves static and dynamic modes alike.
    return torch.ops.onednn.qconv_prepack(
        qw, w_scale.float(), 1.0, 0, stride, padding, dilation, groups, None
    )


def int8_conv(
    qx: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    packed_w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """fp32 ``conv((qx - zx) * sx, qw * sw) + bias`` with uint8 ``qx``, on oneDNN's int8 kernel."""
    w_zero = torch.zeros(w_scale.numel(), dtype=torch.int64)
    y = torch.ops.onednn.qconv_pointwise(
        qx, float(x_scale), int(x_zero_point), packed_w, w_scale.float(), w_zero, bias,
        stride, padding, dilation, groups, 1.0, 0, torch.float32, "none", [], "",
    )  # fmt: skip
    # oneDNN answers in channels-last; user code often calls .view() on conv outputs.
    return y.contiguous()
