"""Per-layer sensitivity: quantize one layer at a time and measure what it costs.

For every quantizable layer ``l`` and candidate scheme ``c``, the model with *only* ``l``
quantized with ``c`` is compared with the float model on the calibration batches:

    SQNR(l, c) = 10 log10(‖y‖² / ‖y − y_{l,c}‖²)       (all floating outputs, all batches)

and, when an ``evaluate(model) -> float`` is given, ``Δmetric(l, c) = evaluate(model_{l,c}) −
evaluate(model)`` (higher-is-better metrics: negative means a loss). ``method="hessian"``
replaces the per-layer forward passes by HAWQ-v2's estimate (see :mod:`.hessian`): one
Hutchinson pass, then ``‖ΔW‖²`` per candidate. Each candidate quantizes the whole model once
(so static schemes are calibrated as usual); its layers are then swapped into a float copy one
at a time.

>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
>>> report = analyze(model, [torch.randn(32, 8)], ["W8A16", "W2A16-g64"])
>>> [(r.layer, r.candidate, r.skipped is None) for r in report.rows]
[('0', 'W8A16', True), ('0', 'W2A16-g64', False), ('2', 'W8A16', True), ('2', 'W2A16-g64', False)]
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.analysis.hessian import hessian_traces
from lowbit.analysis.report import LayerInfo, LayerSensitivity, SensitivityReport
from lowbit.config import QuantScheme
from lowbit.errors import ConfigError
from lowbit.measure.accuracy import sqnr_db
from lowbit.measure.latency import measure_latency
from lowbit.measure.size import layer_weight_bytes
from lowbit.ptq.capture import call_model, materialize, run
from lowbit.transforms.bn_fold import _get, _set, fold_batchnorm_

__all__ = ["analyze", "DEFAULT_CANDIDATES", "METHODS"]

# Weight-only ladder from 8 to 2 bits, per channel and in groups (groups fit transformer rows,
# per-channel fits convs whose rows a group size does not divide).
DEFAULT_CANDIDATES = ("W8A16", "W4A16-g128", "W4A16", "W3A16-g128", "W3A16", "W2A16-g64")
METHODS = ("sqnr", "hessian")


def _outputs(model: nn.Module, batches) -> torch.Tensor:
    return torch.cat([t.reshape(-1).float() for b in batches for t in run(model, b)])


def _label(candidate: str | QuantScheme) -> str:
    return candidate if isinstance(candidate, str) else candidate.name


@contextmanager
def swapped(model: nn.Module, names: Sequence[str], module: nn.Module) -> Iterator[nn.Module]:
    """``model`` with ``module`` in place of the layers called ``names`` (restored on exit);
    yields the model to run (``module`` itself when the model is that single layer)."""
    if names == [""]:
        yield module
        return
    old = [_get(model, n) for n in names]
    for n in names:
        _set(model, n, module)
    try:
        yield model
    finally:
        for n, m in zip(names, old, strict=True):
            _set(model, n, m)


def _layer_inputs(model: nn.Module, modules: dict[str, nn.Module], batch) -> dict[str, Any]:
    """``{name: (args, kwargs)}`` each layer received on ``batch`` (its first call)."""
    seen: dict[str, Any] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda _m, a, k, name=n: seen.setdefault(name, (a, k)) and None, with_kwargs=True
        )
        for n, m in modules.items()
    ]
    try:
        with torch.no_grad():
            call_model(model, batch)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _time(module: nn.Module, inputs: Any) -> float | None:
    if inputs is None:
        return None
    args, kwargs = inputs
    return measure_latency(lambda: module(*args, **kwargs), warmup=2, min_time_s=0.05).median_ms


def _aliases(model: nn.Module, names: set[str]) -> dict[str, list[str]]:
    """First name of each quantizable module -> every name it is registered under."""
    groups: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        if n in names:
            groups.setdefault(id(m), []).append(n)
    return {g[0]: g for g in groups.values()}


def _check(candidates: Any, method: str) -> None:
    if not candidates or isinstance(candidates, str):
        raise ConfigError(
            "candidates must be a non-empty list of presets or schemes, e.g. ['W8A16', 'W4A16']"
        )
    if method not in METHODS:
        raise ConfigError(f"unknown sensitivity method {method!r}; use one of {METHODS}")


def analyze(
    model: nn.Module,
    calibration: Any,
    candidates: Sequence[str | QuantScheme] = DEFAULT_CANDIDATES,
    evaluate: Callable[[nn.Module], float] | None = None,
    *,
    method: str = "sqnr",
    latency: bool = False,
    hessian_samples: int = 16,
    progress: bool | None = None,
) -> SensitivityReport:
    """Sensitivity of every quantizable layer to every candidate (see module doc).

    Args:
        model: the float model (never modified).
        calibration: batches for the forward passes (and static schemes' ranges).
        candidates: presets or :class:`QuantScheme` s, most to fewest bits.
        evaluate: optional ``evaluate(model) -> float`` (higher is better); adds
            ``metric_delta`` per row at the cost of one evaluation per row.
        method: ``"sqnr"`` (a forward pass per row) or ``"hessian"`` (Hutchinson estimate).
        latency: also time each layer alone, float and quantized, on its first-batch input.
        hessian_samples: Hutchinson probes per batch for ``method="hessian"``.
        progress: progress bar (default: when attached to a terminal).
    """
    import lowbit  # the package's quantize (this module is imported by it)

    _check(candidates, method)
    start = time.perf_counter()
    batches = materialize(calibration)
    base = copy.deepcopy(model).eval()
    fold_batchnorm_(base)  # quantize folds BN too: compare like with like
    reference = _outputs(base, batches)
    baseline = None if evaluate is None else float(evaluate(model))
    labels = tuple(_label(c) for c in candidates)
    quantized = {}
    for cand, label in zip(candidates, labels, strict=True):
        quantized[label] = lowbit.quantize(model, cand, calibration=batches, progress=False)
    done = set().union(*(q.lowbit_record.layers for q in quantized.values()))
    aliases = _aliases(base, done)
    modules = {n: _get(base, n) if n else base for n in aliases}
    layers = {n: LayerInfo(n, m.weight.numel(), layer_weight_bytes(m)) for n, m in modules.items()}
    inputs = _layer_inputs(base, modules, batches[0]) if latency else {}
    if latency:
        layers = {n: LayerInfo(i.name, i.weights, i.float_bytes, _time(modules[n], inputs.get(n)))
                  for n, i in layers.items()}  # fmt: skip
    traces = hessian_traces(base, modules, batches, hessian_samples) if method == "hessian" else {}
    power = float(reference.pow(2).mean().clamp_min(1e-30))
    rows = []
    jobs = [(n, label) for n in aliases for label in labels]
    bar = tqdm(jobs, desc="sensitivity", unit="run", leave=False,
               disable=(not progress) if progress is not None else None)  # fmt: skip
    for name, label in bar:
        record = quantized[label].lowbit_record
        if name not in record.layers:
            reason = record.skipped.get(name, "not quantized by this candidate")
            rows.append(LayerSensitivity(name, label, None, skipped=reason))
            continue
        qm = _get(quantized[label], name) if name else quantized[label]
        with swapped(base, aliases[name], qm) as mixed:
            if method == "hessian":
                dw = qm.dequantized_weight().float().reshape(-1) - modules[
                    name
                ].weight.detach().reshape(-1)
                sqnr, noise = None, traces[name] * float(dw.pow(2).sum()) / power
            else:
                sqnr = sqnr_db(reference, _outputs(mixed, batches))
                noise = 10.0 ** (-sqnr / 10.0)
            delta = None if evaluate is None else float(evaluate(mixed)) - baseline
            ms = (
                _time(qm, _layer_inputs(mixed, {name: qm}, batches[0]).get(name))
                if latency
                else None
            )
        rows.append(LayerSensitivity(name, label, sqnr, noise, delta, layer_weight_bytes(qm), ms))
    schemes = {label: quantized[label].lowbit_record.config.scheme for label in labels}
    return SensitivityReport(labels, layers, rows, method, baseline, traces,
                             round(time.perf_counter() - start, 3), schemes)  # fmt: skip
