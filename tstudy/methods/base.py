"""The ``Method`` base class, the ``METHODS`` registry and hyper-parameter validation."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from tstudy.errors import ConfigError
from tstudy.method_specs import BUILTIN, MethodSpec, check_temperature
from tstudy.registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")

def by_pair(
    table: Mapping[tuple[str, str], Any], teacher: Optional[str], student: Optional[str], default: Any
) -> Any:
    """``table[(teacher, student)]`` (exact model names), else ``default``."""
    return table.get((str(teacher), str(student)), default)


def warmup_factor(epoch: int, warmup: float) -> float:
    """Linear warm-up ``min(epoch / warmup, 1)``; 1 when ``warmup <= 0``."""
    return 1.0 if warmup <= 0 else min(float(epoch) / warmup, 1.0)


class Method(MethodSpec, nn.Module):
    """Base class of the KD methods: ``m(z, v, y, epoch=e) -> {term: weighted float32 scalar}``.

    Class-level API (no tensors; used by config validation before building):
    ``param_names()``, ``needs_teacher(params)``, ``uses_temperature(params)``,
    ``needs_teacher_train_logits(params)``, ``check_params(params)``. Instance hooks:
    ``prepare(teacher_train_logits)``, ``diagnostics()`` (returns and resets per-period stats),
    ``constants()``.

    temperature: see each subclass.
    """

    # Whether a step with this method may be replayed as a CUDA graph (tstudy.cuda_graph): pure
    # tensor maths, no random numbers, no host syncs, statistics only through ``_accumulate``.
    # Off unless a method declares it.
    graph_safe: bool = False

    # ------------------------------------------------------------ construction
    def __init__(
        self,
        temperature: Optional[float] = None,
        teacher_model: Optional[str] = None,
        student_model: Optional[str] = None,
        num_classes: int = 0,
        **params: Any,
    ) -> None:
        super().__init__()
        self.p = type(self).check_params(params)
        # Whether forward() reads the teacher's logits (False for ls: it needs them only in prepare).
        self.teacher_logits_per_step: bool = type(self).needs_teacher(params)
        if type(self).uses_temperature(params) or temperature is not None:
            temperature = check_temperature(self.name, temperature)
        self.temperature: Optional[float] = temperature
        self.teacher_model = teacher_model
        self.student_model = student_model
        if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 1):
            raise ConfigError(f"num_classes: must be an integer >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self._stats: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ forward
    def forward(self, z: Tensor, v: Optional[Tensor], y: Tensor, *, epoch: int) -> dict[str, Tensor]:
        """Weighted loss terms for student logits ``z``, teacher logits ``v`` and labels ``y``."""
        if z.dim() != 2:
            raise ValueError(f"{self.name}: student logits must be [B, C], got shape {tuple(z.shape)}")
        return self.terms(z, v, y, epoch)

    def terms(self, z: Tensor, v: Optional[Tensor], y: Tensor, epoch: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def _teacher(self, v: Optional[Tensor], z: Tensor) -> Tensor:
        """The (detached) teacher logits, or a clear error when they are missing."""
        if v is None:
            raise ValueError(f"method {self.name!r} needs teacher logits, got v=None")
        if v.shape != z.shape:
            raise ValueError(f"{self.name}: teacher logits {tuple(v.shape)} != student logits {tuple(z.shape)}")
        return v.detach()

    # ------------------------------------------------------------ hooks
    def prepare(self, teacher_train_logits: Tensor) -> None:
        """Called once before training with the teacher's logits on the training set, only for
        methods whose ``needs_teacher_train_logits(params)`` is true."""

    def constants(self) -> dict[str, float]:
        """Resolved hyper-parameters worth recording (e.g. by-pair defaults)."""
        return {}

    def diagnostics(self) -> dict[str, float]:
        """Stats accumulated by forward calls since the last call; resets them (one host sync)."""
        if not self._stats:
            return {}
        names: list[str] = []
        values: list[Tensor] = []
        for key, st in self._stats.items():
            for stat in st["want"]:
                names.append(f"{key}_{stat}")
                values.append(st["sum"] / st["count"] if stat == "mean" else st[stat])
        self._stats = {}
        return dict(zip(names, torch.stack([x.double().reshape(()) for x in values]).tolist()))

    def _accumulate(self, key: str, values: Tensor, want: tuple[str, ...] = ("mean",)) -> None:
        """Add ``values`` to the running sum/count/min/max of ``key`` on their device: no sync,
        and in place after the first call, so a CUDA graph replay updates the same tensors."""
        with torch.no_grad():
            x = values.detach().reshape(-1).float()
            st = self._stats.get(key)
            if st is None:
                self._stats[key] = {"sum": x.sum(), "count": torch.full((), float(x.numel()), device=x.device),
                                    "min": x.min(), "max": x.max(), "want": want}
            else:
                st["sum"].add_(x.sum())
                st["count"].add_(x.numel())
                torch.minimum(st["min"], x.min(), out=st["min"])
                torch.maximum(st["max"], x.max(), out=st["max"])

    def extra_repr(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.p.items())
        return f"name={self.name!r}, temperature={self.temperature}" + (f", {args}" if args else "")


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: set ``cls.name``, take a built-in method's parameters and class-level
    checks from its spec in ``tstudy.method_specs``, and register it in ``METHODS``."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        if name in BUILTIN:
            spec = BUILTIN.get(name)
            for attr in ("params", "teacher", "temperature_used", "prepare_reads_train_logits"):
                setattr(cls, attr, getattr(spec, attr))
            for attr in ("needs_teacher", "uses_temperature", "check_temperature"):
                for klass in spec.__mro__:
                    if klass is MethodSpec:
                        break
                    if attr in vars(klass):
                        setattr(cls, attr, classmethod(vars(klass)[attr].__func__))
                        break
        return METHODS.register(name)(cls)

    return deco


def temperature_line(cls: type[Method]) -> str:
    """The docstring line of ``cls`` that starts with ``temperature:``."""
    for line in (cls.__doc__ or "").splitlines():
        if line.strip().startswith("temperature:"):
            return line.strip()
    raise ValueError(f"method {cls.name!r} documents no 'temperature:' line")
