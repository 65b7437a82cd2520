"""Layer-by-layer weight rounding (RTN, GPTQ or AdaRound) and bias correction on calibration data.

Layers are taken in the order the model runs them. For each layer (or each set of layers that
read the same tensor, such as attention's q/k/v projections), the calibration batches are run
through the model *as quantized so far* and stopped at that layer (:mod:`lowbit.ptq.capture`),
so the layer is fitted to the inputs it will really see, and memory holds one layer's inputs,
never every activation of the model. After a layer is solved, its float weight is replaced by
the dequantized codes and its input is fake-quantized (static or dynamic activations), so every
later layer is fitted with the earlier quantization errors in the loop.

What is gathered per layer, streaming over the batches:

* GPTQ: ``H = 2 Σ XᵀX`` of the quantized-model inputs (im2col rows for convolutions);
* AdaRound and bias correction: the same inputs in the float model (a copy kept for that);
* up to ``max_rows`` input rows, for AdaRound and for the per-layer error record.

Per-layer record: ``error_before``/``error_after`` = ``‖y - ỹ‖² / ‖y‖²`` on those rows, with
``y`` the float layer on float inputs (quantized-model inputs when no float copy is kept) and
``ỹ`` the layer with round-to-nearest weights (before) or the chosen weights and bias (after),
both on the quantized inputs; and the seconds spent.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.algorithms.bias_correction import bias_correction
from lowbit.ptq.capture import Batch, stages
from lowbit.ptq.feeder import Feeder
from lowbit.ptq.layer_ops import channel_mean, input_quantizer, layer_op, matmul_rows, supports_rows
from lowbit.ptq.options import PTQOptions
from lowbit.ptq.rounding import adaround_weight, gptq_weight
from lowbit.weight_quant import QuantizedWeight, dequantize_weight, quantize_weight

__all__ = ["round_layers"]

log = logging.getLogger(__name__)


class _Inputs:
    """What one layer's algorithms need from its calibration inputs, accumulated per batch."""

    def __init__(self, module: nn.Module, quant_in, want_h: bool, max_rows: int):
        self.module, self.quant_in, self.max_rows = module, quant_in, max_rows
        self.h = None if not want_h else 0
        self.sum_f = self.sum_q = None
        self.count = 0
        self.rows_f: list[torch.Tensor] = []
        self.rows_q: list[torch.Tensor] = []
        self.kept = 0

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """Linear inputs as rows of features; conv inputs as samples."""
        return x.reshape(-1, x.shape[-1]) if isinstance(self.module, nn.Linear) else x

    def update(self, x: torch.Tensor, x_float: torch.Tensor | None) -> None:
        xq = self._split(self.quant_in(x.float()))
        xf = None if x_float is None else self._split(x_float.float())
        if self.h is not None:
            rows = matmul_rows(self.module, xq)
            self.h = self.h + 2 * (rows.T @ rows).double()  # fp32 GEMM, fp64 running sum
        if xf is not None:
            self.sum_f = xf.sum(0) if self.sum_f is None else self.sum_f + xf.sum(0)
            self.sum_q = xq.sum(0) if self.sum_q is None else self.sum_q + xq.sum(0)
            self.count += xq.shape[0]
        take = min(self.max_rows - self.kept, xq.shape[0])
        if take > 0:
            self.rows_q.append(xq[:take])
            self.rows_f.append((xf if xf is not None else xq)[:take])
            self.kept += take


def _solve(name: str, module: nn.Module, scheme, inputs: _Inputs, rounding: str,
           correct: bool, opts: PTQOptions) -> tuple[QuantizedWeight, dict[str, Any]]:  # fmt: skip
    """Round one layer's weight, correct its bias, and return the codes plus a record."""
    start = time.perf_counter()
    spec, w = scheme.weight, module.weight.detach().float()
    op = layer_op(module)
    rtn = quantize_weight(w, spec, f"{name}.weight")
    used = rounding
    xf, xq = (torch.cat(inputs.rows_f), torch.cat(inputs.rows_q)) if inputs.kept else (None, None)
    if rounding == "gptq" and supports_rows(module):
        qw = gptq_weight(w, inputs.h, spec, block_size=opts.gptq_block_size,
                         percdamp=opts.gptq_percdamp, act_order=opts.gptq_act_order)  # fmt: skip
    elif rounding == "adaround" and inputs.kept:
        qw = adaround_weight(w, spec, op, xf, xq, iters=opts.adaround_iters, lr=opts.adaround_lr,
                             lam=opts.adaround_lambda, batch_size=opts.adaround_batch)  # fmt: skip
    else:
        qw, used = rtn, "rtn"
        if rounding != "rtn":
            log.info("%s: %s does not apply (grouped conv or no input); rounded to nearest",
                     name, rounding)  # fmt: skip
    wq = dequantize_weight(qw, spec).reshape(w.shape)
    bias = None if module.bias is None else module.bias.detach().float()
    new_bias = bias
    if correct and inputs.count:
        mean_f = (inputs.sum_f / inputs.count).unsqueeze(0)
        mean_q = (inputs.sum_q / inputs.count).unsqueeze(0)
        zero = torch.zeros(w.shape[0]) if bias is None else bias
        new_bias = bias_correction(
            zero, channel_mean(module, op(mean_f, w)), channel_mean(module, op(mean_q, wq))
        )
    record = {"rounding": used, "bias_correction": new_bias is not bias}
    if inputs.kept:
        y = _with_bias(module, op(xf, w), bias)  # the float layer on float inputs
        w_rtn = dequantize_weight(rtn, spec).reshape(w.shape)
        record["error_before"] = _rel_error(y, _with_bias(module, op(xq, w_rtn), bias))
        record["error_after"] = _rel_error(y, _with_bias(module, op(xq, wq), new_bias))
    record["seconds"] = round(time.perf_counter() - start, 4)
    _install(module, wq, new_bias)
    return qw, record


def _rel_error(y: torch.Tensor, yq: torch.Tensor) -> float:
    return float((y - yq).pow(2).sum() / y.pow(2).sum().clamp(min=1e-30))


def _with_bias(module: nn.Module, y: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if b is None:
        return y
    return y + (b if isinstance(module, nn.Linear) else b.reshape(1, -1, *[1] * (y.dim() - 2)))


def _install(module: nn.Module, wq: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Put the chosen weights (and bias) into the working model."""
    dtype = module.weight.dtype
    # new Parameters: a weight tied to another module (an embedding) must keep its float values
    module.weight = nn.Parameter(wq.to(dtype), requires_grad=False)
    if bias is not None:
        module.bias = nn.Parameter(bias.to(dtype).clone(), requires_grad=False)


def round_layers(
    model: nn.Module,
    layers: dict[str, Any],
    qparams: dict[str, tuple[torch.Tensor, torch.Tensor]],
    batches: list[Batch],
    algorithms: tuple[str, ...],
    options: PTQOptions,
    progress: bool | None = None,
) -> tuple[dict[str, QuantizedWeight], dict[str, dict[str, Any]]]:
    """Solve every layer of ``layers`` in execution order; returns their codes and records.

    ``layers`` maps names to ``(module, scheme)`` for Linear/Conv layers with integer weights,
    one name per module, formats already checked against the algorithm (``quantize`` does
    both); ``qparams`` holds the static input qparams of the layers that have them. ``model``
    is modified in place: solved layers hold their dequantized weights (and corrected biases).
    """
    rounding = next((a for a in algorithms if a in ("gptq", "adaround")), "rtn")
    correct = "bias_correction" in algorithms
    reference = copy.deepcopy(model) if rounding == "adaround" or correct else None
    modules = {n: m for n, (m, _s) in layers.items()}
    order = stages(model, modules, batches[0])
    feeder = Feeder(model, modules, batches)
    ref_feeder = None
    if reference is not None:
        ref_feeder = Feeder(reference, {n: reference.get_submodule(n) for n in modules}, batches)
    codes, records, handles = {}, {}, []
    try:
        bar = tqdm(order, desc=f"PTQ ({'+'.join(algorithms)})", unit="stage", leave=False,
                   disable=(not progress) if progress is not None else None)  # fmt: skip
        for stage in bar:
            gathered = {
                n: _Inputs(
                    layers[n][0],
                    input_quantizer(layers[n][1], qparams.get(n)),
                    rounding == "gptq" and supports_rows(layers[n][0]),
                    options.max_rows,
                )  # fmt: skip
                for n in stage
            }
            for i in range(len(batches)):
                xs = feeder.inputs(stage, i)
                xfs = [None] * len(xs) if ref_feeder is None else ref_feeder.inputs(stage, i)
                for n, x, xf in zip(stage, xs, xfs, strict=True):
                    if x is not None:
                        gathered[n].update(x, xf)
            for n in stage:
                module, scheme = layers[n]
                codes[n], records[n] = _solve(n, module, scheme, gathered[n], rounding, correct,
                                              options)  # fmt: skip
                quant_in = gathered[n].quant_in
                handles.append(
                    module.register_forward_pre_hook(lambda _m, a, f=quant_in: (f(a[0]), *a[1:]))
                )
    finally:
        for h in handles:
            h.remove()
    return codes, records
