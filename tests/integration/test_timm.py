"""timm models (random weights, small inputs): one per family quantizes and runs, eager mode.

The full table (36 models, W8A8 / W4A16 / W4A16-g128) is ``benchmarks/bench_coverage.py``.
"""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.measure import sqnr_db


@pytest.fixture(scope="module")
def timm():
    from lowbit.compat import import_timm

    try:
        return import_timm()
    except ImportError:
        pytest.skip("timm is not installed")


# (model, create kwargs, input size): small resolutions keep each case to a second or two
CASES = [
    ("resnet10t", {}, 64),
    ("mobilenetv3_small_050", {}, 64),
    ("efficientnet_b0", {}, 64),
    ("convnext_atto", {}, 64),
    ("vit_tiny_patch16_224", {"img_size": 64}, 64),
    ("mixer_s16_224", {"img_size": 64}, 64),
]


@pytest.mark.parametrize(("arch", "kwargs", "size"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize(("scheme", "floor_db"), [("W8A8", 15.0), ("W4A16", 5.0)])
def test_timm_family_quantizes_and_runs(timm, arch, kwargs, size, scheme, floor_db):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=10, **kwargs).eval()
    with torch.no_grad():
        for p in model.get_classifier().parameters():  # zero-initialized heads (Mixer)
            if p.dim() >= 2 and not p.any():
                torch.nn.init.normal_(p, std=0.02)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(2, 3, size, size, generator=g) for _ in range(2)]
    x = torch.randn(2, 3, size, size, generator=g)
    q = lowbit.quantize(model, scheme, calibration=calib)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert out.shape == (2, 10)
    assert sqnr_db(ref, out) > floor_db
    assert len(q.lowbit_record.layers) > 5 and not q.lowbit_record.skipped


def test_same_padding_convs_stay_float_with_the_reason(timm):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10).eval()
    q = lowbit.quantize(model, "W8A16")
    reasons = set(q.lowbit_record.skipped.values())
    assert reasons and all("Conv2dSame overrides Conv2d.forward" in r for r in reasons)
    with torch.no_grad():
        assert q(torch.randn(1, 3, 64, 64)).shape == (1, 10)
