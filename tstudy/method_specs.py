"""Torch-free method specifications: names, hyper-parameters and their checks.

RunConfig validation and study expansion need only this (no torch import), so `tstudy plan`
starts fast. Each built-in method's parameters are declared here once; the ``nn.Module``
implementations in ``tstudy.methods`` take them from here when registered.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from tstudy.errors import ConfigError
from tstudy.registry import Registry

# value kinds accepted by ``Param`` and what they mean (used in error messages)
_KINDS = {
    "nonneg": "a finite number >= 0",
    "nonneg_or_none": "null or a finite number >= 0",
    "positive": "a finite number > 0",
    "int_nonneg": "an integer >= 0",
    "int_pos": "an integer >= 1",
    "unit_or_none": "null or a number in [0, 1]",
}


@dataclass(frozen=True)
class Param:
    """A method hyper-parameter: default value, value kind (a key of ``_KINDS``) and what it
    counts, for the checks that need the run or its data (``unit``): ``"epochs"`` (a span of
    training: a warning when it outlasts the run) or ``"nontarget"`` (a number of non-target
    classes: at most the dataset's classes - 1, checked before launch)."""

    default: Any
    kind: str
    unit: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS or self.unit not in ("", "epochs", "nontarget"):
            raise ValueError(f"Param: unknown kind {self.kind!r} or unit {self.unit!r}")


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_value(method: str, name: str, kind: str, value: Any) -> Any:
    """Validate one parameter value; returns it normalised (float / int / None)."""
    if value is None and kind.endswith("_or_none"):
        return None
    ok = _is_number(value) and math.isfinite(float(value))
    if ok and kind.startswith("int"):
        ok = float(value).is_integer()
        value = int(value) if ok else value
        ok = ok and value >= (1 if kind == "int_pos" else 0)
        if ok:
            return value
    elif ok:
        value = float(value)
        if kind == "positive":
            ok = value > 0
        elif kind == "unit_or_none":
            ok = 0.0 <= value <= 1.0
        else:
            ok = value >= 0
        if ok:
            return value
    raise ConfigError(
        f"method_params.{name}: must be {_KINDS[kind]} for method {method!r}, got {value!r}"
    )


def check_temperature(method: str, temperature: Any) -> float:
    """``temperature`` as a float, or ``ConfigError`` unless it is finite and > 0."""
    if not (_is_number(temperature) and math.isfinite(float(temperature)) and float(temperature) > 0):
        raise ConfigError(f"temperature: must be a finite number > 0 for method {method!r}, got {temperature!r}")
    return float(temperature)



class MethodSpec:
    """The class-level API of a method, usable before anything is built (no tensors)."""

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    teacher: ClassVar[bool] = True  # default for needs_teacher()
    temperature_used: ClassVar[bool] = True  # default for uses_temperature()
    # Whether ``prepare()`` reads the teacher's logits on the whole training set (ls matches its ε
    # to them); only then does the engine compute or load them (a forward pass over the training
    # set for a teacher file). Default for needs_teacher_train_logits().
    prepare_reads_train_logits: ClassVar[bool] = False

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        return tuple(cls.params)

    @classmethod
    def needs_teacher(cls, params: Optional[Mapping[str, Any]] = None) -> bool:
        return cls.teacher

    @classmethod
    def uses_temperature(cls, params: Optional[Mapping[str, Any]] = None) -> bool:
        return cls.temperature_used

    @classmethod
    def needs_teacher_train_logits(cls, params: Optional[Mapping[str, Any]] = None) -> bool:
        """Whether ``prepare()`` must be given the teacher's training-set logits."""
        return cls.prepare_reads_train_logits and cls.needs_teacher(params)

    @classmethod
    def check_temperature(cls, temperature: Optional[float], params: Mapping[str, Any]) -> None:
        """Method-specific limits on ``temperature`` (checked by RunConfig before launch)."""

    @classmethod
    def check_data(cls, params: Mapping[str, Any], num_classes: int) -> None:
        """Limits that depend on the dataset (checked in preflight, once the data is loaded)."""
        for key, value in cls.check_params(params).items():
            if cls.params[key].unit == "nontarget" and value is not None and value > num_classes - 1:
                raise ConfigError(
                    f"method_params.{key}: must be at most {num_classes - 1} (the non-target classes of a "
                    f"{num_classes}-class dataset) for method {cls.name!r}, got {value}")

    @classmethod
    def epoch_warnings(cls, params: Mapping[str, Any], epochs: int) -> list[str]:
        """Parameters that make no sense for a run of ``epochs`` epochs (a ramp longer than the run)."""
        return [f"method_params.{key}: {cls.name}'s {key}={value:g} epochs is longer than the run's {epochs} "
                f"epochs, so it never completes"
                for key, value in cls.check_params(params).items()
                if cls.params[key].unit == "epochs" and value is not None and value > epochs]

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults merged with ``params``, validated; ``ConfigError`` names the bad field."""
        for key in params:
            if key not in cls.params:
                valid = ", ".join(cls.params) or "(none)"
                raise ConfigError(f"method_params: unknown parameter {key!r} for method {cls.name!r}; valid: {valid}")
        out = {}
        for key, spec in cls.params.items():
            out[key] = check_value(cls.name, key, spec.kind, params.get(key, spec.default))
        return out


BUILTIN: Registry[type[MethodSpec]] = Registry("method")


def _spec(name: str, base: type[MethodSpec] = MethodSpec, **attrs: Any) -> type[MethodSpec]:
    cls = type(f"Spec_{name}", (base,), {"name": name, **attrs})
    return BUILTIN.register(name)(cls)


def _matched(params: Optional[Mapping[str, Any]]) -> bool:
    """ls: ε is matched to the teacher unless ``epsilon`` is given."""
    return not params or params.get("epsilon") is None


class _LSSpec(MethodSpec):
    @classmethod
    def needs_teacher(cls, params: Optional[Mapping[str, Any]] = None) -> bool:
        return _matched(params)

    @classmethod
    def uses_temperature(cls, params: Optional[Mapping[str, Any]] = None) -> bool:
        return _matched(params)


class _CTKDSpec(MethodSpec):
    @classmethod
    def check_temperature(cls, temperature: Optional[float], params: Mapping[str, Any]) -> None:
        p = cls.check_params(params)
        lo, rng = p["t_start"], p["t_range"]
        if temperature is not None and not lo < temperature < lo + rng:
            raise ConfigError(
                f"temperature: for method {cls.name!r} the initial temperature must lie strictly between "
                f"t_start={lo:g} and t_start+t_range={lo + rng:g}, got {temperature:g}"
            )


_W_CE, _W_KD = Param(0.1, "nonneg"), Param(0.9, "nonneg")
_CTKD = {"w_ce": _W_CE, "w_kd": _W_KD, "t_start": Param(1.0, "positive"), "t_range": Param(20.0, "positive"),
         "lambda_max": Param(1.0, "nonneg"), "lambda_epochs": Param(10.0, "nonneg", "epochs")}

_spec("ce", teacher=False, temperature_used=False)
_spec("kd", params={"w_ce": _W_CE, "w_kd": _W_KD})
_spec("lskd", params={"w_ce": Param(0.1, "nonneg"), "w_kd": Param(9.0, "nonneg")})
_spec("kd_shuffled", params={"w_ce": _W_CE, "w_kd": _W_KD})
_spec("kd_topk", params={"w_ce": _W_CE, "w_kd": _W_KD, "k": Param(5, "int_nonneg", "nontarget")})
_spec("tckd", params={"w_ce": _W_CE, "alpha": Param(1.0, "nonneg"), "warmup": Param(0.0, "nonneg", "epochs")})
_spec("nckd", params={"w_ce": _W_CE, "beta": Param(1.0, "nonneg"), "warmup": Param(0.0, "nonneg", "epochs")})
_spec("ttm", params={"w_ce": Param(1.0, "nonneg"), "beta": Param(None, "nonneg_or_none")})
_spec("wttm", params={"w_ce": Param(1.0, "nonneg"), "beta": Param(None, "nonneg_or_none")})
_spec("dkd", params={"w_ce": Param(1.0, "nonneg"), "alpha": Param(1.0, "nonneg"),
                     "beta": Param(None, "nonneg_or_none"), "warmup": Param(20.0, "nonneg", "epochs")})
_spec("dtkd", params={"w_ce": Param(1.0, "nonneg"), "alpha": Param(None, "nonneg_or_none"),
                      "beta": Param(None, "nonneg_or_none"), "warmup": Param(20.0, "nonneg", "epochs")})
_spec("ctkd", _CTKDSpec, params=dict(_CTKD))
_spec("ctkd_instance", _CTKDSpec, params={**_CTKD, "hidden": Param(256, "int_pos")})
_spec("ls", _LSSpec, prepare_reads_train_logits=True, params={"epsilon": Param(None, "unit_or_none")})


def method_spec(name: str) -> type[MethodSpec]:
    """The spec of method ``name``: the registered class once ``tstudy.methods`` is imported
    (custom methods included), else the built-in spec (no torch import)."""
    import sys

    methods = sys.modules.get("tstudy.methods")
    if methods is not None and hasattr(methods, "METHODS"):
        return methods.METHODS.get(name, "method")
    return BUILTIN.get(name, "method")
