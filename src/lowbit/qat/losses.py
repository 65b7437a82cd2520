"""QAT losses: the task loss plus distillation from the float model and a quantization-error term.

``L = w_task * CE(z_s, y) + w_kd * T² * KL(softmax(z_t / T) || softmax(z_s / T))
      + w_q * Σ_layers mean((ŵ - w)²) / mean(w²) + w_f * Σ_features MSE(f_s, f_t)``

Distillation (Hinton et al. 2015) lets the float model's soft labels guide the quantized one; the
regularizer pulls shadow weights towards the grid values they round to.

>>> kd = distillation_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]]))
>>> float(kd)
0.0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import ConfigError

__all__ = ["QATLoss", "distillation_loss", "quantization_error"]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0):
    """``T² · KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch."""
    t = temperature
    log_p_s = nn.functional.log_softmax(student / t, dim=-1)
    log_p_t = nn.functional.log_softmax(teacher.detach() / t, dim=-1)
    return nn.functional.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def quantization_error(model: nn.Module) -> torch.Tensor:
    """Σ over QAT layers of ``mean((w - sg(ŵ))²) / sg(mean(w²))`` (sg = stop gradient).

    Its gradient moves each shadow weight towards the grid value it rounds to (the
    straight-through forward would give ``ŵ - w`` no gradient at all). For conv+BN layers ``w``
    is the folded weight, the one the quantizer's steps belong to.
    """
    from lowbit.qat.modules import QATLayer

    terms = []
    for m in model.modules():
        if isinstance(m, QATLayer):
            w = m.quantizer_input()
            target = m.weight_quantizer(w).detach()
            terms.append((w - target).pow(2).mean() / w.detach().pow(2).mean().clamp(min=1e-12))
    return torch.stack(terms).sum() if terms else torch.zeros(())


@dataclass(frozen=True)
class QATLoss:
    """Weights of the loss terms (``kd`` needs a teacher in :func:`lowbit.qat.fit`)."""

    task: float = 1.0
    kd: float = 0.0
    temperature: float = 4.0
    qerror: float = 0.0
    feature: float = 0.0  # MSE between student and teacher outputs of ``feature_layers``
    feature_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_layers", tuple(self.feature_layers))
        if self.feature and not self.feature_layers:
            raise ConfigError("QATLoss.feature > 0 needs feature_layers=('module.name', ...)")
        if min(self.task, self.kd, self.qerror, self.feature) < 0 or self.temperature <= 0:
            raise ConfigError(f"loss weights must be >= 0 and the temperature > 0, got {self}")

    def __call__(
        self, model, logits, targets, teacher_logits=None, features=None, teacher_features=None
    ) -> torch.Tensor:
        loss = self.task * nn.functional.cross_entropy(logits, targets) if self.task else 0.0
        if self.kd:
            if teacher_logits is None:
                raise ConfigError("QATLoss.kd > 0 needs teacher logits (pass teacher=float_model)")
            loss = loss + self.kd * distillation_loss(logits, teacher_logits, self.temperature)
        if self.qerror:
            loss = loss + self.qerror * quantization_error(model)
        if self.feature:
            if not teacher_features:
                raise ConfigError("QATLoss.feature > 0 needs a teacher (pass teacher=float_model)")
            mse = sum(
                nn.functional.mse_loss(features[k], teacher_features[k].detach())
                for k in self.feature_layers
            )
            loss = loss + self.feature * mse
        return loss
