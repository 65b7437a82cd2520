"""lowbit.compat.import_timm: timm's models build beside a torchvision without compiled ops."""

from __future__ import annotations

import pytest
import torch


def test_import_timm_builds_a_model():
    from lowbit.compat import import_timm

    try:
        timm = import_timm()
    except ImportError:
        pytest.skip("timm is not installed")
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert import_timm() is timm  # a second call is harmless
