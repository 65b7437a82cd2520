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

import copy
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from lowbit.analysis.allocate import FLOAT, Allocation, InfeasibleBudget, allocate, to_config
from lowbit.analysis.report import SensitivityReport
from lowbit.analysis.sensitivity import DEFAULT_CANDIDATES, analyze
from lowbit.calibrate import PreparedBatches
from lowbit.config import QuantScheme
from lowbit.errors import ConfigError, LowbitError
from lowbit.measure.latency import measure_latency
from lowbit.ptq.capture import call_model, materialize
from lowbit.ptq.options import parse_algorithms
from lowbit.search.result import AutoResult, Candidate

__all__ = ["auto", "OBJECTIVES", "LATENCY_CANDIDATES"]

log = logging.getLogger(__name__)

OBJECTIVES = ("size", "latency")
LATENCY_CANDIDATES = ("W8A8", "W8A8-dynamic", "W8A16", "W4A16-g128", "W4A16")


# A refinement step (GPTQ...) is assumed to cost this many RTN steps until one has been timed
# (GPTQ on all-MiniLM-L6-v2 measured ~4x the RTN step).
_UNTIMED_ALGORITHM_FACTOR = 4.0
# Steps vary (a busy machine, a slower evaluate): start one only with this much headroom.
_MARGIN = 1.25


class _Search:
    """State of one search: the evaluated candidates, the clock, the progress display."""

    def __init__(self, model, batches, evaluate, report, threshold, deadline, bar, objective):
        self.model, self.batches, self.evaluate = model, batches, evaluate
        self.objective = objective
        self.report, self.threshold, self.deadline, self.bar = report, threshold, deadline, bar
        self.found: list[Candidate] = []
        self.kept: nn.Module | None = None  # the best model so far: one model in memory
        self.tried: set = set()
        self.start = time.perf_counter()
        self.cost: dict[tuple, float] = {}  # longest step per algorithm set

    def time_left(self, algorithms: tuple[str, ...] = ()) -> bool:
        """Whether a step with ``algorithms`` is expected to finish before the deadline."""
        rtn = self.cost.get((), 0.0)
        cost = self.cost.get(algorithms, rtn * _UNTIMED_ALGORITHM_FACTOR)
        return time.perf_counter() + _MARGIN * cost <= self.deadline

    def bits(self, choice: dict[str, str]) -> float:
        layers = self.report.layers
        nbytes = sum(
            layers[n].float_bytes if c == FLOAT else self.report.row(n, c).weight_bytes
            for n, c in choice.items()
        )
        return 8 * nbytes / sum(i.weights for i in layers.values())

    def try_(self, name: str, choice: dict[str, str], algorithms: tuple[str, ...] = (),
             metric: float | None = None) -> Candidate | None:  # fmt: skip
        """Quantize with ``choice``, evaluate, measure; None when already tried or when
        quantizing failed (logged: the search goes on with the other candidates)."""
        import lowbit

        key = (tuple(sorted(choice.items())), algorithms)
        if key in self.tried:
            return None
        self.tried.add(key)
        start = time.perf_counter()
        aliases = {n: i.aliases for n, i in self.report.layers.items()}
        config = to_config(choice, self.report.schemes, aliases)
        qmodel = self.model
        if config is not None:
            config = config.replace(algorithms=algorithms)
            try:
                qmodel = lowbit.quantize(self.model, config, calibration=self.batches,
                                         progress=False)  # fmt: skip
            except LowbitError as exc:
                log.warning("auto: %s could not be built, skipped: %s", name, exc)
                return None
        if metric is None:
            metric = float(self.evaluate(qmodel))
        batch = self.batches[0]
        lat = measure_latency(lambda: call_model(qmodel, batch), warmup=1, min_runs=3,
                              min_time_s=0.2).median_ms  # fmt: skip
        if any(c.name == name for c in self.found):
            name = f"{name} #{len(self.found)}"  # names identify candidates: keep them unique
        cand = Candidate(name, metric, lowbit.model_size(qmodel), self.bits(choice), lat,
                         metric >= self.threshold, config, dict(choice),
                         time.perf_counter() - start)  # fmt: skip
        self.found.append(cand)
        if self.best() is cand:
            self.kept = qmodel
        self.cost[algorithms] = max(self.cost.get(algorithms, 0.0), cand.seconds)
        log.info("auto: %s -> metric %.4f, %.2f bits/weight, %s", name, metric, cand.bits_per_weight,
                 "meets" if cand.meets else "fails")  # fmt: skip
        self._show()
        return cand

    def _show(self) -> None:
        best = self.best()
        self.bar.set_postfix_str(f"{len(self.found)} tried; best {best.name} ({best.metric:.4f})")
        self.bar.n = round(min(time.perf_counter() - self.start, self.bar.total), 1)
        self.bar.refresh()

    def best(self) -> Candidate:
        """The smallest (fastest) passing candidate; the most accurate if none passes."""
        passing = [c for c in self.found if c.meets]
        if not passing:
            return max(self.found, key=lambda c: c.metric)
        key = (
            (lambda c: c.bits_per_weight) if self.objective == "size" else (lambda c: c.latency_ms)
        )
        return min(passing, key=lambda c: (key(c), -c.metric))


def _allocate(report: SensitivityReport, objective: str, budget: float) -> Allocation | None:
    try:
        if objective == "size":
            return allocate(report, bits_per_weight=budget)
        return allocate(report, max_latency_ms=budget)
    except InfeasibleBudget:
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
        if hi - lo <= 0.01 * hi or not search.time_left(algorithms):
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
        time_budget: seconds; the search stops before a step expected to overrun it. The
            baseline, the analysis and the first uniform candidate always run (a warning says
            when they alone overran).
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
    model = copy.deepcopy(model).eval()  # the user's model keeps its mode and its weights
    baseline = float(evaluate(model))
    report = analyze(model, PreparedBatches(batches[: max(1, analysis_batches)]), candidates,
                     latency=objective == "latency", progress=progress)  # fmt: skip
    search = _Search(model, batches, evaluate, report, baseline - max_drop,
                     start + time_budget, bar, objective)  # fmt: skip
    search.try_("float", dict.fromkeys(report.layers, FLOAT), metric=baseline)
    for label in report.candidates:  # uniform, most bits first (at least one, whatever the time)
        choice = {n: FLOAT if report.row(n, label).skipped else label for n in report.layers}
        if len(search.found) > 1 and not search.time_left():
            break
        search.try_(f"uniform {label}", choice)
    passing = [c for c in search.found if c.meets]
    hi = min(_spent(report, objective, c) for c in passing)
    lo = _floor(report, objective)
    _bisect(search, objective, lo, hi, (), steps)
    if refine:
        _bisect(search, objective, lo, _spent(report, objective, search.best()), refine, steps)
    bar.close()
    best = search.best()
    _warn(search, best, max_drop, time_budget, time.perf_counter() - start)
    return AutoResult(search.kept, best.config, best.metric, baseline, best, search.found,
                      report, objective, max_drop, time.perf_counter() - start)  # fmt: skip


def _warn(search: _Search, best: Candidate, max_drop: float, budget: float, spent: float) -> None:
    if spent > 1.2 * budget:
        warnings.warn(f"lowbit.auto took {spent:.0f} s of a {budget:.0f} s budget: the analysis "
                      "and the first uniform candidate always run", stacklevel=3)  # fmt: skip
    if best.name != "float":
        return
    if not any(c.meets for c in search.found if c.name != "float"):
        warnings.warn(f"no quantized candidate stayed within max_drop={max_drop}: returning the "
                      "float model; allow a larger max_drop, more time, or more bits", stacklevel=3)  # fmt: skip


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
