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
from lowbit.config import QuantMode, QuantScheme
from lowbit.errors import ConfigError
from lowbit.measure.accuracy import sqnr_db
from lowbit.measure.latency import measure_latency
from lowbit.measure.size import layer_weight_bytes
from lowbit.nn import is_quantizable
from lowbit.presets import get_preset
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
    """The preset's own spelling (``"w4a16"`` -> ``"W4A16"``) or the scheme's name."""
    return get_preset(candidate).name if isinstance(candidate, str) else candidate.name


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


def _layer_inputs(model: nn.Module, modules: dict[str, nn.Module], batches) -> dict[str, Any]:
    """``{name: (args, kwargs)}`` each layer first received, over as many batches as it takes
    for every layer to be reached (a layer no batch reaches is absent)."""
    seen: dict[str, Any] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda _m, a, k, name=n: seen.setdefault(name, (a, k)) and None, with_kwargs=True
        )
        for n, m in modules.items()
    ]
    try:
        with torch.no_grad():
            for batch in batches:
                call_model(model, batch)
                if len(seen) == len(modules):
                    break
    finally:
        for h in hooks:
            h.remove()
    return seen


def _time(module: nn.Module, inputs: Any) -> float:
    """Median ms of the layer alone; 0 for a layer no calibration batch reaches (it costs
    nothing on such inputs)."""
    if inputs is None:
        return 0.0
    args, kwargs = inputs
    return measure_latency(lambda: module(*args, **kwargs), warmup=2, min_time_s=0.05).median_ms


def _aliases(model: nn.Module, names: set[str]) -> dict[str, list[str]]:
    """First name of each quantizable module -> every name it is registered under."""
    groups: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        if n in names:
            groups.setdefault(id(m), []).append(n)
    return {g[0]: g for g in groups.values()}


def _check(candidates: Any, method: str, hessian_samples: int) -> tuple[str, ...]:
    """The candidates' labels, or a clear error for what cannot be analysed."""
    if not candidates or isinstance(candidates, str):
        raise ConfigError(
            "candidates must be a non-empty list of presets or schemes, e.g. ['W8A16', 'W4A16']"
        )
    bad = [c for c in candidates if not isinstance(c, str | QuantScheme)]
    if bad:
        raise ConfigError(f"a candidate is a preset name or a QuantScheme, got {bad[0]!r}")
    labels = tuple(_label(c) for c in candidates)
    if len(set(labels)) < len(labels):
        raise ConfigError(f"candidate names must be unique, got {list(labels)}")
    if method not in METHODS:
        raise ConfigError(f"unknown sensitivity method {method!r}; use one of {METHODS}")
    if method == "hessian":
        if hessian_samples < 1:
            raise ConfigError(f"hessian_samples must be >= 1, got {hessian_samples}")
        for c in candidates:
            mode = get_preset(c).mode if isinstance(c, str) else c.mode
            if mode in (QuantMode.STATIC, QuantMode.DYNAMIC):
                raise ConfigError(
                    f"method='hessian' sees weight error only; {_label(c)} also quantizes "
                    "activations: use method='sqnr' for it"
                )
    return labels


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
        method: ``"sqnr"`` (a forward pass per row) or ``"hessian"`` (Hutchinson estimate;
            weight error only, so weight-only candidates only).
        latency: also time each layer alone, float and quantized, on the first input it gets.
        hessian_samples: Hutchinson probes per batch for ``method="hessian"``.
        progress: progress bar (default: when attached to a terminal).
    """
    import lowbit  # the package's quantize (this module is imported by it)

    labels = _check(candidates, method, hessian_samples)
    start = time.perf_counter()
    batches = materialize(calibration)
    base = copy.deepcopy(model).eval()
    fold_batchnorm_(base)  # quantize folds BN too: compare like with like
    reference = _outputs(base, batches)
    baseline = None if evaluate is None else float(evaluate(base))
    every = {n for n, m in base.named_modules(remove_duplicate=False) if is_quantizable(m)}
    aliases = _aliases(base, every)
    modules = {n: _get(base, n) if n else base for n in aliases}
    inputs = _layer_inputs(base, modules, batches) if latency else {}
    traces = hessian_traces(base, modules, batches, hessian_samples) if method == "hessian" else {}
    power = float(reference.pow(2).mean().clamp_min(1e-30))
    found, schemes = {}, {}
    bar = tqdm(total=len(aliases) * len(labels), desc="sensitivity", unit="run", leave=False,
               disable=(not progress) if progress is not None else None)  # fmt: skip
    for cand, label in zip(candidates, labels, strict=True):  # one quantized copy at a time
        q = lowbit.quantize(model, cand, calibration=batches, progress=False)
        schemes[label] = q.lowbit_record.config.scheme
        for name in aliases:
            bar.update()
            if name not in q.lowbit_record.layers:
                reason = q.lowbit_record.skipped.get(name, "not quantized by this candidate")
                found[name, label] = LayerSensitivity(name, label, None, skipped=reason)
                continue
            qm = _get(q, name) if name else q
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
            ms = _time(qm, inputs.get(name)) if latency else None
            found[name, label] = LayerSensitivity(name, label, sqnr, noise, delta,
                                                  layer_weight_bytes(qm), ms)  # fmt: skip
        del q
    bar.close()
    names = [n for n in aliases if any(not found[n, lb].skipped for lb in labels)]
    if not names:
        raise ConfigError(
            "no candidate quantized any layer of this model (supported: Linear, Conv1d, Conv2d, "
            f"Embedding); reasons: {sorted({r.skipped for r in found.values()})[:3]}"
        )
    layers = {n: LayerInfo(n, modules[n].weight.numel(), layer_weight_bytes(modules[n]),
                           _time(modules[n], inputs.get(n)) if latency else None,
                           tuple(aliases[n])) for n in names}  # fmt: skip
    rows = [found[n, lb] for n in names for lb in labels]
    return SensitivityReport(labels, layers, rows, method, baseline, traces,
                             round(time.perf_counter() - start, 3), schemes)  # fmt: skip
