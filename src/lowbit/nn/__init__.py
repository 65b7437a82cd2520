"""Quantized layers and the table that maps float layer types to them."""

from __future__ import annotations

from torch import nn

from lowbit.config import QuantMode, QuantScheme
from lowbit.nn.base import QuantModule
from lowbit.nn.cast import CastLayer
from lowbit.nn.qconv import QuantConv
from lowbit.nn.qembedding import QuantEmbedding, embedding_unsupported_reason
from lowbit.nn.qlinear import QuantLinear

__all__ = [
    "QuantModule",
    "QuantLinear",
    "QuantConv",
    "CastLayer",
    "LAYER_TYPES",
    "layer_class",
    "is_quantizable",
    "unsupported_reason",
]

# Quantized class by type name, as written in a saved artifact's layer specs.
LAYER_TYPES: dict[str, type[QuantModule]] = {
    "QuantLinear": QuantLinear,
    "QuantConv": QuantConv,
    "CastLayer": CastLayer,
    "QuantEmbedding": QuantEmbedding,
}


# subclasses whose forward override computes exactly what the base class does
_SAME_FORWARD = {"timm.layers.linear.Linear"}  # casts for TorchScript, then F.linear


def _forward_override(module: nn.Module) -> str | None:
    """Why a subclass's own ``forward`` rules out swapping it (None for the plain layer types).

    A subclass that changes the computation (timm's ``Conv2dSame`` pads at run time,
    ``StdConv2d`` standardizes its weight) would silently lose that in a quantized layer.
    """
    cls = type(module)
    base = next(b for b in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding) if isinstance(module, b))
    if cls.forward is base.forward or f"{cls.__module__}.{cls.__qualname__}" in _SAME_FORWARD:
        return None
    return (
        f"{cls.__qualname__} overrides {base.__name__}.forward (its computation is not a plain "
        f"{base.__name__.lower()}); left in float"
    )


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot be quantized (None when it can)."""
    if is_quantizable(module) and not isinstance(module, QuantModule):
        override = _forward_override(module)
        if override is not None:
            return override
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Embedding):
        return embedding_unsupported_reason(module)
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} (only zero padding is supported)"
        if isinstance(module.padding, str):
            return f"padding={module.padding!r} (give integer padding)"
        return None
    if isinstance(module, nn.Conv3d | nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d
                  | nn.RNNBase | nn.Bilinear):  # fmt: skip
        return f"{type(module).__name__} has no quantized implementation yet"
    if isinstance(module, nn.MultiheadAttention):
        return "nn.MultiheadAttention's fused in-projection is a bare parameter; left in float"
    return None


def is_quantizable(module: nn.Module) -> bool:
    """Layers lowbit replaces: Linear, Conv1d, Conv2d and Embedding (subclasses included)."""
    return isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Embedding)


def layer_class(module: nn.Module, scheme: QuantScheme) -> type[QuantModule]:
    """The quantized class for a float layer under ``scheme``."""
    if isinstance(module, nn.Embedding):
        return QuantEmbedding
    if scheme.mode is QuantMode.CAST:
        return CastLayer
    return QuantLinear if isinstance(module, nn.Linear) else QuantConv
