"""Presets: industry shorthand names, case-insensitive lookup, helpful errors."""

from __future__ import annotations

import pytest

from lowbit.config import QuantConfig, QuantMode, QuantScheme
from lowbit.errors import ConfigError, UnknownPresetError
from lowbit.presets import PRESETS, get_preset, preset_names

EXPECTED = {
    "W8A8": QuantMode.STATIC,
    "W8A8-dynamic": QuantMode.DYNAMIC,
    "W8A16": QuantMode.WEIGHT_ONLY,
    "FP16": QuantMode.CAST,
    "BF16": QuantMode.CAST,
}


def test_the_documented_presets_exist() -> None:
    assert set(EXPECTED) <= set(PRESETS)
    assert preset_names() == sorted(PRESETS)


@pytest.mark.parametrize(("name", "mode"), sorted(EXPECTED.items()))
def test_preset_modes_and_names(name: str, mode: QuantMode) -> None:
    scheme = get_preset(name)
    assert isinstance(scheme, QuantScheme)
    assert scheme.name == name
    assert scheme.mode is mode


@pytest.mark.parametrize("name", ["W8A8", "W8A8-dynamic", "W8A16"])
def test_int8_presets_use_symmetric_per_channel_int8_weights(name: str) -> None:
    w = get_preset(name).weight
    assert (w.format, w.granularity, w.symmetric) == ("int8", "per_channel", True)


def test_preset_details() -> None:
    assert get_preset("W8A8").activation.granularity == "per_tensor"
    assert get_preset("W8A8-dynamic").activation.granularity == "per_token"
    assert get_preset("W8A16").compute_dtype == "bf16" and get_preset("W8A16").activation is None
    assert get_preset("FP16").compute_dtype == "fp16" and get_preset("FP16").weight is None
    assert get_preset("BF16").compute_dtype == "bf16"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips(name: str) -> None:
    scheme = PRESETS[name]
    assert QuantScheme.from_dict(scheme.to_dict()) == scheme
    cfg = QuantConfig(scheme)
    assert cfg.to_dict()["version"] == cfg.version
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    assert QuantConfig.from_yaml(cfg.to_yaml()) == cfg


@pytest.mark.parametrize(
    ("text", "name"),
    [("w8a8", "W8A8"), ("W8a8-DYNAMIC", "W8A8-dynamic"), (" bf16 ", "BF16"), ("fp16", "FP16")],
)
def test_lookup_is_case_insensitive(text: str, name: str) -> None:
    assert get_preset(text) is PRESETS[name]


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("W8A9", "W8A8"), ("W8A8-dinamic", "W8A8-dynamic"), ("W8A61", "W8A16"), ("BF61", "BF16")],
)
def test_unknown_preset_suggests_a_close_match(typo: str, suggestion: str) -> None:
    with pytest.raises(UnknownPresetError) as info:
        get_preset(typo)
    msg = str(info.value)
    assert f"Did you mean {suggestion!r}?" in msg
    assert typo in msg
    for known in PRESETS:  # the message lists every known preset
        assert known in msg


def test_unknown_preset_without_close_match_still_lists_presets() -> None:
    with pytest.raises(UnknownPresetError, match="Known presets: BF16, BINARY, FP16") as info:
        get_preset("zzzzzzzz")
    assert "Did you mean" not in str(info.value)


def test_unknown_preset_error_is_catchable_as_config_and_key_error() -> None:
    for exc_type in (UnknownPresetError, ConfigError, KeyError, ValueError):
        with pytest.raises(exc_type):
            get_preset("W3A3")
    with pytest.raises(UnknownPresetError) as info:
        get_preset("W3A3")
    assert not str(info.value).startswith('"')  # readable, not KeyError's repr()


@pytest.mark.parametrize("value", [8, None, ["W8A8"]])
def test_non_string_preset_raises(value) -> None:
    with pytest.raises(UnknownPresetError, match="name like 'W8A8'"):
        get_preset(value)  # type: ignore[arg-type]


def test_suggestion_is_case_insensitive_too() -> None:
    with pytest.raises(UnknownPresetError, match="Did you mean 'W8A8'"):
        get_preset("w8a9")
