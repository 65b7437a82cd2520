"""Configs are frozen values: validation, and exact round trips through dict, JSON and YAML."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from lowbit.config import (
    CONFIG_VERSION,
    QuantConfig,
    QuantMode,
    QuantScheme,
    TensorQuantSpec,
)
from lowbit.errors import ConfigError
from lowbit.presets import PRESETS, get_preset
from lowbit.ranges import RangeMethod

INT8_PC = TensorQuantSpec(format="int8", granularity="per_channel")
INT8_PT = TensorQuantSpec(format="int8", granularity="per_tensor", symmetric=False)


def _rich_config() -> QuantConfig:
    """A config that uses every field: include/exclude, overrides, non-default specs."""
    custom = QuantScheme(
        name="custom",
        mode=QuantMode.STATIC,
        weight=TensorQuantSpec(format="int4", granularity="per_group:32", symmetric=False),
        activation=TensorQuantSpec(
            format="uint8", range_method="percentile", percentile=99.9, symmetric=False
        ),
        compute_dtype="fp32",
    )
    return QuantConfig(
        scheme=get_preset("W8A8"),
        include=("encoder", "decoder.*"),
        exclude=("encoder.head",),
        overrides=(("decoder.fc?", custom), ("encoder.attn.*", get_preset("W8A16"))),
        fold_batchnorm=False,
    )


# -- TensorQuantSpec --------------------------------------------------------------------------
def test_spec_normalizes_its_fields() -> None:
    spec = TensorQuantSpec(format="INT8", granularity="PER_GROUP:64", range_method="mse")
    assert spec.format == "int8"
    assert spec.granularity == "per_group:64"
    assert spec.range_method is RangeMethod.MSE
    assert spec.int_format.qmax == 127
    assert spec.granularity_value.group_size == 64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"format": "fp16"}, "integer, grid or codebook"),
        ({"format": "nf4", "symmetric": False}, "symmetric by construction"),
        ({"format": "kmeans16", "granularity": "per_token"}, "per output channel"),
        ({"format": "int17"}, "2..16"),
        ({"granularity": "per_row"}, "unknown granularity"),
        ({"range_method": "median"}, "unknown range_method"),
        ({"percentile": 0.0}, "percentile"),
        ({"percentile": 100.5}, "percentile"),
    ],
)
def test_spec_rejects_bad_values(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        TensorQuantSpec(**kwargs)


def test_specs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        INT8_PC.format = "int4"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("W8A8").mode = QuantMode.DYNAMIC  # type: ignore[misc]


# -- QuantScheme ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "cast"}, "cast scheme"),
        ({"mode": "cast", "compute_dtype": "fp32"}, "cast scheme"),
        ({"mode": "cast", "compute_dtype": "bf16", "weight": INT8_PC}, "cast scheme"),
        ({"mode": "static", "activation": INT8_PT}, "needs a weight spec"),
        ({"mode": "static", "weight": INT8_PC}, "needs an activation spec"),
        ({"mode": "dynamic", "weight": INT8_PC}, "needs an activation spec"),
        ({"mode": "weight_only", "weight": INT8_PC, "activation": INT8_PT}, "no activation"),
        (
            {
                "mode": "dynamic",
                "weight": INT8_PC,
                "activation": TensorQuantSpec(granularity="per_channel"),
            },
            "per_token or per_tensor",
        ),
        ({"mode": "weight_only", "weight": INT8_PC, "compute_dtype": "fp64"}, "compute_dtype"),
    ],
)
def test_bad_mode_combinations_raise(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        QuantScheme(name="bad", **kwargs)


def test_scheme_accepts_spec_dicts() -> None:
    scheme = QuantScheme(
        name="w", mode="weight_only", weight={"format": "int8", "granularity": "per_channel"}
    )
    assert scheme.weight == INT8_PC
    assert scheme.mode is QuantMode.WEIGHT_ONLY


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_scheme_dict_round_trip(name: str) -> None:
    scheme = PRESETS[name]
    data = scheme.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON types only
    assert QuantScheme.from_dict(data) == scheme


def test_scheme_unknown_keys_raise() -> None:
    data = get_preset("W8A8").to_dict()
    data["bits"] = 4
    with pytest.raises(ConfigError, match=r"unknown QuantScheme keys \['bits'\]"):
        QuantScheme.from_dict(data)


def test_scheme_unknown_nested_spec_key_raises() -> None:
    data = get_preset("W8A8").to_dict()
    data["weight"]["bits"] = 4
    with pytest.raises(ConfigError, match="bits"):
        QuantScheme.from_dict(data)


def test_scheme_missing_required_key_raises() -> None:
    with pytest.raises(ConfigError, match="invalid QuantScheme"):
        QuantScheme.from_dict({"name": "x"})


def test_scheme_unknown_mode_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="mode"):
        QuantScheme.from_dict({"name": "x", "mode": "turbo"})


# -- QuantConfig ------------------------------------------------------------------------------
def test_config_has_a_version() -> None:
    cfg = QuantConfig(get_preset("W8A8"))
    assert cfg.version == CONFIG_VERSION
    assert cfg.to_dict()["version"] == CONFIG_VERSION


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_of_every_preset_round_trips(name: str) -> None:
    cfg = QuantConfig(PRESETS[name], exclude=("head",))
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    assert QuantConfig.from_yaml(cfg.to_yaml()) == cfg


def test_rich_config_round_trips() -> None:
    cfg = _rich_config()
    for again in (
        QuantConfig.from_dict(cfg.to_dict()),
        QuantConfig.from_json(cfg.to_json()),
        QuantConfig.from_yaml(cfg.to_yaml()),
    ):
        assert again == cfg
        assert hash(again) == hash(cfg)  # frozen values are hashable
    assert cfg.overrides[0][1].weight.granularity == "per_group:32"


def test_serialized_forms_are_plain_and_readable() -> None:
    cfg = _rich_config()
    data = json.loads(cfg.to_json())
    assert data == cfg.to_dict()
    assert yaml.safe_load(cfg.to_yaml()) == data
    assert data["overrides"][0]["pattern"] == "decoder.fc?"
    assert data["scheme"]["mode"] == "static"
    assert data["scheme"]["activation"]["range_method"] == "minmax"


def test_config_normalizes_collections() -> None:
    cfg = QuantConfig(get_preset("W8A8"), include="encoder", exclude=["a", "b"])  # type: ignore
    assert cfg.include == ("encoder",)
    assert cfg.exclude == ("a", "b")
    cfg2 = QuantConfig(
        get_preset("W8A8").to_dict(),  # type: ignore[arg-type]
        overrides=[{"pattern": "fc", "scheme": get_preset("W8A16").to_dict()}],  # type: ignore
    )
    assert cfg2.scheme == get_preset("W8A8")
    assert cfg2.overrides == (("fc", get_preset("W8A16")),)


def test_replace_returns_a_new_value() -> None:
    cfg = QuantConfig(get_preset("W8A8"))
    other = cfg.replace(exclude=("fc",))
    assert other.exclude == ("fc",) and cfg.exclude == ()


def test_config_unknown_keys_raise() -> None:
    data = QuantConfig(get_preset("W8A8")).to_dict()
    data["calibration_size"] = 128
    with pytest.raises(ConfigError, match="unknown QuantConfig keys"):
        QuantConfig.from_dict(data)


@pytest.mark.parametrize("data", [{}, {"include": []}, [], "W8A8", None])
def test_config_without_a_scheme_raises(data) -> None:
    with pytest.raises(ConfigError, match="needs a 'scheme'"):
        QuantConfig.from_dict(data)


def test_config_rejects_a_non_scheme() -> None:
    with pytest.raises(ConfigError, match="must be a QuantScheme"):
        QuantConfig("W8A8")  # type: ignore[arg-type]


def test_too_new_version_raises() -> None:
    data = QuantConfig(get_preset("W8A8")).to_dict()
    data["version"] = CONFIG_VERSION + 1
    with pytest.raises(ConfigError, match="newer than this lowbit"):
        QuantConfig.from_dict(data)
    with pytest.raises(ConfigError, match="upgrade lowbit"):
        QuantConfig.from_yaml(yaml.safe_dump(data))


def test_missing_version_means_current() -> None:
    data = QuantConfig(get_preset("W8A8")).to_dict()
    del data["version"]
    assert QuantConfig.from_dict(data).version == CONFIG_VERSION


def test_bad_override_scheme_raises() -> None:
    data = QuantConfig(get_preset("W8A8")).to_dict()
    data["overrides"] = [{"pattern": "fc", "scheme": {"name": "x", "mode": "cast"}}]
    with pytest.raises(ConfigError, match="cast scheme"):
        QuantConfig.from_dict(data)


@pytest.mark.parametrize("loader", ["json", "yaml"])
def test_unparsable_recipe_text_raises_config_error(loader: str) -> None:
    with pytest.raises(ConfigError):
        if loader == "json":
            QuantConfig.from_json("{not json")
        else:
            QuantConfig.from_yaml("scheme: [unclosed")
