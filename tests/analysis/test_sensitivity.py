"""Per-layer sensitivity: lowbit.analyze and its report."""

import json
import math

import pytest
import torch
from torch import nn

from lowbit.analysis import analyze
from lowbit.errors import CalibrationError, ConfigError, UnknownPresetError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 10)).eval()  # fmt: skip


def test_fewer_bits_cost_more_sqnr_on_every_layer():
    model = _model()
    report = analyze(model, [torch.randn(64, 32)], ["W8A16", "W2A16-g64"], progress=False)
    assert list(report.layers) == ["0", "2", "4"]
    skipped = report.row("0", "W2A16-g64")  # 32 inputs: a group of 64 does not fit
    assert skipped.sqnr_db is None and "group size 64" in skipped.skipped
    for layer in ("2", "4"):
        hi, lo = report.row(layer, "W8A16"), report.row(layer, "W2A16-g64")
        assert hi.sqnr_db > lo.sqnr_db + 20
        assert hi.metric_delta is None
        assert math.isclose(hi.noise, 10 ** (-hi.sqnr_db / 10))
        assert hi.weight_bytes > lo.weight_bytes  # measured stored bytes, scales included
    assert report.layers["2"].float_bytes == 64 * 64 * 4
    assert report.ranking("W8A16")[0] in {"0", "2", "4"}


def test_metric_deltas_come_from_the_users_evaluate_and_leave_the_model_float():
    model = _model()
    x = torch.randn(128, 32)
    labels = model(x).argmax(1)
    agree = lambda m: float((m(x).argmax(1) == labels).float().mean())  # noqa: E731
    report = analyze(model, [x[:64]], ["BINARY"], evaluate=agree, progress=False)
    assert all(r.metric_delta <= 0 for r in report.rows)
    assert any(r.metric_delta < 0 for r in report.rows)
    assert report.baseline_metric == 1.0
    assert agree(model) == 1.0  # analysis never modifies the float model
    assert "BINARY Δmetric" in report.table()


def test_hessian_estimate_ranks_layers_like_the_measurement():
    """Hutchinson's Tr(H)/n · ‖ΔW‖² predicts the output noise within a few dB."""
    model = _model()
    cal = [torch.randn(128, 32)]
    measured = analyze(model, cal, ["W4A16"], progress=False)
    estimated = analyze(model, cal, ["W4A16"], method="hessian", hessian_samples=32, progress=False)
    assert set(estimated.hessian_traces) == {"0", "2", "4"}
    for name in measured.layers:
        m, e = measured.row(name, "W4A16"), estimated.row(name, "W4A16")
        assert e.sqnr_db is None
        assert abs(10 * math.log10(m.noise / e.noise)) < 3.0


def test_latency_is_timed_per_layer_and_the_report_round_trips_to_json(tmp_path):
    model = _model()
    report = analyze(model, [torch.randn(16, 32)], ["W8A16"], latency=True, progress=False)
    assert all(i.float_latency_ms > 0 for i in report.layers.values())
    assert all(r.latency_ms > 0 for r in report.rows)
    data = json.loads(report.save(tmp_path / "s.json").read_text())
    assert [r["layer"] for r in data["rows"]] == ["0", "2", "4"]
    assert data["schemes"]["W8A16"]["mode"] == "weight_only"


def test_a_model_that_is_one_layer():
    report = analyze(nn.Linear(64, 8), [torch.randn(8, 64)], ["W4A16"], progress=False)
    assert list(report.layers) == [""] and report.row("", "W4A16").sqnr_db > 10


def test_bad_input_gets_clear_errors():
    model = _model()
    with pytest.raises(ConfigError, match="non-empty list"):
        analyze(model, [torch.randn(4, 32)], [])
    with pytest.raises(ConfigError, match="non-empty list"):
        analyze(model, [torch.randn(4, 32)], "W8A16")
    with pytest.raises(ConfigError, match="unknown sensitivity method"):
        analyze(model, [torch.randn(4, 32)], ["W8A16"], method="fisher")
    with pytest.raises(CalibrationError, match="empty"):
        analyze(model, [], ["W8A16"])
    with pytest.raises(UnknownPresetError):
        analyze(model, [torch.randn(4, 32)], ["W9A16"])
    with pytest.raises(CalibrationError):
        analyze(model, [torch.randn(4, 31)], ["W8A16"])  # wrong input width
