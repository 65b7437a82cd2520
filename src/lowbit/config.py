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
import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from enum import Enum
from numbers import Integral, Real
from typing import Any

import yaml

from lowbit.errors import ConfigError, field_error, in_field
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
        with in_field("TensorQuantSpec", "format"):
            fmt = get_format(self.format)
            if isinstance(fmt, FloatFormat):
                raise ConfigError(
                    f"{self.format!r} is a float format; a spec takes an integer, grid or codebook "
                    "format. For fp16/bf16 use a cast scheme (presets 'FP16', 'BF16')"
                )
        object.__setattr__(self, "format", fmt.name)
        with in_field("TensorQuantSpec", "granularity"):
            gran = Granularity.parse(self.granularity)
        object.__setattr__(self, "granularity", str(gran))
        _check_bool("TensorQuantSpec", "symmetric", self.symmetric)
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
            raise field_error(
                "TensorQuantSpec",
                ("range_method",),
                f"unknown range_method {self.range_method!r}; use {choices}",
            ) from None
        p = self.percentile
        if not _is_real(p) or not 0.0 < p <= 100.0:
            raise field_error(
                "TensorQuantSpec",
                ("percentile",),
                f"must be in (0, 100] (the kept mass, e.g. 99.99), got {p!r}",
            )

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
        if not isinstance(self.name, str):
            raise field_error(
                "QuantScheme", ("name",), f"must be a string label, got {type(self.name).__name__}"
            )
        try:
            object.__setattr__(self, "mode", QuantMode(self.mode))
        except ValueError:
            choices = ", ".join(m.value for m in QuantMode)
            raise field_error(
                "QuantScheme", ("mode",), f"unknown mode {self.mode!r}; use one of {choices}"
            ) from None
        for name in ("weight", "activation"):
            with in_field("QuantScheme", name):
                object.__setattr__(self, name, _as_spec(getattr(self, name)))
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
        with in_field("QuantConfig", "scheme"):
            object.__setattr__(self, "scheme", _as_scheme(self.scheme))
        for name in ("include", "exclude"):
            object.__setattr__(self, name, _patterns(name, getattr(self, name)))
        object.__setattr__(self, "overrides", _override_pairs(self.overrides))
        _check_bool("QuantConfig", "fold_batchnorm", self.fold_batchnorm)
        with in_field("QuantConfig", "algorithms"):
            object.__setattr__(self, "algorithms", parse_algorithms(self.algorithms))
        with in_field("QuantConfig", "ptq_options"):
            if isinstance(self.ptq_options, Mapping):
                object.__setattr__(self, "ptq_options", _from_plain(PTQOptions, self.ptq_options))
            if not isinstance(self.ptq_options, PTQOptions):
                raise ConfigError(
                    "must be a PTQOptions (or a dict of its fields), "
                    f"got {type(self.ptq_options).__name__}"
                )
        v = self.version
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise field_error(
                "QuantConfig",
                ("version",),
                f"must be a config format version (an integer >= 1; this lowbit reads up to "
                f"{CONFIG_VERSION}), got {v!r}",
            )
        if v > CONFIG_VERSION:
            raise field_error(
                "QuantConfig",
                ("version",),
                f"config version {v} is newer than this lowbit ({CONFIG_VERSION}); upgrade lowbit",
            )

    def replace(self, **changes: Any) -> QuantConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = _to_plain(self)
        data["overrides"] = [{"pattern": p, "scheme": s.to_dict()} for p, s in self.overrides]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        if not isinstance(data, Mapping) or "scheme" not in data:
            got = (
                f"keys {sorted(map(str, data))}"
                if isinstance(data, Mapping)
                else type(data).__name__
            )
            raise ConfigError(f"a QuantConfig dict needs a 'scheme' entry, got {got}")
        return _from_plain(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> QuantConfig:
        _check_text("JSON", text)
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
            raise ConfigError(f"not a valid JSON config: {_short(exc)}") from None
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str | bytes) -> QuantConfig:
        _check_text("YAML", text)
        try:
            data = yaml.safe_load(text)
        # Any failure of the parser is a bad document: PyYAML raises YAMLError, but also
        # ValueError (bad UTF-8), OverflowError ("\U80001000"), RecursionError (deep nesting).
        except Exception as exc:  # noqa: BLE001 - only the third-party parse step is guarded
            raise ConfigError(f"not a valid YAML config: {_short(exc)}") from None
        return cls.from_dict(data)


def _check_text(kind: str, text: object) -> None:
    if not isinstance(text, str | bytes):
        raise ConfigError(
            f"a {kind} config is text (str or bytes), got {type(text).__name__}; "
            "for an already parsed dict use QuantConfig.from_dict"
        )


def _short(exc: BaseException) -> str:
    """The parser's message, cut short (a RecursionError's can be the whole document)."""
    text = str(exc).strip()
    return text if len(text) <= 300 else text[:300] + "..."


def _to_plain(obj: Any) -> Any:
    """Dataclasses → dicts, enums → their values, tuples → lists (JSON/YAML friendly)."""
    if isinstance(obj, Enum):
        return obj.value
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    return obj


def _from_plain(cls: type, data: Mapping[str, Any]) -> Any:
    """Build the dataclass ``cls`` from a dict of its fields, naming unknown or missing keys."""
    name = cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"a {name} is a dict of its fields, got {type(data).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"unknown {name} keys {unknown}; known: {sorted(known)}")
    required = [
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    ]
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"invalid {name}: missing required keys {missing}")
    return cls(**data)


def _is_real(value: object) -> bool:
    """A finite real number; ``bool`` is not one here."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    return isinstance(value, Integral) or math.isfinite(value)  # huge ints overflow float()


def _check_bool(owner: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise field_error(owner, (name,), f"must be true or false, got {value!r}")


def _as_spec(value: Any) -> TensorQuantSpec | None:
    """A weight/activation spec from a spec, a dict of its fields, or None."""
    if value is None or isinstance(value, TensorQuantSpec):
        return value
    if isinstance(value, Mapping):
        return _from_plain(TensorQuantSpec, value)
    raise ConfigError(
        f"must be a TensorQuantSpec, a dict of its fields or null, got {type(value).__name__}"
    )


def _as_scheme(value: Any) -> QuantScheme:
    """A scheme from a scheme or a dict of its fields."""
    if isinstance(value, Mapping):
        return _from_plain(QuantScheme, value)
    if not isinstance(value, QuantScheme):
        raise ConfigError(
            f"must be a QuantScheme (or a dict of its fields), got {type(value).__name__}; "
            "for a preset name use lowbit.get_preset(name)"
        )
    return value


def _patterns(name: str, value: Any) -> tuple[str, ...]:
    """``include``/``exclude``: one glob or a list of them, as a tuple of strings."""
    if value is None or isinstance(value, str):
        return () if value is None else (value,)
    if isinstance(value, Mapping | bytes) or not isinstance(value, Iterable):
        raise field_error(
            "QuantConfig",
            (name,),
            f"must be a module-name glob or a list of them, got {type(value).__name__}",
        )
    patterns = tuple(value)
    for i, p in enumerate(patterns):
        if not isinstance(p, str):
            raise field_error(
                "QuantConfig",
                (name, i),
                f"a pattern is a string glob, got {type(p).__name__} {p!r}",
            )
    return patterns


def _override_pairs(value: Any) -> tuple[tuple[str, QuantScheme], ...]:
    """``overrides``: ``(pattern, scheme)`` pairs, ``{"pattern", "scheme"}`` dicts, or a mapping."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        value = list(value.items())
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise field_error(
            "QuantConfig",
            ("overrides",),
            f"must be a list of {{pattern, scheme}} entries, got {type(value).__name__}",
        )
    pairs = []
    for i, item in enumerate(value):
        if isinstance(item, Mapping):
            if set(item) != {"pattern", "scheme"}:
                raise field_error(
                    "QuantConfig",
                    ("overrides", i),
                    "an override is {pattern: <glob>, scheme: <scheme>}, "
                    f"got keys {sorted(map(str, item))}",
                )
            pattern, scheme = item["pattern"], item["scheme"]
        elif isinstance(item, tuple | list) and len(item) == 2:
            pattern, scheme = item
        else:
            raise field_error(
                "QuantConfig",
                ("overrides", i),
                f"an override is a (pattern, scheme) pair, got {type(item).__name__} {item!r}",
            )
        if not isinstance(pattern, str):
            raise field_error(
                "QuantConfig",
                ("overrides", i, "pattern"),
                f"must be a string glob, got {type(pattern).__name__} {pattern!r}",
            )
        with in_field("QuantConfig", "overrides", i, "scheme"):
            pairs.append((pattern, _as_scheme(scheme)))
    return tuple(pairs)
