"""``lowbit.compile`` on TorchInductor: the quantized model captured whole, no Python between ops.

``torch.compile`` traces lowbit's layers (their forward is plain tensor code around
``torch._int_mm``, oneDNN's int8 conv and the weight-pack kernels), and Inductor fuses the
element-wise work around them (activation quantization, the dequantize/bias epilogue, GELU,
LayerNorm, softmax) into C++ loops. ``freezing`` turns weights into constants, so the float layers
left (attention's matmuls, a float head) are prepacked for oneDNN too. Each input shape compiles
once (static shapes; torch recompiles up to its ``recompile_limit``, then runs eager). Inductor caches compiled
graphs on disk itself (``torch._inductor`` FX graph cache), so a second process compiles faster.

>>> run = inductor_runner(qmodel)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["inductor_missing", "inductor_runner", "graph_breaks"]

INDUCTOR_OPTIONS = {"freezing": True}


def inductor_missing() -> str | None:
    """Why Inductor cannot compile here (it needs a C++ compiler), or None."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001 - any failure to find a compiler means "cannot"
        return f"inductor needs a C++ compiler ({exc})"
    if importlib.util.find_spec("sympy") is None:
        return "inductor needs sympy"
    return None


def inductor_runner(model: nn.Module) -> Callable:
    """``model`` under ``torch.compile`` with Inductor: frozen weights, static shapes.

    Static shapes: each new input shape compiles once (cached), which gives the best kernels;
    and Inductor's shape-generic lowering of oneDNN's int8 conv mispredicts its output layout
    (a stride assertion at run time, torch 2.13), which static shapes avoid."""
    return torch.compile(model, backend="inductor", dynamic=False, options=INDUCTOR_OPTIONS)


def graph_breaks(model: nn.Module, args: tuple, kwargs: dict) -> list[str]:
    """Why dynamo splits ``model``'s graph on these inputs (empty: one graph, no Python between
    ops). Costs one trace, no compilation."""
    import torch._dynamo

    explained = torch._dynamo.explain(model)(*args, **kwargs)
    torch._dynamo.reset()
    return [str(b.reason).splitlines()[0] for b in explained.break_reasons]
