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
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

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
    "Fp32Conv",
    "prepare_fp32_conv",
    "fp32_conv_codes",
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


def _machine_constant(probe: Callable[[], bool]) -> Callable[[], bool]:
    """Run ``probe`` once per process and keep its answer.

    Machine probes are constants of the process; ``torch.compile`` calls them once at trace time
    (``assume_constant_result``) instead of tracing their bodies, which read /proc/cpuinfo or
    run a kernel. Not ``functools.cache``: dynamo traces through its wrapper (with a warning).
    """
    answer: list[bool] = []

    @functools.wraps(probe)
    def once() -> bool:
        if not answer:
            answer.append(probe())
        return answer[0]

    return torch.compiler.assume_constant_result(once)


@_machine_constant
def has_int_mm() -> bool:
    """True when ``torch._int_mm`` runs on this CPU build (checked once with a tiny call)."""
    try:
        a = torch.ones(2, 16, dtype=torch.int8)
        return bool((torch._int_mm(a, a.t()) == 16).all())
    except (AttributeError, RuntimeError):
        return False


@_machine_constant
def has_onednn_qconv() -> bool:
    """True when oneDNN's int8 convolution operators are present in this torch build."""
    try:
        ops = torch.ops.onednn
        return hasattr(ops, "qconv_prepack") and hasattr(ops, "qconv_pointwise")
    except (AttributeError, RuntimeError):
        return False


@_machine_constant
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


@_machine_constant
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


@_machine_constant
def has_vnni() -> bool:
    """True when the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX), which
    ``torch._int_mm`` needs to be fast: without them it measured 30x slower than an fp32 GEMM
    (AMD EPYC, AVX2 only: 1280x384 @ 384x1536 in 250 ms vs 8.4 ms). Unknown (no
    /proc/cpuinfo): assumed present."""
    if _isa_cap_without_vnni():
        return False
    try:
        words = set(Path("/proc/cpuinfo").read_text(encoding="utf-8").split())
    except OSError:
        return True
    return bool(words & {"avx512_vnni", "avx_vnni", "amx_int8"})


# oneDNN's own ISA switch (``ONEDNN_MAX_CPU_ISA``): capped at one of these, its int8 kernels run
# without VNNI even where the CPU has it (how an AVX2-only machine is reproduced on a newer one)
_ISAS_WITHOUT_VNNI = {"SSE41", "AVX", "AVX2", "AVX512_CORE", "AVX512_MIC", "AVX512_MIC_4OPS"}


def _isa_cap_without_vnni() -> bool:
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return cap.strip().upper() in _ISAS_WITHOUT_VNNI


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


class Fp32Conv(NamedTuple):
    """An int8 conv weight as fp32 integers for :func:`fp32_conv_codes` (derived data)."""

    w: torch.Tensor  # the int8 codes as float32
    scale: torch.Tensor  # [out] weight scales
    exact: bool  # every partial sum provably below 2^24


def prepare_fp32_conv(qw: torch.Tensor, w_scale: torch.Tensor, x_range: int) -> Fp32Conv:
    """The fp32 form of an int8 conv weight, and whether an fp32 conv on it is exact.

    Each output sums ``(q_x - z_x) * q_w`` over its receptive field; with ``|q_x - z_x| <=
    x_range``, every partial sum is bounded by ``x_range * sum|q_w[c]|``. Below 2^24 each one is
    an fp32 integer, so one fp32 conv gives the int32 result exactly.
    """
    w = qw.float()
    bound = x_range * float(w.abs().reshape(w.shape[0], -1).sum(dim=1).max())
    return Fp32Conv(w, w_scale.float(), bound < 2.0**24)


def fp32_conv_codes(
    xq: torch.Tensor,
    fc: Fp32Conv,
    x_scale: float | torch.Tensor,
    bias: torch.Tensor | None,
    stride, padding, dilation, groups: int,
) -> torch.Tensor:  # fmt: skip
    """``y = conv(q_x - z_x, q_w) * s_x * s_w + b`` from centered codes ``xq`` (float32).

    The int8 conv where oneDNN's saturates (no VNNI): an fp32 conv on the integer codes, one
    fp32 conv's cost plus one epilogue pass. Exact when ``fc.exact``; otherwise partial sums
    above 2^24 round to fp32 (relative error ~1e-7 per add, far below the int8 grid's).
    """
    acc = reference.CONV_FN[fc.w.dim() - 2](xq, fc.w, None, stride, padding, dilation, groups)
    shape = [1, -1] + [1] * (fc.w.dim() - 2)
    out_scale = (fc.scale * x_scale).reshape(shape)
    if bias is None:
        return acc.mul_(out_scale)
    return torch.addcmul(bias.reshape(shape), acc, out_scale, out=acc)


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
    x_scale: float | torch.Tensor,
    x_zero_point: int | torch.Tensor,
    packed_w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """fp32 ``conv((qx - zx) * sx, qw * sw) + bias`` with uint8 ``qx``, on oneDNN's int8 kernel.

    ``x_scale``/``x_zero_point`` may be 0-d tensors (dynamic inputs: no host sync, nothing for
    torch.compile to break its graph on)."""
    w_zero = torch.zeros(w_scale.numel(), dtype=torch.int64)
    if qx.dim() == 4:
        # oneDNN computes in channels-last; handing it NCHW makes its output layout depend on
        # the shape, which Inductor's shape-generic kernels then mispredict
        qx = qx.contiguous(memory_format=torch.channels_last)
    if isinstance(x_scale, torch.Tensor):
        op, sx, zx = torch.ops.onednn.qconv_pointwise.tensor, x_scale, x_zero_point
    else:
        op, sx, zx = torch.ops.onednn.qconv_pointwise, float(x_scale), int(x_zero_point)
    y = op(
        qx, sx, zx, packed_w, w_scale.float(), w_zero, bias,
        stride, padding, dilation, groups, 1.0, 0, torch.float32, "none", [], "",
    )  # fmt: skip
    # oneDNN answers in channels-last; user code often calls .view() on conv outputs.
    return y.contiguous()
