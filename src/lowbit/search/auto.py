"""``lowbit.auto``: the smallest (or fastest) quantized model within ``max_drop`` of float.

The search, every step verified with the user's ``evaluate(model) -> float`` (higher is better):

1. the float model (the baseline; it always meets the constraint, so something is returned);
2. per-layer sensitivity to each candidate (:func:`lowbit.analyze`);
3. each candidate applied uniformly, most bits first;
4. mixed precision: bisection on the budget (bits per weight, or summed layer latency) between
   the smallest possible model and the smallest one known to pass; at each budget the
   allocation minimizing predicted noise (:func:`lowbit.analysis.allocate`) is built and
   evaluated;
5. the same bisection below the best budget, with error-correcting ``refine`` algorithms (GPTQ
   by default), which can let a smaller budget pass.

Each step is skipped when it would overrun ``time_budget`` (measured from the steps already
done); the model returned is the best passing one found (smallest on the objective).

>>> result = lowbit.auto(model, calibration, evaluate, max_drop=0.01)  # doctest: +SKIP
>>> result.model, result.metric, result.config.to_json()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from lowbit.analysis.allocate import FLOAT, Allocation, allocate, to_config
from lowbit.analysis.report import SensitivityReport
from lowbit.analysis.sensitivity import DEFAULT_CANDIDATES, analyze
from lowbit.calibrate import PreparedBatches
from lowbit.config import QuantScheme
from lowbit.errors import ConfigError
from lowbit.measure.latency import measure_latency
from lowbit.ptq.capture import call_model, materialize
from lowbit.ptq.options import parse_algorithms
from lowbit.search.result import AutoResult, Candidate

__all__ = ["auto", "OBJECTIVES", "LATENCY_CANDIDATES"]

log = logging.getLogger(__name__)

OBJECTIVES = ("size", "latency")
LATENCY_CANDIDATES = ("W8A8", "W8A8-dynamic", "W8A16", "W4A16-g128", "W4A16")


class _Search:
    """State of one search: the evaluated candidates, the clock, the progress display."""

    def __init__(self, model, batches, evaluate, report, threshold, deadline, bar, objective):
        self.model, self.batches, self.evaluate = model, batches, evaluate
        self.objective = objective
        self.report, self.threshold, self.deadline, self.bar = report, threshold, deadline, bar
        self.found: list[Candidate] = []
        self.models: dict[str, nn.Module] = {}
        self.tried: set = set()
        self.start = time.perf_counter()
        self.cost = 0.0  # longest evaluation so far: the next one is assumed to take as long

    def time_left(self) -> bool:
        return time.perf_counter() + self.cost <= self.deadline

    def bits(self, choice: dict[str, str]) -> float:
        layers = self.report.layers
        nbytes = sum(
            layers[n].float_bytes if c == FLOAT else self.report.row(n, c).weight_bytes
            for n, c in choice.items()
        )
        return 8 * nbytes / sum(i.weights for i in layers.values())

    def try_(self, name: str, choice: dict[str, str], algorithms: tuple[str, ...] = ()):
        """Quantize with ``choice``, evaluate, measure; None when already tried."""
        import lowbit

        key = (tuple(sorted(choice.items())), algorithms)
        if key in self.tried:
            return None
        self.tried.add(key)
        start = time.perf_counter()
        config = to_config(choice, self.report.schemes)
        if config is None:
            qmodel = self.model
        else:
            config = config.replace(algorithms=algorithms)
            qmodel = lowbit.quantize(self.model, config, calibration=self.batches, progress=False)
        metric = float(self.evaluate(qmodel))
        batch = self.batches[0]
        lat = measure_latency(lambda: call_model(qmodel, batch), min_time_s=0.2).median_ms
        cand = Candidate(name, metric, lowbit.model_size(qmodel), self.bits(choice), lat,
                         metric >= self.threshold, config, dict(choice),
                         time.perf_counter() - start)  # fmt: skip
        self.found.append(cand)
        self.models[name] = qmodel
        keep = self.best(self.objective).name  # hold one model in memory, not every candidate
        self.models = {keep: self.models[keep]}
        self.cost = max(self.cost, cand.seconds)
        log.info("auto: %s -> metric %.4f, %.2f bits/weight, %s", name, metric, cand.bits_per_weight,
                 "meets" if cand.meets else "fails")  # fmt: skip
        self._show()
        return cand

    def _show(self) -> None:
        best = self.best(self.objective)
        self.bar.set_postfix_str(f"{len(self.found)} tried; best {best.name} ({best.metric:.4f})")
        self.bar.n = round(min(time.perf_counter() - self.start, self.bar.total), 1)
        self.bar.refresh()

    def best(self, objective: str) -> Candidate:
        passing = [c for c in self.found if c.meets] or self.found
        key = (lambda c: c.bits_per_weight) if objective == "size" else (lambda c: c.latency_ms)
        return min(passing, key=lambda c: (key(c) if c.meets else 0.0, -c.metric))


def _allocate(report: SensitivityReport, objective: str, budget: float) -> Allocation | None:
    try:
        if objective == "size":
            return allocate(report, bits_per_weight=budget)
        return allocate(report, max_latency_ms=budget)
    except ConfigError:
        return None  # below the smallest feasible budget


def _layer_sum(report: SensitivityReport, choice: dict[str, str]) -> float:
    """Summed per-layer latency of a choice (the latency budget's unit)."""
    return sum(
        report.layers[n].float_latency_ms if c == FLOAT else report.row(n, c).latency_ms
        for n, c in choice.items()
    )


def _bisect(search: _Search, objective: str, lo: float, hi: float, algorithms, steps: int):
    """Halve ``[lo, hi]``: a passing allocation lowers ``hi``, a failing budget raises ``lo``."""
    tag = "+".join(algorithms)
    for _ in range(steps):
        if hi - lo <= 0.01 * hi or not search.time_left():
            return
        mid = (lo + hi) / 2
        alloc = _allocate(search.report, objective, mid)
        if alloc is None:
            lo = mid
            continue
        label = f"mixed {alloc.bits_per_weight:.2f} b/w" + (f" +{tag}" if tag else "")
        cand = search.try_(label, alloc.choice, algorithms)
        spent = (
            alloc.bits_per_weight
            if objective == "size"
            else _layer_sum(search.report, alloc.choice)
        )
        if cand is not None and cand.meets:
            hi = min(hi, spent)
        else:
            lo = mid


def auto(
    model: nn.Module,
    calibration: Any,
    evaluate: Callable[[nn.Module], float],
    *,
    max_drop: float = 0.01,
    objective: str = "size",
    time_budget: float = 300.0,
    candidates: Sequence[str | QuantScheme] | None = None,
    refine: Sequence[str] = ("gptq",),
    steps: int = 6,
    analysis_batches: int = 1,
    progress: bool | None = None,
) -> AutoResult:
    """Search quantized versions of ``model`` for the smallest (``objective="size"``) or fastest
    (``"latency"``) one with ``evaluate(qmodel) >= evaluate(model) - max_drop``.

    Args:
        model: the float model (never modified).
        calibration: batches for analysis, static ranges, the algorithms and latency timing.
        evaluate: ``evaluate(model) -> float``, higher is better (accuracy, mean cosine...);
            ``max_drop`` is absolute in its units (0.01 = one point of a fraction).
        objective: ``"size"`` (bits per weight) or ``"latency"`` (per-layer latencies measured
            on this machine; the end-to-end latency of each candidate is reported too).
        time_budget: seconds; the search stops before a step that would overrun it.
        candidates: presets/schemes, most to fewest bits (default: a weight-only ladder for
            size, int8 static/dynamic/weight-only schemes for latency).
        refine: post-training algorithms tried at budgets RTN failed (``()`` to skip).
        steps: bisection steps per phase.
        analysis_batches: calibration batches the sensitivity analysis runs on (it makes
            one forward pass per layer and candidate: the search's largest fixed cost).
        progress: show the search (default: when attached to a terminal).
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; use one of {OBJECTIVES}")
    if not callable(evaluate):
        raise ConfigError("evaluate must be a function: evaluate(model) -> float, higher is better")
    if max_drop < 0 or time_budget <= 0:
        raise ConfigError("max_drop must be >= 0 and time_budget > 0 (seconds)")
    refine = parse_algorithms(refine) if refine else ()
    start = time.perf_counter()
    batches = materialize(calibration)
    if candidates is None:
        candidates = DEFAULT_CANDIDATES if objective == "size" else LATENCY_CANDIDATES
    bar = tqdm(total=round(time_budget, 1), desc="auto", unit="s", leave=False,
               disable=(not progress) if progress is not None else None)  # fmt: skip
    model = model.eval()
    baseline = float(evaluate(model))
    report = analyze(model, PreparedBatches(batches[: max(1, analysis_batches)]), candidates,
                     latency=objective == "latency", progress=progress)  # fmt: skip
    search = _Search(model, batches, evaluate, report, baseline - max_drop,
                     start + time_budget, bar, objective)  # fmt: skip
    float_cand = search.try_("float", dict.fromkeys(report.layers, FLOAT))
    for label in report.candidates:  # uniform, most bits first
        if not search.time_left():
            break
        choice = {n: FLOAT if report.row(n, label).skipped else label for n in report.layers}
        search.try_(f"uniform {label}", choice)
    passing = [c for c in search.found if c.meets]
    hi = (
        min(_spent(report, objective, c) for c in passing)
        if passing
        else _spent(report, objective, float_cand)
    )
    lo = _floor(report, objective)
    _bisect(search, objective, lo, hi, (), steps)
    best = search.best(objective)
    if refine and search.time_left():
        _bisect(search, objective, lo, _spent(report, objective, best), refine, steps)
    bar.close()
    best = search.best(objective)
    if not best.meets:  # cannot happen while float meets; kept for max_drop < float noise
        warnings.warn(
            "no candidate met the constraint; returning the most accurate one", stacklevel=2
        )
    if best.name == "float" and len(search.found) > 1:
        warnings.warn(f"no quantized candidate stayed within max_drop={max_drop}: returning the "
                      "float model; allow a larger max_drop, more time, or more bits", stacklevel=2)  # fmt: skip
    return AutoResult(search.models[best.name], best.config, best.metric, baseline, best,
                      search.found, report, objective, max_drop, time.perf_counter() - start)  # fmt: skip


def _spent(report: SensitivityReport, objective: str, cand: Candidate) -> float:
    return cand.bits_per_weight if objective == "size" else _layer_sum(report, cand.choice)


def _floor(report: SensitivityReport, objective: str) -> float:
    """The smallest budget any allocation reaches (every layer at its cheapest option)."""
    total = 0.0
    for name, info in report.layers.items():
        opts = [r for r in report.rows if r.layer == name and r.skipped is None]
        if objective == "size":
            total += min([info.float_bytes] + [r.weight_bytes for r in opts])
        else:
            total += min([info.float_latency_ms] + [r.latency_ms for r in opts])
    if objective == "size":
        return 8 * total / sum(i.weights for i in report.layers.values())
    return total
