"""Targeting by module name: include/exclude globs, prefix matching, override precedence."""

from __future__ import annotations

import pytest

from lowbit.config import QuantConfig
from lowbit.presets import get_preset
from lowbit.targeting import matches, scheme_for

W8A8, W8A16, DYN, FP16 = (get_preset(n) for n in ("W8A8", "W8A16", "W8A8-dynamic", "FP16"))


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("fc", "fc", True),
        ("fc1", "fc?", True),
        ("fc12", "fc?", False),
        ("encoder.layer.0.fc", "encoder", True),  # prefix of the dotted path
        ("encoder.layer.0.fc", "encoder.layer", True),
        ("encoder.layer.0.fc", "encoder.layer.0.fc", True),
        ("encoder2.fc", "encoder", False),  # a prefix must end at a dot
        ("encoder", "encoder.layer", False),
        ("encoder.layer.0.fc", "*.fc", True),
        ("encoder.layer.0.fc", "encoder.*.fc", True),
        ("encoder.layer.0.attn", "encoder.*.fc", False),
        ("encoder.layer.0.fc", "layer", False),  # patterns anchor at the start
        ("block.3.conv", "block.[0-3].conv", True),
        ("block.4.conv", "block.[0-3].conv", False),
        ("Head", "head", False),  # case-sensitive, as module names are
        ("head", "*", True),
    ],
)
def test_matches(name: str, pattern: str, expected: bool) -> None:
    assert matches(name, pattern) is expected


def test_default_scheme_applies_everywhere() -> None:
    cfg = QuantConfig(W8A8)
    for name in ("fc", "encoder.layer.0.fc", ""):
        assert scheme_for(name, cfg) is W8A8


def test_include_limits_quantization_to_matches() -> None:
    cfg = QuantConfig(W8A8, include=("encoder", "head"))
    assert scheme_for("encoder.layer.0.fc", cfg) is W8A8
    assert scheme_for("head", cfg) is W8A8
    assert scheme_for("decoder.fc", cfg) is None
    assert scheme_for("header", cfg) is None


def test_exclude_keeps_matches_float() -> None:
    cfg = QuantConfig(W8A8, exclude=("*.norm", "classifier"))
    assert scheme_for("classifier", cfg) is None
    assert scheme_for("classifier.proj", cfg) is None
    assert scheme_for("encoder.norm", cfg) is None
    assert scheme_for("encoder.fc", cfg) is W8A8


def test_exclude_wins_over_include() -> None:
    cfg = QuantConfig(W8A8, include=("encoder",), exclude=("encoder.head",))
    assert scheme_for("encoder.fc", cfg) is W8A8
    assert scheme_for("encoder.head", cfg) is None


def test_override_wins_over_the_default() -> None:
    cfg = QuantConfig(W8A8, overrides=(("enc.*", W8A16),))
    assert scheme_for("enc.fc", cfg) is W8A16
    assert scheme_for("dec.fc", cfg) is W8A8


def test_first_matching_override_wins() -> None:
    cfg = QuantConfig(W8A8, overrides=(("enc.fc", FP16), ("enc", W8A16), ("enc.fc", DYN)))
    assert scheme_for("enc.fc", cfg) is FP16
    assert scheme_for("enc.attn", cfg) is W8A16
    assert scheme_for("enc.fc.inner", cfg) is FP16  # prefix match on the override pattern


def test_exclude_wins_over_an_override() -> None:
    cfg = QuantConfig(W8A8, exclude=("enc.fc",), overrides=(("enc.*", W8A16),))
    assert scheme_for("enc.fc", cfg) is None
    assert scheme_for("enc.attn", cfg) is W8A16


def test_include_filters_before_overrides() -> None:
    cfg = QuantConfig(W8A8, include=("enc",), overrides=(("dec", W8A16),))
    assert scheme_for("dec.fc", cfg) is None
    assert scheme_for("enc.fc", cfg) is W8A8
