"""``lowbit.report``: every scheme measured on the user's model, in one run.

For each variant (float32 first, then presets and ``PRESET+algorithm`` techniques) it measures,
in this process: artifact size and compression ratio (from the saved files), the user's metric
through ``evaluate``, latency at batch 1 and at the calibration batch size (medians; float32 and
every variant timed in interleaved rounds of one run) with the kernels each layer ran at those
sizes (one untimed call each), an energy estimate per inference (:mod:`.energy`) and RAPL energy
where readable, and each layer's weight SQNR. With ``train`` batches it also times training epochs (float32,
bf16 autocast, QAT) and adds a QAT row next to the PTQ ones.

>>> rep = lowbit.report(model, calibration=batches, evaluate=accuracy)  # doctest: +SKIP
>>> rep.save("report/")  # report.md, report.html, report.json and the plots  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.calibrate import PreparedBatches
from lowbit.config import QuantMode
from lowbit.errors import ConfigError
from lowbit.measure.latency import compare_latency
from lowbit.measure.machine import machine_info
from lowbit.measure.size import bits_per_weight, layer_weight_bytes
from lowbit.nn.kernel_calls import record_kernels
from lowbit.ptq.capture import call_model, materialize
from lowbit.reporting.energy import SOURCE, count_ops, estimate_energy_pj, rapl_energy_uj
from lowbit.reporting.result import Report
from lowbit.serialization import artifact_size, save
from lowbit.transforms.bn_fold import fold_batchnorm_

__all__ = ["report", "DEFAULT_SCHEMES", "GROUPS"]

# Which table each variant belongs to (a variant may appear in several).
GROUPS = {
    "precision": ("FP16", "BF16", "W8A8", "W8A8-dynamic", "W8A16", "W4A16", "W3A16",
                  "W2A16-g64", "TERNARY", "BINARY"),
    "4-bit formats": ("W4A16", "NF4", "POT4", "KMEANS16"),
    "techniques": ("W4A8", "W4A8+cle+bias_correction", "W4A8+gptq", "W4A8 QAT"),
}  # fmt: skip
_RESCALERS = {"cle", "smoothquant", "awq"}
DEFAULT_SCHEMES = tuple(dict.fromkeys(s for g in GROUPS.values() for s in g if "QAT" not in s))


def _batch_size(batch: tuple[tuple, dict]) -> int:
    tensors = [t for t in _tensors(batch) if t.dim()]
    if not tensors:
        raise ConfigError("report needs calibration batches holding tensors [batch, ...]")
    return int(tensors[0].shape[0])


def _slice(batch: tuple[tuple, dict], n: int) -> tuple[tuple, dict]:
    """The first ``n`` samples of a batch: tensors whose dim 0 is the batch size are cut (in
    lists, tuples and dicts too); others (masks, constants) are kept whole."""
    size = _batch_size(batch)

    def cut(v):
        if isinstance(v, torch.Tensor):
            return v[:n] if v.dim() and v.shape[0] == size else v
        if isinstance(v, list | tuple):
            return type(v)(cut(x) for x in v)
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        return v

    args, kwargs = batch
    return cut(tuple(args)), cut(dict(kwargs))


def _precision(module: nn.Module) -> tuple[str, int]:
    """(arithmetic, activation bytes) of a layer as the energy estimate counts it."""
    scheme = getattr(module, "scheme", None)
    if scheme is None:
        return "fp32", 4
    if scheme.mode in (QuantMode.STATIC, QuantMode.DYNAMIC):
        return "int8", 1
    return "fp16", 2  # weight-only and cast schemes: 16-bit activations (bf16/fp16)


def _kernels(qmodel: nn.Module, batch: tuple[tuple, dict]) -> dict[str, Any]:
    """What one untimed call ran: a summary (layers per kernel) and the float-compute layers."""
    with torch.inference_mode(), record_kernels(qmodel) as calls:
        call_model(qmodel, batch)
    return {"summary": calls.summary(), "float_compute": calls.float_layers()}


class _Measurer:
    """Measures one variant against the float model's layers, batches and latency."""

    def __init__(self, model, batches, evaluate, min_time_s):
        self.model, self.batches, self.evaluate = model, batches, evaluate
        self.min_time_s = min_time_s
        self.big, self.one = batches[0], _slice(batches[0], 1)
        self.ops = count_ops(model, self.big)
        folded = copy.deepcopy(model).eval()
        fold_batchnorm_(folded)
        self.float_weights = {n: m.weight.detach().float() for n, m in folded.named_modules()
                              if n in self.ops}  # fmt: skip
        self.largest = max(self.float_weights, key=lambda n: self.float_weights[n].numel())
        self.models: dict[str, nn.Module] = {}  # timed together at the end: :meth:`time_all`

    def row(self, name: str, qmodel: nn.Module, seconds: float) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            path = save(qmodel, tmp)
            size = artifact_size(path)
            record = getattr(qmodel, "lowbit_record", None)
            bits = bits_per_weight(path) if record is not None and record.layers else 32.0
        self.models[name] = qmodel
        layers = dict(qmodel.named_modules())
        prec = {n: _precision(layers[n]) for n in self.ops}
        wbytes = {n: self._weight_traffic(layers[n], n) for n in self.ops}
        energy = estimate_energy_pj(self.ops, {n: p[0] for n, p in prec.items()}, wbytes,
                                    {n: p[1] for n, p in prec.items()})  # fmt: skip
        return {
            "variant": name,
            "metric": float(self.evaluate(qmodel)),
            "bits_per_weight": bits,
            "size_bytes": size,
            "kernels_b1": _kernels(qmodel, self.one),
            "kernels_bn": _kernels(qmodel, self.big),
            "energy_est_uj": energy["total"] / 1e6,
            "energy_est_parts_uj": {k: v / 1e6 for k, v in energy.items()},
            "layer_sqnr_db": self._layer_sqnr(layers, qmodel),
            "grid": self._grid(layers),
            "quantize_s": seconds,
            "layers_quantized": len(record.layers) if record is not None else 0,
            "layers_float": len(record.skipped) if record is not None else 0,
        }

    def time_all(self, rows: list[dict[str, Any]]) -> None:
        """Latency at batch 1 and at the large batch of every variant, float32 included, in
        interleaved rounds (one :func:`compare_latency` per batch size), and RAPL µJ per call
        where the counter is readable: each variant's speed-up comes from the same run."""
        for key, batch in (("latency_b1_ms", self.one), ("latency_bn_ms", self.big)):
            fns = {n: (lambda m=m, b=batch: call_model(m, b)) for n, m in self.models.items()}
            timed = compare_latency(fns, min_time_s=self.min_time_s, counter=rapl_energy_uj)
            for row in rows:
                row[key] = timed[row["variant"]].median_ms
                if key == "latency_bn_ms":
                    row["energy_rapl_uj"] = timed[row["variant"]].counter_per_call

    def _weight_traffic(self, module: nn.Module, name: str) -> float:
        """Weight bytes read for one batch: the whole matrix, or only the gathered rows of an
        embedding table (``ids x row bytes``)."""
        nbytes = layer_weight_bytes(module)
        rows = getattr(module, "num_embeddings", None)
        return nbytes if rows is None else nbytes / rows * self.ops[name].in_elements

    def _grid(self, layers: dict[str, nn.Module]) -> list[float] | None:
        """The distinct values row 0 of the largest layer can take (its quantization grid)."""
        deq = getattr(layers.get(self.largest), "dequantized_weight", None)
        if deq is None:
            return None
        row = deq().float().reshape(self.float_weights[self.largest].shape[0], -1)[0]
        return sorted({round(float(v), 6) for v in row.unique()[:4096]})

    def _layer_sqnr(self, layers: dict[str, nn.Module], qmodel) -> dict[str, float | None]:
        """Weight SQNR per layer; None for float layers, and for every layer of a variant whose
        algorithms rescale weights on purpose (CLE, SmoothQuant, AWQ): not an error there."""
        record = getattr(qmodel, "lowbit_record", None)
        if record is not None and set(record.config.algorithms) & _RESCALERS:
            return dict.fromkeys(self.float_weights)
        out = {}
        for n, w in self.float_weights.items():
            deq = getattr(layers.get(n), "dequantized_weight", None)
            if deq is None:
                out[n] = None  # float layer
                continue
            err = (deq().float().reshape(w.shape) - w).pow(2).sum().clamp_min(1e-30)
            out[n] = float(10 * torch.log10(w.pow(2).sum() / err))
        return out


def _check_variants(schemes: Sequence[str]) -> None:
    """Every preset and algorithm name, before minutes of measuring."""
    from lowbit.presets import get_preset
    from lowbit.ptq.options import parse_algorithms

    for name in schemes:
        preset, *algorithms = name.split("+")
        get_preset(preset)
        if algorithms:
            parse_algorithms(algorithms)


def _variant(model, name: str, batches) -> nn.Module:
    import lowbit

    preset, *algorithms = name.split("+")
    return lowbit.quantize(model, preset, calibration=batches, algorithm=algorithms or None,
                           progress=False)  # fmt: skip


def _train_rows(model, batches, train, epochs: int, qat_epochs: int, measure: _Measurer, rows):
    """Seconds per training epoch (float32, bf16 autocast, QAT W4A8) and the QAT model's row."""
    from lowbit.qat import convert, fit, prepare

    loader = list(train)
    if not loader:
        raise ConfigError("train is empty: give (inputs, targets) batches or train=None")
    out = []
    for label, ctx in (("float32", None), ("bf16 autocast", torch.bfloat16)):
        m = copy.deepcopy(model)
        with torch.autocast("cpu", dtype=ctx) if ctx is not None else nullcontext():
            hist = fit(m, loader, epochs, lr=1e-4, progress=False)
        out.append({"training": label, "epochs": epochs,
                    "seconds_per_epoch": sum(hist.seconds) / len(hist.seconds),
                    "metric_after": float(measure.evaluate(m.eval()))})  # fmt: skip
    start = time.perf_counter()
    qat = prepare(model, "W4A8", calibration=batches)
    hist = fit(qat, loader, qat_epochs, lr=1e-4, teacher=copy.deepcopy(model), progress=False)
    qmodel = convert(qat)
    out.append({"training": "QAT W4A8 (LSQ + distillation)", "epochs": qat_epochs,
                "seconds_per_epoch": sum(hist.seconds) / len(hist.seconds),
                "metric_after": float(measure.evaluate(qmodel))})  # fmt: skip
    rows.append(measure.row("W4A8 QAT", qmodel, time.perf_counter() - start))
    return out


def report(
    model: nn.Module,
    *,
    calibration: Any,
    evaluate: Callable[[nn.Module], float],
    schemes: Sequence[str] | None = None,
    train: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    train_epochs: int = 1,
    qat_epochs: int = 3,
    metric_name: str = "metric",
    title: str = "lowbit report",
    min_time_s: float = 0.5,
    progress: bool | None = None,
) -> Report:
    """Quantize ``model`` with every variant in ``schemes`` and measure each (see module doc).

    Args:
        model: the float model (never modified).
        calibration: batches; the first one also sets the large-batch latency and the energy
            count (batch 1 is its first sample).
        evaluate: ``evaluate(model) -> float``, higher is better (accuracy, mAP, cosine...).
        schemes: presets or ``PRESET+algorithm`` variants (default :data:`DEFAULT_SCHEMES`).
        train: ``(inputs, targets)`` batches (classification, cross-entropy): adds the
            training-time table and a ``W4A8 QAT`` row (``qat_epochs`` epochs, distilled from
            the float model) next to the PTQ techniques.
        metric_name: what ``evaluate`` returns, for the tables ("top-1", "cosine"...).
        min_time_s: time per latency measurement.
    """
    if not callable(evaluate):
        raise ConfigError("evaluate must be a function: evaluate(model) -> float, higher is better")
    if isinstance(schemes, str) or (schemes is not None and not schemes):
        raise ConfigError("schemes must be a non-empty list, e.g. ['W8A8', 'W4A16']")
    schemes = tuple(DEFAULT_SCHEMES if schemes is None else schemes)
    _check_variants(schemes)
    if train_epochs < 1 or qat_epochs < 1:
        raise ConfigError("train_epochs and qat_epochs must be >= 1")
    start = time.perf_counter()
    batches = materialize(calibration)
    model = copy.deepcopy(model).eval()
    measure = _Measurer(model, PreparedBatches(batches), evaluate, min_time_s)
    rows = [measure.row("float32", model, 0.0)]
    for name in tqdm(schemes, desc="report", unit="variant", leave=False,
                     disable=(not progress) if progress is not None else None):  # fmt: skip
        t0 = time.perf_counter()
        qmodel = _variant(model, name, batches)
        rows.append(measure.row(name, qmodel, time.perf_counter() - t0))
    training = []
    if train is not None:
        training = _train_rows(model, batches, train, train_epochs, qat_epochs, measure, rows)
    measure.time_all(rows)
    meta = {
        "title": title,
        "metric": metric_name,
        "schemes": list(schemes),
        "calibration_batches": len(batches),
        "batch_size": _batch_size(batches[0]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "machine": machine_info(),
        "energy_source": SOURCE,
        "rapl": rapl_energy_uj() is not None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    w = measure.float_weights[measure.largest]
    meta["histogram_layer"] = measure.largest
    hist = w.reshape(w.shape[0], -1)[0].tolist()  # row 0: the weights one set of scales covers
    return Report(rows=rows, training=training, meta=meta, groups=GROUPS, weights_row=hist)


def _tensors(batch) -> list[torch.Tensor]:
    """Every tensor in a batch, nested lists/tuples/dicts included."""

    def walk(v):
        if isinstance(v, torch.Tensor):
            return [v]
        if isinstance(v, list | tuple):
            return [t for x in v for t in walk(x)]
        if isinstance(v, dict):
            return [t for x in v.values() for t in walk(x)]
        return []

    args, kwargs = batch
    return walk(list(args)) + walk(dict(kwargs))
