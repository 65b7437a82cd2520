"""lowbit: quantize PyTorch models, run them on real integer kernels, and measure what it costs.

>>> import lowbit
>>> qmodel = lowbit.quantize(model, "W8A8", calibration=batches)  # doctest: +SKIP
>>> lowbit.save(qmodel, "model-w8a8/")  # doctest: +SKIP
>>> lowbit.model_size(qmodel) / lowbit.model_size(model)  # doctest: +SKIP
"""

from __future__ import annotations

# the subpackages users call as ``lowbit.qat.prepare(...)`` after a bare ``import lowbit``
from lowbit import algorithms, kernels, measure, nn, qat, transforms  # noqa: F401
from lowbit.analysis import allocate, analyze
from lowbit.config import QuantConfig, QuantMode, QuantScheme, TensorQuantSpec
from lowbit.deploy import BenchResult, SlowdownWarning, bench
from lowbit.errors import (
    ArtifactError,
    BackendUnavailableError,
    CalibrationError,
    ConfigError,
    InvalidModelError,
    LowbitError,
    NothingQuantizedWarning,
    UnknownPresetError,
    UnsupportedDeviceError,
    UnsupportedLayerError,
)
from lowbit.export import export_onnx
from lowbit.pipeline import QuantizationRecord, quantize
from lowbit.presets import PRESETS, get_preset, preset_names
from lowbit.ptq import ALGORITHMS, PTQOptions
from lowbit.reporting import Report, report
from lowbit.runtime import CompiledModel, compile  # noqa: A004
from lowbit.search import AutoResult, auto
from lowbit.serialization import artifact_size, load, model_size, save

__version__ = "0.1.0"

__all__ = [
    "quantize",
    "analyze",
    "allocate",
    "auto",
    "report",
    "export_onnx",
    "compile",
    "CompiledModel",
    "bench",
    "BenchResult",
    "SlowdownWarning",
    "Report",
    "AutoResult",
    "save",
    "load",
    "model_size",
    "artifact_size",
    "get_preset",
    "preset_names",
    "PRESETS",
    "QuantConfig",
    "QuantScheme",
    "QuantMode",
    "TensorQuantSpec",
    "QuantizationRecord",
    "PTQOptions",
    "ALGORITHMS",
    "LowbitError",
    "ConfigError",
    "UnknownPresetError",
    "CalibrationError",
    "InvalidModelError",
    "ArtifactError",
    "BackendUnavailableError",
    "UnsupportedLayerError",
    "NothingQuantizedWarning",
    "UnsupportedDeviceError",
    "__version__",
]  # the subpackages stay out: ``from lowbit import *`` must not replace ``torch.nn``
