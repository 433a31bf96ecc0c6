"""Curriculum temperature KD (Li et al., AAAI 2023): adversarially learned temperature."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from tstudy import losses as L
from tstudy.methods.base import Method, register


class _GradReverse(torch.autograd.Function):
    """Identity forward; gradient multiplied by ``-lam`` backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * (-ctx.lam), None


def grad_reverse(x: Tensor, lam: float) -> Tensor:
    """Gradient reversal layer: ``x`` forward, ``-lam · grad`` backward."""
    return _GradReverse.apply(x, lam)


def ctkd_lambda(epoch: float, lambda_max: float = 1.0, lambda_epochs: float = 10.0) -> float:
    """Cosine curriculum ``λ_e = λ_max·½(1 − cos(π·min(e, E)/E))`` (0 → λ_max over E epochs)."""
    if lambda_epochs <= 0:
        return float(lambda_max)
    e = min(max(float(epoch), 0.0), lambda_epochs)
    return float(lambda_max) * 0.5 * (1.0 - math.cos(math.pi * e / lambda_epochs))


def ctkd_temperature(raw: Tensor, lam: float, t_start: float, t_range: float) -> Tensor:
    """``t_start + t_range·sigmoid(GRL_λ(raw))``."""
    return t_start + t_range * torch.sigmoid(grad_reverse(raw, lam))




@register("ctkd")
class CTKD(Method):
    """CTKD (global): one learnable θ, ``T = t_start + t_range·sigmoid(GRL(θ))``; the GRL
    reverses θ's gradient scaled by ``λ_e = lambda_max·½(1 − cos(π·min(e, E)/E))``
    (E = lambda_epochs). Loss ``w_ce·CE + w_kd·T²·KL_batchmean(σ(v/T) ‖ σ(z/T))``.
    θ is an ``nn.Parameter`` trained by the student's optimizer (official init θ = 1, T ≈ 15.6;
    here θ₀ = logit((T₀ − t_start)/t_range)). Terms: ``ce``, ``kd``.
    Diagnostics: ``T_mean``, ``T_min``, ``T_max``.

    temperature: the initial learned temperature T₀, strictly inside (t_start, t_start + t_range).
    """

    graph_safe = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.theta0 = self._initial_raw()
        self._build_temperature_module()

    def _build_temperature_module(self) -> None:
        self.theta = nn.Parameter(torch.tensor([self.theta0]))

    def _initial_raw(self) -> float:
        t0, lo, rng = self.temperature, self.p["t_start"], self.p["t_range"]
        type(self).check_temperature(t0, self.p)
        r = (t0 - lo) / rng
        return math.log(r / (1.0 - r))

    def lam(self, epoch: int) -> float:
        return ctkd_lambda(epoch, self.p["lambda_max"], self.p["lambda_epochs"])

    def raw(self, z: Tensor, v: Tensor) -> Tensor:
        """Pre-sigmoid temperature: ``[1]`` (global) or ``[B, 1]`` (instance)."""
        return self.theta

    def terms(self, z: Tensor, v: Optional[Tensor], y: Tensor, epoch: int) -> dict[str, Tensor]:
        v = self._teacher(v, z)
        T = ctkd_temperature(self.raw(z, v), self.lam(epoch), self.p["t_start"], self.p["t_range"])
        self._accumulate("T", T, ("mean", "min", "max"))
        kl = L.kd_kl(z, v, T)
        kd = (kl * (T * T).reshape(-1)).mean()
        return {"ce": self.p["w_ce"] * L.cross_entropy(z, y), "kd": self.p["w_kd"] * kd}

    def constants(self) -> dict[str, float]:
        return {"t_init": self.temperature, "t_start": self.p["t_start"], "t_range": self.p["t_range"]}


@register("ctkd_instance")
class CTKDInstance(CTKD):
    """CTKD, instance-wise: an MLP ``Linear(2C, hidden) → ReLU → Linear(hidden, 1)`` over the
    concatenated (detached) teacher and student logits gives one pre-sigmoid value per sample,
    mapped through the same GRL and ``t_start + t_range·sigmoid``; loss
    ``w_ce·CE + w_kd·mean_i[T_i²·KL_i]``. The last layer starts at weight 0 and bias θ₀, so every
    T_i starts at the swept temperature. The student's gradient ignores T's dependence on its
    logits (inputs detached); the MLP is trained adversarially via the GRL. hidden default 256.
    Terms: ``ce``, ``kd``. Diagnostics: ``T_mean``, ``T_min``, ``T_max``.

    temperature: the initial temperature of every sample, strictly inside (t_start, t_start + t_range).
    """


    def _build_temperature_module(self) -> None:
        c, h = self.num_classes, self.p["hidden"]
        self.mlp = nn.Sequential(nn.Linear(2 * c, h), nn.ReLU(), nn.Linear(h, 1))
        with torch.no_grad():
            self.mlp[2].weight.zero_()
            self.mlp[2].bias.fill_(self.theta0)

    def raw(self, z: Tensor, v: Tensor) -> Tensor:
        w = self.mlp[0].weight
        return self.mlp(torch.cat([v, z], dim=1).detach().to(w.dtype))
