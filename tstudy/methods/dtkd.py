"""Dynamic temperature KD (Wei & Bai, 2024), as in its official code."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from tstudy import losses as L
from tstudy.methods.base import Method, by_pair, register, warmup_factor

# (alpha, beta) of the official CIFAR-100 configs by (teacher, student); others (3, 1)
DTKD_WEIGHTS: dict[tuple[str, str], tuple[float, float]] = {
    ("resnet56", "resnet20"): (1.0, 0.5),
    ("resnet110", "resnet32"): (1.0, 0.5),
    ("wrn_40_2", "wrn_40_1"): (1.0, 0.5),
}
DTKD_DEFAULT_WEIGHTS = (3.0, 1.0)


@register("dtkd")
class DTKD(Method):
    """DTKD: per sample ``x = max v``, ``y = max z``, ``T_tea = 2x/(x+y)·τ``,
    ``T_stu = 2y/(x+y)·τ``; ``L_dt = mean_b[T_tea·T_stu·KL(σ(v/T_tea) ‖ σ(z/T_stu))]``;
    ``L = w_ce·CE + min(epoch/warmup, 1)·(α·L_dt + β·τ²·KL_batchmean(σ(v/τ) ‖ σ(z/τ)))``.
    Gradients flow through the temperatures as in the reference. alpha/beta by pair
    (res56→res20, res110→res32, wrn40_2→wrn40_1: 1/0.5; otherwise 3/1), warmup 20.
    Guard: both maxima are clamped below at 1e-3 (so x+y > 0 and both T > 0; rows with
    x, y ≥ 1e-3 are untouched). Terms: ``ce``, ``dt``, ``kd``. Diagnostics: ``T_tea_mean``,
    ``T_stu_mean``.

    temperature: the reference temperature τ = (T_tea + T_stu)/2 (also the plain-KD part's T).
    """

    graph_safe = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        a, b = by_pair(DTKD_WEIGHTS, self.teacher_model, self.student_model, DTKD_DEFAULT_WEIGHTS)
        self.alpha: float = self.p["alpha"] if self.p["alpha"] is not None else a
        self.beta: float = self.p["beta"] if self.p["beta"] is not None else b

    def terms(self, z: Tensor, v: Optional[Tensor], y: Tensor, epoch: int) -> dict[str, Tensor]:
        v = self._teacher(v, z)
        tau = self.temperature
        t_tea, t_stu = L.dtkd_temperatures(z, v, tau)
        self._accumulate("T_tea", t_tea)
        self._accumulate("T_stu", t_stu)
        ramp = warmup_factor(epoch, self.p["warmup"])
        return {
            "ce": self.p["w_ce"] * L.cross_entropy(z, y),
            "dt": ramp * self.alpha * L.dtkd_kl(z, v, t_tea, t_stu).mean(),
            "kd": ramp * self.beta * L.kd_loss(z, v, tau),
        }

    def constants(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta}
