"""GPTQ: lower layer-output error than round-to-nearest, on the grid, all options."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.gptq import gptq
from lowbit.formats import IntFormat
from lowbit.primitives import choose_qparams


def _setup(seed=0, n=512, cols=64, rows=16):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=gen)  # correlated inputs: where GPTQ helps
    x = torch.randn(n, cols, generator=gen) @ mix
    w = torch.randn(rows, cols, generator=gen)
    return x, w, 2 * x.T @ x


def _uniform(bits):
    fmt = IntFormat(bits, signed=False)

    def fit(cols, _group=0):
        return choose_qparams(cols.amin(dim=1), cols.amax(dim=1), fmt, symmetric=False)

    def qdq(col, params):
        s, z = params
        return (torch.clamp(torch.round(col / s) + z, fmt.qmin, fmt.qmax) - z) * s

    return fit, qdq


def _output_error(x, w, q):
    return float(((x @ (w - q).T) ** 2).sum())


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize(
    "options", [{}, {"group_size": 16}, {"act_order": True}, {"block_size": 8}]
)
def test_gptq_beats_round_to_nearest(bits, options) -> None:
    x, w, h = _setup()
    fit, qdq = _uniform(bits)
    q, groups = gptq(w, h, fit, qdq, **options)
    size = options.get("group_size") or w.shape[1]
    assert len(groups) == w.shape[1] // size
    rtn = torch.cat(
        [qdq(w[:, g : g + size].T, fit(w[:, g : g + size])).T for g in range(0, 64, size)], 1
    )
    assert _output_error(x, w, q) < 0.8 * _output_error(x, w, rtn)
    # every column lies on its group's grid
    for g in range(0, 64, size):
        s, z = groups[g // size]
        codes = q[:, g : g + size] / s[:, None] + z[:, None]
        assert torch.allclose(codes, codes.round(), atol=1e-3)


def test_dead_inputs_are_zeroed() -> None:
    x, w, h = _setup()
    h[:, 3] = 0
    h[3, :] = 0
    fit, qdq = _uniform(4)
    q, _ = gptq(w, h, fit, qdq)
    assert torch.allclose(q[:, 3], torch.zeros(16), atol=1e-6)  # zero is on every grid
