"""Rescaling the float model before quantization: CLE, SmoothQuant and AWQ.

All three multiply a layer's input channels by ``s`` and divide the same channels of what
produces that input by ``s``, which leaves the float model's outputs unchanged. Which producer
feeds which layer is found from the data, not from a traced graph (many models do not trace):

* the candidates come from one calibration forward (execution order and tensor identity);
* each candidate is then *verified*: random positive scales are applied and the model's outputs
  must stay the same (relative error < 1e-4), else the candidate is dropped. This catches
  residual connections, branches, clipping activations (ReLU6), un-folded BatchNorm...

CLE pairs consecutive Linear/Conv layers with any positively homogeneous operations between them
(ReLU, max-pooling, flatten). SmoothQuant and AWQ fold their scales into the LayerNorm or Linear
whose output is exactly the layer's input; when no such fold is exact (post-LN transformers
such as BERT/MiniLM, whose LayerNorm output also feeds the residual), the layers that read that
one input (query, key and value) share one scale vector, searched for them together, which each
applies to its input at run time (``QuantLinear.input_smooth``: one multiply per input element,
recorded as ``folded_into: None``); runtimes then quantize that input once for all three.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lowbit.algorithms.awq import awq_search
from lowbit.algorithms.cle import equalization_scales
from lowbit.algorithms.smoothquant import smoothquant_scales, smoothquant_search
from lowbit.nn.base import INPUT_SCALE_ATTR, fake_quantize_dynamic
from lowbit.ptq.capture import Batch, execution_order, outputs_match, run
from lowbit.ptq.feeder import Feeder
from lowbit.ptq.options import PTQOptions
from lowbit.weight_quant import dequantize_weight, quantize_weight

__all__ = ["equalize", "smooth", "INPUT_SCALE_ATTR"]

log = logging.getLogger(__name__)


# -- applying scales --------------------------------------------------------------------------
def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups > 1 and m.weight.shape[1] == 1


def _divide_outputs(m: nn.Module, s: torch.Tensor) -> None:
    """Output channel ``i`` of ``m`` divided by ``s_i`` (weights' dim 0 and the bias)."""
    with torch.no_grad():
        m.weight.div_(s.reshape(-1, *[1] * (m.weight.dim() - 1)))
        if getattr(m, "bias", None) is not None:
            m.bias.div_(s)


def _multiply_inputs(m: nn.Module, s: torch.Tensor, repeat: int = 1) -> None:
    """Input channel ``j`` of ``m`` multiplied by ``s_j`` (``repeat``: flattened conv maps)."""
    s = s.repeat_interleave(repeat)
    with torch.no_grad():
        if _is_depthwise(m):
            m.weight.mul_(s.reshape(-1, *[1] * (m.weight.dim() - 1)))
        else:
            m.weight.mul_(s.reshape(1, -1, *[1] * (m.weight.dim() - 2)))


def _output_ranges(m: nn.Module) -> torch.Tensor:
    """``max|W|`` per output channel (CLE's ``r1``)."""
    return m.weight.detach().abs().flatten(1).amax(dim=1)


def _input_ranges(m: nn.Module, repeat: int = 1) -> torch.Tensor:
    w = m.weight.detach().abs()
    if _is_depthwise(m):
        return w.flatten(1).amax(dim=1)
    return w.transpose(0, 1).reshape(w.shape[1] // repeat, -1).amax(dim=1)


def _verified(model: nn.Module, batch: Batch, modules: list[nn.Module], apply: Callable) -> bool:
    """Does ``apply(s)`` with random positive ``s`` leave the model's outputs unchanged?"""
    saved = [[p.detach().clone() for p in m.parameters()] for m in modules]
    before = run(model, batch)
    apply(
        torch.empty(_channels(modules[0])).uniform_(
            0.5, 2.0, generator=torch.Generator().manual_seed(0)
        )
    )
    after = run(model, batch)
    with torch.no_grad():
        for m, params in zip(modules, saved, strict=True):
            for p, old in zip(m.parameters(), params, strict=True):
                p.copy_(old)
    return outputs_match(after, before)


def _channels(producer: nn.Module) -> int:
    return producer.weight.shape[0]


# -- cross-layer equalization -----------------------------------------------------------------
def _cle_candidates(model, layers, batch) -> list[tuple[str, str, int]]:
    order = [n for n, _key in execution_order(model, list(layers), batch)]
    pairs = []
    for a, b in zip(order, order[1:], strict=False):
        pa, pb = layers[a], layers[b]
        c = pa.weight.shape[0]
        if isinstance(pa, nn.Conv1d | nn.Conv2d) and pa.groups > 1 and not _is_depthwise(pa):
            continue
        width = pb.weight.shape[0] if _is_depthwise(pb) else pb.weight.shape[1]
        if _is_depthwise(pb) or isinstance(pb, nn.Conv1d | nn.Conv2d):
            if pb.groups > 1 and not _is_depthwise(pb):
                continue
            repeat = 1 if width == c else 0
        else:  # a Linear after a flattened conv map reads c * positions features
            repeat = width // c if width % c == 0 else 0
        if repeat:
            pairs.append((a, b, repeat))
    return pairs


def equalize(
    model: nn.Module, layers: dict[str, nn.Module], batch: Batch, options: PTQOptions
) -> list[dict[str, Any]]:
    """Cross-layer equalization of every verified consecutive pair; returns one record a pair."""
    pairs = []
    for a, b, repeat in _cle_candidates(model, layers, batch):
        pa, pb = layers[a], layers[b]

        def apply(s, pa=pa, pb=pb, repeat=repeat):
            _divide_outputs(pa, s)
            _multiply_inputs(pb, s, repeat)

        if _verified(model, batch, [pa, pb], apply):
            pairs.append((a, b, repeat, apply))
        else:
            log.info("CLE: %s -> %s is not a scale-equivariant chain; left alone", a, b)

    def spread(a: str, b: str, repeat: int) -> float:
        return _spread(_output_ranges(layers[a]), _input_ranges(layers[b], repeat))

    records = [{"algorithm": "cle", "producer": a, "consumer": b,
                "range_ratio_before": spread(a, b, repeat)} for a, b, repeat, _ in pairs]  # fmt: skip
    for _ in range(options.cle_sweeps):
        for a, b, repeat, apply in pairs:
            apply(equalization_scales(_output_ranges(layers[a]), _input_ranges(layers[b], repeat)))
    for rec, (a, b, repeat, _apply) in zip(records, pairs, strict=True):
        rec["range_ratio_after"] = spread(a, b, repeat)
    return records


def _spread(r1: torch.Tensor, r2: torch.Tensor) -> float:
    """Mean over channels of ``r1_i / max(r1)`` times ``r2_i / max(r2)``: how much of each
    layer's range a channel uses (1.0 = every channel uses the full range)."""
    return round(float((r1 / r1.max().clamp(min=1e-12) * r2 / r2.max().clamp(min=1e-12)).mean()), 4)


# -- SmoothQuant and AWQ ----------------------------------------------------------------------
def _is_norm(m: nn.Module) -> bool:
    """LayerNorm, or an RMSNorm-style module with a per-channel ``weight`` (LLaMA, T5...)."""
    w = getattr(m, "weight", None)
    named_norm = isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")
    return named_norm and isinstance(w, torch.Tensor) and w.dim() == 1


def _fold_groups(model, layers, batch) -> tuple[dict[str, list[str]], list[list[str]]]:
    """``({producer: [consumers]}, [[unfused consumers sharing one input]])`` from tensor
    identity, then verified. A producer whose output also feeds something else (a post-norm
    transformer's LayerNorm feeds the residual too) cannot absorb the scale, but its consumers
    still read one tensor: they share one scale, so runtimes quantize that input once."""
    # A freed tensor's memory is reused, so an address names the *latest* output written there:
    # producers overwrite, and each consumer resolves its producer at the moment it reads.
    out_keys: dict[tuple, str] = {}
    source: dict[str, str | None] = {}

    alive: list[torch.Tensor] = []

    def on_output(_m, _args, out, name):  # hooks must return None (else they replace data)
        if isinstance(out, torch.Tensor):
            alive.append(out)  # kept until the pass ends: its address cannot be reused
            out_keys[_key(out)] = name

    def on_input(_m, args, name):
        if name not in source and args and isinstance(args[0], torch.Tensor):
            source[name] = out_keys.get(_key(args[0]))

    handles = [
        m.register_forward_hook(lambda m_, a, o, n=n: on_output(m_, a, o, n))
        for n, m in model.named_modules()
        if _is_norm(m) or isinstance(m, nn.Linear)
    ]
    handles += [
        m.register_forward_pre_hook(lambda m_, a, n=n: on_input(m_, a, n))
        for n, m in layers.items()
    ]
    try:
        run(model, batch)
    finally:
        for h in handles:
            h.remove()
    groups: dict[str, list[str]] = {}
    for name in layers:
        producer = source.get(name)
        if producer is not None and producer != name:
            groups.setdefault(producer, []).append(name)
    folds, unfused = {}, [[n] for n in layers if not any(n in g for g in groups.values())]
    for producer, consumers in groups.items():
        mods = [model.get_submodule(producer)] + [layers[c] for c in consumers]
        if _verified(model, batch, mods, lambda s, p=producer, c=consumers: _fold(model, p, c, s)):
            folds[producer] = consumers
        else:
            unfused.append(consumers)
    return folds, unfused


def _key(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), tuple(t.shape))


def _fold(model: nn.Module, producer: str, consumers: list[str], s: torch.Tensor) -> None:
    _divide_outputs(model.get_submodule(producer), s)
    for c in consumers:
        _multiply_inputs(model.get_submodule(c), s)


def _unfused(m: nn.Module, s: torch.Tensor) -> None:
    """Scale ``m``'s input columns by ``s`` and its input by ``1/s`` with a pre-hook."""
    m.weight = nn.Parameter(m.weight.detach().clone())  # untie: a shared table must not change
    _multiply_inputs(m, s)
    old = getattr(m, INPUT_SCALE_ATTR, None)
    if old is None:
        m.register_forward_pre_hook(lambda mod, a: (a[0] * getattr(mod, INPUT_SCALE_ATTR), *a[1:]))
    setattr(m, INPUT_SCALE_ATTR, (1.0 / s) if old is None else old / s)


def _units(model, layers, batch) -> list[tuple[str | None, list[str]]]:
    folds, unfused = _fold_groups(model, layers, batch)
    units: list[tuple[str | None, list[str]]] = list(folds.items())
    return units + [(None, group) for group in unfused]


def _act_absmax(model, layers, batches) -> dict[str, torch.Tensor]:
    stats: dict[str, torch.Tensor] = {}

    def hook(m, a, n):
        x = a[0].detach().abs().reshape(-1, a[0].shape[-1]).amax(dim=0).float()
        stats[n] = x if n not in stats else torch.maximum(stats[n], x)

    handles = [
        m.register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n, m in layers.items()
    ]
    try:
        for batch in batches:
            run(model, batch)
    finally:
        for h in handles:
            h.remove()
    return stats


def smooth(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    schemes: dict[str, Any],
    batches: list[Batch],
    method: str,
    options: PTQOptions,
) -> list[dict[str, Any]]:
    """SmoothQuant (``method="smoothquant"``) or AWQ (``"awq"``) scales for every Linear in
    ``layers``; folded where exact, else kept per layer. Returns one record per scaled unit."""
    units = _units(model, layers, batches[0])
    records = []
    searched = method == "awq" or options.smoothquant_alpha is None
    feeder = Feeder(model, layers, batches) if searched else None  # only searches read inputs
    if method == "smoothquant":
        absmax = _act_absmax(model, layers, batches)
    for producer, consumers in units:
        consumers = [c for c in consumers if method == "awq" or c in absmax]
        if not consumers:
            continue
        mods = [layers[c] for c in consumers]
        rec: dict[str, Any] = {"algorithm": method, "layers": consumers, "folded_into": producer}
        if method == "smoothquant":
            act = torch.stack([absmax[c] for c in consumers]).amax(dim=0)
            wmax = torch.stack([m.weight.detach().abs().amax(dim=0) for m in mods]).amax(dim=0)
            if options.smoothquant_alpha is not None:
                s = smoothquant_scales(act, wmax, options.smoothquant_alpha)
                rec["alpha"] = options.smoothquant_alpha
            else:
                s, rec = _smoothquant_unit(feeder, consumers[0], mods,
                                           [schemes[c] for c in consumers], act, options, rec)  # fmt: skip
        else:
            s, rec = _awq_unit(
                feeder, consumers[0], mods, [schemes[c] for c in consumers], options, rec
            )
        if rec.get("alpha", 0.0) is None:
            records.append(rec)  # no input, or no α beat the unscaled layer on its inputs
            continue
        if producer is not None:
            _fold(model, producer, consumers, s)
        else:
            for m in mods:  # one input, one scale: the same smoothing on each reader
                _unfused(m, s)
        records.append(rec)
    return records


def _rows(feeder: Feeder, name: str, limit: int) -> torch.Tensor | None:
    """Up to ``limit`` input rows of layer ``name`` (first batches first)."""
    rows, kept = [], 0
    for i in range(len(feeder.batches)):
        if kept >= limit:
            break
        x = feeder.inputs([name], i)[0]
        if x is not None:
            rows.append(x.reshape(-1, x.shape[-1])[: limit - kept].float())
            kept += rows[-1].shape[0]
    return torch.cat(rows) if rows else None


def _weight_qdq(mods, schemes) -> Callable[[torch.Tensor], torch.Tensor]:
    """Quantize-dequantize the stacked weights of ``mods``, each slice with its own scheme."""
    sizes = [m.out_features for m in mods]

    def qdq(w: torch.Tensor) -> torch.Tensor:
        parts = torch.split(w, sizes)
        return torch.cat([dequantize_weight(quantize_weight(p, sc.weight, "w"), sc.weight)
                          for p, sc in zip(parts, schemes, strict=True)])  # fmt: skip

    return qdq


def _awq_unit(feeder, name, mods, schemes, options, rec):
    x = _rows(feeder, name, options.search_rows)
    if x is None:
        return None, {**rec, "alpha": None, "note": "no calibration input reached this layer"}
    w = torch.cat([m.weight.detach().float() for m in mods])
    s, alpha, losses = awq_search(w, x, _weight_qdq(mods, schemes), options.awq_grid)
    return s, {**rec, "alpha": alpha, "loss_rtn": losses[0.0], "loss": losses[alpha]}


def _smoothquant_unit(feeder, name, mods, schemes, act_absmax, options, rec):
    x = _rows(feeder, name, options.search_rows)
    if x is None:
        return None, {**rec, "alpha": None, "note": "no calibration input reached this layer"}
    spec = schemes[0].activation
    qdq_x = (lambda t: t) if spec is None else (lambda t: fake_quantize_dynamic(t, spec))
    w = torch.cat([m.weight.detach().float() for m in mods])
    s, alpha, losses = smoothquant_search(w, x, _weight_qdq(mods, schemes), qdq_x,
                                          act_absmax=act_absmax)  # fmt: skip
    return s, {**rec, "alpha": alpha, "loss_unsmoothed": losses[None], "loss": losses[alpha]}
