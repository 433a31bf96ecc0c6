"""The KD method zoo: ``build(name, ...)`` returns a ``Method`` (an ``nn.Module``).

Usage (the training engine's contract)::

    m = build("kd", temperature=4.0, teacher_model="resnet56", student_model="resnet20",
              num_classes=100, w_ce=0.1)
    m.prepare(teacher_train_logits)          # once, before training, if m.needs_teacher_train_logits() (ls)
    terms = m(z, v, y, epoch=e)               # {name: weighted float32 scalar}; epochs from 1
    loss = sum(terms.values())
    m.diagnostics(); m.constants()

Methods with learnable state (ctkd, ctkd_instance) own ``nn.Parameter``s: add ``m.parameters()``
to the student's optimizer and move ``m`` to the device with ``m.to(device)``.
Registered: ce, kd, ttm, wttm, dkd, ctkd, ctkd_instance, dtkd, lskd, ls, kd_shuffled, kd_topk,
tckd, nckd.
"""
from __future__ import annotations

from typing import Any, Optional

from tstudy.method_specs import Param
from tstudy.methods.base import METHODS, Method, temperature_line
from tstudy.methods import kd as _kd  # noqa: F401  (registers ce, kd, lskd, kd_shuffled, kd_topk, tckd, nckd)
from tstudy.methods import ttm as _ttm  # noqa: F401  (registers ttm, wttm)
from tstudy.methods import dkd as _dkd  # noqa: F401  (registers dkd)
from tstudy.methods import dtkd as _dtkd  # noqa: F401  (registers dtkd)
from tstudy.methods import ctkd as _ctkd  # noqa: F401  (registers ctkd, ctkd_instance)
from tstudy.methods import ls as _ls  # noqa: F401  (registers ls)

__all__ = ["METHODS", "Method", "Param", "build", "method_class", "describe_methods"]


def method_class(name: str) -> type[Method]:
    """The registered ``Method`` subclass ``name``; ``ConfigError`` listing valid names otherwise."""
    return METHODS.get(name, "method")


def build(
    name: str,
    *,
    temperature: Optional[float] = None,
    teacher_model: Optional[str] = None,
    student_model: Optional[str] = None,
    num_classes: int,
    **params: Any,
) -> Method:
    """Build method ``name``; unknown names/params and invalid values raise ``ConfigError``."""
    cls = method_class(name)
    return cls(
        temperature=temperature,
        teacher_model=teacher_model,
        student_model=student_model,
        num_classes=num_classes,
        **params,
    )


def describe_methods() -> dict[str, str]:
    """``{name: "temperature: ..."}`` — what the swept temperature means for each method."""
    return {name: temperature_line(METHODS.get(name)) for name in METHODS.names()}
