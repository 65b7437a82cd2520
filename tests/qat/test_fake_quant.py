"""LSQ fake quantization: straight-through input gradients and the LSQ step gradient."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.qat.fake_quant import cast_ste, grad_scale, lsq_fake_quantize, round_ste


def test_step_gradient_follows_lsq() -> None:
    s = torch.tensor(0.5, requires_grad=True)
    x = torch.tensor([0.3, 9.0, -9.0], requires_grad=True)
    y = lsq_fake_quantize(x, s, torch.tensor(0), -8, 7, (1,), 1.0)
    assert y.tolist() == [0.5, 3.5, -4.0]
    y.sum().backward()
    # inside: round(x/s) - x/s = 1 - 0.6; clipped: Qp = 7 and Qn = -8
    assert torch.allclose(s.grad, torch.tensor(0.4 + 7 - 8))
    assert x.grad.tolist() == [1.0, 0.0, 0.0]


def test_gradient_scale_and_casts_only_touch_the_backward() -> None:
    s = torch.tensor(3.0, requires_grad=True)
    y = grad_scale(s, 0.25)
    assert float(y.detach()) == 3.0
    y.backward()
    assert float(s.grad) == 0.25
    t = torch.tensor(1.0 + 2**-10, requires_grad=True)
    c = cast_ste(t, torch.bfloat16)
    assert float(c.detach()) == 1.0
    c.backward()
    assert float(t.grad) == 1.0
    r = torch.tensor([0.4, 1.6], requires_grad=True)
    round_ste(r).sum().backward()
    assert r.grad.tolist() == [1.0, 1.0]


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(0.01, 2.0), zp=st.integers(-3, 3), seed=st.integers(0, 100))
def test_forward_equals_quantize_dequantize(scale, zp, seed) -> None:
    x = torch.randn(50, generator=torch.Generator().manual_seed(seed)) * 3
    y = lsq_fake_quantize(x, torch.tensor(scale), torch.tensor(zp), -8, 7, (50,), 1.0)
    q = torch.clamp(torch.round(x / scale) + zp, -8, 7)
    assert torch.allclose(y, (q - zp) * scale, atol=1e-6)


def test_pact_clips_and_sends_the_clip_gradient_to_alpha() -> None:
    from lowbit.qat.fake_quant import pact_fake_quantize

    step = torch.tensor(0.5, requires_grad=True)  # alpha = 0.5 * 4 = 2
    x = torch.tensor([-1.0, 0.7, 3.0], requires_grad=True)
    y = pact_fake_quantize(x, step, 4)
    assert y.tolist() == [0.0, 0.5, 2.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0]
    assert float(step.grad) == 4.0  # only x >= alpha, times the number of steps


def test_ties_round_like_the_integer_kernels() -> None:
    """round(x/s) + z, not round(x/s + z): with an odd zero point the ties differ."""
    x, s, z = torch.tensor([0.25, 0.75]), torch.tensor(0.5), torch.tensor(1)
    y = lsq_fake_quantize(x, s, z, -8, 7, (2,), 1.0)
    q = torch.clamp(torch.round(x / s) + z, -8, 7)
    assert torch.equal(y, (q - z) * s)
