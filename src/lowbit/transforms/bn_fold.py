"""Fold inference-mode BatchNorm into the convolution before it.

For ``y = BN(conv(x))`` with running statistics ``mu, var`` and affine ``gamma, beta``::

    W' = W * gamma / sqrt(var + eps)            (per output channel)
    b' = (b - mu) * gamma / sqrt(var + eps) + beta

so one convolution computes the pair, and the quantizer sees the weight that really runs.

Pairs are found on a ``torch.fx`` trace (a conv whose only user is a BatchNorm, BatchNorm subclasses
such as timm's ``BatchNormAct2d`` kept whole); where a model does not trace, each submodule is
traced on its own (and adjacent ``(conv, bn)`` children of an ``nn.Sequential`` are paired), so an
untraceable block only keeps its own BatchNorms.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = [
    "FoldedBatchNorm",
    "FoldedBatchNormAct",
    "folded_replacement",
    "find_conv_bn_pairs",
    "fold_batchnorm_",
    "fold_pair_",
    "apply_folds_",
]

log = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


class FoldedBatchNorm(nn.Identity):
    """Marks where a BatchNorm was folded into the preceding convolution."""


class FoldedBatchNormAct(nn.Module):
    """What is left of a BatchNorm + activation module (timm's ``BatchNormAct2d``) once its
    normalization is folded into the convolution: ``act(drop(x))``."""

    def __init__(self, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.drop, self.act = drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def folded_replacement(bn: nn.Module) -> nn.Module | None:
    """The module that replaces ``bn`` once folded, or None when lowbit does not know what else
    its forward does (a BatchNorm subclass other than timm's norm + drop + act)."""
    if type(bn) in _BN:
        return FoldedBatchNorm()
    names = {n for n, _ in bn.named_children()}
    if names == {"drop", "act"} and type(bn).__module__.startswith("timm."):
        return FoldedBatchNormAct(bn.drop, bn.act)
    return None


class _LeafTracer(torch.fx.Tracer):
    """fx tracer that keeps BatchNorm subclasses (timm's ``BatchNormAct2d``) as single calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*_BN, *_CONV)) or super().is_leaf_module(m, qualname)


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _pairs_from_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any trace failure means "use the fallback"
        log.debug("fx trace of %s failed (%s)", type(model).__name__, exc)
        return None
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(_get(model, node.target), _BN):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(_get(model, src.target), _CONV)
            and len(src.users) == 1
            and calls[src.target] == 1
            and calls[node.target] == 1
        ):
            pairs.append((src.target, node.target))
    return pairs


def _sequential_pairs(seq: nn.Sequential) -> list[tuple[str, str]]:
    children = list(seq.named_children())
    return [
        (a_name, b_name)
        for (a_name, a), (b_name, b) in zip(children, children[1:], strict=False)
        if isinstance(a, _CONV) and isinstance(b, _BN)
    ]


def _pairs_by_submodule(module: nn.Module, prefix: str = "") -> list[tuple[str, str]]:
    """Pairs from an fx trace of ``module``; where it does not trace, from adjacent children of an
    ``nn.Sequential`` and from the traces of its children, recursively (so one untraceable block
    costs only the folds inside that block, not the model's)."""
    pairs = _pairs_from_fx(module)
    if pairs is None:
        if prefix:
            log.info("BatchNorm folding: %s does not trace; looking inside its submodules",
                     prefix.rstrip("."))  # fmt: skip
        pairs = _sequential_pairs(module) if isinstance(module, nn.Sequential) else []
        for name, child in module.named_children():
            if any(True for _ in child.children()):
                pairs += [(f"{name}.{c}", f"{name}.{b}") for c, b in
                          _pairs_by_submodule(child, f"{prefix}{name}.")]  # fmt: skip
    return pairs


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` pairs where the BatchNorm reads only that convolution's output."""
    pairs = _pairs_by_submodule(model)
    return [
        (c, b)
        for c, b in pairs
        if folded_replacement(_get(model, b)) is not None
        and _get(model, b).track_running_stats
        and _get(model, b).running_var is not None
        and _get(model, b).num_features == _get(model, c).out_channels
    ]


@torch.no_grad()
def fold_pair_(conv: nn.Conv1d | nn.Conv2d, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> bool:
    """Fold ``bn`` into ``conv`` in place; returns True when ``conv`` gained a bias."""
    inv_std = torch.rsqrt(bn.running_var.float() + bn.eps)
    gamma = bn.weight.float() if bn.weight is not None else torch.ones_like(inv_std)
    beta = bn.bias.float() if bn.bias is not None else torch.zeros_like(inv_std)
    factor = gamma * inv_std
    shape = [-1] + [1] * (conv.weight.dim() - 1)
    conv.weight.mul_(factor.reshape(shape).to(conv.weight.dtype))
    added = conv.bias is None
    bias = torch.zeros_like(inv_std) if added else conv.bias.float()
    new_bias = (bias - bn.running_mean.float()) * factor + beta
    conv.bias = nn.Parameter(
        new_bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad
    )
    return added


def fold_batchnorm_(model: nn.Module) -> list[dict[str, object]]:
    """Fold every foldable (conv, bn) pair of ``model`` in place; returns what was folded."""
    folded = []
    for conv_name, bn_name in find_conv_bn_pairs(model):
        bn = _get(model, bn_name)
        added = fold_pair_(_get(model, conv_name), bn)
        _set(model, bn_name, folded_replacement(bn))
        folded.append({"conv": conv_name, "bn": bn_name, "bias_added": added})
        log.debug("folded %s into %s", bn_name, conv_name)
    return folded


def apply_folds_(skeleton: nn.Module, folded: list[dict[str, object]]) -> None:
    """Give a float skeleton the structure a folded model has (values come from the state dict)."""
    for item in folded:
        conv = _get(skeleton, str(item["conv"]))
        if item["bias_added"] and conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels), requires_grad=False)
        bn = _get(skeleton, str(item["bn"]))
        replacement = folded_replacement(bn)
        if replacement is None:
            raise ValueError(f"{item['bn']} is a {type(bn).__name__}, not a foldable BatchNorm")
        _set(skeleton, str(item["bn"]), replacement)
