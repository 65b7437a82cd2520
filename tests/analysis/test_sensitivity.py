"""Per-layer sensitivity (groundwork of the mixed-precision issue)."""

import torch
from torch import nn

from lowbit.analysis import layer_sensitivity


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 10)).eval()  # fmt: skip


def test_fewer_bits_cost_more_sqnr_on_every_layer():
    model = _model()
    cal = [torch.randn(64, 32)]
    rows = layer_sensitivity(model, cal, ["W8A16", "W2A16-g64"], progress=False)
    by = {(r.layer, r.candidate): r for r in rows}
    assert {r.layer for r in rows} == {"0", "2", "4"}
    skipped = by[("0", "W2A16-g64")]  # 32 inputs: a group of 64 does not fit
    assert skipped.sqnr_db is None and "group size 64" in skipped.skipped
    for layer in ("2", "4"):
        assert by[(layer, "W8A16")].sqnr_db > by[(layer, "W2A16-g64")].sqnr_db + 20
        assert by[(layer, "W8A16")].metric_delta is None


def test_metric_deltas_come_from_the_users_evaluate_and_leave_the_model_float():
    model = _model()
    x = torch.randn(128, 32)
    labels = model(x).argmax(1)
    agree = lambda m: float((m(x).argmax(1) == labels).float().mean())  # noqa: E731
    rows = layer_sensitivity(model, [x[:64]], ["BINARY"], evaluate=agree, progress=False)
    assert all(r.metric_delta <= 0 for r in rows) and any(r.metric_delta < 0 for r in rows)
    assert agree(model) == 1.0  # analysis never modifies the float model


def test_bad_input_gets_clear_errors():
    import pytest

    from lowbit.errors import CalibrationError, ConfigError, UnknownPresetError

    model = _model()
    with pytest.raises(ConfigError, match="non-empty list"):
        layer_sensitivity(model, [torch.randn(4, 32)], [])
    with pytest.raises(ConfigError, match="non-empty list"):
        layer_sensitivity(model, [torch.randn(4, 32)], "W8A16")
    with pytest.raises(CalibrationError, match="empty"):
        layer_sensitivity(model, [], ["W8A16"])
    with pytest.raises(UnknownPresetError):
        layer_sensitivity(model, [torch.randn(4, 32)], ["W9A16"])
