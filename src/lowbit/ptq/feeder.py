"""Calibration inputs for one layer at a time, block by block for transformer-like models.

A model whose quantized layers sit in an ``nn.ModuleList`` of blocks (transformer layers) is
fed block by block, as in GPTQ's reference code: the inputs of the first block are captured
once per batch, each block's outputs become the next block's inputs, and a layer's inputs are
taken by running only its own block. That costs one pass over the model in all, instead of one
partial pass per layer, and memory holds one block's inputs (hidden states of the calibration
set), never every activation.

Blocks are found from the module tree (the ``ModuleList`` holding most of the layers), and the
block-by-block chain is checked once against a normal forward pass: if the last block's output
differs (something runs between the blocks, or a block returns more than its hidden states), the
feeder falls back to running the whole model up to each layer (:func:`layer_inputs`), which
works for any model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from lowbit.ptq.capture import Batch, _Stop, layer_inputs, outputs_match

__all__ = ["Feeder"]

log = logging.getLogger(__name__)


def _find_blocks(
    model: nn.Module, layers: dict[str, nn.Module]
) -> tuple[str, nn.ModuleList] | None:
    best, count = None, 1
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 1:
            inside = sum(1 for n in layers if n.startswith(f"{name}."))
            if inside > count:
                best, count = (name, m), inside
    return best


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out


def _next_inputs(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args and isinstance(args[0], torch.Tensor):
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


class Feeder:
    """``feeder.inputs(names, batch_index)`` gives the first input of each named layer."""

    def __init__(self, model: nn.Module, layers: dict[str, nn.Module], batches: list[Batch]):
        self.model, self.layers, self.batches = model, layers, batches
        self.prefix, self.blocks, self.cache, self.current = None, None, None, -1
        found = _find_blocks(model, layers)
        if found is not None:
            self.prefix, self.blocks = found[0] + ".", found[1]
            if not self._chain_matches():
                log.info("feeding %s block by block does not reproduce the model; using "
                         "whole-model passes", found[0])  # fmt: skip
                self.blocks = None

    def block_of(self, name: str) -> int | None:
        if self.blocks is None or not name.startswith(self.prefix):
            return None
        return int(name[len(self.prefix) :].split(".")[0])

    def _block_inputs(self, batch: Batch, last: list | None = None) -> tuple[tuple, dict] | None:
        """The first block's ``(args, kwargs)`` for ``batch``; the pass stops there unless
        ``last`` is given, which then receives the last block's output (one full pass)."""
        got: list[tuple[tuple, dict]] = []

        def first(_m, args, kwargs):
            got.append((args, kwargs))
            if last is None:
                raise _Stop

        handles = [self.blocks[0].register_forward_pre_hook(first, with_kwargs=True)]
        if last is not None:
            hook = lambda _m, _a, out: last.append(_hidden(out))  # noqa: E731
            handles.append(self.blocks[-1].register_forward_hook(hook))
        try:
            layer_inputs(self.model, [], batch)  # layer_inputs ends the pass at _Stop
        finally:
            for h in handles:
                h.remove()
        return got[0] if got else None

    def _chain_matches(self) -> bool:
        """Does chaining the blocks by hand give the model's own last-block output?"""
        seen: list[torch.Tensor] = []
        start = self._block_inputs(self.batches[0], last=seen)
        if start is None or not seen:
            return False
        args, kwargs = start
        try:
            with torch.no_grad():
                for block in self.blocks:
                    out = _hidden(block(*args, **kwargs))
                    args, kwargs = _next_inputs(args, kwargs, out)
        except (TypeError, RuntimeError, ValueError, IndexError):
            return False  # not a chain (parallel heads...): whole-model passes work for any model
        ref = seen[0]
        return all(isinstance(t, torch.Tensor) for t in (out, ref)) and outputs_match([out], [ref])

    def _advance(self, block: int) -> None:
        """Bring the cached inputs to ``block`` (running the blocks in between as they are now)."""
        if self.cache is None or block < self.current:
            self.cache = [self._block_inputs(b) for b in self.batches]
            self.current = 0
        with torch.no_grad():
            while self.current < block:
                blk = self.blocks[self.current]
                self.cache = [
                    None if c is None else _next_inputs(*c, _hidden(blk(*c[0], **c[1])))
                    for c in self.cache
                ]
                self.current += 1

    def inputs(self, names: list[str], index: int) -> list[torch.Tensor | None]:
        """First input of each layer in ``names`` for batch ``index``."""
        mods = [self.layers[n] for n in names]
        blocks = {self.block_of(n) for n in names}
        if len(blocks) != 1 or None in blocks:
            return layer_inputs(self.model, mods, self.batches[index])
        self._advance(blocks.pop())
        cached = self.cache[index]
        if cached is None:
            return [None] * len(mods)
        return layer_inputs(self.blocks[self.current], mods, cached)
