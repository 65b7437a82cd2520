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


# -- bad input names the field it is in (issue 10) ---------------------------------------------
def _w8a8_with(path: tuple, value) -> dict:
    """``QuantConfig(W8A8).to_dict()`` with the entry at ``path`` set (or deleted: ``...``)."""
    data = QuantConfig(get_preset("W8A8")).to_dict()
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if value is ...:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("overrides",), [{"pattern": "x"}], r"QuantConfig\.overrides\[0\]: an override is"),
        (("overrides",), [[1]], r"QuantConfig\.overrides\[0\]: an override is a \(pattern"),
        (("overrides",), [["fc", 5]], r"QuantConfig\.overrides\[0\]\.scheme: must be a"),
        (("overrides",), [[5, get_preset("W8A16")]], r"overrides\[0\]\.pattern: must be a str"),
        (("overrides",), "fc", r"QuantConfig\.overrides: must be a list"),
        (("ptq_options", "max_rows"), "abc", r"QuantConfig\.ptq_options\.max_rows: .*integer"),
        (("ptq_options", "gptq_percdamp"), -1, r"ptq_options\.gptq_percdamp: .*\(0\.0, 1\.0\]"),
        (("ptq_options",), [1], r"QuantConfig\.ptq_options: must be a PTQOptions"),
        (("scheme", "weight"), 5, r"QuantConfig\.scheme\.weight: must be a TensorQuantSpec"),
        (("scheme", "weight", "format"), "int9x", r"scheme\.weight\.format: .*'int9'"),
        (("scheme", "weight", "symmetric"), "no", r"scheme\.weight\.symmetric: .*true or false"),
        (("scheme", "weight", "percentile"), "x", r"scheme\.weight\.percentile: must be in"),
        (("scheme", "weight", "granularity"), 5, r"scheme\.weight\.granularity: .*per_group:128"),
        (("scheme", "activation", "bits"), 8, r"QuantConfig\.scheme\.activation: unknown"),
        (("scheme", "name"), 5, r"QuantConfig\.scheme\.name: must be a string"),
        (("scheme", "mode"), ..., r"QuantConfig\.scheme: invalid QuantScheme: missing .*'mode'"),
        (("fold_batchnorm",), "no", r"QuantConfig\.fold_batchnorm: must be true or false"),
        (("include",), [1, 2], r"QuantConfig\.include\[0\]: a pattern is a string"),
        (("exclude",), 5, r"QuantConfig\.exclude: must be a module-name glob"),
        (("algorithms",), 3, r"QuantConfig\.algorithms: algorithms are a name or a list"),
        (("algorithms",), ["gptq", 1], r"QuantConfig\.algorithms\[1\]: an algorithm is a name"),
        (("version",), True, r"QuantConfig\.version: must be a config format version"),
        (("version",), "1", r"QuantConfig\.version"),
        (("version",), 0, r"QuantConfig\.version"),
    ],
)
def test_bad_fields_raise_config_errors_naming_the_field(path, value, match) -> None:
    with pytest.raises(ConfigError, match=match):
        QuantConfig.from_dict(_w8a8_with(path, value))


def test_errors_inside_overrides_name_their_index() -> None:
    bad = get_preset("W4A16").to_dict()
    bad["weight"]["format"] = "uint99"
    data = {"scheme": get_preset("W8A8").to_dict(), "overrides": [
        {"pattern": "fc1", "scheme": get_preset("W8A16").to_dict()},
        {"pattern": "fc2", "scheme": bad},
    ]}  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"^QuantConfig\.overrides\[1\]\.scheme\.weight\.format: "
    ):
        QuantConfig.from_dict(data)


def test_overrides_may_be_a_mapping_and_algorithms_any_case() -> None:
    cfg = QuantConfig(get_preset("W8A8"), overrides={"fc": get_preset("W8A16")},
                      algorithms=["AWQ", " GPTQ "])  # fmt: skip
    assert cfg.overrides == (("fc", get_preset("W8A16")),)
    assert cfg.algorithms == ("awq", "gptq")
    assert QuantConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("loader", [QuantConfig.from_json, QuantConfig.from_yaml])
@pytest.mark.parametrize("text", [None, 5, "[" * 100_000, 'x: "\\U80001000"'])
def test_recipe_loaders_refuse_non_text_and_hostile_text(loader, text) -> None:
    with pytest.raises(ConfigError, match="config"):
        loader(text)


# -- PTQOptions and algorithm lists -------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"gptq_percdamp": "abc"},
            r"PTQOptions\.gptq_percdamp: must be a number in \(0\.0, 1\.0\]",
        ),
        ({"gptq_percdamp": -1}, "gptq_percdamp"),
        ({"gptq_percdamp": float("nan")}, "gptq_percdamp"),
        ({"gptq_percdamp": 0}, "gptq_percdamp"),
        ({"max_rows": "abc"}, r"PTQOptions\.max_rows: must be an integer >= 1, got 'abc'"),
        ({"max_rows": 10.0}, "max_rows"),
        ({"max_rows": True}, "max_rows"),
        ({"adaround_lr": -1}, r"PTQOptions\.adaround_lr: must be a number in \(0\.0, inf\)"),
        ({"adaround_lr": float("inf")}, "adaround_lr"),
        ({"adaround_lambda": -0.5}, "adaround_lambda"),
        ({"smoothquant_alpha": 2}, r"smoothquant_alpha: must be a number in \[0\.0, 1\.0\]"),
        ({"smoothquant_alpha": "0.5"}, "smoothquant_alpha"),
        ({"gptq_act_order": "yes"}, r"PTQOptions\.gptq_act_order: must be True or False"),
        ({"cle_sweeps": 0}, r"PTQOptions\.cle_sweeps: must be an integer >= 1, got 0"),
        ({"awq_grid": 10**40 * 1.0}, "awq_grid"),
    ],
)
def test_ptq_options_validate_types_and_ranges(kwargs, match) -> None:
    from lowbit.ptq.options import PTQOptions

    with pytest.raises(ConfigError, match=match):
        PTQOptions(**kwargs)


def test_ptq_options_accept_ints_for_real_fields() -> None:
    from lowbit.ptq.options import PTQOptions

    opts = PTQOptions(adaround_lambda=2, gptq_percdamp=1, smoothquant_alpha=0, search_rows=10**9)
    assert opts.adaround_lambda == 2 and opts.smoothquant_alpha == 0


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (3, "a name or a list of names"),
        ({"gptq": 1}, "a name or a list of names"),
        ([None], r"algorithms\[0\]: an algorithm is a name"),
        ("GPTQQ", "did you mean 'gptq'"),
        (["gptq", "GPTQ"], "names an algorithm twice"),
    ],
)
def test_parse_algorithms_rejects_bad_values(value, match) -> None:
    from lowbit.ptq.options import parse_algorithms

    with pytest.raises(ConfigError, match=match):
        parse_algorithms(value)


def test_parse_algorithms_is_case_insensitive() -> None:
    from lowbit.ptq.options import parse_algorithms

    assert parse_algorithms("GPTQ") == ("gptq",)
    assert parse_algorithms(("CLE", "Bias_Correction")) == ("cle", "bias_correction")
    assert parse_algorithms(None) == parse_algorithms([]) == ()
