"""Quantization configs: frozen values that round-trip through dict, JSON and YAML.

A :class:`QuantScheme` says *how* one layer is quantized (weight spec, activation spec, mode);
a :class:`QuantConfig` says *which* layers get which scheme (include/exclude globs and per-pattern
overrides, which is how mixed precision is written down). The same dict is the recipe file, the
CLI's input and the metadata stored in a saved artifact.

>>> cfg = QuantConfig(scheme=get_preset("W8A8-dynamic"), exclude=("classifier",))
>>> QuantConfig.from_json(cfg.to_json()) == cfg
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

import yaml

from lowbit.errors import ConfigError
from lowbit.formats import CodebookFormat, FloatFormat, IntFormat, WeightFormat, get_format
from lowbit.granularity import Granularity, GranularityKind
from lowbit.ptq.options import PTQOptions, parse_algorithms
from lowbit.ranges import RangeMethod

__all__ = ["QuantMode", "TensorQuantSpec", "QuantScheme", "QuantConfig", "CONFIG_VERSION"]

CONFIG_VERSION = 1


class QuantMode(str, Enum):
    """How activations are handled at run time."""

    STATIC = "static"  # activation ranges fixed by calibration
    DYNAMIC = "dynamic"  # activation scales computed from each input at run time
    WEIGHT_ONLY = "weight_only"  # integer weights, 16-bit activations
    CAST = "cast"  # float passthrough: fp16 / bf16 weights and compute


@dataclass(frozen=True)
class TensorQuantSpec:
    """How one tensor (a weight or an activation) is quantized.

    Args:
        format: number format name: uniform ``int2..int16``/``uint2..uint16`` (weights and
            activations); for weights also ``nf2..nf8``, ``pot2..pot6``, ``binary``,
            ``ternary`` (grids) and ``kmeans2..kmeans256`` (codebooks).
        granularity: ``per_tensor``, ``per_channel[:axis]``, ``per_group:N`` or ``per_token``.
        symmetric: zero point fixed at the grid centre (True) or fitted to the range (False).
        range_method: how calibration statistics become a range (activations only).
        percentile: the kept mass for ``range_method="percentile"``.
    """

    format: str = "int8"
    granularity: str = "per_tensor"
    symmetric: bool = True
    range_method: RangeMethod = RangeMethod.MINMAX
    percentile: float = 99.99

    def __post_init__(self) -> None:
        fmt = get_format(self.format)
        if isinstance(fmt, FloatFormat):
            raise ConfigError(
                f"TensorQuantSpec takes an integer, grid or codebook format, got {self.format!r}; "
                "for fp16/bf16 use a cast scheme (presets 'FP16', 'BF16')"
            )
        object.__setattr__(self, "format", fmt.name)
        gran = Granularity.parse(self.granularity)
        object.__setattr__(self, "granularity", str(gran))
        if not isinstance(fmt, IntFormat) and not self.symmetric:
            raise ConfigError(f"{fmt.name} is symmetric by construction; drop symmetric=False")
        if isinstance(fmt, CodebookFormat) and (
            gran.kind is GranularityKind.PER_TOKEN
            or (gran.kind is GranularityKind.PER_CHANNEL and gran.axis != 0)
        ):
            raise ConfigError(
                f"{fmt.name} learns one codebook per layer (per_tensor), per output channel "
                f"(per_channel) or per layer over group-scaled weights (per_group:N), not {gran}"
            )
        try:
            object.__setattr__(self, "range_method", RangeMethod(self.range_method))
        except ValueError:
            choices = ", ".join(m.value for m in RangeMethod)
            raise ConfigError(
                f"unknown range_method {self.range_method!r}; use {choices}"
            ) from None
        if not 0.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")

    @property
    def number_format(self) -> WeightFormat:
        return get_format(self.format)  # type: ignore[return-value]

    @property
    def int_format(self) -> IntFormat:
        """The uniform integer format (what activations and integer kernels need)."""
        fmt = get_format(self.format)
        if not isinstance(fmt, IntFormat):
            raise ConfigError(f"{fmt.name} is not a uniform integer format")
        return fmt

    @property
    def granularity_value(self) -> Granularity:
        return Granularity.parse(self.granularity)


@dataclass(frozen=True)
class QuantScheme:
    """How one layer is quantized.

    Args:
        name: display name (the preset's name, or a user label).
        mode: static, dynamic, weight-only or cast.
        weight: integer weight spec (None for ``cast``).
        activation: activation spec (static and dynamic modes only).
        compute_dtype: ``bf16``/``fp16`` for weight-only activations and cast schemes.
    """

    name: str
    mode: QuantMode
    weight: TensorQuantSpec | None = None
    activation: TensorQuantSpec | None = None
    compute_dtype: str | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", QuantMode(self.mode))
        except ValueError:
            choices = ", ".join(m.value for m in QuantMode)
            raise ConfigError(f"unknown mode {self.mode!r}; use one of {choices}") from None
        if isinstance(self.weight, dict):
            object.__setattr__(self, "weight", TensorQuantSpec(**self.weight))
        if isinstance(self.activation, dict):
            object.__setattr__(self, "activation", TensorQuantSpec(**self.activation))
        self._validate()

    def _validate(self) -> None:
        mode = self.mode
        if mode is QuantMode.CAST:
            if self.compute_dtype not in ("fp16", "bf16") or self.weight or self.activation:
                raise ConfigError("a cast scheme takes compute_dtype 'fp16' or 'bf16' and no specs")
            return
        if self.weight is None:
            raise ConfigError(f"a {mode.value} scheme needs a weight spec")
        if mode in (QuantMode.STATIC, QuantMode.DYNAMIC) and self.activation is None:
            raise ConfigError(f"a {mode.value} scheme needs an activation spec")
        if mode is QuantMode.WEIGHT_ONLY and self.activation is not None:
            raise ConfigError("a weight_only scheme takes no activation spec")
        if self.activation is not None and not isinstance(self.activation.number_format, IntFormat):
            raise ConfigError(
                f"activations take uniform integer formats (int8, uint8...), "
                f"got {self.activation.format!r}"
            )
        if mode is QuantMode.DYNAMIC and self.activation.granularity_value.kind not in (
            GranularityKind.PER_TOKEN,
            GranularityKind.PER_TENSOR,
        ):
            raise ConfigError("dynamic activations are per_token or per_tensor")
        if self.compute_dtype not in (None, "fp16", "bf16", "fp32"):
            raise ConfigError(
                f"compute_dtype must be fp16, bf16 or fp32, got {self.compute_dtype!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantScheme:
        return _from_plain(cls, data)


@dataclass(frozen=True)
class QuantConfig:
    """Which layers get which scheme.

    Args:
        scheme: the default scheme.
        include: glob patterns of module names to quantize (empty = every supported layer).
        exclude: glob patterns of module names to leave in float.
        overrides: ``(pattern, scheme)`` pairs; the first matching pattern wins over ``scheme``.
        fold_batchnorm: fold BatchNorm into the preceding convolution first.
        algorithms: post-training algorithms applied in order (see :mod:`lowbit.ptq.options`):
            ``()`` or ``("rtn",)`` rounds to nearest; e.g. ``("cle", "adaround",
            "bias_correction")`` or ``("awq", "gptq")``.
        ptq_options: their options (:class:`PTQOptions`).
    """

    scheme: QuantScheme
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: tuple[tuple[str, QuantScheme], ...] = ()
    fold_batchnorm: bool = True
    algorithms: tuple[str, ...] = ()
    ptq_options: PTQOptions = PTQOptions()
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.scheme, dict):
            object.__setattr__(self, "scheme", QuantScheme.from_dict(self.scheme))
        if not isinstance(self.scheme, QuantScheme):
            raise ConfigError(f"QuantConfig.scheme must be a QuantScheme, got {type(self.scheme)}")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value or ()))
        pairs = []
        for item in self.overrides or ():
            pattern, scheme = (
                item if not isinstance(item, dict) else (item["pattern"], item["scheme"])
            )
            if isinstance(scheme, dict):
                scheme = QuantScheme.from_dict(scheme)
            pairs.append((str(pattern), scheme))
        object.__setattr__(self, "overrides", tuple(pairs))
        object.__setattr__(self, "algorithms", parse_algorithms(self.algorithms))
        if isinstance(self.ptq_options, dict):
            object.__setattr__(self, "ptq_options", _from_plain(PTQOptions, self.ptq_options))
        if not isinstance(self.ptq_options, PTQOptions):
            raise ConfigError(f"ptq_options must be a PTQOptions, got {type(self.ptq_options)}")
        if self.version > CONFIG_VERSION:
            raise ConfigError(
                f"config version {self.version} is newer than this lowbit ({CONFIG_VERSION}); "
                "upgrade lowbit"
            )

    def replace(self, **changes: Any) -> QuantConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = _to_plain(self)
        data["overrides"] = [{"pattern": p, "scheme": s.to_dict()} for p, s in self.overrides]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        if not isinstance(data, dict) or "scheme" not in data:
            raise ConfigError("a QuantConfig dict needs a 'scheme' entry")
        return _from_plain(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not a valid JSON config: {exc}") from None
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str) -> QuantConfig:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not a valid YAML config: {exc}") from None
        return cls.from_dict(data)


def _to_plain(obj: Any) -> Any:
    """Dataclasses → dicts, enums → their values, tuples → lists (JSON/YAML friendly)."""
    if isinstance(obj, Enum):
        return obj.value
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    return obj


def _from_plain(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from None
