"""Cross-entropy, Hinton KD, logit-standardised KD and the relational ablations of KD."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tstudy import losses as L
from tstudy.methods.base import Method, register, warmup_factor

@register("ce")
class CE(Method):
    """Cross-entropy on the labels only; no teacher. Terms: ``ce``.

    temperature: unused (no teacher).
    """

    graph_safe = True

    def terms(self, z: Tensor, v: Optional[Tensor], y: Tensor, epoch: int) -> dict[str, Tensor]:
        return {"ce": L.cross_entropy(z, y)}


@register("kd")
class KD(Method):
    """Hinton KD: ``w_ce·CE + w_kd·T²·KL_batchmean(σ(v/T) ‖ σ(z/T))``. Terms: ``ce``, ``kd``.

    temperature: the shared softmax temperature T of teacher and student (with the T² factor).
    """

    graph_safe = True

    def kd_term(self, z: Tensor, v: Tensor, y: Tensor) -> Tensor:
        """Unweighted distillation term ``T²·KL_batchmean``."""
        return L.kd_loss(z, v, self.temperature)

    def terms(self, z: Tensor, v: Optional[Tensor], y: Tensor, epoch: int) -> dict[str, Tensor]:
        v = self._teacher(v, z)
        return {"ce": self.p["w_ce"] * L.cross_entropy(z, y), "kd": self.p["w_kd"] * self.kd_term(z, v, y)}


@register("lskd")
class LSKD(KD):
    """Logit-standardised KD (Sun et al., CVPR 2024): Hinton KD on per-sample z-scored logits
    ``(l − mean)/(std + 1e-7)`` (unbiased std; teacher and student separately).
    Defaults w_ce 0.1, w_kd 9. Terms: ``ce``, ``kd``.

    temperature: the base temperature applied to the standardised logits (with T²; paper default 2).
    """


    def kd_term(self, z: Tensor, v: Tensor, y: Tensor) -> Tensor:
        return L.kd_loss(L.zscore(z), L.zscore(v), self.temperature)


def _kd_with_teacher_dist(z: Tensor, log_p: Tensor, T: float) -> Tensor:
    """``T²·KL_batchmean(p ‖ σ(z/T))`` for a given teacher log-distribution ``log_p``."""
    return (L.kl_from_log(log_p, L.log_softmax_t(z, T)) * T**2).mean()


@register("kd_shuffled")
class KDShuffled(KD):
    """KD ablation: per sample, the teacher's non-target probabilities at T are randomly permuted
    among the non-target classes (target probability and entropy kept, class relations
    destroyed); a fresh permutation per call from the global torch RNG on the logits' device.
    Weighting as kd. Terms: ``ce``, ``kd``.

    temperature: the shared softmax temperature T (teacher softened before shuffling; T² factor).
    """

    graph_safe = False

    def kd_term(self, z: Tensor, v: Tensor, y: Tensor) -> Tensor:
        T = self.temperature
        log_p = L.log_softmax_t(v, T)
        n = log_p.shape[1] - 1
        if n > 1:
            perm = torch.rand(log_p.shape[0], n, device=log_p.device).argsort(dim=1)
            log_p = L.permute_nontarget(log_p, y, perm)
        return _kd_with_teacher_dist(z, log_p, T)


@register("kd_topk")
class KDTopK(KD):
    """KD ablation: the teacher distribution at T keeps its target and its ``k`` largest
    non-target probabilities; the remaining non-target mass is spread uniformly over the other
    non-target classes (``k = 0``: all non-target mass uniform). Weighting as kd; k default 5.
    Terms: ``ce``, ``kd``.

    temperature: the shared softmax temperature T (teacher softened before truncation; T² factor).
    """


    def kd_term(self, z: Tensor, v: Tensor, y: Tensor) -> Tensor:
        T = self.temperature
        return _kd_with_teacher_dist(z, L.topk_nontarget(L.log_softmax_t(v, T), y, self.p["k"]), T)

    def constants(self) -> dict[str, float]:
        return {"k": float(self.p["k"])}


@register("tckd")
class TCKD(Method):
    """DKD's target-class part alone: ``w_ce·CE + ramp·alpha·T²·KL_batchmean(b(v/T) ‖ b(z/T))``
    with ``b`` the binary [target, non-target] split. Defaults w_ce 0.1 (as kd), alpha 1, no
    warm-up (``warmup`` > 0 enables DKD's linear ramp ``min(epoch/warmup, 1)``).
    Terms: ``ce``, ``tckd``.

    temperature: the shared softmax temperature T of teacher and student (with T²).
    """

    graph_safe = True

    part = 0  # index into dkd_kl_parts
    weight = "alpha"

    def terms(self, z: Tensor, v: Optional[Tensor], y: Tensor, epoch: int) -> dict[str, Tensor]:
        v = self._teacher(v, z)
        T = self.temperature
        kl = L.dkd_kl_parts(z, v, y, T)[self.part].mean() * T**2
        w = warmup_factor(epoch, self.p["warmup"]) * self.p[self.weight]
        return {"ce": self.p["w_ce"] * L.cross_entropy(z, y), self.name: w * kl}


@register("nckd")
class NCKD(TCKD):
    """DKD's non-target part alone: ``w_ce·CE + ramp·beta·T²·KL_batchmean(p̂ ‖ q̂)`` over the
    non-target classes only. Defaults w_ce 0.1 (as kd), beta 1, no warm-up (``warmup`` > 0
    enables DKD's linear ramp). Terms: ``ce``, ``nckd``.

    temperature: the shared softmax temperature T of teacher and student (with T²).
    """

    part = 1
    weight = "beta"
