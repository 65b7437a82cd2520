"""The names of lowbit's post-training algorithms, their order, and their options.

``rtn`` (round to nearest) is the default. The others, in the order a list may give them:

* rescaling of the float model (exact in float, so quantization sees friendlier ranges):
  ``cle`` (cross-layer equalization), ``smoothquant``, ``awq``;
* rounding of each layer's weight, layer by layer on calibration data: ``gptq`` or ``adaround``
  (one of them);
* ``bias_correction``: after a layer's rounding is chosen, its output mean is restored.

>>> parse_algorithms(["cle", "bias_correction", "adaround"])
('cle', 'adaround', 'bias_correction')
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real

from lowbit.errors import ConfigError, field_error

__all__ = ["ALGORITHMS", "RESCALERS", "ROUNDERS", "PTQOptions", "parse_algorithms"]

RESCALERS = ("cle", "smoothquant", "awq")
ROUNDERS = ("rtn", "gptq", "adaround")
ALGORITHMS = RESCALERS + ROUNDERS + ("bias_correction",)


@dataclass(frozen=True)
class PTQOptions:
    """Options of the PTQ algorithms (the papers' defaults unless noted; GPTQ's act-order is on,
    as in its authors' later recommendations and llm-compressor, with static groups).

    Args:
        max_rows: input rows (tokens or conv samples) kept per layer for AdaRound and the
            per-layer error records; more rows cost memory and time, not accuracy once enough.
        adaround_iters / adaround_lr / adaround_lambda / adaround_batch: AdaRound's optimizer.
        gptq_block_size / gptq_percdamp / gptq_act_order: GPTQ's lazy-batch width, dampening
            (fraction of mean diag H) and column order.
        smoothquant_alpha: SmoothQuant's migration strength α; None (the default) searches
            α ∈ {0.3, ..., 0.9} per layer on its quantized output error (and keeps the layer
            unsmoothed when no α helps); 0.5 is the paper's default for OPT/BLOOM.
        awq_grid: points of AWQ's α grid.
        search_rows: input rows (tokens) that AWQ's and SmoothQuant's α searches are scored on;
            each grid point costs one matmul of this many rows per layer.
        cle_sweeps: passes over the equalized pairs (chains of three or more layers need several).
    """

    max_rows: int = 4096
    adaround_iters: int = 1000
    adaround_lr: float = 1e-2
    adaround_lambda: float = 1.0
    adaround_batch: int = 256
    gptq_block_size: int = 128
    gptq_percdamp: float = 0.01
    gptq_act_order: bool = True
    smoothquant_alpha: float | None = None
    awq_grid: int = 20
    search_rows: int = 1024
    cle_sweeps: int = 20

    def __post_init__(self) -> None:
        for name, rule in _RANGES.items():
            value = getattr(self, name)
            if not (name == "smoothquant_alpha" and value is None):  # None: search α per layer
                _check_range(name, value, *rule)
        if not isinstance(self.gptq_act_order, bool):
            raise field_error(
                "PTQOptions",
                ("gptq_act_order",),
                f"must be True or False, got {self.gptq_act_order!r}",
            )


# Valid ranges: (kind, low, high, low is inclusive); kind "int" counts, "real" finite numbers.
_RANGES = {
    "max_rows": ("int", 1, None, True),
    "adaround_iters": ("int", 1, None, True),
    "adaround_lr": ("real", 0.0, None, False),
    "adaround_lambda": ("real", 0.0, None, True),
    "adaround_batch": ("int", 1, None, True),
    "gptq_block_size": ("int", 1, None, True),
    "gptq_percdamp": ("real", 0.0, 1.0, False),  # a fraction of mean(diag H); 0 can be singular
    "smoothquant_alpha": ("real", 0.0, 1.0, True),
    "awq_grid": ("int", 1, None, True),
    "search_rows": ("int", 1, None, True),
    "cle_sweeps": ("int", 1, None, True),
}


def _check_range(name: str, value: object, kind: str, low: float, high: float | None,
                 low_inclusive: bool) -> None:  # fmt: skip
    """Raise a :class:`ConfigError` naming ``PTQOptions.<name>`` unless ``value`` fits."""
    if kind == "int":
        what = f"an integer >= {low}"
        ok = isinstance(value, Integral) and not isinstance(value, bool)
    else:
        upper = "inf)" if high is None else f"{high}]"
        what = f"a number in {'[' if low_inclusive else '('}{low}, {upper}"
        ok = isinstance(value, Real) and not isinstance(value, bool)
        ok = ok and (isinstance(value, Integral) or math.isfinite(value))  # huge ints: no float()
    ok = ok and (value >= low if low_inclusive else value > low)
    if not ok or (high is not None and value > high):
        raise field_error("PTQOptions", (name,), f"must be {what}, got {value!r}")


def parse_algorithms(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Validate a name or list of names; returns them in execution order (rescalers, rounding,
    bias correction), without ``rtn`` (which is what happens when no rounding is named)."""
    if value is None:
        value = ()
    if isinstance(value, str):
        value = [value]
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise ConfigError(
            f"algorithms are a name or a list of names like ['awq', 'gptq'], "
            f"got {type(value).__name__} {value!r}"
        )
    names = []
    for i, n in enumerate(value):
        if not isinstance(n, str):
            raise field_error(
                "algorithms", (i,), f"an algorithm is a name like 'gptq', got {type(n).__name__}"
            )
        key = n.strip().lower()  # case-insensitive, like preset names
        if key not in ALGORITHMS:
            close = difflib.get_close_matches(key, ALGORITHMS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown algorithm {n!r}{hint}; known: {', '.join(ALGORITHMS)}")
        names.append(key)
    if len(set(names)) != len(names):
        raise ConfigError(f"algorithm list {names} names an algorithm twice")
    rounders = [n for n in names if n in ("gptq", "adaround")]
    if len(rounders) > 1 or (rounders and "rtn" in names):
        raise ConfigError(
            f"{' and '.join(rounders + ['rtn'] * ('rtn' in names))} both choose how weights are "
            "rounded; name one of rtn, gptq, adaround"
        )
    rescale = [n for n in names if n in RESCALERS]
    if names[: len(rescale)] != rescale:
        raise ConfigError(
            f"in {names}, the rescaling steps ({', '.join(rescale)}) change the float weights "
            "and must come first"
        )
    return tuple(rescale + rounders + ["bias_correction"] * ("bias_correction" in names))
