"""Per-layer sensitivity: quantize one layer at a time and measure what it costs.

For every quantizable layer ``l`` and candidate scheme ``c``, the model with *only* ``l``
quantized with ``c`` is compared with the float model on the calibration batches:

    SQNR(l, c) = 10 log10(‖y‖² / ‖y − y_{l,c}‖²)       (all floating outputs, all batches)

and, when an ``evaluate(model) -> float`` is given, ``Δmetric(l, c) = evaluate(model_{l,c}) −
evaluate(model)`` (higher-is-better metrics: negative means a loss). Layers whose quantization
barely moves the output are the ones to push to fewer bits.

>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
>>> rows = layer_sensitivity(model, [torch.randn(32, 8)], ["W8A16", "W2A16-g64"])
>>> [(r.layer, r.candidate, r.skipped is None) for r in rows]
[('0', 'W8A16', True), ('0', 'W2A16-g64', False), ('2', 'W8A16', True), ('2', 'W2A16-g64', False)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.config import QuantScheme
from lowbit.errors import ConfigError
from lowbit.measure.accuracy import sqnr_db
from lowbit.ptq.capture import materialize, run

__all__ = ["LayerSensitivity", "layer_sensitivity"]


@dataclass(frozen=True)
class LayerSensitivity:
    """One (layer, candidate) measurement; ``metric_delta`` is None without ``evaluate``.

    ``skipped`` says why the candidate cannot quantize this layer (e.g. a group size that does
    not divide its rows); the layer then stayed float and no numbers are reported.
    """

    layer: str
    candidate: str
    sqnr_db: float | None
    metric_delta: float | None = None
    skipped: str | None = None


def _outputs(model: nn.Module, batches) -> torch.Tensor:
    return torch.cat([t.reshape(-1).float() for b in batches for t in run(model, b)])


def layer_sensitivity(
    model: nn.Module,
    calibration: Any,
    candidates: Sequence[str | QuantScheme],
    evaluate: Callable[[nn.Module], float] | None = None,
    progress: bool | None = None,
) -> list[LayerSensitivity]:
    """One :class:`LayerSensitivity` per quantizable layer and candidate (see module doc)."""
    import lowbit  # the package's quantize (this module is imported by it)

    if not candidates or isinstance(candidates, str):
        raise ConfigError(
            "candidates must be a non-empty list of presets or schemes, e.g. ['W8A16', 'W4A16']"
        )
    batches = materialize(calibration)
    model = model.eval()
    reference = _outputs(model, batches)
    baseline = None if evaluate is None else float(evaluate(model))
    names = list(lowbit.quantize(model, candidates[0], calibration=batches).lowbit_record.layers)
    rows = []
    jobs = [(n, c) for n in names for c in candidates]
    for name, cand in tqdm(jobs, desc="sensitivity", unit="run", leave=False,
                           disable=(not progress) if progress is not None else None):  # fmt: skip
        q = lowbit.quantize(model, cand, calibration=batches, include=[name])
        label = cand if isinstance(cand, str) else cand.name
        if name not in q.lowbit_record.layers:
            reason = q.lowbit_record.skipped.get(name, "not quantized")
            rows.append(LayerSensitivity(name, label, None, None, reason))
            continue
        delta = None if evaluate is None else float(evaluate(q)) - baseline
        rows.append(LayerSensitivity(name, label, sqnr_db(reference, _outputs(q, batches)), delta))
    return rows
