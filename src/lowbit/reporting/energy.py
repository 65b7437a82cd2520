"""Energy per inference: an *estimate* from counted operations and bytes moved, and a measurement
where the hardware exposes a counter (Intel/AMD RAPL through Linux powercap).

The estimate multiplies counts by the 45 nm per-operation energies of M. Horowitz, "Computing's
energy problem (and what we can do about it)", ISSCC 2014 (as tabulated by Han et al., EIE,
ISCA 2016): it ranks precisions (a 32-bit float multiply-add costs ~15x an 8-bit integer one; a
DRAM word ~130x an SRAM word) rather than predicting this machine's joules.

    E = Σ_layers MACs · (E_mul + E_add)[precision]  +  weight bytes · E_DRAM/byte
        + activation bytes (in + out) · E_SRAM/byte

>>> ops = count_ops(nn.Sequential(nn.Linear(64, 32)), ((torch.randn(1, 64),), {}))
>>> ops["0"].macs
2048
>>> round(mac_energy_pj(2048, "int8"), 1), round(mac_energy_pj(2048, "fp32"), 1)
(614.4, 9420.8)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.ptq.capture import call_model

__all__ = [
    "PJ_PER_OP",
    "SOURCE",
    "LayerOps",
    "count_ops",
    "mac_energy_pj",
    "estimate_energy_pj",
    "rapl_energy_uj",
]

SOURCE = (
    "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, "
    "45 nm figures as tabulated in Han et al., 'EIE', ISCA 2016"
)
# picojoules: (multiply, add) per precision; memory per byte (32-bit access / 4).
PJ_PER_OP = {
    "int8": (0.2, 0.1),  # 8-bit multiply, 32-bit accumulate
    "fp16": (1.1, 0.4),  # bf16 taken as fp16 (same multiplier width class)
    "fp32": (3.7, 0.9),
}
PJ_DRAM_BYTE = 640.0 / 4
PJ_SRAM_BYTE = 5.0 / 4


@dataclass(frozen=True)
class LayerOps:
    """One layer on one batch: multiply-accumulates and activation elements in and out."""

    macs: int
    in_elements: int
    out_elements: int


def count_ops(model: nn.Module, batch: tuple[tuple, dict]) -> dict[str, LayerOps]:
    """MACs of every Linear/Conv layer (and lookups of Embeddings, 0 MACs) on ``batch``."""
    found: dict[str, LayerOps] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, out: Any) -> None:
            x = args[0]
            if not isinstance(out, torch.Tensor):
                return
            if isinstance(module, nn.Linear):
                macs = out.numel() * module.in_features
            elif isinstance(module, nn.Conv1d | nn.Conv2d):
                k = module.weight[0].numel()  # in_channels / groups * kernel size
                macs = out.numel() * k
            else:
                macs = 0
            found.setdefault(name, LayerOps(macs, x.numel(), out.numel()))

        return record

    layers = {n: m for n, m in model.named_modules() if isinstance(
        m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Embedding)}  # fmt: skip
    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return found


def mac_energy_pj(macs: int, precision: str) -> float:
    mul, add = PJ_PER_OP[precision]
    return macs * (mul + add)


def estimate_energy_pj(
    ops: dict[str, LayerOps], precision: dict[str, str], weight_bytes: dict[str, int],
    act_bytes: dict[str, int],
) -> dict[str, float]:  # fmt: skip
    """``{"compute": pJ, "weights": pJ, "activations": pJ, "total": pJ}`` for one batch.

    ``precision[layer]`` is the arithmetic the layer runs (``int8``/``fp16``/``fp32``),
    ``weight_bytes[layer]`` what its weight costs in memory, ``act_bytes[layer]`` the bytes per
    activation element it reads and writes.
    """
    compute = sum(mac_energy_pj(o.macs, precision[n]) for n, o in ops.items())
    weights = sum(weight_bytes[n] for n in ops) * PJ_DRAM_BYTE
    acts = sum((o.in_elements + o.out_elements) * act_bytes[n] for n, o in ops.items())
    acts *= PJ_SRAM_BYTE
    return {"compute": compute, "weights": weights, "activations": acts,
            "total": compute + weights + acts}  # fmt: skip


_RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


def rapl_energy_uj() -> int | None:
    """The package energy counter in µJ (RAPL, Linux powercap), or None where the hardware or
    the permissions do not expose it (most VMs)."""
    try:
        return int(_RAPL.read_text())
    except (OSError, ValueError):
        return None
