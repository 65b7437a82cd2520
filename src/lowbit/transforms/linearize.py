"""Rewrite layers that are a Linear in disguise as ``nn.Linear``, so they get quantized.

GPT-2 and its relatives (``transformers.pytorch_utils.Conv1D``) store their projections as a
``[in, out]`` weight and compute ``x @ W + b``: a Linear with a transposed weight. Left alone,
every attention and MLP projection of GPT-2 would stay float without being listed anywhere::

    Conv1D(nf=out, nx=in): y = addmm(b, x, W)    ->    nn.Linear(in, out): y = x @ W'^T + b,  W' = W^T

The rewrite is exact (same products, same sums) and deterministic, so ``lowbit.load`` applies it
to the float skeleton too before loading an artifact.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["is_conv1d_linear", "linearize_"]


def is_conv1d_linear(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' GPT-2-style ``Conv1D`` (a Linear with ``W^T`` stored)."""
    cls = type(module)
    return (
        cls.__name__ == "Conv1D"
        and cls.__module__.startswith("transformers.")
        and isinstance(getattr(module, "weight", None), torch.Tensor)
        and module.weight.dim() == 2
    )


@torch.no_grad()
def _as_linear(module: nn.Module) -> nn.Linear:
    n_in, n_out = module.weight.shape
    linear = nn.Linear(n_in, n_out, bias=module.bias is not None, device=module.weight.device,
                       dtype=module.weight.dtype)  # fmt: skip
    linear.weight.copy_(module.weight.t())
    if module.bias is not None:
        linear.bias.copy_(module.bias)
    linear.weight.requires_grad_(module.weight.requires_grad)
    return linear


def linearize_(model: nn.Module, names: Iterable[str] | None = None) -> list[str]:
    """Replace every GPT-2-style ``Conv1D`` in ``model`` (or those at ``names``) by an equal
    ``nn.Linear``, in place.

    Returns the names replaced. A module registered under several names is converted once and
    stays shared.
    """
    only = None if names is None else set(names)
    done: dict[int, nn.Linear] = {}
    names = []
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if not name or not is_conv1d_linear(module) or (only is not None and name not in only):
            continue
        if id(module) not in done:
            done[id(module)] = _as_linear(module)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, done[id(module)])
        names.append(name)
    return names
