"""lowbit.auto: constraint, search, result object, plots, errors."""

import json

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import ConfigError
from lowbit.search import pareto_front


@pytest.fixture(scope="module")
def problem():
    """A small MLP; the metric is the mean cosine of its outputs to the float outputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10)).eval()  # fmt: skip
    x = torch.randn(512, 64)
    with torch.no_grad():
        ref = model(x)

    def agreement(m):
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(m(x), ref, dim=1).mean())

    return model, [x[:128], x[128:256]], agreement


@pytest.fixture(scope="module")
def result(problem):
    model, cal, agreement = problem
    return lowbit.auto(model, cal, agreement, max_drop=0.01, time_budget=60,
                       candidates=["W8A16", "W4A16", "W3A16", "W2A16-g64"], progress=False)  # fmt: skip


def test_the_chosen_model_meets_the_constraint_and_is_smaller_than_w8(problem, result):
    model, cal, agreement = problem
    assert result.baseline_metric == pytest.approx(1.0)
    assert result.metric >= result.baseline_metric - 0.01 and result.meets
    assert agreement(result.model) == pytest.approx(result.metric)  # the returned model is it
    w8 = next(c for c in result.candidates if c.name == "uniform W8A16")
    assert result.chosen.bits_per_weight < w8.bits_per_weight
    assert result.chosen.size_bytes < w8.size_bytes
    # no passing candidate is smaller than the chosen one
    passing = [c for c in result.candidates if c.meets]
    assert result.chosen.bits_per_weight == min(c.bits_per_weight for c in passing)
    assert result.config is not None
    again = lowbit.quantize(model, result.config, calibration=cal)  # the algorithms need it
    assert agreement(again) == pytest.approx(result.metric, abs=0.01)


def test_pareto_front_and_outputs(result, tmp_path):
    front = result.pareto
    assert front and all(c in result.candidates for c in front)
    for c in front:
        assert not any(o.metric >= c.metric and o.size_bytes <= c.size_bytes
                       and o.latency_ms <= c.latency_ms and o is not c
                       and (o.metric, o.size_bytes, o.latency_ms) != (c.metric, c.size_bytes, c.latency_ms)
                       for o in result.candidates)  # fmt: skip
    data = json.loads(result.save(tmp_path / "auto.json").read_text())
    assert data["chosen"] == result.chosen.name and data["pareto"]
    for plot in (result.plot(tmp_path / "p.png"), result.report.plot(tmp_path / "s.png")):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert "* " + result.chosen.name in result.table()


def test_a_tight_constraint_returns_the_float_model_with_a_warning(problem):
    model, cal, _ = problem
    x = torch.randn(64, 64)
    exact = lambda m: -float((m(x) - model(x)).abs().max())  # noqa: E731 - any error fails
    with pytest.warns(UserWarning, match="returning the float model"):
        res = lowbit.auto(model, cal, exact, max_drop=0.0, time_budget=30,
                          candidates=["W4A16"], refine=(), progress=False)  # fmt: skip
    assert res.chosen.name == "float" and res.config is None and res.metric == 0.0


def test_a_tiny_time_budget_still_returns_a_model(problem):
    model, cal, agreement = problem
    res = lowbit.auto(model, cal, agreement, time_budget=1e-3, candidates=["W8A16"],
                      progress=False)  # fmt: skip
    assert res.model is not None and res.candidates[0].name == "float"


def test_pareto_front_helper():
    from lowbit.search import Candidate

    a = Candidate("a", 0.9, 100, 4.0, 2.0, True)
    b = Candidate("b", 0.95, 200, 8.0, 1.0, True)  # bigger but faster and better: kept
    c = Candidate("c", 0.8, 300, 8.0, 3.0, True)  # dominated by both
    assert [x.name for x in pareto_front([a, b, c])] == ["a", "b"]


def test_bad_input_gets_clear_errors(problem):
    model, cal, agreement = problem
    with pytest.raises(ConfigError, match="objective"):
        lowbit.auto(model, cal, agreement, objective="energy")
    with pytest.raises(ConfigError, match="evaluate must be a function"):
        lowbit.auto(model, cal, 0.99)
    with pytest.raises(ConfigError, match="max_drop"):
        lowbit.auto(model, cal, agreement, max_drop=-0.1)
    with pytest.raises(lowbit.CalibrationError):
        lowbit.auto(model, [], agreement)
    with pytest.raises(ConfigError, match="unknown"):
        lowbit.auto(model, cal, agreement, refine=("gptqq",))


def test_latency_objective_uses_measured_layer_latencies(problem):
    model, cal, agreement = problem
    res = lowbit.auto(model, cal, agreement, objective="latency", time_budget=60,
                      candidates=["W8A8-dynamic", "W8A16"], refine=(), progress=False)  # fmt: skip
    assert res.objective == "latency" and res.meets
    assert all(i.float_latency_ms > 0 for i in res.report.layers.values())
    passing = [c for c in res.candidates if c.meets]
    assert res.chosen.latency_ms == min(c.latency_ms for c in passing)
