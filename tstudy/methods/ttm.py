"""Transformed teacher matching (TTM) and its weighted variant (WTTM), Zheng & Yang, ICLR 2024."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from tstudy import losses as L
from tstudy.methods.base import Method, by_pair, register

# beta (weight of the distillation term) from the paper's appendix, by (teacher, student)
TTM_BETA: dict[tuple[str, str], float] = {
    ("resnet56", "resnet20"): 7.0,
    ("resnet110", "resnet32"): 33.0,
    ("resnet32x4", "resnet8x4"): 100.0,
    ("wrn_40_2", "wrn_16_2"): 101.0,
    ("wrn_40_2", "wrn_40_1"): 76.0,
    ("vgg13", "vgg8"): 45.0,
}
# the paper's gamma (= 1/T) for the same pairs; informative only (T comes from the study)
TTM_PAPER_GAMMA: dict[tuple[str, str], float] = {
    ("resnet56", "resnet20"): 0.3,
    ("resnet110", "resnet32"): 0.1,
    ("resnet32x4", "resnet8x4"): 0.1,
    ("wrn_40_2", "wrn_16_2"): 0.1,
    ("wrn_40_2", "wrn_40_1"): 0.1,
    ("vgg13", "vgg8"): 0.1,
}
WTTM_BETA: dict[tuple[str, str], float] = {
    ("resnet56", "resnet20"): 1.5,
    ("resnet110", "resnet32"): 1.5,
    ("resnet32x4", "resnet8x4"): 3.0,
    ("wrn_40_2", "wrn_16_2"): 4.0,
    ("wrn_40_2", "wrn_40_1"): 3.0,
    ("vgg13", "vgg8"): 2.25,
}
WTTM_DEFAULT_BETA = 2.0


@register("ttm")
class TTM(Method):
    """TTM: ``w_ce·CE + β·KL_batchmean(σ(v/T) ‖ σ(z))`` — teacher softened (power transform
    ``p^γ/Σp^γ`` of ``p = σ(v)``, ``γ = 1/T``), student at T = 1, no T² factor.
    ``beta`` default: by (teacher, student) pair from the paper appendix (res56→res20 7,
    res110→res32 33, res32x4→res8x4 100, wrn40_2→wrn16_2 101, wrn40_2→wrn40_1 76, vgg13→vgg8 45);
    any other pair ``β = 9·T``. Terms: ``ce``, ``kd``.

    temperature: 1/γ of the teacher's power transform; the student is never softened (no T²).
    """

    graph_safe = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        beta = self.p["beta"]
        self.beta: float = beta if beta is not None else self.default_beta()

    def default_beta(self) -> float:
        return by_pair(TTM_BETA, self.teacher_model, self.student_model, 9.0 * self.temperature)

    def per_sample(self, z: Tensor, v: Tensor) -> Tensor:
        return L.ttm_kl(z, v, self.temperature)

    def terms(self, z: Tensor, v: Optional[Tensor], y: Tensor, epoch: int) -> dict[str, Tensor]:
        v = self._teacher(v, z)
        return {"ce": self.p["w_ce"] * L.cross_entropy(z, y), "kd": self.beta * self.per_sample(z, v).mean()}

    def constants(self) -> dict[str, float]:
        out = {"beta": self.beta}
        gamma = by_pair(TTM_PAPER_GAMMA, self.teacher_model, self.student_model, None)
        if gamma is not None:
            out["paper_gamma"] = gamma
        return out


@register("wttm")
class WTTM(TTM):
    """WTTM: ``w_ce·CE + β·mean_b[U_b·KL(σ(v_b/T) ‖ σ(z_b))]`` with ``U_b = Σ_j p_bj^γ``,
    ``p = σ(v)``, ``γ = 1/T`` (U from the teacher only, so it carries no gradient, as in the
    official code). ``beta`` default by pair (res56→res20 1.5, res110→res32 1.5,
    res32x4→res8x4 3, wrn40_2→wrn16_2 4, wrn40_2→wrn40_1 3, vgg13→vgg8 2.25), else 2.
    Terms: ``ce``, ``kd``.

    temperature: 1/γ of the teacher's power transform; the student is never softened (no T²).
    """

    def default_beta(self) -> float:
        return by_pair(WTTM_BETA, self.teacher_model, self.student_model, WTTM_DEFAULT_BETA)

    def per_sample(self, z: Tensor, v: Tensor) -> Tensor:
        return L.wttm_weight(v, self.temperature) * L.ttm_kl(z, v, self.temperature)

    def constants(self) -> dict[str, float]:
        return {"beta": self.beta}
