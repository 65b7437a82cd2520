"""A model's calling convention, flattened for runtimes that take tensors in and give tensors out.

ONNX Runtime and OpenVINO run graphs with named tensor inputs and a flat list of tensor outputs.
A PyTorch model may take positional tensors or keyword tensors (``model(**tokenizer_output)``)
and return a tensor, a tuple or a ``ModelOutput``. :class:`Signature` records both sides from one
example call, so a compiled model takes the same inputs and returns the same structure.

>>> sig = Signature.of(nn.Linear(4, 2), torch.randn(3, 4))
>>> sig.names, sig.keywords, sig.n_outputs
(('input',), False, 1)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from lowbit.errors import ConfigError

__all__ = ["Signature", "FlatModule", "as_inputs"]


def as_inputs(example_inputs: Any) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...], bool]:
    """``(names, tensors, keywords)`` of one example: a tensor, a sequence of positional tensors,
    or a mapping of keyword tensors (a tokenizer's output)."""
    if isinstance(example_inputs, torch.Tensor):
        return ("input",), (example_inputs,), False
    if isinstance(example_inputs, Mapping):
        names, values, keywords = tuple(str(k) for k in example_inputs), example_inputs.values(), True
    elif isinstance(example_inputs, Sequence) and not isinstance(example_inputs, str):
        values, keywords = example_inputs, False
        names = tuple(f"input_{i}" for i in range(len(values))) if len(values) > 1 else ("input",)
    else:
        raise ConfigError(
            "example_inputs must be a tensor, a tuple of the forward's positional tensors or a dict "
            f"of keyword tensors, got {type(example_inputs).__name__}"
        )
    tensors = tuple(values)
    bad = [n for n, t in zip(names, tensors, strict=True) if not isinstance(t, torch.Tensor)]
    if bad or not tensors:
        raise ConfigError(f"example_inputs must hold tensors only; not tensors: {bad or 'empty'}")
    return names, tensors, keywords


@dataclass(frozen=True)
class Signature:
    """Input names and kinds, and the output structure, of one model."""

    names: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    ranks: tuple[int, ...]
    keywords: bool
    out_spec: pytree.TreeSpec
    n_outputs: int

    @classmethod
    def of(cls, model: nn.Module, example_inputs: Any) -> Signature:
        """Run ``model`` once on ``example_inputs`` and record its convention."""
        names, tensors, keywords = as_inputs(example_inputs)
        with torch.inference_mode():
            out = model(**dict(zip(names, tensors, strict=True))) if keywords else model(*tensors)
        leaves, spec = pytree.tree_flatten(out)
        bad = [type(x).__name__ for x in leaves if not isinstance(x, torch.Tensor)]
        if bad or not leaves:
            raise ConfigError(
                "lowbit.compile takes models whose outputs are tensors (or tuples, dicts, "
                f"ModelOutputs of tensors); this one returned {bad or 'nothing'}"
            )
        return cls(names, tuple(t.dtype for t in tensors), tuple(t.dim() for t in tensors),
                   keywords, spec, len(leaves))  # fmt: skip

    def flatten(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """The call's input tensors in :attr:`names` order, checked against the example."""
        if kwargs and not self.keywords:
            raise TypeError(f"this compiled model takes positional inputs {self.names}")
        tensors = list(args) + [kwargs[n] for n in self.names[len(args) :] if n in kwargs]
        if len(tensors) != len(self.names):
            raise TypeError(
                f"this compiled model takes inputs {self.names}, got {len(tensors)} tensors"
            )
        for name, t, dtype, rank in zip(self.names, tensors, self.dtypes, self.ranks, strict=True):
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.dim() != rank:
                got = f"{t.dtype}, {t.dim()}-D" if isinstance(t, torch.Tensor) else type(t).__name__
                raise TypeError(
                    f"input {name!r}: compiled for {dtype}, {rank}-D tensors, got {got}"
                )
        return tensors

    def unflatten(self, outputs: Sequence[torch.Tensor]) -> Any:
        """The model's own output structure from a flat list of tensors."""
        return pytree.tree_unflatten(list(outputs), self.out_spec)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX dynamic axes: the batch axis of every input and output, and the sequence axis
        of integer inputs of rank >= 2 (token ids and their masks share one length)."""
        axes: dict[str, dict[int, str]] = {}
        for name, dtype, rank in zip(self.names, self.dtypes, self.ranks, strict=True):
            axes[name] = {0: "batch"} if rank else {}
            if rank >= 2 and not dtype.is_floating_point:
                axes[name][1] = "sequence"
        for name in self.output_names:
            axes[name] = {0: "batch"}
        return axes

    @property
    def output_names(self) -> list[str]:
        return [f"output_{i}" for i in range(self.n_outputs)]

    def digest(self) -> str:
        """A short hash of the convention, part of a compiled model's cache key."""
        text = repr((self.names, self.dtypes, self.ranks, self.keywords, str(self.out_spec)))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class FlatModule(nn.Module):
    """``model`` as ``(*tensors) -> tuple of tensors``, the form ONNX exporters take."""

    def __init__(self, model: nn.Module, signature: Signature):
        super().__init__()
        self.model, self.signature = model, signature

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sig = self.signature
        if sig.keywords:
            out = self.model(**dict(zip(sig.names, tensors, strict=True)))
        else:
            out = self.model(*tensors)
        return tuple(pytree.tree_leaves(out))
