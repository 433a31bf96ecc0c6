"""Label smoothing, optionally with ε matched to the teacher's softened entropy."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tstudy import losses as L
from tstudy.methods.base import Method, register

_CHUNK = 8192  # rows per chunk when averaging the teacher's entropy in prepare()


@register("ls")
class LS(Method):
    """Label smoothing: CE against ``(1−ε)·onehot + ε/C``. Without ``epsilon``, ε is chosen in
    ``prepare()`` so the smoothed target's entropy equals the mean entropy of ``σ(v/T)`` over the
    teacher's training-set logits (bisection; ε = 1 when that entropy ≥ log C); the teacher is
    not used per step. With ``epsilon`` given: used as is, no teacher, no temperature.
    Terms: ``ce``. Diagnostics and constants: ``epsilon`` (+ ``teacher_entropy`` when matched).

    temperature: softens the teacher whose mean entropy ε is matched to (unused with ``epsilon``).
    """

    graph_safe = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epsilon: Optional[float] = self.p["epsilon"]
        self.teacher_entropy: Optional[float] = None
        self.teacher_logits_per_step = False  # the teacher is used in prepare() only

    def prepare(self, teacher_train_logits: Tensor) -> None:
        """Match ε to the mean entropy of ``σ(v/T)`` (no-op when ``epsilon`` was given)."""
        if self.p["epsilon"] is not None:
            return
        logits = teacher_train_logits
        if logits.dim() != 2 or logits.shape[1] != self.num_classes or logits.shape[0] == 0:
            raise ValueError(
                f"ls.prepare: expected teacher logits [N, {self.num_classes}] with N > 0, got {tuple(logits.shape)}"
            )
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        for start in range(0, logits.shape[0], _CHUNK):
            chunk = logits[start : start + _CHUNK].double()  # one-off: float64 for an accurate mean
            total = total + L.softmax_entropy(chunk, self.temperature).sum()
        self.teacher_entropy = float(total) / logits.shape[0]
        self.epsilon = L.match_ls_epsilon(self.teacher_entropy, self.num_classes)

    def terms(self, z: Tensor, v: Optional[Tensor], y: Tensor, epoch: int) -> dict[str, Tensor]:
        if self.epsilon is None:
            raise RuntimeError(
                "method 'ls' matches epsilon to the teacher: call prepare(teacher_train_logits) before "
                "the first forward (or set method_params.epsilon)"
            )
        return {"ce": L.smoothed_cross_entropy(z, y, self.epsilon)}

    def constants(self) -> dict[str, float]:
        out = {} if self.epsilon is None else {"epsilon": self.epsilon}
        if self.teacher_entropy is not None:
            out["teacher_entropy"] = self.teacher_entropy
        return out

    def diagnostics(self) -> dict[str, float]:
        return {} if self.epsilon is None else {"epsilon": self.epsilon}

    def get_extra_state(self) -> dict[str, Optional[float]]:
        return {"epsilon": self.epsilon, "teacher_entropy": self.teacher_entropy}

    def set_extra_state(self, state: dict[str, Optional[float]]) -> None:
        self.epsilon = state.get("epsilon")
        self.teacher_entropy = state.get("teacher_entropy")
