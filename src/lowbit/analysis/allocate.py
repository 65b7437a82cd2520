"""Bit allocation: one scheme per layer (or float) minimizing predicted noise under a budget.

With ``x[l, c] ∈ {0, 1}`` choosing option ``c`` for layer ``l`` (a candidate, or ``"float"``),
``N[l, c]`` the layer's predicted relative output noise (from :func:`lowbit.analyze`),
``B[l, c]`` its stored weight bytes and ``T[l, c]`` its measured latency:

    minimize  Σ N[l, c] x[l, c]
    s.t.      Σ_c x[l, c] = 1  for every layer,
              Σ B[l, c] x[l, c] ≤ max_bytes,   Σ T[l, c] x[l, c] ≤ max_latency_ms  (either or both)

a multiple-choice knapsack, solved exactly as an integer program (HiGHS through
``scipy.optimize.milp``; tens of layers times a few candidates take milliseconds). Noise adds up
across layers to first order (independent errors), which is what makes the sum the objective.

>>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
>>> report = lowbit.analyze(model, [torch.randn(32, 64)], ["W8A16", "W4A16"])
>>> alloc = allocate(report, bits_per_weight=6.5)
>>> alloc.bits_per_weight <= 6.5 and set(alloc.choice.values()) <= {"W8A16", "W4A16", "float"}
True
"""

from __future__ import annotations

import glob
from collections import Counter
from dataclasses import dataclass

import numpy as np

from lowbit.analysis.report import SensitivityReport
from lowbit.config import QuantConfig, QuantScheme
from lowbit.errors import ConfigError

__all__ = ["Allocation", "allocate", "to_config", "FLOAT", "InfeasibleBudget"]

FLOAT = "float"


class InfeasibleBudget(ConfigError):
    """No allocation fits the budget (even every layer at its cheapest option)."""


@dataclass(frozen=True)
class Allocation:
    """A scheme per layer (``"float"`` = kept in float) and what the analysis predicts for it."""

    choice: dict[str, str]
    predicted_noise: float
    weight_bytes: int
    bits_per_weight: float
    latency_ms: float | None
    config: QuantConfig | None

    @property
    def predicted_sqnr_db(self) -> float:
        return float("inf") if self.predicted_noise <= 0 else -10 * np.log10(self.predicted_noise)


def _options(report: SensitivityReport, allow_float: bool, need_latency: bool):
    """``[(layer, option, noise, bytes, latency)]`` for every feasible choice."""
    opts = []
    for name, info in report.layers.items():
        if allow_float:
            opts.append((name, FLOAT, 0.0, info.float_bytes, info.float_latency_ms))
        for r in report.rows:
            if r.layer == name and r.skipped is None:
                opts.append((name, r.candidate, r.noise, r.weight_bytes, r.latency_ms))
        if not any(o[0] == name for o in opts):
            raise ConfigError(
                f"no candidate can quantize layer {name!r} and allow_float=False; add a "
                "per-channel candidate (e.g. 'W4A16') or allow float layers"
            )
    if need_latency and any(o[4] is None for o in opts):
        raise ConfigError(
            "a latency budget needs per-layer latencies: run lowbit.analyze(..., latency=True)"
        )
    return opts


def to_config(
    choice: dict[str, str], schemes: dict[str, QuantScheme], aliases: dict[str, tuple] | None = None
) -> QuantConfig | None:
    """The :class:`QuantConfig` that applies ``choice``: the most common scheme as default, the
    others as per-layer overrides, float layers left out of ``include``. None if all float.

    Names are glob-escaped (a module may be called ``conv[3x3]``) and a module registered under
    several names (``aliases``) is listed under each, so none of them stays float.
    """
    quantized = {n: c for n, c in choice.items() if c != FLOAT}
    if not quantized:
        return None
    default = Counter(quantized.values()).most_common(1)[0][0]
    names = {n: [glob.escape(a) for a in ((aliases or {}).get(n) or (n,))] for n in quantized}
    overrides = tuple((p, schemes[c]) for n, c in quantized.items() if c != default
                      for p in names[n])  # fmt: skip
    include = tuple(p for n in quantized for p in names[n])
    return QuantConfig(schemes[default], include=include, overrides=overrides)


def allocate(
    report: SensitivityReport,
    *,
    bits_per_weight: float | None = None,
    max_bytes: int | None = None,
    max_latency_ms: float | None = None,
    allow_float: bool = True,
) -> Allocation:
    """Solve the integer program above for ``report``'s layers (see module doc).

    ``bits_per_weight`` is the budget as average stored bits per weight over the analysed
    layers (``max_bytes = bits * weights / 8``); give it, ``max_bytes`` or ``max_latency_ms``.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp  # scipy loads slowly: on use

    if bits_per_weight is None and max_bytes is None and max_latency_ms is None:
        raise ConfigError("give a budget: bits_per_weight=, max_bytes= or max_latency_ms=")
    n_weights = sum(i.weights for i in report.layers.values())
    if bits_per_weight is not None:
        by_bits = int(bits_per_weight * n_weights / 8)
        max_bytes = by_bits if max_bytes is None else min(max_bytes, by_bits)
    opts = _options(report, allow_float, max_latency_ms is not None)
    layers = list(report.layers)
    a_one = np.zeros((len(layers), len(opts)))
    for j, o in enumerate(opts):
        a_one[layers.index(o[0]), j] = 1
    cons = [LinearConstraint(a_one, 1, 1)]
    if max_bytes is not None:
        cons.append(LinearConstraint(np.array([[o[3] for o in opts]], float), -np.inf, max_bytes))
    if max_latency_ms is not None:
        cons.append(LinearConstraint(np.array([[o[4] for o in opts]]), -np.inf, max_latency_ms))
    noise = np.array([o[2] for o in opts])
    # scale to O(1) for the solver; a tiny size term breaks ties towards the smaller option
    size = np.array([o[3] for o in opts], float)
    cost = noise / max(noise.max(), 1e-30) + 1e-9 * size / max(size.max(), 1.0)
    res = milp(cost, constraints=cons, integrality=np.ones(len(opts)), bounds=Bounds(0, 1),
               options={"mip_rel_gap": 0.0})  # exact: the default 1e-4 gap is not  # fmt: skip
    if res.x is None:
        smallest = sum(min(o[3] for o in opts if o[0] == n) for n in layers)
        raise InfeasibleBudget(
            f"no allocation fits the budget (solver: {res.message}); the smallest possible is "
            f"{smallest:,} bytes = {8 * smallest / n_weights:.3f} bits per weight"
        )
    picked = [opts[j] for j in np.flatnonzero(res.x > 0.5)]
    total_bytes = int(sum(o[3] for o in picked))
    lat = None if any(o[4] is None for o in picked) else float(sum(o[4] for o in picked))
    return Allocation(
        choice={o[0]: o[1] for o in sorted(picked, key=lambda o: layers.index(o[0]))},
        predicted_noise=float(sum(o[2] for o in picked)),
        weight_bytes=total_bytes,
        bits_per_weight=8 * total_bytes / n_weights,
        latency_ms=lat,
        config=to_config(
            {o[0]: o[1] for o in picked},
            report.schemes,
            {n: i.aliases for n, i in report.layers.items()},
        ),  # fmt: skip
    )
