"""The PTQ algorithms through ``lowbit.quantize(..., algorithm=...)``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.config import QuantConfig
from lowbit.errors import CalibrationError, ConfigError
from lowbit.nn import QuantLinear
from lowbit.ptq.capture import layer_inputs
from lowbit.ptq.feeder import Feeder
from lowbit.ptq.options import PTQOptions
from lowbit.ptq.rescale import equalize


class Chain(nn.Module):
    """conv -> ReLU -> pool -> conv -> ReLU -> flatten -> linear -> ReLU -> linear, with uneven
    channel ranges (what CLE is for)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.f1 = nn.Linear(8 * 4 * 4, 32)
        self.f2 = nn.Linear(32, 10)
        with torch.no_grad():
            self.c1.weight.mul_(torch.logspace(-1.5, 1, 8)[:, None, None, None])

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        x = torch.relu(self.c2(x)).flatten(1)
        return self.f2(torch.relu(self.f1(x)))


class Residual(nn.Module):
    """x + fc2(relu(fc1(x))): fc1's output channels cannot be rescaled into the residual."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) + self.fc1(x)


class Block(nn.Module):
    def __init__(self, d: int, post_ln: bool):
        super().__init__()
        self.ln, self.post_ln = nn.LayerNorm(d), post_ln
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x, scale=1.0):
        if self.post_ln:  # LayerNorm output also feeds the residual: no exact fold
            h = self.ln(x)
            return self.ln(h + self.down(torch.relu(self.up(h))) * scale)
        return x + self.down(torch.relu(self.up(self.ln(x)))) * scale


class Tiny(nn.Module):
    """A tiny transformer-like stack of blocks in a ModuleList, with activation outliers."""

    def __init__(self, post_ln: bool = False, d: int = 32, n: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(Block(d, post_ln) for _ in range(n))
        self.head = nn.Linear(d, 8)
        with torch.no_grad():
            for b in self.blocks:
                b.ln.weight.copy_(torch.where(torch.arange(d) < 2, 30.0, 1.0))  # outliers

    def forward(self, x, scale=1.0):
        for b in self.blocks:
            x = b(x, scale=scale)
        return self.head(x)


def _calib(shape, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).pow(2).sum() / b.pow(2).sum())


def test_cle_keeps_the_float_function_and_equalizes_ranges_through_pool_and_flatten():
    model, x = Chain().eval(), torch.randn(8, 1, 8, 8)
    q = lowbit.quantize(model, "W8A8", calibration=_calib((16, 1, 8, 8)), algorithm="cle")
    pairs = {(r["producer"], r["consumer"]) for r in q.lowbit_record.ptq["rescaled"]}
    assert pairs == {("c1", "c2"), ("c2", "f1"), ("f1", "f2")}
    assert _rel(q(x), model(x)) < 1e-3  # W8A8 of the equalized model still matches float


def test_cle_converges_to_equal_ranges_on_every_pair_and_keeps_the_function():
    model, x = Chain().eval(), torch.randn(8, 1, 8, 8)
    ref = model(x)
    layers = {n: m for n, m in model.named_children()}
    records = equalize(model, layers, ((x,), {}), PTQOptions(cle_sweeps=100))
    assert len(records) == 3
    assert _rel(model(x), ref) < 1e-10
    c1, c2, f1 = model.c1, model.c2, model.f1
    r1 = c1.weight.abs().flatten(1).amax(1)
    r2 = c2.weight.abs().transpose(0, 1).flatten(1).amax(1)
    assert torch.allclose(r1, r2, rtol=1e-2)
    r1 = c2.weight.abs().flatten(1).amax(1)
    r2 = f1.weight.abs().reshape(32, 8, 16).amax(dim=(0, 2))  # flattened 8 x 4 x 4 map
    assert torch.allclose(r1, r2, rtol=1e-2)


def test_cle_refuses_a_pair_whose_output_also_feeds_a_residual():
    q = lowbit.quantize(Residual().eval(), "W8A8", calibration=_calib((8, 16)), algorithm="cle")
    assert q.lowbit_record.ptq["rescaled"] == []


def test_gptq_lowers_every_layer_error_and_the_output_error():
    model = Tiny().eval()
    cal, x = _calib((8, 16, 32)), torch.randn(4, 16, 32)
    rtn = lowbit.quantize(model, "W3A16-g128", calibration=cal, overrides={"*": "W4A16"})
    q = lowbit.quantize(model, "W4A16", calibration=cal, algorithm="gptq")
    layers = q.lowbit_record.ptq["layers"]
    assert len(layers) == 7 and all(r["rounding"] == "gptq" for r in layers.values())
    assert all(r["error_after"] < r["error_before"] for r in layers.values())
    assert _rel(q(x), model(x)) < _rel(rtn(x), model(x))


def test_block_by_block_feeding_matches_whole_model_passes():
    model = Tiny().eval()
    cal = [((t,), {"scale": 0.5}) for t in _calib((2, 4, 32))]  # kwargs reach every block
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    feeder = Feeder(model, layers, cal)
    assert feeder.blocks is not None
    for names in (["blocks.0.up"], ["blocks.1.down"], ["blocks.2.up"], ["head"]):
        got = feeder.inputs(names, 1)[0]
        want = layer_inputs(model, [layers[names[0]]], cal[1])[0]
        assert torch.allclose(got, want, atol=1e-6)


def test_adaround_and_bias_correction_are_never_worse_than_nearest_per_layer():
    model = Chain().eval()
    q = lowbit.quantize(model, "W3A8", calibration=_calib((32, 1, 8, 8)),
                        algorithm=["adaround", "bias_correction"],
                        algorithm_options={"adaround_iters": 200})  # fmt: skip
    for name, r in q.lowbit_record.ptq["layers"].items():
        assert r["rounding"] == "adaround" and r["bias_correction"], name
        assert r["error_after"] <= r["error_before"] * 1.05, name


def test_smoothquant_folds_into_layernorm_when_exact_and_helps_w8a8():
    model, x = Tiny().eval(), torch.randn(4, 16, 32)
    cal = _calib((8, 16, 32))
    plain = lowbit.quantize(model, "W8A8", calibration=cal)
    sq = lowbit.quantize(model, "W8A8", calibration=cal, algorithm="smoothquant")
    folds = {r["folded_into"] for r in sq.lowbit_record.ptq["rescaled"]}
    assert {"blocks.0.ln", "blocks.1.ln", "blocks.2.ln"} <= folds
    assert _rel(sq(x), model(x)) < _rel(plain(x), model(x))


def test_unfolded_smoothing_is_kept_on_the_layer_and_survives_save_load(tmp_path):
    model, x = Tiny(post_ln=True).eval(), torch.randn(4, 16, 32)
    q = lowbit.quantize(model, "W8A8", calibration=_calib((8, 16, 32)), algorithm="smoothquant")
    assert all(r["folded_into"] is None for r in q.lowbit_record.ptq["rescaled"])
    up = q.blocks[0].up
    assert isinstance(up, QuantLinear) and up.input_smooth is not None
    loaded = lowbit.load(lowbit.save(q, tmp_path / "a"), Tiny(post_ln=True))
    assert torch.equal(loaded.blocks[0].up.input_smooth, up.input_smooth)
    assert torch.equal(loaded(x), q(x))
    assert loaded.lowbit_record.ptq["algorithms"] == ["smoothquant"]


def test_awq_then_gptq_weight_only():
    model, x = Tiny().eval(), torch.randn(4, 16, 32)
    cal = _calib((8, 16, 32))
    rtn = lowbit.quantize(model, "W4A16", calibration=cal)
    q = lowbit.quantize(model, "W4A16", calibration=cal, algorithm=["awq", "gptq"])
    awq = [r for r in q.lowbit_record.ptq["rescaled"] if r["algorithm"] == "awq"]
    assert awq and all(r["loss"] <= r["loss_rtn"] for r in awq)
    assert _rel(q(x), model(x)) < _rel(rtn(x), model(x))


def test_bias_correction_gives_a_bias_free_layer_a_bias_that_saves(tmp_path):
    model = nn.Sequential(nn.Linear(16, 16, bias=False), nn.ReLU(), nn.Linear(16, 4)).eval()
    cal = [t + 1.0 for t in _calib((64, 16))]
    q = lowbit.quantize(model, "W3A8", calibration=cal, algorithm="bias_correction")
    assert q[0].bias is not None
    loaded = lowbit.load(lowbit.save(q, tmp_path / "a"), model)
    x = cal[0]
    assert torch.equal(loaded(x), q(x))


def test_gptq_for_codebook_and_grid_formats_through_quantize():
    model = Tiny().eval()
    cal = _calib((8, 16, 32))
    for scheme in ("NF4", "KMEANS16", "TERNARY"):
        q = lowbit.quantize(model, scheme, calibration=cal, algorithm="gptq")
        errs = q.lowbit_record.ptq["layers"].values()
        assert all(r["error_after"] < r["error_before"] for r in errs), scheme


# -- bad input ---------------------------------------------------------------------------------
def test_algorithms_need_calibration():
    with pytest.raises(CalibrationError, match="calibration"):
        lowbit.quantize(Tiny().eval(), "W4A16", algorithm="gptq")
    with pytest.raises(CalibrationError, match="empty"):
        lowbit.quantize(Tiny().eval(), "W4A16", calibration=[], algorithm="gptq")


def test_algorithm_names_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'gptq'"):
        lowbit.quantize(Tiny().eval(), "W4A16", calibration=_calib((2, 32)), algorithm="gpt")
    with pytest.raises(ConfigError, match="one of rtn, gptq, adaround"):
        QuantConfig(lowbit.get_preset("W4A8"), algorithms=("gptq", "adaround"))
    with pytest.raises(ConfigError, match="must come first"):
        QuantConfig(lowbit.get_preset("W4A8"), algorithms=("gptq", "awq"))


def test_adaround_refuses_non_uniform_formats():
    with pytest.raises(ConfigError, match="AdaRound rounds onto a uniform integer grid"):
        lowbit.quantize(Tiny().eval(), "NF4", calibration=_calib((2, 32)), algorithm="adaround")


def test_algorithms_live_in_the_config_and_round_trip_through_json():
    config = QuantConfig(lowbit.get_preset("W4A8"), algorithms=("cle", "bias_correction"),
                         ptq_options={"adaround_iters": 10})  # fmt: skip
    again = QuantConfig.from_json(config.to_json())
    assert again == config and again.ptq_options.adaround_iters == 10
    q = lowbit.quantize(Chain().eval(), config, calibration=_calib((8, 1, 8, 8)))
    assert q.lowbit_record.ptq["algorithms"] == ["cle", "bias_correction"]
    with pytest.raises(ConfigError, match="adaround_iters"):
        QuantConfig(lowbit.get_preset("W4A8"), ptq_options={"adaround_iters": 0})


class Heads(nn.Module):
    """A trunk and parallel heads in a ModuleList: not a chain of blocks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(16, 32)
        self.heads = nn.ModuleList([nn.Linear(32, 10), nn.Linear(32, 3)])

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return torch.cat([head(h) for head in self.heads], dim=-1)


def test_parallel_heads_in_a_module_list_fall_back_to_whole_model_passes():
    model = Heads().eval()
    q = lowbit.quantize(model, "W4A16", calibration=_calib((16, 16)), algorithm="gptq")
    assert set(q.lowbit_record.ptq["layers"]) == {"trunk", "heads.0", "heads.1"}


def test_cast_layers_in_a_mixed_config_are_left_to_the_cast():
    model, x = Tiny().eval(), torch.randn(2, 16, 32)
    q = lowbit.quantize(model, "W4A16", calibration=_calib((4, 16, 32)), algorithm="gptq",
                        overrides={"head": "BF16"})  # fmt: skip
    assert "head" not in q.lowbit_record.ptq["layers"]
    assert _rel(q(x), model(x)) < 0.05


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 16)
        self.mix = nn.Linear(16, 16)
        self.out = nn.Linear(16, 50, bias=False)
        self.out.weight = self.emb.weight  # tied, as in language models

    def forward(self, ids):
        return self.out(torch.relu(self.mix(self.emb(ids))))


def test_smoothing_and_rounding_never_change_a_tied_embedding():
    model = Tied().eval()
    emb_before = model.emb.weight.detach().clone()
    cal = [torch.randint(0, 50, (4, 8)) for _ in range(3)]
    q = lowbit.quantize(model, "W4A16", calibration=cal, algorithm=["awq", "gptq"],
                        exclude=["emb"])  # fmt: skip
    assert torch.equal(q.emb.weight, emb_before)
    assert torch.equal(model.emb.weight, emb_before)  # the user's model is untouched too


def test_a_layer_reused_under_two_names_is_rescaled_once():
    shared = nn.Linear(16, 16)
    model = nn.Sequential(nn.LayerNorm(16), shared, nn.ReLU(), shared).eval()
    cal = _calib((8, 16))
    q = lowbit.quantize(model, "W8A8", calibration=cal, algorithm=["smoothquant", "gptq"])
    layers = [r["layers"] for r in q.lowbit_record.ptq["rescaled"]]
    assert sum(names.count("1") + names.count("3") for names in layers) <= 1
    assert q[1] is q[3]
    x = cal[0]
    assert _rel(q(x), model(x)) < 0.05


def test_calibration_batches_of_the_wrong_shape_name_the_problem():
    for algo in ("gptq", "awq", "cle"):
        with pytest.raises(CalibrationError, match="failed on a calibration batch"):
            lowbit.quantize(Tiny().eval(), "W4A16", calibration=[torch.randn(2, 7)], algorithm=algo)
