"""``lowbit.quantize``: post-training quantization of a float model in one call.

>>> qmodel = lowbit.quantize(model, "W8A8", calibration=batches)         # static, calibrated  # doctest: +SKIP
>>> qmodel = lowbit.quantize(model, "W8A8-dynamic", exclude=["classifier"])  # doctest: +SKIP

Steps: validate the model (no NaN/Inf), copy it (unless ``inplace``), fold BatchNorm into convs,
pick a scheme per layer (include/exclude/overrides), calibrate static activation ranges, then swap
each ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` for its quantized twin. Layers that cannot be
quantized stay float and the reason is logged and kept in ``model.lowbit_record.skipped``.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.calibrate import collect_input_ranges
from lowbit.config import QuantConfig, QuantMode, QuantScheme
from lowbit.errors import (
    CalibrationError,
    ConfigError,
    InvalidModelError,
    NothingQuantizedWarning,
    UnsupportedDeviceError,
    UnsupportedLayerError,
)
from lowbit.granularity import GranularityKind
from lowbit.nn import QuantModule, is_quantizable, layer_class, unsupported_reason
from lowbit.nn.base import static_input_qparams
from lowbit.nn.module_protocol import CPU_ONLY
from lowbit.presets import get_preset
from lowbit.ptq.capture import materialize
from lowbit.ptq.options import PTQOptions, parse_algorithms
from lowbit.ptq.rescale import equalize, smooth
from lowbit.ptq.rounding import check_adaround
from lowbit.ptq.sequential import round_layers
from lowbit.targeting import scheme_for
from lowbit.transforms.bn_fold import _set, fold_batchnorm_
from lowbit.transforms.linearize import linearize_

__all__ = ["quantize", "resolve_config", "QuantizationRecord"]

log = logging.getLogger(__name__)


@dataclass
class QuantizationRecord:
    """What ``quantize`` did to a model; kept on it as ``model.lowbit_record`` and saved with it."""

    config: QuantConfig
    folded: list[dict[str, Any]] = field(default_factory=list)
    linearized: list[str] = field(default_factory=list)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ptq: dict[str, Any] = field(default_factory=dict)


def _as_scheme(value: str | QuantScheme) -> QuantScheme:
    if isinstance(value, QuantScheme):
        return value
    if isinstance(value, str):
        return get_preset(value)
    raise ConfigError(f"a scheme is a preset name or a QuantScheme, got {type(value).__name__}")


def resolve_config(
    scheme: str | QuantScheme | QuantConfig,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    overrides: Mapping[str, str | QuantScheme | None] | None = None,
) -> QuantConfig:
    """Merge the ``quantize`` arguments into one :class:`QuantConfig`.

    An override whose value is ``None`` keeps the matching layers in float.
    """
    config = scheme if isinstance(scheme, QuantConfig) else QuantConfig(_as_scheme(scheme))
    pairs = _override_pairs(overrides)
    extra_exclude = [p for p, s in pairs if s is None]
    extra_overrides = [(p, _as_scheme(s)) for p, s in pairs if s is not None]
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")
    return config.replace(
        include=tuple(include) if include is not None else config.include,
        exclude=config.exclude + tuple(exclude or ()) + tuple(extra_exclude),
        overrides=tuple(extra_overrides) + config.overrides,
    )


def _patterns(value: Any, what: str) -> list[str] | None:
    """``include``/``exclude``: one glob or a list of them (QuantConfig checks each one)."""
    if value is None or isinstance(value, str):
        return None if value is None else [value]
    if not isinstance(value, Iterable):
        raise ConfigError(
            f"{what} must be a module-name glob or a list of them, got {type(value).__name__}"
        )
    return list(value)


def _override_pairs(overrides: Any) -> list[tuple[Any, Any]]:
    """``overrides`` as ``(pattern, scheme)`` pairs: a mapping, or a list of pairs."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    if isinstance(overrides, list | tuple) and all(
        isinstance(p, list | tuple) and len(p) == 2 for p in overrides
    ):
        return [tuple(p) for p in overrides]
    raise ConfigError(
        "overrides is {pattern: scheme} (or a list of (pattern, scheme) pairs), e.g. "
        f"{{'head': 'W8A16', 'embed*': None}}; got {type(overrides).__name__}"
    )


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise InvalidModelError(
            f"lowbit.quantize takes a torch.nn.Module, got {type(model).__name__}"
        )
    done = next(((n, m) for n, m in model.named_modules()
                 if isinstance(m, QuantModule) or hasattr(m, "to_quantized")), None)  # fmt: skip
    if done is not None:
        raise InvalidModelError(
            f"the model is already quantized by lowbit (layer {done[0]!r} is a "
            f"{type(done[1]).__name__}); quantize the float model instead (quantizing codes "
            "again would compound the rounding), or lowbit.load a saved artifact"
        )
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.device.type != "cpu":
            raise UnsupportedDeviceError(
                f"tensor {name!r} is on device {str(tensor.device)!r}: {CPU_ONLY}. Move the "
                "model with model.cpu() first"
                + (" (a model on 'meta' has no weights yet: load them first, e.g. "
                   "load_state_dict(..., assign=True))" if tensor.device.type == "meta" else "")
            )
        bad = int((~torch.isfinite(tensor.detach())).sum()) if tensor.is_floating_point() else 0
        if bad:
            raise InvalidModelError(
                f"parameter {name!r} contains {bad} NaN/Inf value(s); lowbit cannot quantize a "
                "model with non-finite weights (calibration and BatchNorm folding would spread "
                "them). Fix or re-train the model"
            )


def _plan(model: nn.Module, config: QuantConfig, record: QuantizationRecord) -> dict[str, Any]:
    """``{name: (module, scheme)}`` for the layers to quantize; reasons for the others."""
    plan = {}
    # nn.MultiheadAttention passes out_proj.weight to its functional form: no swapping it
    direct = {f"{n}.out_proj" if n else "out_proj" for n, m in model.named_modules()
              if isinstance(m, nn.MultiheadAttention)}  # fmt: skip
    for name, module in model.named_modules(remove_duplicate=False):
        if not is_quantizable(module) and unsupported_reason(module) is None:
            continue
        scheme = scheme_for(name, config)
        reason = unsupported_reason(module) or _group_misfit(module, scheme)
        if name in direct:
            reason = "nn.MultiheadAttention reads this projection's weight directly; left in float"
        if scheme is None:
            record.skipped[name] = "excluded by include/exclude patterns"
        elif reason is not None:
            record.skipped[name] = reason
            log.info("keeping %s in float: %s", name, reason)
        else:
            plan[name] = (module, scheme)
    return plan


def _group_misfit(module: nn.Module, scheme: QuantScheme | None) -> str | None:
    """Why a group-wise scheme cannot split this layer's weight rows into groups (else None).

    Embedding tables fall back to per-row scales on their own; matmul and conv layers whose
    row length (``in_features``, or ``in_channels/groups * kernel size``) the group size does
    not divide stay in float, as in GPTQ/AWQ tool chains.
    """
    if scheme is None or scheme.weight is None or isinstance(module, nn.Embedding):
        return None
    gran = scheme.weight.granularity_value
    if gran.kind is not GranularityKind.PER_GROUP:
        return None
    row = module.weight[0].numel()
    if row % gran.group_size:
        return (
            f"group size {gran.group_size} does not divide the weight row length {row}; "
            "give this layer a per-channel scheme with overrides={...} to quantize it"
        )
    return None


def quantize(
    model: nn.Module,
    scheme: str | QuantScheme | QuantConfig,
    *,
    calibration: Any = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    overrides: Mapping[str, str | QuantScheme | None] | None = None,
    algorithm: str | Iterable[str] | None = None,
    algorithm_options: PTQOptions | Mapping[str, Any] | None = None,
    inplace: bool = False,
    progress: bool | None = None,
    strict: bool = False,
) -> nn.Module:
    """Quantize ``model`` and return it (a copy unless ``inplace``).

    Args:
        model: a float ``nn.Module``.
        scheme: a preset name (``"W8A8"``, ``"W4A16-g128"``, ``"NF4"``, ``"KMEANS16"``...; all
            of them in ``lowbit.preset_names()``), a :class:`QuantScheme` or a full
            :class:`QuantConfig`.
        calibration: batches for static schemes (tensors, tuples of args, or dicts of kwargs).
        include / exclude: glob patterns of module names to quantize / keep in float.
        overrides: ``{pattern: scheme}`` per-layer schemes (mixed precision); ``None`` = float.
        algorithm: post-training error correction, one name or a list (run as: rescaling,
            then rounding, then bias correction, whatever the list's order):
            ``"rtn"`` (default), ``"cle"``, ``"bias_correction"``, ``"adaround"``, ``"gptq"``,
            ``"smoothquant"``, ``"awq"`` (see :mod:`lowbit.ptq`); all but ``rtn`` need
            ``calibration``. Per-layer errors and timings land in ``model.lowbit_record.ptq``.
        algorithm_options: :class:`lowbit.PTQOptions` (or a dict of its fields).
        inplace: modify ``model`` itself instead of a copy.
        progress: show progress bars for calibration and layer conversion (default: when
            attached to a terminal).
        strict: raise :class:`~lowbit.UnsupportedLayerError` when no layer can be quantized
            (default: a :class:`~lowbit.errors.NothingQuantizedWarning`, and the float model).
    """
    config = resolve_config(scheme, include, exclude, overrides)
    if algorithm is not None:
        config = config.replace(algorithms=parse_algorithms(algorithm))
    if algorithm_options is not None:
        config = config.replace(ptq_options=algorithm_options)
    _check_model(model)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    record = QuantizationRecord(config=config)
    # GPT-2's Conv1D projections become nn.Linear (exact; load does it to the skeleton too)
    record.linearized = linearize_(model)
    if config.fold_batchnorm:
        record.folded = fold_batchnorm_(model)
    plan = _plan(model, config, record)
    codes: dict[str, Any] = {}
    if config.algorithms:
        _check_algorithms(plan, config.algorithms)
        calibration = _need_batches(calibration, config.algorithms)
        _rescale(model, plan, calibration, config, record)
    ranges = _calibrate(model, plan, calibration, progress)
    qparams = {
        n: static_input_qparams(s.activation, *ranges[n])
        for n, (m, s) in plan.items()
        if n in ranges and _needs_calibration(m, s)
    }
    if set(config.algorithms) & {"gptq", "adaround", "bias_correction"}:
        codes = _round(model, plan, qparams, calibration, config, record, progress)
    done: dict[int, nn.Module] = {}  # a layer registered under several names is quantized once
    layers = tqdm(
        plan.items(),
        desc="quantizing",
        unit="layer",
        leave=False,
        disable=(not progress) if progress is not None else None,
    )
    for name, (module, layer_scheme) in layers:
        if id(module) in done:
            _set(model, name, done[id(module)])
            record.layers[name] = done[id(module)].layer_spec()
            continue
        if _needs_calibration(module, layer_scheme) and name not in qparams:
            record.skipped[name] = "no calibration batch reached this layer"
            log.warning("keeping %s in float: no calibration batch reached it", name)
            continue
        extra = {"qweight": codes[name]} if name in codes else {}
        qmodule = layer_class(module, layer_scheme).from_float(
            module, layer_scheme, qparams.get(name), name, **extra
        )
        done[id(module)] = qmodule
        if name:
            _set(model, name, qmodule)
        else:  # the model is itself a single layer
            model = qmodule
        record.layers[name] = qmodule.layer_spec()
    if not record.layers:
        _nothing_quantized(model, record, strict)
    model.lowbit_record = record
    return model


def _nothing_quantized(model: nn.Module, record: QuantizationRecord, strict: bool) -> None:
    """Say loudly that the returned model is the float model (or refuse, under ``strict``)."""
    reasons = "; ".join(f"{n or '<the model>'!r}: {r}" for n, r in list(record.skipped.items())[:3])
    more = f" (and {len(record.skipped) - 3} more)" if len(record.skipped) > 3 else ""
    why = (
        f"every candidate layer was left float: {reasons}{more}"
        if record.skipped
        else f"{type(model).__name__} has no nn.Linear, nn.Conv1d/2d or nn.Embedding layer"
    )
    msg = f"lowbit.quantize quantized no layer, so the model is still float32: {why}"
    if strict:
        raise UnsupportedLayerError(msg)
    warnings.warn(f"{msg}. Pass strict=True to make this an error", NothingQuantizedWarning,
                  stacklevel=3)  # fmt: skip


def _needs_calibration(module: nn.Module, scheme: QuantScheme) -> bool:
    """Static schemes calibrate the input of matmul/conv layers (an embedding takes ids)."""
    return scheme.mode is QuantMode.STATIC and not isinstance(module, nn.Embedding)


def _calibrate(
    model: nn.Module, plan: dict[str, Any], calibration: Any, progress: bool | None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    targets = {n: (m, s.activation) for n, (m, s) in plan.items() if _needs_calibration(m, s)}
    if not targets:
        return {}
    return collect_input_ranges(model, targets, calibration, progress=progress)


def _need_batches(calibration: Any, algorithms: tuple[str, ...]) -> Any:
    if calibration is None:
        raise CalibrationError(
            f"algorithm {'+'.join(algorithms)} fits the quantized model to data: pass "
            "calibration=[batch, ...] (a few hundred samples are usually enough)"
        )
    return materialize(calibration)


def _integer_layers(plan: dict[str, Any]) -> dict[str, Any]:
    """The Linear/Conv layers the algorithms work on: integer weights (FP16/BF16 casts have no
    rounding to correct)."""
    layers, seen = {}, set()
    for n, (m, s) in plan.items():
        if n and s.weight is not None and isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            if id(m) not in seen:  # a module under two names is rescaled and rounded once
                seen.add(id(m))
                layers[n] = (m, s)
    return layers


def _check_algorithms(plan: dict[str, Any], algorithms: tuple[str, ...]) -> None:
    """Refuse impossible combinations before any work is done."""
    if "adaround" in algorithms:
        for n, (_m, s) in _integer_layers(plan).items():
            check_adaround(s.weight, f"layer {n!r}")


def _rescale(model, plan, batches, config: QuantConfig, record: QuantizationRecord) -> None:
    """CLE, SmoothQuant and AWQ on the float model (before ranges are calibrated)."""
    record.ptq = {"algorithms": list(config.algorithms), "rescaled": [], "layers": {},
                  "seconds": {}}  # fmt: skip
    dense = {n: m for n, (m, _s) in _integer_layers(plan).items()}
    linears = {n: m for n, m in dense.items() if isinstance(m, nn.Linear)}
    schemes = {n: s for n, (_m, s) in plan.items()}
    for name in config.algorithms:
        start = time.perf_counter()
        if name == "cle":
            record.ptq["rescaled"] += equalize(model, dense, batches[0], config.ptq_options)
        elif name in ("smoothquant", "awq"):
            record.ptq["rescaled"] += smooth(model, linears, schemes, batches, name,
                                             config.ptq_options)  # fmt: skip
        else:
            continue
        record.ptq["seconds"][name] = round(time.perf_counter() - start, 3)


def _round(model, plan, qparams, batches, config, record, progress) -> dict[str, Any]:
    """GPTQ/AdaRound/RTN codes and bias correction, layer by layer."""
    start = time.perf_counter()
    codes, layers = round_layers(model, _integer_layers(plan), qparams, batches, config.algorithms,
                                 config.ptq_options, progress)  # fmt: skip
    record.ptq["layers"] = layers
    names = [a for a in config.algorithms if a in ("gptq", "adaround", "bias_correction")]
    record.ptq["seconds"]["+".join(names)] = round(time.perf_counter() - start, 3)
    return codes
