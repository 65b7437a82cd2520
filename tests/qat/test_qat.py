"""prepare -> train -> convert: the integer model computes what the fake-quant model did."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit import qat
from lowbit.errors import CalibrationError, ConfigError, InvalidModelError
from lowbit.measure import sqnr_db
from lowbit.nn import QuantConv, QuantLinear


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Identity(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10),
    )  # fmt: skip


def _train_steps(model, steps=5):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(16, 1, 8, 8, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize(
    "scheme",
    ["W8A8", "W4A8", "W8A8-dynamic", "W4A16-g128", "W4A16", "BINARY", "TERNARY", "NF4"]
    + ["KMEANS16", "KMEANS4", "POT4"],
)
def test_converted_model_matches_fake_quant(scheme) -> None:
    prepared = qat.prepare(_cnn(), scheme)
    assert prepared.training and isinstance(prepared[5], qat.QATLinear)
    _train_steps(prepared)
    prepared.eval()
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        fake = prepared(x)
    converted = qat.convert(prepared)
    assert isinstance(converted[5], QuantLinear)
    # group-wise schemes leave the 3x3 conv on one channel (rows of 9) in float
    grouped = lowbit.get_preset(scheme).weight.granularity.startswith("per_group")
    assert isinstance(converted[0], QuantConv) is not grouped
    out = converted(x)
    assert (fake.argmax(1) == out.argmax(1)).float().mean() >= 0.95
    assert sqnr_db(fake, out) > 30
    assert not hasattr(converted, "lowbit_qat") and converted.lowbit_record.layers


def test_training_moves_the_steps_and_the_result_saves(tmp_path) -> None:
    prepared = qat.prepare(_cnn(), "W4A8")
    before = prepared[5].weight_quantizer.scale.detach().clone()
    _train_steps(prepared)
    assert not torch.equal(before, prepared[5].weight_quantizer.scale.detach())
    assert bool(prepared[5].input_initialized)
    converted = qat.convert(prepared)
    lowbit.save(converted, tmp_path)
    loaded = lowbit.load(tmp_path, _cnn())
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(loaded(x), converted(x))


def test_codebook_centroids_train() -> None:
    prepared = qat.prepare(_cnn(), "KMEANS16")
    book = prepared[5].weight_quantizer.codebook
    before = book.detach().clone()
    _train_steps(prepared)
    assert book.grad is not None and not torch.equal(before, book.detach())


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="cast"):
        qat.prepare(_cnn(), "FP16")
    with pytest.raises(InvalidModelError, match="prepare"):
        qat.convert(_cnn())
    prepared = qat.prepare(_cnn(), "W8A8")
    with pytest.raises(CalibrationError, match="never initialised"):
        qat.convert(prepared)  # no batch has run: the input steps are unknown


def test_batchnorm_trains_on_batch_statistics_then_freezes(tmp_path) -> None:
    prepared = qat.prepare(_cnn(), "W8A8", freeze_bn_after=3)
    layer = prepared[0]
    assert isinstance(layer, qat.QATConvBN) and type(prepared[1]).__name__ == "FoldedBatchNorm"
    _train_steps(prepared, steps=3)
    frozen_mean = layer.bn.running_mean.clone()
    assert not torch.equal(frozen_mean, torch.zeros(8))  # batch statistics moved it
    _train_steps(prepared, steps=2)
    assert int(layer.steps) == 3 and torch.equal(layer.bn.running_mean, frozen_mean)
    prepared.eval()
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        fake = prepared(x)
    converted = qat.convert(prepared)
    assert isinstance(converted[0], QuantConv) and converted[0].bias is not None
    assert sqnr_db(fake, converted(x)) > 30
    lowbit.save(converted, tmp_path)
    assert torch.equal(lowbit.load(tmp_path, _cnn())(x), converted(x))


def test_pact_inputs_convert_exactly() -> None:
    calib = [torch.randn(16, 1, 8, 8)]
    prepared = qat.prepare(_cnn(), "W4A4", calibration=calib, activation_estimator="pact")
    assert bool(prepared[5].input_pact)  # after a ReLU: non-negative, so PACT
    assert not bool(prepared[0].input_pact)  # raw inputs go below zero: LSQ
    _train_steps(prepared)
    prepared.eval()
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        fake = prepared(x)
    out = qat.convert(prepared)(x)
    assert sqnr_db(fake, out) > 30 and (fake.argmax(1) == out.argmax(1)).float().mean() >= 0.95
    with pytest.raises(ConfigError, match="activation_estimator"):
        qat.prepare(_cnn(), "W4A4", activation_estimator="ste")


def test_fit_with_distillation_feature_and_qerror_terms() -> None:
    teacher = _cnn().eval()
    prepared = qat.prepare(teacher, "W4A8")
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,))) for _ in range(3)
    ]
    loss = qat.QATLoss(kd=1.0, qerror=0.1, feature=1.0, feature_layers=("5",))
    seen = []
    history = qat.fit(prepared, batches, epochs=2, teacher=teacher, loss=loss,
                      eval_fn=lambda m: seen.append(m.training) or 1.0, progress=False)  # fmt: skip
    assert len(history.loss) == 2 and all(v > 0 for v in history.loss)
    assert seen == [False, False] and history.evaluation == [1.0, 1.0]
    with pytest.raises(ConfigError, match="feature_layers"):
        qat.QATLoss(feature=1.0)
    with pytest.raises(ConfigError, match="teacher"):
        qat.fit(prepared, batches, epochs=1, loss=qat.QATLoss(kd=1.0), progress=False)
    with pytest.raises(CalibrationError, match="empty"):
        qat.fit(prepared, [], epochs=1, progress=False)


def test_conv_bn_in_train_mode_matches_float_conv_bn() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8)
    with torch.no_grad():
        conv.bias.fill_(5.0)  # a bias the batch statistics must see
    layer = qat.QATConvBN(conv, bn, lowbit.get_preset("W8A16"), "conv", freeze_after=10)
    x = torch.randn(16, 3, 6, 6)
    float_out = bn.train()(conv(x))
    out = layer.train()(x)
    assert sqnr_db(float_out, out) > 30  # int8 weights, bf16 inputs
    assert torch.allclose(layer.bn.running_mean, bn.running_mean, atol=1e-4)


def test_dynamic_convs_convert_closely() -> None:
    prepared = qat.prepare(_cnn(), "W8A8-dynamic")
    _train_steps(prepared)
    prepared.eval()
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        fake = prepared[0](x)
    converted = qat.convert(prepared)
    assert sqnr_db(fake, converted[0](x)) > 60  # same per-tensor uint8 grid as QuantConv


def test_quantization_error_pulls_weights_to_their_grid() -> None:
    prepared = qat.prepare(_cnn(), "W2A8", freeze_bn_after=2)
    _train_steps(prepared, steps=1)  # initialise input steps
    opt = torch.optim.SGD(prepared.parameters(), lr=0.05)
    errors = []
    for _ in range(5):
        opt.zero_grad()
        err = qat.quantization_error(prepared)
        err.backward()
        opt.step()
        errors.append(float(err.detach()))
    assert errors[-1] < errors[0] and prepared[5].weight.grad.abs().sum() > 0
