"""Bit allocation: the integer program against brute force, budgets, configs, errors."""

import itertools

import pytest
import torch
from torch import nn

import lowbit
from lowbit.analysis import allocate, analyze
from lowbit.analysis.allocate import FLOAT
from lowbit.errors import ConfigError
from lowbit.measure import layer_weight_bytes, sqnr_db


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10)).eval()  # fmt: skip
    with torch.no_grad():  # outlier inputs make one layer far more sensitive than the others
        model[2].weight[:, :4] *= 20
    cal = [torch.randn(64, 64)]
    return model, cal, analyze(model, cal, ["W8A16", "W4A16", "W3A16", "W2A16-g64"], progress=False)


def _brute_force(report, max_bytes):
    best = None
    opts = {n: [FLOAT] + [r.candidate for r in report.rows if r.layer == n and not r.skipped]
            for n in report.layers}  # fmt: skip
    for combo in itertools.product(*opts.values()):
        choice = dict(zip(opts, combo, strict=True))
        size = sum(report.layers[n].float_bytes if c == FLOAT else report.row(n, c).weight_bytes
                   for n, c in choice.items())  # fmt: skip
        noise = sum(0 if c == FLOAT else report.row(n, c).noise for n, c in choice.items())
        if size <= max_bytes and (best is None or noise < best[0]):
            best = (noise, choice)
    return best


@pytest.mark.parametrize("bits", [2.5, 3.0, 4.0, 6.0, 9.0])
def test_the_solver_finds_the_brute_force_optimum(setup, bits):
    _model, _cal, report = setup
    alloc = allocate(report, bits_per_weight=bits)
    n = sum(i.weights for i in report.layers.values())
    noise, _choice = _brute_force(report, int(bits * n / 8))
    assert alloc.bits_per_weight <= bits
    assert alloc.predicted_noise == pytest.approx(noise, rel=1e-6)


def test_the_config_applies_the_allocation_and_the_prediction_holds(setup):
    model, cal, report = setup
    alloc = allocate(report, bits_per_weight=4.0)
    q = lowbit.quantize(model, alloc.config)
    for name, cand in alloc.choice.items():
        module = q.get_submodule(name)
        if cand == FLOAT:
            assert isinstance(module, nn.Linear)
        else:
            assert module.scheme.name == cand
    n = sum(i.weights for i in report.layers.values())
    stored = sum(layer_weight_bytes(q.get_submodule(m)) for m in alloc.choice)
    assert 8 * stored / n == pytest.approx(alloc.bits_per_weight)
    measured = sqnr_db(model(cal[0]), q(cal[0]))
    assert abs(measured - alloc.predicted_sqnr_db) < 2.0  # noise adds across layers
    # the JSON round trip keeps the per-layer overrides
    assert lowbit.QuantConfig.from_json(alloc.config.to_json()) == alloc.config


def test_mixed_is_never_predicted_worse_than_uniform_at_equal_bits(setup):
    """Uniform is one feasible allocation, so the optimum's predicted noise is at most its noise;
    the measurement agrees (the strict wins on real models are in benchmarks/bench_auto.py)."""
    model, _cal, report = setup
    x = torch.randn(256, 64)
    n = sum(i.weights for i in report.layers.values())
    for preset in ("W4A16", "W3A16"):
        uniform = lowbit.quantize(model, preset)
        bits = 8 * sum(layer_weight_bytes(uniform.get_submodule(m)) for m in report.layers) / n
        alloc = allocate(report, bits_per_weight=bits)
        assert alloc.predicted_noise <= sum(report.row(m, preset).noise for m in report.layers)
        mixed = lowbit.quantize(model, alloc.config)
        assert sqnr_db(model(x), mixed(x)) >= sqnr_db(model(x), uniform(x)) - 0.3


def test_latency_budget(setup):
    model, cal, _report = setup
    report = analyze(model, cal, ["W8A16", "W4A16"], latency=True, progress=False)
    fastest = sum(min([i.float_latency_ms] + [r.latency_ms for r in report.rows if r.layer == n])
                  for n, i in report.layers.items())  # fmt: skip
    alloc = allocate(report, max_latency_ms=fastest * 1.5)
    assert alloc.latency_ms <= fastest * 1.5


def test_bad_budgets_get_clear_errors(setup):
    _model, _cal, report = setup
    with pytest.raises(ConfigError, match="give a budget"):
        allocate(report)
    with pytest.raises(ConfigError, match="smallest possible"):
        allocate(report, bits_per_weight=0.5)
    with pytest.raises(ConfigError, match="latency=True"):
        allocate(report, max_latency_ms=1.0)
    alloc = allocate(report, bits_per_weight=32)  # everything fits: nothing needs quantizing
    assert set(alloc.choice.values()) == {FLOAT} and alloc.config is None


def test_shared_modules_and_glob_characters_in_names_are_quantized_everywhere():
    """A module under two names, and a ModuleDict key with glob characters: every name gets the
    allocated scheme (none silently stays float)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            shared = nn.Linear(32, 32)
            self.blocks = nn.ModuleList([shared, shared])
            self.heads = nn.ModuleDict({"fc[a]": nn.Linear(32, 8)})

        def forward(self, x):
            for b in self.blocks:
                x = torch.relu(b(x))
            return self.heads["fc[a]"](x)

    torch.manual_seed(0)
    model = Net().eval()
    report = analyze(model, [torch.randn(16, 32)], ["W8A16", "W4A16"], progress=False)
    assert report.layers["blocks.0"].aliases == ("blocks.0", "blocks.1")
    alloc = allocate(report, bits_per_weight=5.0, allow_float=False)
    q = lowbit.quantize(model, alloc.config)
    assert set(q.lowbit_record.layers) == {"blocks.0", "blocks.1", "heads.fc[a]"}
    assert q.blocks[0] is q.blocks[1]  # still one module


def test_analyze_refuses_ambiguous_or_unusable_candidates():
    model = nn.Sequential(nn.Linear(16, 16))
    cal = [torch.randn(4, 16)]
    with pytest.raises(ConfigError, match="unique"):
        analyze(model, cal, ["W4A16", "w4a16"])
    with pytest.raises(ConfigError, match="preset name or a QuantScheme"):
        analyze(model, cal, [lowbit.QuantConfig(lowbit.get_preset("W4A16"))])
    with pytest.raises(ConfigError, match="weight error only"):
        analyze(model, cal, ["W8A8"], method="hessian")
    with pytest.raises(ConfigError, match="hessian_samples"):
        analyze(model, cal, ["W8A16"], method="hessian", hessian_samples=0)
    with pytest.raises(ConfigError, match="no candidate quantized any layer"):
        analyze(nn.Sequential(nn.ReLU()), cal, ["W8A16"])
