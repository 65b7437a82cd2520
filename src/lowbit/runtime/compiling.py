"""``lowbit.compile``: a quantized model on the fastest graph runtime this machine has.

>>> qmodel = lowbit.quantize(model, "W8A8", calibration=batches)  # doctest: +SKIP
>>> fast = lowbit.compile(qmodel, example)  # doctest: +SKIP
>>> fast.backend, fast.why  # doctest: +SKIP
('onnxruntime', 'fastest at input [1, 3, 32, 32]: onnxruntime (...)')
>>> y = fast(x)  # same inputs and outputs as qmodel(x)  # doctest: +SKIP

Backends: ``"inductor"`` (torch.compile, :mod:`lowbit.runtime.inductor`), ``"onnxruntime"`` and
``"openvino"`` (lowbit's ONNX export run in-process, :mod:`lowbit.runtime.onnx_backends`), and
``"auto"``: every available one is built, checked against the eager model and timed at the
example's shapes (interleaved rounds); the fastest wins, eager included, so ``auto`` never returns
a slower model. A backend that is missing or cannot take the model is named with its reason in
``candidates``; asked for by name, it raises :class:`~lowbit.errors.BackendUnavailableError`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import BackendUnavailableError, ConfigError, InvalidModelError
from lowbit.runtime import inductor as ind
from lowbit.runtime import onnx_backends as ox
from lowbit.runtime.cache import resolve_cache_dir
from lowbit.runtime.signature import Signature, as_inputs

__all__ = ["BACKENDS", "Candidate", "CompiledModel", "compile"]

log = logging.getLogger(__name__)

BACKENDS = ("inductor", "onnxruntime", "openvino")
# a backend whose outputs sit further than this from the eager model's is wrong, not rounding
MIN_AGREEMENT_DB = 20.0


@dataclass
class Candidate:
    """One backend as ``auto`` saw it: build time, median latency, agreement, or why not."""

    backend: str
    compile_s: float | None = None
    median_ms: float | None = None
    agreement_db: float | None = None
    skipped: str | None = None
    cached: bool = False

    def line(self) -> str:
        if self.skipped:
            return f"{self.backend}: not used ({self.skipped})"
        ms = "" if self.median_ms is None else f"{self.median_ms:.3f} ms"
        agree = "" if self.agreement_db is None else f", {self.agreement_db:.0f} dB from eager"
        built = "" if self.compile_s is None else f", built in {self.compile_s:.1f} s"
        return f"{self.backend}: {ms}{agree}{built}{' (cached export)' if self.cached else ''}"


class CompiledModel(nn.Module):
    """A lowbit model on a graph runtime; call it like the model it came from.

    ``source`` is the lowbit model, ``backend`` the runtime, ``compile_s`` the build time,
    ``why`` how it was chosen, ``candidates`` every backend tried.
    """

    def __init__(self, source, backend, signature, runner, compile_s, why="", candidates=(),
                 keep_alive=None):  # fmt: skip
        super().__init__()
        self.source = source  # a submodule: .eval(), state_dict and repr reach the lowbit model
        self.backend, self.signature, self.runner = backend, signature, runner
        self.compile_s, self.why, self.candidates = compile_s, why, list(candidates)
        self._keep_alive = keep_alive  # a temporary export folder that must outlive the runner

    def forward(self, *args, **kwargs):
        if self.backend in ("eager", "inductor"):
            with torch.no_grad():
                return self.runner(*args, **kwargs)
        return self.signature.unflatten(self.runner(self.signature.flatten(args, kwargs)))

    def extra_repr(self) -> str:
        return f"backend={self.backend}, compile_s={self.compile_s:.1f}"


def agreement_db(ref: list[torch.Tensor], out: list[torch.Tensor]) -> float:
    """SQNR (dB) of a backend's outputs against the eager model's, over all float outputs;
    integer outputs must match exactly (else -inf)."""
    from lowbit.measure.accuracy import sqnr_db

    if len(ref) != len(out):
        return -math.inf
    floats = [(r, o) for r, o in zip(ref, out, strict=True) if r.is_floating_point()]
    exact = all(torch.equal(r, o) for r, o in zip(ref, out, strict=True)
                if not r.is_floating_point())  # fmt: skip
    if not exact or any(r.shape != o.shape for r, o in floats):
        return -math.inf
    if not floats:
        return math.inf
    a = torch.cat([r.float().reshape(-1) for r, _ in floats])
    b = torch.cat([o.float().reshape(-1) for _, o in floats])
    return float(sqnr_db(a, b))


def _is_quantized(model: nn.Module) -> bool:
    from lowbit.nn.base import QuantModule

    return any(isinstance(m, QuantModule) for m in model.modules())


def _build(backend, model, sig, example, calibration, cache) -> tuple[Any, bool, Any]:
    """``(runner, export reused, folder to keep alive)`` for one backend."""
    if backend == "inductor":
        reason = ind.inductor_missing()
        if reason:
            raise BackendUnavailableError(reason)
        return ind.inductor_runner(model), False, None
    reason = ox.runtime_missing(backend)
    if reason:
        raise BackendUnavailableError(reason)
    tmp = ox.temp_folder() if cache is None else None
    folder = cache if cache is not None else Path(tmp.name)
    try:
        path, reused = ox.export_cached(model, sig, example, calibration, folder)
    except Exception as exc:  # noqa: BLE001 - the exporter's errors name the layer; keep them
        raise BackendUnavailableError(f"{backend} cannot take this model: ONNX export "
                                      f"failed: {type(exc).__name__}: {exc}") from exc  # fmt: skip
    return ox.build_runner(backend, path, sig, cache), reused, tmp


def _leaves(compiled: CompiledModel, names, example, keywords) -> list[torch.Tensor]:
    """The output tensors of one call on ``example``, called as the user calls the model."""
    out = compiled(**dict(zip(names, example, strict=True))) if keywords else compiled(*example)
    return torch.utils._pytree.tree_leaves(out)


def compile(  # noqa: A001 - lowbit.compile mirrors torch.compile on purpose
    model: nn.Module,
    example_inputs: Any,
    *,
    backend: str = "auto",
    calibration=None,
    cache_dir=None,
    measure_s: float = 2.0,
) -> CompiledModel:
    """``model`` (quantized by lowbit) on a graph runtime, taking the same inputs as ``model``.

    Args:
        example_inputs: one batch as the model takes it: a tensor, a tuple of positional
            tensors, or a dict of keyword tensors (a tokenizer's output). ``auto`` times the
            backends at these shapes.
        backend: ``"auto"``, ``"inductor"``, ``"onnxruntime"`` or ``"openvino"``.
        calibration: batches (in the example's form) to calibrate the ONNX graph's conv-output
            grids on (default: the example alone).
        cache_dir: where exported graphs are kept (default ``~/.cache/lowbit``); False: none.
        measure_s: seconds of timing per backend for ``auto``.

    The result's ``compile_s`` is the time to build it (export, runtime compilation, first call);
    ``why`` says how the backend was chosen; ``candidates`` lists every backend tried.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose 'auto' or one of {BACKENDS}")
    if not isinstance(model, nn.Module) or not _is_quantized(model):
        raise InvalidModelError(
            "lowbit.compile takes a model quantized by lowbit (it found no quantized layer); "
            "call lowbit.quantize(model, ...) first, or torch.compile for a float model"
        )
    model = model.eval()
    sig = Signature.of(model, example_inputs)
    names, example, keywords = as_inputs(example_inputs)
    calib = ox.calibration_tuples(calibration, sig)
    cache = resolve_cache_dir(cache_dir)
    eager = CompiledModel(model, "eager", sig, model, 0.0)
    ref = _leaves(eager, names, example, keywords)
    chosen = BACKENDS if backend == "auto" else (backend,)
    built: dict[str, CompiledModel] = {}
    cands = []
    for name in chosen:
        cand, t0 = Candidate(name), time.perf_counter()
        try:
            runner, cand.cached, keep = _build(name, model, sig, example, calib, cache)
            compiled = CompiledModel(model, name, sig, runner, 0.0, keep_alive=keep)
            out = _leaves(compiled, names, example, keywords)  # compiles inductor
        except BackendUnavailableError as exc:
            if backend != "auto":
                raise
            cand.skipped = str(exc)
            cands.append(cand)
            continue
        compiled.compile_s = cand.compile_s = time.perf_counter() - t0
        cand.agreement_db = agreement_db(ref, out)
        if cand.agreement_db < MIN_AGREEMENT_DB:
            msg = (f"{name}'s outputs differ from the eager model's ({cand.agreement_db:.1f} dB "
                   f"SQNR, below {MIN_AGREEMENT_DB:.0f} dB)")  # fmt: skip
            if backend != "auto":
                raise BackendUnavailableError(msg + "; use another backend")
            cand.skipped = msg
        else:
            built[name] = compiled
        cands.append(cand)
    if backend != "auto":
        compiled = built[backend]
        compiled.why, compiled.candidates = f"asked for {backend}", cands
        return compiled
    return _choose(eager, names, example, keywords, built, cands, measure_s)


def _choose(eager, names, example, keywords, built, cands, measure_s) -> CompiledModel:
    """Time eager and every built backend (interleaved) and keep the fastest."""
    from lowbit.measure.latency import compare_latency

    fns = {n: (lambda c=c: _leaves(c, names, example, keywords))
           for n, c in {"eager": eager, **built}.items()}  # fmt: skip
    lat = compare_latency(fns, rounds=3, min_time_s=measure_s)
    for cand in cands:
        if cand.backend in lat:
            cand.median_ms = lat[cand.backend].median_ms
    cands = [*cands, Candidate("eager", median_ms=lat["eager"].median_ms)]
    best = min(lat, key=lambda n: lat[n].median_ms)
    shapes = ", ".join(f"{n} {list(t.shape)}" for n, t in zip(names, example, strict=True))
    lines = "; ".join(c.line() for c in cands)
    chosen = eager if best == "eager" else built[best]
    chosen.why, chosen.candidates = f"fastest at {shapes}: {best} ({lines})", cands
    log.info("lowbit.compile: %s", chosen.why)
    return chosen
