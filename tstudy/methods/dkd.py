"""Decoupled knowledge distillation (Zhao et al., CVPR 2022), as in mdistiller."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from tstudy import losses as L
from tstudy.methods.base import Method, by_pair, register, warmup_factor

# mdistiller's CIFAR-100 configs: beta by (teacher, student); alpha 1, warm-up 20 everywhere
DKD_BETA: dict[tuple[str, str], float] = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
}
DKD_DEFAULT_BETA = 8.0


@register("dkd")
class DKD(Method):
    """DKD: ``w_ce·CE + min(epoch/warmup, 1)·(α·TCKD + β·NCKD)``, TCKD/NCKD each
    ``T²·KL_batchmean`` of the binary target/non-target split and of the non-target-only
    distributions (target removed rather than masked by −1000: same values, no −inf/NaN).
    alpha 1, warmup 20, beta by pair (res56→res20 and res110→res32: 2; wrn and vgg pairs: 6;
    otherwise 8). Terms: ``ce``, ``tckd``, ``nckd`` (weights and warm-up applied).

    temperature: the shared softmax temperature T of teacher and student (with T² on both parts).
    """

    graph_safe = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        beta = self.p["beta"]
        self.beta: float = (
            beta if beta is not None else by_pair(DKD_BETA, self.teacher_model, self.student_model, DKD_DEFAULT_BETA)
        )

    def terms(self, z: Tensor, v: Optional[Tensor], y: Tensor, epoch: int) -> dict[str, Tensor]:
        v = self._teacher(v, z)
        T = self.temperature
        tckd, nckd = L.dkd_kl_parts(z, v, y, T)
        ramp = warmup_factor(epoch, self.p["warmup"])
        return {
            "ce": self.p["w_ce"] * L.cross_entropy(z, y),
            "tckd": ramp * self.p["alpha"] * T**2 * tckd.mean(),
            "nckd": ramp * self.beta * T**2 * nckd.mean(),
        }

    def constants(self) -> dict[str, float]:
        return {"alpha": self.p["alpha"], "beta": self.beta, "warmup": self.p["warmup"]}
