"""Hutchinson estimate of each layer's Hessian trace: a cheap sensitivity ranking (HAWQ-v2).

Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization" (NeurIPS 2020): a layer's
sensitivity to a weight perturbation ``ΔW`` is ``Ω = Tr(H)/n · ‖ΔW‖²``, where ``H`` is the
Hessian of the loss with respect to the layer's ``n`` weights. Hutchinson's estimator gives the
trace from Hessian-vector products with Rademacher vectors ``v`` (``E[vᵀHv] = Tr(H)``).

Without labels the loss is the distance to the float model's own outputs,
``L(W) = ½/N · Σ ‖f(x; W) − f(x; W₀)‖²``; at ``W₀`` its Hessian is the Gauss–Newton matrix
``JᵀJ/N`` (positive semi-definite), so ``Ω`` predicts the output MSE a perturbation adds.
One double backward pass gives every layer's ``vᵀHv`` at once: cross-layer terms vanish in
expectation because each layer draws its own ``v``.

>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
>>> batches = [((torch.randn(32, 8),), {})]  # (args, kwargs) pairs, as materialize() gives
>>> tr = hessian_traces(model, {"0": model[0], "2": model[2]}, batches, samples=8)
>>> sorted(tr) == ["0", "2"] and all(v >= 0 for v in tr.values())
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lowbit.ptq.capture import Batch, call_model, flat_tensors

__all__ = ["hessian_traces"]


def _flat_outputs(model: nn.Module, batch: Batch) -> torch.Tensor:
    return torch.cat([t.reshape(-1).float() for t in flat_tensors(call_model(model, batch))])


def hessian_traces(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Sequence[Batch],
    samples: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """``{name: Tr(H)/n}`` (mean diagonal Hessian entry) of each layer's ``weight``.

    ``samples`` Rademacher probes per batch; the estimate's relative error falls as
    ``1/sqrt(samples * len(batches))``.
    """
    gen = torch.Generator().manual_seed(seed)
    params = {n: m.weight for n, m in layers.items()}
    was = {n: p.requires_grad for n, p in params.items()}
    with torch.no_grad():
        n_rows = sum(_flat_outputs(model, b).numel() for b in batches)
    acc = dict.fromkeys(params, 0.0)
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                out = _flat_outputs(model, batch)
                # residual is 0 at W₀, but its graph makes the second derivative JᵀJ
                loss = 0.5 * (out - out.detach()).pow(2).sum() / n_rows
                grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
                for _ in range(samples):
                    vs = [torch.randint(0, 2, g.shape, generator=gen).float() * 2 - 1
                          for g in grads]  # fmt: skip
                    hvs = torch.autograd.grad(grads, list(params.values()), vs, retain_graph=True)
                    for name, v, hv in zip(params, vs, hvs, strict=True):
                        acc[name] += float((v * hv).sum()) / samples
    finally:
        for n, p in params.items():
            p.requires_grad_(was[n])
    return {n: max(acc[n], 0.0) / params[n].numel() for n in params}
