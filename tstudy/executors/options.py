"""Executor options: typed, validated, one line per mistake (torch- and submitit-free).

A study carries them as plain data, ``Study(..., options={"local": {...}, "slurm": {...}})``;
each executor owns its class here (:class:`LocalOptions`, :class:`SlurmOptions`); launch flags
override the study's values. Unknown keys are refused with the list of valid ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

from tstudy.errors import ConfigError


class _Options:
    """Shared construction for frozen option dataclasses: ``from_mapping`` and ``merged``."""

    section: str = ""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None):
        """Build from a plain dict; unknown keys and bad values raise a one-line ConfigError."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(f"options[{cls.section!r}]: expected a dict, got {d!r}")
        cls._check_keys(d)
        return cls(**d)

    @classmethod
    def _check_keys(cls, d: Mapping[str, Any]) -> None:
        unknown = [k for k in d if k not in cls.names()]
        if unknown:
            raise ConfigError(f"{cls.section}: unknown option {unknown[0]!r}; valid: {', '.join(cls.names())}")

    def merged(self, overrides: Mapping[str, Any]):
        """These options with ``overrides`` applied."""
        self._check_keys(overrides)
        return dataclasses.replace(self, **overrides)


# sbatch options tstudy sets itself; extra options may not override them.
RESERVED_SBATCH = ("array", "output", "error", "dependency", "open-mode", "signal", "wrap", "parsable")

# =========================================================================== local
@dataclass(frozen=True)
class LocalOptions(_Options):
    """Options of ``launch`` on this machine; in a study file:
    ``Study(..., options={"local": {"workers": 2, "pack": 8}})``.

    ``workers``: packs trained at once (default: one per visible GPU, each pinned to its own; 1 on
    the CPU). ``threads``: torch CPU threads per worker (default: the usable cores split between
    the workers; on the CPU, results are bit-exact between runs trained with equal threads).
    ``pack``: up to this many runs differing only in their loss side train together.
    """

    section: ClassVar[str] = "local"
    workers: int | None = None
    threads: int | None = None
    pack: int = 1

    def __post_init__(self) -> None:
        for name in ("workers", "threads"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _as_int(name, v, 1, "local"))
        object.__setattr__(self, "pack", _as_int("pack", self.pack, 1, "local"))

    def worker_threads(self, workers: int) -> int:
        """Torch threads per worker: ``threads``, else the usable cores split between workers."""
        return self.threads or max(1, len(os.sched_getaffinity(0)) // workers)


# =========================================================================== SLURM
@dataclass(frozen=True)
class SlurmOptions(_Options):
    """Cluster options for ``launch --executor slurm``; in a study file:
    ``Study(..., options={"slurm": {"partition": "gpu", "time": "04:00:00", "gpus_per_job": 1}})``.

    ``time`` is the limit per job in minutes (``from_mapping`` also takes SLURM's ``HH:MM:SS``,
    ``MM:SS``, ``D-HH[:MM[:SS]]``); a job reaching it is requeued up to ``max_timeouts`` times.
    ``mem`` is SLURM's ``--mem`` (``"16G"``); ``sbatch`` holds extra sbatch options (``{"exclude":
    "node3"}``); ``setup`` lines run before the job (``module load cuda``). ``pack``: up to this
    many runs differing only in their loss side train as one pack; ``packs_per_job``: packs one
    job trains at once, one per GPU (default: ``gpus_per_job``, at least 1; on CPU nodes the
    job's CPUs are split between them). ``log_dir`` defaults to ``<root>/<study>/slurm``.
    """

    section: ClassVar[str] = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = 60
    gpus_per_job: int = 0
    cpus_per_job: int | None = None
    mem: str | None = None
    constraint: str | None = None
    sbatch: Mapping[str, Any] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    array_parallelism: int = 256
    pack: int = 1
    packs_per_job: int | None = None
    max_timeouts: int = 20
    job_name: str | None = None
    log_dir: str | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _CHECKS[f.name](f.name, getattr(self, f.name)))

    @property
    def job_packs(self) -> int:
        """Packs one job trains at once."""
        return self.packs_per_job or max(1, self.gpus_per_job)

    def merged(self, overrides: Mapping[str, Any]) -> "SlurmOptions":
        """These options with ``overrides`` applied (``sbatch`` merged key by key)."""
        changes = dict(overrides)
        if "sbatch" in changes:
            changes["sbatch"] = {**self.sbatch, **_check_sbatch("sbatch", changes["sbatch"])}
        return super().merged(changes)


def _check_str(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip() or "\n" in v:
        raise ConfigError(f"slurm.{name}: expected a non-empty one-line string, got {v!r}")
    return v.strip()


def _as_int(name: str, v: Any, lo: int, section: str = "slurm") -> int:
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{section}.{name}: expected an integer >= {lo}, got {v!r}")
    return v


def _int_check(lo: int) -> Callable[[str, Any], int]:
    return lambda name, v: _as_int(name, v, lo)


def _check_optional_int(name: str, v: Any) -> int | None:
    return None if v is None else _as_int(name, v, 1)


def parse_time(v: Any, name: str = "time") -> int:
    """SLURM time limit -> whole minutes: 90, "90", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM[:SS]"."""
    if isinstance(v, int) and not isinstance(v, bool):
        if v >= 1:
            return v
    elif isinstance(v, str):
        m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*", v)
        if m:
            days, a, b, c = (int(x) if x is not None else None for x in m.groups())
            if days is not None:  # D-HH[:MM[:SS]]
                seconds = ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
            elif c is not None:  # HH:MM:SS
                seconds = (a * 60 + b) * 60 + c
            elif b is not None:  # MM:SS
                seconds = a * 60 + b
            else:  # MM
                seconds = a * 60
            if seconds > 0:
                return math.ceil(seconds / 60)
    raise ConfigError(f"slurm.{name}: expected minutes > 0 or SLURM's HH:MM:SS / D-HH:MM:SS, got {v!r}")


def _check_mem(name: str, v: Any) -> str | None:
    if v is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT])B?\s*", v, re.I) if isinstance(v, str) else None
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"slurm.{name}: expected a size with a unit such as '16G' or '500M', got {v!r}")
    return f"{int(m.group(1))}{m.group(2).upper()}"


def _check_sbatch(name: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"slurm.{name}: expected a dict of sbatch options such as "
                          f"{{'exclude': 'node3', 'requeue': True}}, got {v!r}")
    out: dict[str, Any] = {}
    for k, x in v.items():
        key = str(k).strip().lstrip("-").replace("_", "-")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
            raise ConfigError(f"slurm.{name}: {k!r} is not an sbatch option name")
        if key in RESERVED_SBATCH:
            raise ConfigError(f"slurm.{name}: --{key} is set by tstudy; reserved: {', '.join(RESERVED_SBATCH)}")
        if not (x is True or (isinstance(x, (str, int, float)) and not isinstance(x, bool) and "\n" not in str(x))):
            raise ConfigError(f"slurm.{name}: --{key} needs a one-line value (or True for a flag), got {x!r}")
        out[key] = x
    return out


def _check_setup(name: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"slurm.{name}: expected a list of shell lines, got {v!r}")
    return tuple(v)


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "partition": _check_str, "account": _check_str, "qos": _check_str, "constraint": _check_str,
    "job_name": _check_str, "log_dir": _check_str,
    "time": lambda name, v: parse_time(v, name), "gpus_per_job": _int_check(0), "cpus_per_job": _check_optional_int,
    "mem": _check_mem, "sbatch": _check_sbatch, "setup": _check_setup,
    "array_parallelism": _int_check(1), "pack": _int_check(1), "packs_per_job": _check_optional_int,
    "max_timeouts": _int_check(0),
}


def parse_key_values(items: Sequence[str], where: str) -> dict[str, Any]:
    """``["exclude=node3", "requeue="]`` -> ``{"exclude": "node3", "requeue": True}``: an empty
    value is a flag; anything without ``=`` is refused."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=") if isinstance(item, str) else ("", "", "")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: expected KEY=VALUE (KEY= for a flag, e.g. requeue=), got {item!r}")
        out[key.strip()] = value if value else True
    return out


# =========================================================================== CLI glue
SLURM_FLAGS = {  # launch flag dest -> SlurmOptions field
    "partition": "partition", "account": "account", "qos": "qos", "slurm_time": "time",
    "gpus": "gpus_per_job", "cpus": "cpus_per_job", "mem": "mem", "constraint": "constraint",
    "sbatch": "sbatch", "setup": "setup", "array_parallelism": "array_parallelism",
    "packs_per_job": "packs_per_job", "pack": "pack",
}
LOCAL_FLAGS = {"workers": "workers", "threads": "threads", "pack": "pack"}
CLASSES: dict[str, type[_Options]] = {"local": LocalOptions, "slurm": SlurmOptions}
FLAGS = {"local": LOCAL_FLAGS, "slurm": SLURM_FLAGS}


def add_cli_flags(p: argparse.ArgumentParser) -> None:
    """The executor flags of ``tstudy launch`` (they override the study's ``options``)."""
    p.add_argument("--pack", type=int, metavar="K",
                   help="train up to K runs differing only in their loss side together")
    g = p.add_argument_group("local (the default executor; override the study's options['local'])")
    g.add_argument("--workers", type=int, metavar="N",
                   help="packs trained at once (default: one per visible GPU, each pinned to its own; 1 on the CPU)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads per worker (default: the cores split between the workers)")
    g = p.add_argument_group("SLURM (--executor slurm; override the study's options['slurm'])")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--time", dest="slurm_time", metavar="TIME", help="per job: minutes or HH:MM:SS (default 60)")
    g.add_argument("--gpus", type=int, metavar="N", help="GPUs per job (a job trains one pack per GPU)")
    g.add_argument("--cpus", type=int, metavar="N", help="CPUs per job (torch uses that many threads)")
    g.add_argument("--mem", metavar="SIZE", help="memory per job, e.g. 16G")
    g.add_argument("--constraint")
    g.add_argument("--sbatch", action="append", metavar="KEY=VALUE",
                   help="extra sbatch option; KEY= for a flag (repeatable)")
    g.add_argument("--setup", action="append", metavar="LINE", help="shell line run before the job (repeatable)")
    g.add_argument("--array-parallelism", type=int, metavar="N", help="at most N tasks of an array at once")
    g.add_argument("--packs-per-job", type=int, metavar="N", help="packs one job trains at once (default: --gpus)")


def _flag(dest: str) -> str:
    return "--time" if dest == "slurm_time" else "--" + dest.replace("_", "-")


def cli_overrides(args: argparse.Namespace, executor: str = "slurm") -> dict[str, Any]:
    """The options of ``executor`` given on the command line."""
    out = {}
    for dest, name in FLAGS[executor].items():
        v = getattr(args, dest, None)
        if v is not None and v != []:
            out[name] = parse_key_values(v, "--sbatch") if name == "sbatch" else v
    return out


def options_for(study_options: Mapping[str, Any], args: argparse.Namespace, executor: str = "slurm"):
    """The typed options of ``executor``: the study's, overridden by the command line; flags
    of another executor are an error, not silently ignored. A bad flag value names the flag."""
    for other, flags in FLAGS.items():
        for dest in flags:
            if other != executor and dest not in FLAGS[executor] and getattr(args, dest, None) not in (None, []):
                raise ConfigError(f"{_flag(dest)}: only with --executor {other}")
    opts = CLASSES[executor].from_mapping(study_options.get(executor))
    flag_of = {name: _flag(dest) for dest, name in FLAGS[executor].items()}
    for name, value in cli_overrides(args, executor).items():
        try:
            opts = opts.merged({name: value})
        except ConfigError as e:  # "local.pack: ..." -> "--pack: ..."
            msg, prefix = str(e), f"{executor}.{name}: "
            raise ConfigError(flag_of[name] + ": " + msg.removeprefix(prefix) if msg.startswith(prefix) else msg
                              ) from None
    return opts


def check_options(options: Any) -> None:
    """Validate a study's ``options`` (plain data): known executors, valid typed values."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"options: expected a dict such as {{'slurm': {{...}}}}, got {options!r}")
    unknown = sorted(set(options) - set(CLASSES))
    if unknown:
        raise ConfigError(f"options: unknown key {unknown[0]!r}; valid: {', '.join(CLASSES)}")
    for name, cls in CLASSES.items():
        if name in options:
            cls.from_mapping(options[name])
