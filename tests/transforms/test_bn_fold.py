"""BatchNorm folding: same outputs in eval, only foldable pairs, fx trace or Sequential fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.transforms.bn_fold import (
    FoldedBatchNorm,
    apply_folds_,
    find_conv_bn_pairs,
    fold_batchnorm_,
    fold_pair_,
)


def randomize_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    """Non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.25)
        if bn.affine:
            bn.weight.copy_(torch.randn(n, generator=g))
            bn.bias.copy_(torch.randn(n, generator=g))


class ConvBN(nn.Module):
    def __init__(self, dims: int, bias: bool, affine: bool = True):
        super().__init__()
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.conv = conv(3, 6, 3, padding=1, bias=bias)
        self.bn = bn(6, affine=affine)
        self.act = nn.ReLU()
        self.head = conv(6, 4, 1)

    def forward(self, x):
        return self.head(self.act(self.bn(self.conv(x))))


def _input(dims: int) -> torch.Tensor:
    return torch.randn((2, 3, 10) if dims == 1 else (2, 3, 6, 6))


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_folding_preserves_eval_outputs(dims: int, bias: bool, affine: bool) -> None:
    torch.manual_seed(dims * 4 + bias * 2 + affine)
    model = ConvBN(dims, bias, affine).eval()
    randomize_bn(model.bn, seed=dims)
    x = _input(dims)
    with torch.no_grad():
        before = model(x)
        folded = fold_batchnorm_(model)
        after = model(x)
    assert folded == [{"conv": "conv", "bn": "bn", "bias_added": not bias}]
    assert isinstance(model.bn, FoldedBatchNorm)
    assert model.conv.bias is not None
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_fold_pair_formula() -> None:
    conv = nn.Conv2d(2, 3, 1, bias=True)
    bn = nn.BatchNorm2d(3, eps=1e-3)
    randomize_bn(bn, 0)
    w0, b0 = conv.weight.detach().clone(), conv.bias.detach().clone()
    assert fold_pair_(conv, bn) is False
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(conv.weight, w0 * factor.reshape(-1, 1, 1, 1))
    torch.testing.assert_close(conv.bias, (b0 - bn.running_mean) * factor + bn.bias)


def test_folding_inside_nested_sequentials() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 4, 3, groups=4, bias=False), nn.BatchNorm2d(4)),
    ).eval()
    randomize_bn(model[0][1], 1)
    randomize_bn(model[1][1], 2)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        folded = fold_batchnorm_(model)
        after = model(x)
    assert [(f["conv"], f["bn"]) for f in folded] == [("0.0", "0.1"), ("1.0", "1.1")]
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


class SharedConvOutput(nn.Module):
    """The conv output feeds the BN *and* a residual: folding would change the residual."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class ConvCalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(self.conv(x)))


class BNCalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.bn(x)


class BNOnInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(self.bn(x))


@pytest.mark.parametrize("cls", [SharedConvOutput, ConvCalledTwice, BNCalledTwice, BNOnInput])
def test_unsafe_pairs_are_not_folded(cls) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    randomize_bn(model.bn, 3)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        before = model(x)
        assert find_conv_bn_pairs(model) == []
        assert fold_batchnorm_(model) == []
        after = model(x)
    assert isinstance(model.bn, nn.BatchNorm2d)
    assert torch.equal(after, before)


def test_bn_without_running_stats_is_not_folded() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    assert find_conv_bn_pairs(model) == []


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace this forward."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.tail = nn.Sequential(nn.Conv1d(4, 4, 1), nn.BatchNorm1d(4))

    def forward(self, x):
        y = self.body(x)
        if y.sum() > 0:
            y = y * 2
        return self.tail(y.flatten(2))


def test_sequential_fallback_for_untraceable_models() -> None:
    torch.manual_seed(0)
    model = Untraceable().eval()
    randomize_bn(model.body[1], 4)
    randomize_bn(model.tail[1], 5)
    with pytest.raises(Exception):  # noqa: B017 - the premise: fx really fails here
        torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        before = model(x)
        folded = fold_batchnorm_(model)
        after = model(x)
    assert [(f["conv"], f["bn"]) for f in folded] == [("body.0", "body.1"), ("tail.0", "tail.1")]
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_apply_folds_gives_a_skeleton_the_folded_structure() -> None:
    torch.manual_seed(0)
    model = ConvBN(2, bias=False).eval()
    randomize_bn(model.bn, 6)
    folded = fold_batchnorm_(model)
    skeleton = ConvBN(2, bias=False)
    apply_folds_(skeleton, folded)
    assert isinstance(skeleton.bn, FoldedBatchNorm)
    assert skeleton.conv.bias is not None and skeleton.conv.bias.shape == (6,)
    skeleton.load_state_dict(model.state_dict())
    x = _input(2)
    assert torch.equal(skeleton.eval()(x), model(x))


class _Block(nn.Module):
    """Traceable block with a conv + BN pair inside an untraceable model."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class UntraceableWithBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.blocks = nn.ModuleList([_Block(), _Block()])

    def forward(self, x):
        y = self.stem(x)
        for b in self.blocks:
            y = b(y) if y.mean() > -10 else y  # data-dependent: fx fails on the whole model
        return y


def test_per_submodule_fallback_folds_inside_traceable_blocks(caplog) -> None:
    torch.manual_seed(0)
    model = UntraceableWithBlocks().eval()
    for i, b in enumerate(model.blocks):
        randomize_bn(b.bn, 10 + i)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        before = model(x)
        folded = fold_batchnorm_(model)
        after = model(x)
    assert [(f["conv"], f["bn"]) for f in folded] == [
        ("blocks.0.conv", "blocks.0.bn"),
        ("blocks.1.conv", "blocks.1.bn"),
    ]
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_timm_batchnorm_act_keeps_its_activation() -> None:
    from lowbit.compat import import_timm
    from lowbit.transforms.bn_fold import FoldedBatchNormAct

    try:
        timm = import_timm()
    except ImportError:
        pytest.skip("timm is not installed")
    model = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    for i, m in enumerate(model.modules()):
        if isinstance(m, nn.BatchNorm2d):
            randomize_bn(m, i)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        folded = fold_batchnorm_(model)
        after = model(x)
    assert len(folded) > 20
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert isinstance(model.bn1, FoldedBatchNormAct) and isinstance(model.bn1.act, nn.Hardswish)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


class _BNWithExtra(nn.BatchNorm2d):
    """A BatchNorm subclass whose forward does more than normalize: not folded."""

    def forward(self, x):
        return super().forward(x) * 2


def test_unknown_batchnorm_subclasses_are_not_folded() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), _BNWithExtra(4)).eval()
    assert find_conv_bn_pairs(model) == []
