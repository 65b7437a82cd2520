"""A small training loop for prepared models: progress bar, cosine schedule, evaluation callback.

>>> history = fit(prepared, loader, epochs=3, teacher=float_model,  # doctest: +SKIP
...               loss=QATLoss(kd=1.0), eval_fn=lambda m: accuracy(m))
>>> qmodel = convert(prepared)  # doctest: +SKIP

Your own loop works as well: a prepared model is a plain ``nn.Module`` (see the README).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.errors import CalibrationError
from lowbit.qat.losses import QATLoss

__all__ = ["fit", "FitHistory"]


@dataclass
class FitHistory:
    """Per epoch: mean training loss, wall-clock seconds and the evaluation callback's value."""

    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    evaluation: list[object] = field(default_factory=list)


def fit(
    model: nn.Module,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    epochs: int,
    *,
    lr: float = 1e-4,
    optimizer: torch.optim.Optimizer | None = None,
    teacher: nn.Module | None = None,
    loss: QATLoss | None = None,
    eval_fn: Callable[[nn.Module], object] | None = None,
    progress: bool | None = None,
) -> FitHistory:
    """Train ``model`` (prepared or float) on ``(inputs, targets)`` batches for ``epochs``.

    Adam at ``lr`` unless ``optimizer`` is given, with a cosine schedule over ``epochs`` either
    way; ``teacher`` (the float
    model, in eval mode) supplies logits for the distillation term of ``loss`` (default:
    cross-entropy, plus distillation with weight 1 when a teacher is given).
    """
    loss = loss or QATLoss(kd=1.0 if teacher is not None else 0.0)
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if teacher is not None:
        teacher.eval()
    history = FitHistory()
    bar = tqdm(
        range(epochs),
        desc="QAT",
        unit="epoch",
        disable=(not progress) if progress is not None else None,
    )
    for _ in bar:
        model.train()
        start, total, batches = time.perf_counter(), 0.0, 0
        for x, y in train_loader:
            opt.zero_grad()
            with _capture(model, loss.feature_layers) as feats:
                logits = model(x)
            with torch.no_grad(), _capture(teacher, loss.feature_layers) as t_feats:
                t_logits = teacher(x) if teacher is not None else None
            value = loss(model, logits, y, t_logits, feats, t_feats)
            value.backward()
            opt.step()
            total, batches = total + float(value.detach()), batches + 1
        if batches == 0:
            raise CalibrationError("fit got an empty train_loader: no batch to train on")
        sched.step()
        history.loss.append(total / batches)
        history.seconds.append(time.perf_counter() - start)
        model.eval()
        if eval_fn is not None:
            with torch.no_grad():
                history.evaluation.append(eval_fn(model))
        bar.set_postfix(loss=f"{history.loss[-1]:.4f}")
    return history


@contextlib.contextmanager
def _capture(model: nn.Module | None, names: tuple[str, ...]) -> Iterator[dict]:
    """Outputs of the named submodules during the ``with`` block (for feature distillation)."""
    out: dict[str, torch.Tensor] = {}
    if model is None or not names:
        yield out
        return
    hooks = []
    for name in names:

        def hook(_m, _args, result, name=name):
            out[name] = result

        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in hooks:
            h.remove()
