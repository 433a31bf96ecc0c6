"""Study: a base config, axes (their cross product), seeds, filters -> an ordered list of runs.

A study file is plain Python defining ``study = Study(...)``. Expansion is pure and fast: the
runs are the product of the axes and the seeds, filtered by ``where``, optionally transformed by
``derive``, de-duplicated by run id; the teachers they name come first.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import itertools
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tstudy.config import DATA_FIELDS, RunConfig, TeacherFile, check_fields
from tstudy.errors import ConfigError
from tstudy.executors.options import check_options
from tstudy.store import RUNS

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
AxisKey = str | tuple[str, ...]


REFERENCE_TEMPERATURE = 4.0  # KD's reference T (the field's habit) for the gains `tstudy recommend` reports


@dataclass
class Study:
    """A named family of runs: ``base`` varied along ``axes`` (cross product) x ``seeds``.

    ``axes`` maps a RunConfig field to its list of values, or a tuple of fields to a list of
    tuples (zipped: e.g. ``("teacher", "model")`` for teacher/student pairs, or
    ``("method", "method_params")``). An axis on ``method`` alone resets ``method_params`` to ``{}``
    for methods other than the base's; a method from an axis that takes no teacher (``ce``) drops
    the base's teacher. ``where(cfg) -> bool`` filters; ``derive(cfg) -> cfg``
    adjusts a run after the axes are applied. ``options`` holds executor options (e.g. SLURM).
    ``reference_temperature`` is KD's reference T against which ``tstudy recommend`` reports gains.
    """

    name: str
    base: RunConfig
    axes: Mapping[AxisKey, Sequence[Any]] = field(default_factory=dict)
    seeds: Sequence[int] = (0,)
    where: Callable[[RunConfig], bool] | None = None
    derive: Callable[[RunConfig], RunConfig] | None = None
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    reference_temperature: float = REFERENCE_TEMPERATURE
    figure_note: str = ""  # a line every figure's title carries (e.g. "small scale: 16 px, CPU")
    source: str | None = None  # the study file, set by load_study

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise ConfigError(f"name: study name {self.name!r} must match {NAME_RE.pattern}")
        if self.name == RUNS:
            raise ConfigError(f"name: {RUNS!r} is reserved (<root>/{RUNS}/ holds the runs); choose another name")
        if not isinstance(self.figure_note, str):
            raise ConfigError(f"figure_note: expected a string, got {type(self.figure_note).__name__}")
        if not isinstance(self.base, RunConfig):
            raise ConfigError(f"base: expected a RunConfig, got {type(self.base).__name__}")
        self.axes = dict(self.axes)
        owner: dict[str, AxisKey] = {}
        for key, values in self.axes.items():
            fields = (key,) if isinstance(key, str) else tuple(key)
            check_fields(fields, f"axes[{key!r}]")
            for f in fields:
                if f in owner:
                    raise ConfigError(f"axes[{key!r}]: field {f!r} is already set by axes[{owner[f]!r}]")
                owner[f] = key
            if "seed" in fields:
                raise ConfigError(f"axes[{key!r}]: use Study(seeds=[...]) for seeds, not an axis")
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise ConfigError(f"axes[{key!r}]: expected a list of values, got {values!r}")
            if len(values) == 0:
                raise ConfigError(f"axes[{key!r}]: is empty; give at least one value")
            if len(fields) > 1 and any(not isinstance(v, (tuple, list)) or len(v) != len(fields) for v in values):
                raise ConfigError(f"axes[{key!r}]: each value must be a tuple of {len(fields)} values")
            seen = []
            for v in values:
                if v in seen:
                    raise ConfigError(f"axes[{key!r}]: duplicate value {v!r}")
                seen.append(v)
        seeds = list(self.seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise ConfigError(f"seeds: expected a non-empty list of integers >= 0, got {self.seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds: duplicate seeds in {seeds}")
        self.seeds = tuple(seeds)
        ref = self.reference_temperature
        if isinstance(ref, bool) or not isinstance(ref, (int, float)) or not 0 < ref < float("inf"):
            raise ConfigError(f"reference_temperature: expected a number > 0, got {ref!r}")
        self.reference_temperature = float(ref)
        check_options(self.options)

    # ----------------------------------------------------------------- expansion
    def students(self) -> list[RunConfig]:
        """The product of the axes and seeds, filtered, derived, de-duplicated (order kept).

        Each combination of axis values is validated once, for the first seed; its other seeds
        are copies (:meth:`RunConfig.with_seed`), and a combination equal to an earlier one is
        not expanded again (``where`` and ``derive`` are functions of the config)."""
        keys = list(self.axes)
        out: dict[str, RunConfig] = {}
        expanded: dict[str, RunConfig] = {}  # run id of the first seed's config -> that config
        for combo in itertools.product(*(self.axes[k] for k in keys)):
            changes: dict[str, Any] = {}
            for key, value in zip(keys, combo):
                if isinstance(key, str):
                    changes[key] = value
                else:
                    changes.update(zip(key, value))
            if "method" in changes and "method_params" not in changes and changes["method"] != self.base.method:
                changes["method_params"] = {}
            first, context = self._make({**changes, "seed": self.seeds[0]})
            if expanded.get(first.run_id) == first:
                continue
            expanded[first.run_id] = first
            for seed in self.seeds:
                cfg = self._finish(first if seed == self.seeds[0] else first.with_seed(seed), context)
                if cfg is not None:
                    out.setdefault(cfg.run_id, cfg)
        if not out:  # only `where` can drop runs: axes and seeds are never empty
            raise ConfigError(f"where: drops every run of study {self.name!r}; a study needs at least one run")
        return list(out.values())

    def _make(self, changes: dict[str, Any]) -> tuple[RunConfig, str]:
        """The base with ``changes`` (validated), and the context for error messages."""
        base = self.base
        method = changes.get("method", base.method)
        params = changes.get("method_params", base.method_params)
        from tstudy.method_specs import method_spec

        if not isinstance(params, Mapping):
            raise ConfigError(f"method_params: expected a dict, got {params!r} (study {self.name!r})")
        needs_teacher = method_spec(method).needs_teacher(dict(params))
        if not needs_teacher and ("method" in changes or "method_params" in changes):
            changes["teacher"] = None  # `ce` in a method axis: the no-teacher baseline
        elif needs_teacher and "teacher" not in changes and base.teacher is None:
            raise ConfigError(f"teacher: method {method!r} needs a teacher; set base.teacher or a teacher axis")
        where = ", ".join(f"{k}={v!r}" for k, v in changes.items() if k not in ("teacher", "seed"))
        context = f"study {self.name!r}, run with {where}"
        try:
            return dataclasses.replace(base, **changes), context
        except ConfigError as e:
            raise ConfigError(f"{e} ({context})") from None

    def _finish(self, cfg: RunConfig, context: str) -> RunConfig | None:
        """``derive`` then ``where`` applied to one run (None: filtered out)."""
        if self.derive is not None:
            cfg = _call_user("derive", self.derive, cfg, context)
            if not isinstance(cfg, RunConfig):
                raise ConfigError(f"derive: must return a RunConfig, got {type(cfg).__name__}")
        if self.where is not None:
            keep = _call_user("where", self.where, cfg, f"study {self.name!r}, run {cfg.run_id}")
            if not isinstance(keep, bool):
                raise ConfigError(f"where: must return True or False, got {keep!r} ({context}, run {cfg.run_id})")
            if not keep:
                return None
        return cfg

    def teachers(self, students: Sequence[RunConfig] | None = None) -> list[RunConfig]:
        """The trained teachers the students name (external files excluded), de-duplicated."""
        out: dict[str, RunConfig] = {}
        for s in self.students() if students is None else students:
            if isinstance(s.teacher, RunConfig):
                out.setdefault(s.teacher.run_id, s.teacher)
        return list(out.values())

    def runs(self) -> list[RunConfig]:
        """Every run to train, teachers first."""
        students = self.students()
        teachers = self.teachers(students)
        ids = {t.run_id for t in teachers}
        return teachers + [s for s in students if s.run_id not in ids]

    def varying_fields(self) -> list[str]:
        """The fields the axes vary (for compact tables)."""
        out: list[str] = []
        for key in self.axes:
            for f in (key,) if isinstance(key, str) else key:
                if f not in out:
                    out.append(f)
        return out + (["seed"] if len(self.seeds) > 1 else [])

    # ----------------------------------------------------------------- overrides
    def override(self, sets: Mapping[str, Any]) -> "Study":
        """Apply ``--set`` overrides: ``field=value`` on the base (replacing that axis, if any),
        ``teacher.field=value`` on the base's teacher. Data fields also go to a trained teacher (a
        teacher file is used on the student's data as it is). A method that takes no teacher
        (``ce``) drops the teacher, from the base and from the axes, as on a method axis."""
        base, axes = self.base, dict(self.axes)
        explicit = {k.split(".", 1)[1]: v for k, v in sets.items() if k.startswith("teacher.")}
        changes = {k: v for k, v in sets.items() if not k.startswith("teacher.")}
        check_fields(changes, "--set")
        check_fields(explicit, "--set teacher")
        if "seed" in changes:
            raise ConfigError("--set: use --seeds to change seeds")
        for k in changes:
            for key in list(axes):
                fields = (key,) if isinstance(key, str) else key
                if k in fields:
                    del axes[key]
        if "method" in changes and changes["method"] != base.method and "method_params" not in changes:
            changes["method_params"] = {}  # as on a method axis: the base's parameters are for its method
        if ("method" in changes or "method_params" in changes) and not _takes_teacher(
                changes.get("method", base.method), changes.get("method_params", base.method_params)):
            if explicit:
                raise ConfigError(f"--set teacher.{next(iter(explicit))}: method "
                                  f"{changes.get('method', base.method)!r} takes no teacher")
            changes["teacher"] = None
            axes = _without_teacher(axes)
        teacher_changes = dict(explicit)
        for name in DATA_FIELDS:
            if name in changes and name not in teacher_changes:
                teacher_changes[name] = changes[name]

        def with_teacher(cfg: RunConfig) -> RunConfig:
            if isinstance(cfg.teacher, RunConfig) and teacher_changes:
                return cfg.teacher.replace(**teacher_changes)
            return cfg.teacher

        if isinstance(base.teacher, TeacherFile) and explicit:
            raise ConfigError(f"--set teacher.{next(iter(explicit))}: the teacher is an external file "
                              "(TeacherFile); nothing to set")
        new_base = dataclasses.replace(base, **{"teacher": with_teacher(base), **changes})
        for key in list(axes):
            fields = (key,) if isinstance(key, str) else key
            if "teacher" in fields and teacher_changes:
                i = fields.index("teacher")
                axes[key] = [_set_teacher(v, i, len(fields), teacher_changes) for v in axes[key]]
        return dataclasses.replace(self, base=new_base, axes=axes)


def _takes_teacher(method: Any, params: Any) -> bool:
    """Whether ``method`` with ``params`` uses a teacher (True when either is invalid: RunConfig
    then names the problem)."""
    from tstudy.method_specs import method_spec

    if not isinstance(params, Mapping):
        return True
    try:
        return method_spec(method).needs_teacher(dict(params))
    except ConfigError:
        return True


def _without_teacher(axes: dict) -> dict:
    """The axes without ``teacher``: an axis on it alone goes, a zipped axis keeps its other fields."""
    out: dict = {}
    for key, values in axes.items():
        fields = (key,) if isinstance(key, str) else tuple(key)
        if "teacher" not in fields:
            out[key] = values
        elif len(fields) > 1:
            i = fields.index("teacher")
            rest = fields[:i] + fields[i + 1:]
            kept: list = []
            for v in values:
                v = tuple(v[:i]) + tuple(v[i + 1:])
                v = v[0] if len(rest) == 1 else v
                if v not in kept:
                    kept.append(v)
            out[rest[0] if len(rest) == 1 else rest] = kept
    return out


def run_warnings(runs: Sequence[RunConfig]) -> list[str]:
    """Each distinct warning of the runs once, with how many runs it concerns."""
    counts: dict[str, int] = {}
    for r in runs:
        for w in r.warnings():
            counts[w] = counts.get(w, 0) + 1
    return [f"{w} ({n} run{'s' if n != 1 else ''})" for w, n in counts.items()]


def _call_user(name: str, fn: Callable, cfg: RunConfig, context: str) -> Any:
    """Call the study's ``where``/``derive``; its exceptions become one ConfigError line."""
    try:
        return fn(cfg)
    except ConfigError as e:
        raise ConfigError(f"{e} ({context})") from None
    except Exception as e:  # noqa: BLE001 - user code
        raise ConfigError(f"{name}: {type(e).__name__}: {e} ({context})") from None


def _set_teacher(value: Any, i: int, n: int, teacher_changes: dict) -> Any:
    if n == 1:
        return value.replace(**teacher_changes) if isinstance(value, RunConfig) else value
    value = list(value)
    if isinstance(value[i], RunConfig):
        value[i] = value[i].replace(**teacher_changes)
    return tuple(value)


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["epochs=30", "dataset=tinyimagenet"]`` -> ``{"epochs": 30, "dataset": "tinyimagenet"}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set: expected FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _literal(v)
    return out


def _literal(text: str) -> Any:
    """A flag's value: a Python literal where ``text`` is one (``30``, ``(5, 10)``), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_only(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["method=ce,kd", "temperature=4"]`` -> ``{"method": ["ce", "kd"], "temperature": [4]}``
    (``--only``: keep the runs whose field has one of the values)."""
    out: dict[str, list[Any]] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise ConfigError(f"--only: expected FIELD=VALUE[,VALUE...], got {item!r}")
        out.setdefault(k.strip(), []).extend(_literal(part.strip()) for part in v.split(","))
    check_fields(out, "--only")
    for k in ("teacher", "method_params"):
        if k in out:
            raise ConfigError(f"--only: {k} cannot be selected by value; use the study's where")
    return out


def _matches(value: Any, wanted: list[Any]) -> bool:
    """``value`` equals one of ``wanted`` (numbers by value: ``--only temperature=4`` takes 4.0); a
    field that does not apply to the run (None, as ``temperature`` of ``ce``) never excludes it."""
    if value is None:
        return True
    for w in wanted:
        num = isinstance(w, (int, float)) and not isinstance(w, bool)
        if num and isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == float(w):
            return True
        if value == w or (isinstance(value, tuple) and isinstance(w, (tuple, list)) and tuple(w) == value):
            return True
    return False


def restrict(study: "Study", only: Mapping[str, list[Any]]) -> "Study":
    """The study's runs whose fields match ``only`` (``--only``), with the teachers they name: a
    chunk of a larger study (its runs and run ids unchanged). A selection matching no run is
    refused, as a ``where`` dropping every run is."""
    if not only:
        return study
    inner = study.where

    def where(cfg: RunConfig) -> bool:
        return (inner is None or inner(cfg)) and all(_matches(getattr(cfg, k), v) for k, v in only.items())

    everyone = study.students()
    if everyone and not any(where(c) for c in everyone):
        said = " ".join(f"{k}={','.join(str(x) for x in v)}" for k, v in only.items())
        raise ConfigError(f"--only: {said} selects none of the {len(everyone)} student runs of study {study.name!r}")
    return Study(**{**study.__dict__, "where": where})


SEEDS_FORMS = "integers >= 0 separated by commas, such as 0,1,2 (no ranges)"


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; anything else (ranges, negatives, duplicates, empty) is one
    ``--seeds`` line."""
    parts = [p.strip() for p in text.split(",")]
    if not all(re.fullmatch(r"[0-9]+", p) for p in parts):
        raise ConfigError(f"--seeds: expected {SEEDS_FORMS}, got {text!r}")
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct {SEEDS_FORMS}, got {text!r}")
    return seeds


def load_study(path: str | Path) -> Study:
    """Execute a study file and return its ``study``; errors name the file and the problem."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"study file: {str(path)!r} is a directory; give the study's .py file")
    if not path.is_file():
        raise ConfigError(f"study file: {str(path)!r} does not exist")
    source = path.read_text()
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as e:
        raise ConfigError(f"study file: syntax error in {path} line {e.lineno}: {e.msg}") from None
    module_name = f"tstudy_study_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_loader(module_name, loader=None, origin=str(path))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    module.__file__ = str(path)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.resolve().parent))  # a study file may import helpers beside it
    try:
        exec(code, module.__dict__)
    except ConfigError as e:
        raise ConfigError(f"{path.name}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a user's file: report where it broke, in one line
        tb = traceback.extract_tb(e.__traceback__)
        line = next((f.lineno for f in reversed(tb) if f.filename == str(path)), "?")
        raise ConfigError(f"study file: {path} line {line}: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    study = module.__dict__.get("study")
    if not isinstance(study, Study):
        raise ConfigError(f"study file: {path} must define `study = Study(...)`"
                          + (f", found {type(study).__name__}" if study is not None else ""))
    study.source = str(path.resolve())
    return study
